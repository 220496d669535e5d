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

    return await assert_eventually(reached, timeout=10)


def report_rows(s3: Any, result: MigrationResult) -> dict[str, dict[str, Any]]:
    """The per-file report (files.ndjson) by source key."""
    return {row["key"]: row for row in iter_ndjson(s3, parse_s3_uri(result.files_uri))}


def report_summary(s3: Any, result: MigrationResult) -> dict[str, Any]:
    """The JSON summary (report.json)."""
    return dict(get_json(s3, parse_s3_uri(result.report_uri)))
