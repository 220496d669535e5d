"""Long-lived workflows roll over before Temporal's history limit, on a dev server whose limits are small.

The server here suggests continue-as-new past 150 KB of history and terminates a workflow past 1 MB (AWS-sized
limits are 4 MB / 50 MB): a flood of malformed 60 KB `approve` signals, which each stay in history, would
terminate a `ReconciliationWorkflow` that never rolls over, losing the pending decision. This one continues as
new with its conflict, decision log and deadline, and a decision after the flood is still applied.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import partial
from typing import Any

import pydantic
import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.reconcile import ReconcileActivities
from contracts.reconciliation import ReconciliationOutcome, ReconciliationStatus, reconciliation_workflow_id
from tests.support.eventually import assert_eventually
from tests.support.reviewers import signal_approve
from tests.support.settings import FINGERPRINT_KEY
from tests.support.temporal_cli import start_dev_server
from tests.workflows.test_reconciliation import _import_conflict
from worker.aws import AwsClients
from worker.settings import Settings
from workflows.reconciliation import ReconciliationWorkflow

SUGGEST_BYTES = 150_000
ERROR_BYTES = 1_000_000
SIGNAL_BYTES = 60_000
SIGNALS = 25  # 1.5 MB in all: past the error limit without roll-over


@pytest.fixture(scope="module")
async def small_history_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await start_dev_server(
        "--dynamic-config-value", f"limit.historySize.suggestContinueAsNew={SUGGEST_BYTES}",
        "--dynamic-config-value", f"limit.historySize.warn={SUGGEST_BYTES}",
        "--dynamic-config-value", f"limit.historySize.error={ERROR_BYTES}")
    yield env
    await env.shutdown()


@pytest.fixture
async def small_client(small_history_env: WorkflowEnvironment) -> Client:
    return small_history_env.client


@pytest.fixture
async def recon_worker(small_client: Client, settings: Settings) -> AsyncIterator[Worker]:
    clients = AwsClients.from_settings(settings)
    acts = ReconcileActivities(clients.medical_imaging, clients.events, None,
                               fingerprint_key=FINGERPRINT_KEY.encode(),
                               attestation_key=settings.reviewer_attestation_secret(),
                               reviewers=settings.reconciliation_reviewer_list())
    with ThreadPoolExecutor(max_workers=8) as executor:
        worker = Worker(
            small_client, task_queue=settings.task_queue, workflows=[ReconciliationWorkflow],
            activities=[acts.describe_conflict, acts.await_image_set, acts.update_before_promote,
                        acts.promote_image_set, acts.delete_image_set, acts.publish_escalation,
                        acts.verify_reviewer],
            activity_executor=executor, workflow_failure_exception_types=[pydantic.ValidationError])
        async with worker:
            yield worker


async def _runs(client: Client, wid: str) -> list[Any]:
    return [w async for w in client.list_workflows(f"WorkflowId = '{wid}'")]


async def test_a_flood_of_malformed_signals_rolls_the_reconciliation_over_and_a_decision_still_lands(
        small_client: Client, recon_worker: Worker, settings: Settings, buckets: dict[str, Any],
        datastore_id: str) -> None:
    mi = AwsClients.from_settings(settings).medical_imaging
    _, non_primary = await asyncio.to_thread(_import_conflict, mi, buckets["s3"], buckets["work"], datastore_id,
                                             settings.data_access_role_arn)
    wid = reconciliation_workflow_id(datastore_id, non_primary)
    handle = await small_client.start_workflow(
        "ReconciliationWorkflow", {"datastore_id": datastore_id, "image_set_id": non_primary}, id=wid,
        task_queue=recon_worker.task_queue, execution_timeout=timedelta(minutes=5), result_type=ReconciliationOutcome)

    async def awaiting() -> ReconciliationStatus:
        status = await handle.query("conflict", result_type=ReconciliationStatus)
        assert status.state == "awaiting_decision", status.state
        return status

    before = await assert_eventually(awaiting, timeout=20)

    async def recorded(count: int) -> ReconciliationStatus:
        status = await small_client.get_workflow_handle(wid).query("conflict", result_type=ReconciliationStatus)
        assert len([r for r in status.decisions if not r.accepted]) == count, len(status.decisions)
        return status

    for i in range(SIGNALS):
        # Well-formed JSON, but not a decision: each is rejected and recorded, and its bytes stay in history.
        await handle.signal("approve", {"action": "promote", "reason": "x" * SIGNAL_BYTES, "n": i})
        # One at a time, each seen by the workflow before the next: the roll-over happens in a workflow task, and
        # signals sent faster than a starved worker runs tasks would all land in one run's history first (the
        # server, not the workflow, stores them). A flood from reviewers' tools is paced by their round trips.
        await assert_eventually(partial(recorded, i + 1), timeout=60)

    status = await recorded(SIGNALS)
    # Rolled over (more than one run), never terminated; the conflict and deadline came along.
    runs = await asyncio.wait_for(_runs(small_client, wid), timeout=30)
    assert len(runs) >= 2, [r.status for r in runs]
    assert all(r.status in (WorkflowExecutionStatus.RUNNING, WorkflowExecutionStatus.CONTINUED_AS_NEW)
               for r in runs), [r.status for r in runs]
    assert status.conflict == before.conflict and status.decision_deadline == before.decision_deadline
    assert all(r.error and "reviewer" in r.error for r in status.decisions)

    await signal_approve(small_client.get_workflow_handle(wid),
                         {"action": "keep", "reviewer": "alice-sub", "reason": "after the flood"}, "alice-sub")
    async def decided() -> ReconciliationStatus:
        status = await small_client.get_workflow_handle(wid).query("conflict", result_type=ReconciliationStatus)
        assert len(status.decisions) == SIGNALS + 1, status.decisions[-1:]
        return status

    last = (await assert_eventually(decided, timeout=30)).decisions[-1]
    assert last.accepted, last
    outcome = await asyncio.wait_for(
        small_client.get_workflow_handle(wid, result_type=ReconciliationOutcome).result(), timeout=60)
    assert outcome.state == "kept" and outcome.decided_by == "alice-sub"
