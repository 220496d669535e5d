"""Replay guards: workflow code must stay deterministic against histories recorded from real runs.

`tests/histories/*.json` were recorded from real migrations (set HIMIG_RECORD_HISTORIES=1 to re-record). A
change that alters the command sequence without `workflow.patched` makes these replays fail.
"""

from __future__ import annotations

import os
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHistory
from temporalio.worker import Replayer, Worker

from contracts.common import FileState
from contracts.migration import MigrationInput
from tests.support.dicom import make_instance, uid
from tests.support.installation import converter, plain_history_json
from worker.registry import WORKFLOWS
from workflows.migration import MigrationWorkflow

HISTORIES = Path(__file__).parent.parent / "histories"


def _replayer() -> Replayer:
    return Replayer(workflows=WORKFLOWS, data_converter=converter())


async def test_live_run_replays_and_is_recorded(client: Client, worker: Worker, buckets: dict[str, Any],
                                                datastore_id: str) -> None:
    s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
    study = uid()
    for i in range(3):
        s3.put_object(Bucket=src, Key=f"r/{i}.dcm", Body=make_instance(study, uid()))
    s3.put_object(Bucket=src, Key="r/bad.txt", Body=b"nope")
    wid = f"replay-{uuid.uuid4().hex[:8]}"
    handle = await client.start_workflow(
        MigrationWorkflow.run, MigrationInput(source_s3_uri=f"s3://{src}/r/", datastore_id=datastore_id,
                                              work_s3_uri=f"s3://{work}/w/", max_files_per_batch=2,
                                              import_start_interval_seconds=0.1),
        id=wid, task_queue=worker.task_queue, execution_timeout=timedelta(seconds=90))
    await handle.result()
    histories = [await handle.fetch_history()]
    async for execution in client.list_workflows(f"WorkflowId STARTS_WITH '{wid}.batch-'"):
        histories.append(await client.get_workflow_handle(execution.id).fetch_history())
    for history in histories:
        await _replayer().replay_workflow(history)
    if os.environ.get("HIMIG_RECORD_HISTORIES"):
        HISTORIES.mkdir(exist_ok=True)
        for history in histories[:2]:  # the migration and its first batch; the file name is the workflow id
            (HISTORIES / f"{history.workflow_id}.json").write_text(plain_history_json(history))


@pytest.mark.parametrize("flat", [False, True], ids=["series-folders", "flat-prefix"])
async def test_live_run_in_waves_replays_and_is_recorded(client: Client, worker: Worker, buckets: dict[str, Any],
                                                         datastore_id: str, flat: bool) -> None:
    """Several pages, so parsing, planning in waves and imports overlap (patch `planning-waves`): series folders
    that fit a batch, each planned once parsed whole, or six files straight under the prefix with batches of two
    (patch `large-folders-by-page`: the prefix is larger than a batch, so each page is planned once parsed)."""
    s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
    for series in range(3):
        study = uid()
        for i in range(2):
            key = f"w/{series}-{i}.dcm" if flat else f"w/s{series}/{i}.dcm"
            s3.put_object(Bucket=src, Key=key, Body=make_instance(study, uid()))
    wid = f"{'flat' if flat else 'waves'}-{uuid.uuid4().hex[:8]}"
    handle = await client.start_workflow(
        MigrationWorkflow.run, MigrationInput(source_s3_uri=f"s3://{src}/w/", datastore_id=datastore_id,
                                              work_s3_uri=f"s3://{work}/w/", inventory_page_size=2,
                                              max_parallel_pages=1, import_start_interval_seconds=0.1,
                                              **({"max_files_per_batch": 2} if flat else {})),
        id=wid, task_queue=worker.task_queue, execution_timeout=timedelta(seconds=90))
    result = await handle.result()
    assert result.files_by_state[FileState.IMPORTED] == result.files_total == 6
    history = await handle.fetch_history()
    names = [e.activity_task_scheduled_event_attributes.activity_type.name
             if e.HasField("activity_task_scheduled_event_attributes") else
             "child" if e.HasField("start_child_workflow_execution_initiated_event_attributes") else ""
             for e in history.events]
    assert names.count("plan_batches") == 3 and names.count("child") == 3
    # A batch started before the last page was parsed: its normalize_page can only be scheduled once its
    # parse_headers completed, which is after the workflow task that started the first batch (the one that saw
    # the first wave planned and scheduled the last page's parse). parse_headers alone can share that task.
    assert "normalize_page" in names[names.index("child"):]
    await _replayer().replay_workflow(history)
    if os.environ.get("HIMIG_RECORD_HISTORIES"):
        (HISTORIES / f"{history.workflow_id}.json").write_text(plain_history_json(history))


@pytest.mark.parametrize("path", sorted(HISTORIES.glob("*.json")), ids=lambda p: p.stem)
async def test_recorded_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    await _replayer().replay_workflow(history)
