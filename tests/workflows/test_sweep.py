"""The reconciliation sweep finds non-primary image sets without a reconciliation and starts one, once.

Against the real dev server, the emulator and the worker as it is registered (`worker.registry`).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.worker import Worker

from contracts.reconciliation import ReconciliationStatus, reconciliation_workflow_id
from contracts.sweep import SweepResult
from tests.support.eventually import assert_eventually
from tests.workflows.test_reconciliation import _import_conflict
from worker.aws import AwsClients
from worker.settings import Settings
from workflows.sweep import ReconciliationSweepWorkflow


async def _sweep(client: Client, worker: Worker, datastore_id: str) -> SweepResult:
    return await client.execute_workflow(
        ReconciliationSweepWorkflow.run, {"datastore_id": datastore_id}, id=f"sweep-{uuid.uuid4().hex[:8]}",
        task_queue=worker.task_queue, execution_timeout=timedelta(seconds=60), result_type=SweepResult)


async def _awaiting(client: Client, wid: str) -> ReconciliationStatus:
    async def check() -> ReconciliationStatus:
        status = await client.get_workflow_handle(wid).query("conflict", result_type=ReconciliationStatus)
        assert status.state == "awaiting_decision", status.state
        return status

    return await assert_eventually(check, timeout=20)


async def test_an_unreconciled_non_primary_set_gets_one_reconciliation(
        client: Client, worker: Worker, settings: Settings, buckets: dict[str, Any]) -> None:
    from tests.workflows.conftest import active_datastore

    # A data store of its own: the sweep covers every non-primary set in it.
    datastore_id = await asyncio.to_thread(active_datastore, settings.medical_imaging_endpoint_url or "", "sweep")
    mi = AwsClients.from_settings(settings).medical_imaging
    _, orphan = await asyncio.to_thread(_import_conflict, mi, buckets["s3"], buckets["work"], datastore_id,
                                        settings.data_access_role_arn)
    _, decided = await asyncio.to_thread(_import_conflict, mi, buckets["s3"], buckets["work"], datastore_id,
                                         settings.data_access_role_arn)
    # One set's reconciliation ran and was terminated (as Temporal's history limit does); the other has none.
    killed = reconciliation_workflow_id(datastore_id, decided)
    handle = await client.start_workflow("ReconciliationWorkflow", {"datastore_id": datastore_id,
                                                                    "image_set_id": decided},
                                         id=killed, task_queue=worker.task_queue)
    await _awaiting(client, killed)
    await handle.terminate("history size exceeded (simulated)")

    first = await _sweep(client, worker, datastore_id)
    assert (first.found, first.started, first.already) == (2, 2, 0), first
    for image_set_id in (orphan, decided):
        status = await _awaiting(client, reconciliation_workflow_id(datastore_id, image_set_id))
        assert status.conflict is not None and status.conflict.image_set_id == image_set_id

    # Open reconciliations are left alone: nothing is started twice.
    second = await _sweep(client, worker, datastore_id)
    assert (second.found, second.started, second.already) == (2, 0, 2), second
    described = await client.get_workflow_handle(reconciliation_workflow_id(datastore_id, orphan)).describe()
    assert described.status == WorkflowExecutionStatus.RUNNING
