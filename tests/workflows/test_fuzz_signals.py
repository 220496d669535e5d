"""Property-based fuzzing of signals to running workflows: nothing crashes a workflow task, nothing is lost.

Hypothesis draws JSON payloads (any shape, NaN included, and near-valid `Arrival`s / `OperatorCommand`s). Sent
to a live `IngestWorkflow` as `arrived` and to a live paused `MigrationWorkflow` as `pause`/`resume`, each one
is either accepted or recorded as rejected: the workflow's counters account for every signal sent.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import pydantic
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.worker import Worker

from contracts.ingest import Arrival, IngestInput
from contracts.migration import MigrationInput, OperatorCommand
from tests.support.eventually import assert_eventually
from tests.support.migrations import paused_start
from tests.workflows.test_reconciliation import bus, mi, recon_worker, start  # noqa: F401 (fixtures)
from workflows.ingest import IngestWorkflow
from workflows.migration import MigrationWorkflow

JSON_SCALARS = (st.none() | st.booleans() | st.integers(-(2**40), 2**40)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
JSON = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
NEAR_ARRIVAL = st.fixed_dictionaries(
    {"key": st.sampled_from(["elsewhere/a.dcm", "x/"]) | JSON, "size": st.integers(-2, 5) | JSON,
     "event_time": st.sampled_from(["2026-12-01T00:00:00Z"]) | JSON},
    optional={"etag": JSON, "sequencer": JSON, "extra": JSON})
NEAR_COMMAND = st.fixed_dictionaries({}, optional={"by": st.text(max_size=5) | JSON, "reason": JSON, "zz": JSON})


def _valid(model: type[pydantic.BaseModel], value: Any) -> bool:
    try:
        model.model_validate_json(json.dumps(value, allow_nan=True))
        return True
    except pydantic.ValidationError:
        return False


def _payloads(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    drawn: list[Any] = []

    @settings(max_examples=count, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(strategy)
    def collect(value: Any) -> None:
        drawn.append(value)

    collect()
    return drawn


async def test_every_arrival_signal_is_accepted_or_counted_rejected(
        client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str) -> None:
    # A watched prefix nothing valid lands in (an accepted arrival here is outside it: counted as a duplicate).
    handle = await client.start_workflow(
        IngestWorkflow.run, IngestInput(source_s3_uri=f"s3://{buckets['source']}/watched/", datastore_id=datastore_id,
                                        work_s3_uri=f"s3://{buckets['work']}/w/", quiet_seconds=3600,
                                        max_wait_seconds=3600),
        id=f"fuzz-ingest-{uuid.uuid4().hex[:8]}", task_queue=worker.task_queue,
        execution_timeout=timedelta(seconds=120))
    payloads = _payloads(NEAR_ARRIVAL | JSON, 60)
    for value in payloads:
        await handle.signal("arrived", json.loads(json.dumps(value, allow_nan=True)))
    rejected = sum(not _valid(Arrival, v) for v in payloads)
    assert 0 < rejected < len(payloads)

    async def counted() -> None:
        p = await handle.query(IngestWorkflow.progress)
        assert p.arrivals_rejected == rejected and p.arrivals_rejected + p.duplicates_ignored == len(payloads), p

    await assert_eventually(counted, timeout=30)
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    await handle.terminate("fuzzing done")


async def test_every_operator_signal_is_applied_or_recorded_rejected(
        client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str) -> None:
    # One file, so the paused migration holds before parsing it (an empty source would simply complete).
    buckets["s3"].put_object(Bucket=buckets["source"], Key="held/a.dcm", Body=b"not dicom")
    handle = await paused_start(client, worker, MigrationInput(
        source_s3_uri=f"s3://{buckets['source']}/held/", datastore_id=datastore_id,
        work_s3_uri=f"s3://{buckets['work']}/w/"))
    # Pause again and again (a resume would let the migration run off).
    payloads = _payloads(NEAR_COMMAND | JSON, 40)
    for value in payloads:
        await handle.signal("pause", json.loads(json.dumps(value, allow_nan=True)))
    expected = [("pause" if value is None or _valid(OperatorCommand, value) else "pause rejected")
                for value in payloads]
    assert "pause rejected" in expected

    async def logged() -> None:
        progress = await handle.query(MigrationWorkflow.progress)
        # The query shows the last 10 entries (after the start's own pause), oldest first.
        assert [a.action for a in progress.operator_log] == (["pause", *expected])[-10:]

    await assert_eventually(logged, timeout=30)
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    await handle.terminate("fuzzing done")


NEAR_DECISION = st.fixed_dictionaries(
    {"action": st.sampled_from(["promote", "keep", "discard", "merge"]) | JSON,
     "reviewer": st.sampled_from(["alice-sub", "bad reviewer!"]) | JSON},
    optional={"reason": JSON, "update_first": JSON, "reconciliation_id": JSON, "zz": JSON})


async def test_every_decide_update_is_refused_to_its_caller_and_a_well_formed_one_is_recorded(
        start: Any,  # noqa: F811 (the fixture imported above)
) -> None:
    """Unattested `decide` updates of any shape: the validator refuses the malformed ones (by Temporal's design
    they leave no trace, and the caller gets the field at fault); the well-formed ones are refused as not
    attested and recorded. The reconciliation keeps waiting."""
    from temporalio.client import WorkflowUpdateFailedError

    from contracts.reconciliation import ReconciliationDecision, ReconciliationStatus

    recon = await start()
    await recon.wait_state("awaiting_decision")
    payloads = _payloads(NEAR_DECISION | JSON, 30)
    for value in payloads:
        try:
            await recon.handle.execute_update("decide", json.loads(json.dumps(value, allow_nan=True)))
        except WorkflowUpdateFailedError as err:
            assert err.cause is not None and str(err.cause)
        else:
            raise AssertionError(f"an unattested decision was accepted: {value!r}")
    well_formed = sum(isinstance(v, dict) and _valid(ReconciliationDecision, v) for v in payloads)
    status: ReconciliationStatus = await recon.status()
    assert len(status.decisions) == well_formed and not any(r.accepted for r in status.decisions)
    assert all(r.error and r.error.startswith("not attested") for r in status.decisions)
    assert status.state == "awaiting_decision"
