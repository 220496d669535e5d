"""A migration continues as new while it parses, plans in waves and imports, and still accounts for every file once.

At a million files a migration's history would pass Temporal's limits; it rolls over (`workflows.history`) when
the server suggests it. Here the dev server suggests continue-as-new past a few dozen events (production:
thousands), so a ten-file migration with one-file pages and batches rolls over many times, in the middle of its
waves (patch `planning-waves`: batches start while later pages parse).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from contracts.common import FileState
from contracts.migration import MigrationInput
from tests.support.dicom import make_instance, uid
from tests.support.migrations import report_rows, report_summary
from tests.support.temporal_cli import start_dev_server
from worker.runner import build_worker
from worker.settings import Settings
from workflows.migration import MigrationWorkflow
from workflows.waves import wave_end

SUGGEST_EVENTS = 40
FILES = 10


@pytest.fixture(scope="module")
async def short_history_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await start_dev_server(
        "--dynamic-config-value", f"limit.historyCount.suggestContinueAsNew={SUGGEST_EVENTS}")
    yield env
    await env.shutdown()


@pytest.fixture
async def short_worker(short_history_env: WorkflowEnvironment, settings: Settings) -> AsyncIterator[Worker]:
    with ThreadPoolExecutor(max_workers=settings.max_concurrent_activities) as executor:
        w = build_worker(short_history_env.client, settings, executor)
        async with w:
            yield w


async def _runs(client: Client, wid: str, first_run: str) -> list[list[Any]]:
    """The events of every run of ``wid``, following continue-as-new from the first run."""
    runs, run_id = [], first_run
    while run_id:
        history = await client.get_workflow_handle(wid, run_id=run_id).fetch_history()
        runs.append(history.events)
        last = history.events[-1]
        run_id = (last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
                  if last.HasField("workflow_execution_continued_as_new_event_attributes") else "")
    return runs


def _activities(events: list[Any], name: str) -> int:
    return sum(1 for e in events if e.HasField("activity_task_scheduled_event_attributes")
               and e.activity_task_scheduled_event_attributes.activity_type.name == name)


def _children(events: list[Any]) -> int:
    return sum(1 for e in events if e.HasField("start_child_workflow_execution_initiated_event_attributes"))


def _batch_before_parse(events: list[Any]) -> bool:
    first_child = next((i for i, e in enumerate(events)
                        if e.HasField("start_child_workflow_execution_initiated_event_attributes")), None)
    return first_child is not None and any(
        e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == "parse_headers"
        for e in events[first_child:])


async def test_parsing_and_importing_roll_over_and_every_file_is_accounted_once(
        short_history_env: WorkflowEnvironment, short_worker: Worker, buckets: dict[str, Any],
        datastore_id: str) -> None:
    s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
    study = uid()
    keys = [f"roll/s{i:02d}/0.dcm" for i in range(FILES)]
    for key in keys:
        s3.put_object(Bucket=src, Key=key, Body=make_instance(study, uid()))
    client = short_history_env.client
    wid = f"roll-{uuid.uuid4().hex[:10]}"
    handle = await client.start_workflow(
        MigrationWorkflow.run, MigrationInput(
            source_s3_uri=f"s3://{src}/roll/", datastore_id=datastore_id, work_s3_uri=f"s3://{work}/w/",
            inventory_page_size=1, max_parallel_pages=1, max_files_per_batch=1, max_concurrent_jobs=1,
            import_start_interval_seconds=0),
        id=wid, task_queue=short_worker.task_queue, execution_timeout=timedelta(seconds=240))
    result = await handle.result()

    runs = await _runs(client, wid, handle.first_execution_run_id or handle.result_run_id or "")
    assert len(runs) > 2, [len(r) for r in runs]
    # Pipelined across the roll-overs: some run started a batch before it scheduled a later page's parse.
    assert any(_batch_before_parse(r) for r in runs), [len(r) for r in runs]
    # Each wave was planned once, in one run, and the report written once.
    waves, end = 0, 0
    while end < FILES:
        end, waves = wave_end(end, FILES), waves + 1
    assert sum(_activities(r, "plan_batches") for r in runs) == waves == 5
    assert sum(_activities(r, "write_report") for r in runs) == 1
    # Every page was parsed once and every batch imported once, across the runs.
    assert sum(_activities(r, "parse_headers") for r in runs) == FILES
    assert sum(_children(r) for r in runs) == FILES
    # No run grew far past the suggestion: at most what was in flight when it came.
    assert max(len(r) for r in runs) < SUGGEST_EVENTS * 2, [len(r) for r in runs]

    rows = report_rows(s3, result)
    assert sorted(rows) == keys and all(r["state"] == FileState.IMPORTED for r in rows.values())
    summary = report_summary(s3, result)
    assert (summary["files_total"], summary["unaccounted"], summary["accounted_twice"],
            summary["outside_inventory"]) == (FILES, 0, 0, 0)
    assert result.files_by_state[FileState.IMPORTED] == FILES
