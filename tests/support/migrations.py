"""Running a `MigrationWorkflow` in a test and reading its report (shared by the workflow test modules)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from activities.storage import get_json, iter_ndjson
from contracts.migration import MigrationInput, MigrationResult, OperatorCommand
from contracts.s3uri import parse_s3_uri
from tests.support.dicom import make_instance, uid
from tests.support.eventually import assert_eventually
from workflows.migration import MigrationWorkflow


async def migrate(client: Client, worker: Worker, payload: MigrationInput, prefix: str = "mig",
                  timeout_seconds: float = 90) -> tuple[str, MigrationResult]:
    """Run one migration to its end. Bounded: a workflow-task bug shows up as a timeout, not a test that never
    ends."""
    wid = f"{prefix}-{uuid.uuid4().hex[:10]}"
    result = await client.execute_workflow(MigrationWorkflow.run, payload, id=wid, task_queue=worker.task_queue,
                                           execution_timeout=timedelta(seconds=timeout_seconds))
    return wid, result


async def paused_start(client: Client, worker: Worker, payload: MigrationInput, prefix: str = "ctl") -> Any:
    """Signal-with-start a paused migration: it waits before its first step, so a test acts at a known point."""
    return await client.start_workflow(MigrationWorkflow.run, payload, id=f"{prefix}-{uuid.uuid4().hex[:8]}",
                                       task_queue=worker.task_queue, start_signal="pause",
                                       start_signal_args=[OperatorCommand(by="tester", reason="hold")],
                                       execution_timeout=timedelta(seconds=90))


async def wait_phase(handle: Any, phase: str) -> Any:
    """Poll the `progress` query (bounded) until the migration reaches ``phase``; returns that progress."""

    async def reached() -> Any:
        progress = await handle.query(MigrationWorkflow.progress)
        assert progress.phase == phase, f"never reached phase {phase} (still {progress.phase})"
        return progress

    return await assert_eventually(reached, timeout=60)


def report_rows(s3: Any, result: MigrationResult) -> dict[str, dict[str, Any]]:
    """The per-file report (files.ndjson) by source key."""
    return {row["key"]: row for row in iter_ndjson(s3, parse_s3_uri(result.files_uri))}


def report_summary(s3: Any, result: MigrationResult) -> dict[str, Any]:
    """The JSON summary (report.json)."""
    return dict(get_json(s3, parse_s3_uri(result.report_uri)))


async def migrate_small_source(client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str,
                               studies: int = 2, per_series: int = 3, tag: str = "v",
                               ) -> tuple[str, str, MigrationResult, MigrationInput]:
    """Migrate ``studies`` one-series studies of ``per_series`` synthetic instances each (one folder per study);
    returns (migration id, source prefix, result, input)."""
    s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
    prefix = f"{tag}-{uuid.uuid4().hex[:6]}"
    for n in range(studies):
        study, series = uid(), uid()
        for i in range(per_series):
            s3.put_object(Bucket=src, Key=f"{prefix}/s{n}/{i}.dcm", Body=make_instance(study, series))
    payload = MigrationInput(source_s3_uri=f"s3://{src}/{prefix}/", datastore_id=datastore_id,
                             work_s3_uri=f"s3://{work}/w/", import_start_interval_seconds=0)
    mid, result = await migrate(client, worker, payload, prefix=f"{tag}m")
    return mid, prefix, result, payload
