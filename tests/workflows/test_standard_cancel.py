"""A standard Temporal cancel (Temporal UI, `temporal workflow cancel`, an SDK handle's cancel()) of a migration
drains and reports exactly like `himig cancel`, then ends the run cancelled with its search attribute terminal.

Against the real Temporal dev server, moto and the emulator, with an in-process worker (tests/workflows/conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydantic
import pytest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import CancelledError
from temporalio.worker import Replayer, Worker
from typer.testing import CliRunner

from activities.storage import get_json, iter_ndjson
from cli.app import app
from contracts import layout, search
from contracts.batch import BatchStage
from contracts.common import FileState
from contracts.ingest import Arrival, IngestInput, ingest_workflow_id
from contracts.migration import MigrationInput, MigrationResult, batch_workflow_id
from contracts.s3uri import parse_s3_uri
from tests.support.dicom import make_instance, uid
from tests.support.eventually import assert_eventually
from tests.support.installation import converter, plain_history_json
from tests.support.migrations import paused_start, wait_phase
from tests.support.temporal_cli import temporal_cli
from tests.workflows.test_reconciliation import bus, mi, recon_worker, start  # noqa: F401 (fixtures)
from worker.registry import WORKFLOWS
from workflows.batch import ImportBatchWorkflow
from workflows.ingest import IngestWorkflow
from workflows.migration import MigrationWorkflow

HISTORIES = Path(__file__).parent.parent / "histories"


def _sources(s3: Any, bucket: str, prefix: str, n: int) -> None:
    for i in range(n):
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{i}.dcm", Body=make_instance(uid(), uid()))


async def _ended_cancelled(handle: Any) -> None:
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    assert isinstance(failure.value.cause, CancelledError)

    async def described() -> Any:
        desc = await handle.describe()
        assert desc.status == WorkflowExecutionStatus.CANCELED
        # Visibility is eventually consistent; the terminal value is what the last upsert set.
        assert desc.typed_search_attributes.get(search.STATE) == "completed"
        return desc

    await assert_eventually(described, timeout=20)


async def _replays(handle: Any) -> None:
    """The cancelled run's history replays deterministically (the shielded body, the drain, the end); with
    HIMIG_RECORD_HISTORIES=1 it is kept in tests/histories/, where test_replay guards it from then on."""
    history = await handle.fetch_history()
    replayer = Replayer(workflows=WORKFLOWS, data_converter=converter(),
                        workflow_failure_exception_types=[pydantic.ValidationError])
    await replayer.replay_workflow(history)
    if os.environ.get("HIMIG_RECORD_HISTORIES"):
        (HISTORIES / f"{history.workflow_id}.json").write_text(plain_history_json(history))


def _report(s3: Any, work: str, wid: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    summary = dict(get_json(s3, layout.report_document(work, wid)))
    rows = {row["key"]: row for row in iter_ndjson(s3, layout.report_files(work, wid))}
    return summary, rows


class TestStandardCancel:
    async def test_temporal_cli_cancel_of_a_paused_migration_reports_every_file(
            self, client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str, moto_url: str) -> None:
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        _sources(s3, src, "tc", 4)
        work_uri = f"s3://{work}/w/"
        handle = await paused_start(client, worker, MigrationInput(
            source_s3_uri=f"s3://{src}/tc/", datastore_id=datastore_id, work_s3_uri=work_uri,
            inventory_page_size=2, import_start_interval_seconds=0), prefix="std-cancel")
        await wait_phase(handle, "parsing")  # paused: waiting in a condition when the cancel comes

        done = temporal_cli(client, "workflow", "cancel", "--workflow-id", handle.id)
        assert done.returncode == 0, done.stderr

        await _ended_cancelled(handle)
        summary, rows = _report(s3, work_uri, handle.id)
        assert len(rows) == 4 and {r["code"] for r in rows.values()} == {"Cancelled"}
        assert summary["files_total"] == 4 and not summary["unaccounted"] and not summary["accounted_twice"]
        progress = await handle.query(MigrationWorkflow.progress)  # a closed run still answers (replayed)
        assert progress.phase == "completed" and progress.cancel_requested
        assert [a.action for a in progress.operator_log] == ["pause", "cancel"]
        assert progress.operator_log[-1].by == "temporal cancel request"

        # `himig report` reads the report of a cancelled run (which has no result) like any other.
        env = {"HIMIG_TEMPORAL_ADDRESS": client.service_client.config.target_host, "AWS_ENDPOINT_URL_S3": moto_url}
        shown = await asyncio.to_thread(CliRunner().invoke, app, ["report", handle.id, "--json"], env=env)
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.stdout)["files_total"] == 4
        listed = await asyncio.to_thread(CliRunner().invoke, app, ["report", handle.id, "--files"], env=env)
        assert listed.exit_code == 0 and listed.stdout.count('"Cancelled"') == 4, listed.output
        # ... and `himig cancel` of it says it has ended, in one line.
        again = await asyncio.to_thread(CliRunner().invoke, app, ["cancel", handle.id], env=env)
        assert again.exit_code == 1 and "is not running (it is CANCELED)" in " ".join(again.output.split())
        await _replays(handle)

    async def test_sdk_cancel_drains_the_batch_in_flight(self, client: Client, worker: Worker,
                                                         buckets: dict[str, Any], datastore_id: str) -> None:
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        _sources(s3, src, "sd", 3)
        work_uri = f"s3://{work}/w/"
        # One file per batch, one batch at a time, and a long pause between job starts: when the cancel comes,
        # batch 0 is in flight and the others have not started.
        handle = await paused_start(client, worker, MigrationInput(
            source_s3_uri=f"s3://{src}/sd/", datastore_id=datastore_id, work_s3_uri=work_uri,
            max_files_per_batch=1, max_concurrent_jobs=1, import_start_interval_seconds=15),
            prefix="std-cancel-drain")
        await wait_phase(handle, "parsing")
        await handle.signal(MigrationWorkflow.resume)
        await wait_phase(handle, "importing")

        await handle.cancel()

        await _ended_cancelled(handle)
        summary, rows = _report(s3, work_uri, handle.id)
        states = sorted(r["state"] for r in rows.values())
        codes = sorted(str(r.get("code")) for r in rows.values())
        assert states == ["failed", "failed", "imported"], rows
        assert codes.count("Cancelled") == 2
        assert summary["files_total"] == 3 and not summary["unaccounted"] and not summary["accounted_twice"]
        await _replays(handle)


class TestStandardCancelOfAnIngest:
    async def test_buffered_arrivals_are_flushed_and_reported_before_the_run_ends(
            self, client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str) -> None:
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        study = uid()
        arrivals = []
        for i in range(3):
            key, body = f"in/{i}.dcm", make_instance(study, uid())
            etag = s3.put_object(Bucket=src, Key=key, Body=body)["ETag"].strip('"')
            arrivals.append(Arrival(key=key, size=len(body), etag=etag, event_time=datetime.now(UTC)))
        # Nothing would flush for an hour: only the cancel makes these arrivals reach a migration.
        payload = IngestInput(datastore_id=datastore_id, source_s3_uri=f"s3://{src}/in/",
                              work_s3_uri=f"s3://{work}/ingest/", quiet_seconds=3600, max_wait_seconds=3600,
                              max_files=100)
        wid = ingest_workflow_id(datastore_id, study, src, "in/0.dcm")
        for arrival in arrivals:
            handle = await client.start_workflow(
                IngestWorkflow.run, payload, id=wid, task_queue=worker.task_queue, start_signal="arrived",
                start_signal_args=[arrival], id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                execution_timeout=timedelta(seconds=120))

        async def buffered() -> None:
            progress = await handle.query(IngestWorkflow.progress)
            assert progress.buffered == 3 and progress.phase == "buffering", progress

        await assert_eventually(buffered, timeout=20)

        done = temporal_cli(client, "workflow", "cancel", "--workflow-id", wid)
        assert done.returncode == 0, done.stderr

        await _ended_cancelled(handle)
        progress = await handle.query(IngestWorkflow.progress)
        assert progress.buffered == 0 and progress.flushes == 1 and progress.files_flushed == 3
        assert progress.last_flush is not None and progress.last_flush.status == "completed"
        flush = await client.get_workflow_handle(progress.last_flush.migration_id,
                                                 result_type=MigrationResult).result()
        rows = list(iter_ndjson(s3, parse_s3_uri(flush.files_uri)))
        assert sorted(r["key"] for r in rows) == ["in/0.dcm", "in/1.dcm", "in/2.dcm"]
        assert {r["state"] for r in rows} == {"imported"}
        await _replays(handle)


class TestStandardCancelOfAReconciliation:
    async def test_cancel_before_a_decision_ends_in_state_cancelled(self, client: Client, start: Any,  # noqa: F811
                                                                     moto_url: str) -> None:
        recon = await start()
        await recon.wait_state("awaiting_decision")

        await recon.handle.cancel()

        with pytest.raises(WorkflowFailureError) as failure:
            await recon.handle.result()
        assert isinstance(failure.value.cause, CancelledError)
        status = await recon.status()
        assert status.state == "cancelled" and status.error == "cancelled before a decision"

        async def terminal() -> None:
            desc = await recon.handle.describe()
            assert desc.status == WorkflowExecutionStatus.CANCELED
            assert desc.typed_search_attributes.get(search.STATE) == "cancelled"

        await assert_eventually(terminal, timeout=20)
        env = {"HIMIG_TEMPORAL_ADDRESS": client.service_client.config.target_host}
        late = await asyncio.to_thread(CliRunner().invoke, app, ["approve", recon.handle.id, "--action", "keep"],
                                       env=env)
        assert late.exit_code == 1
        assert "has finished (it is CANCELED, state cancelled)" in " ".join(late.output.split())
        assert (await recon.status()).decisions == []
        await _replays(recon.handle)


class TestStandardCancelOfABatch:
    async def test_a_batch_cancelled_at_the_approval_gate_is_held_and_reported_as_it_is(
            self, client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str) -> None:
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        _sources(s3, src, "gate", 2)
        handle = await client.start_workflow(
            MigrationWorkflow.run, MigrationInput(source_s3_uri=f"s3://{src}/gate/", datastore_id=datastore_id,
                                                  work_s3_uri=f"s3://{work}/w/", manual_review=True,
                                                  import_start_interval_seconds=0),
            id=f"std-cancel-gate-{uuid.uuid4().hex[:8]}", task_queue=worker.task_queue, execution_timeout=timedelta(seconds=90))
        batch = client.get_workflow_handle(batch_workflow_id(handle.id, 0))

        async def at_the_gate() -> None:
            try:
                progress = await batch.query(ImportBatchWorkflow.progress)
            except Exception as err:  # the batch workflow may not exist yet
                raise AssertionError(f"batch not queryable yet: {err}") from err
            assert progress.stage is BatchStage.AWAITING_APPROVAL

        await assert_eventually(at_the_gate, timeout=20, interval=0.1)

        done = temporal_cli(client, "workflow", "cancel", "--workflow-id", batch.id)
        assert done.returncode == 0, done.stderr

        result = await handle.result()  # the migration completes: the batch drained instead of failing
        assert result.files_by_state[FileState.IMPORTED] == 2 and result.files_by_state[FileState.FAILED] == 0
        final = await batch.query(ImportBatchWorkflow.progress)
        assert final.stage is BatchStage.DONE and final.approval is not None and not final.approval.approve
        assert final.approval.reviewer == "temporal cancel request"
        assert BatchStage.ROUTING not in [t.stage for t in final.transitions]  # held: nothing routed
        desc = await batch.describe()
        assert desc.status == WorkflowExecutionStatus.COMPLETED
        await _replays(batch)
