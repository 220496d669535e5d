"""`himig retry`: a new migration over exactly the files an earlier one did not import (failed; rejected on
request), as they are in the source now, with the earlier migration's settings; refusals in one line."""

from __future__ import annotations

import os
import urllib.request
import uuid
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from contracts.migration import MigrationInput
from tests.conftest import emulator_admin
from tests.support.cli import invoke
from tests.support.dicom import make_instance, uid
from tests.support.migrations import migrate, report_rows
from workflows.migration import MigrationWorkflow


async def test_retry_takes_failed_files_then_fixed_rejected_ones(
        himig_cli: Any, client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str,
        emulator_url: str) -> None:
    s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
    prefix = f"r-{uuid.uuid4().hex[:6]}"
    study = uid()
    for i in range(3):
        s3.put_object(Bucket=src, Key=f"{prefix}/ok/{i}.dcm", Body=make_instance(study, uid()))
    s3.put_object(Bucket=src, Key=f"{prefix}/flaky/0.dcm", Body=make_instance(uid(), uid()))
    s3.put_object(Bucket=src, Key=f"{prefix}/broken/0.dcm", Body=os.urandom(500))  # rejected: not DICOM
    fault = emulator_admin(emulator_url, "faults", {"kind": "file_server_error", "file": f"*{prefix}/flaky/*"})
    try:
        mid, first = await migrate(client, worker, MigrationInput(
            source_s3_uri=f"s3://{src}/{prefix}/", datastore_id=datastore_id, work_s3_uri=f"s3://{work}/w/",
            import_start_interval_seconds=0), prefix="retry")
    finally:
        fid = fault["faults"][0]["id"]
        urllib.request.urlopen(urllib.request.Request(f"{emulator_url}/_emulator/faults/{fid}", method="DELETE"))
    states = {k.rsplit("/", 2)[-2]: r["state"] for k, r in report_rows(s3, first).items()}
    assert states == {"ok": "imported", "flaky": "failed", "broken": "rejected"}

    started = await invoke(himig_cli, "retry", mid)
    assert started.exit_code == 0 and f"{mid}-retry-1: retrying 1 file(s)" in started.flat, started.flat
    second = await client.get_workflow_handle_for(MigrationWorkflow.run, f"{mid}-retry-1").result()
    rows = report_rows(s3, second)
    assert list(rows) == [f"{prefix}/flaky/0.dcm"] and rows[f"{prefix}/flaky/0.dcm"]["state"] == "imported"

    # The operator fixes the rejected file; a plain retry of the retry has nothing left, --include-rejected does.
    s3.put_object(Bucket=src, Key=f"{prefix}/broken/0.dcm", Body=make_instance(uid(), uid()))
    nothing = await invoke(himig_cli, "retry", f"{mid}-retry-1")
    assert nothing.exit_code == 0 and "nothing to retry" in nothing.flat
    fixed = await invoke(himig_cli, "retry", mid, "--include-rejected", "--id", f"{mid}-fix")
    assert fixed.exit_code == 0 and "retrying 2 file(s)" in fixed.flat  # the failed one again, and the fixed one
    third = await client.get_workflow_handle_for(MigrationWorkflow.run, f"{mid}-fix").result()
    third_rows = report_rows(s3, third)
    assert third_rows[f"{prefix}/broken/0.dcm"]["state"] == "imported"
    assert third_rows[f"{prefix}/flaky/0.dcm"]["state"] == "skipped_duplicate"  # already imported by retry-1
    again = await invoke(himig_cli, "retry", mid, "--include-rejected", "--id", f"{mid}-fix")
    assert again.exit_code == 1 and "cannot start" in again.flat


async def test_retry_refusals(himig_cli: Any) -> None:
    unknown = await invoke(himig_cli, "retry", "nope-" + uuid.uuid4().hex[:6])
    assert unknown.exit_code == 1 and "no migration with id" in unknown.flat
    bad = await invoke(himig_cli, "retry", "x", "--id", "../../etc")
    assert bad.exit_code == 2 and "--id" in bad.flat
    level = await invoke(himig_cli, "retry", "x", "--validation-level", "lenient-ish")
    assert level.exit_code == 2 and "--validation-level" in level.flat
