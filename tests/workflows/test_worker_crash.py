"""Chaos: the worker process is SIGKILLed in the middle of a migration, several times, and restarted.

The migration must still complete, the emulator must hold exactly one import job per batch (the deterministic
clientToken makes a retried start return the same job), and every file must have exactly one terminal state.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client

from contracts.common import FileState
from contracts.migration import MigrationInput
from tests.conftest import emulator_admin, make_medical_imaging
from tests.support.dicom import make_instance, uid
from tests.support.worker_process import WorkerProcess, progress_until
from workflows.migration import MigrationWorkflow


async def test_sigkill_in_each_phase_loses_and_duplicates_nothing(
        client: Client, moto_url: str, emulator_url: str, buckets: dict[str, Any], datastore_id: str,
        tmp_path: Path) -> None:
    s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
    studies = [uid() for _ in range(6)]
    keys = []
    for n, study in enumerate(studies):
        series = uid()
        for i in range(4):
            key = f"k/s{n}/{i}.dcm"
            s3.put_object(Bucket=src, Key=key, Body=make_instance(study, series))
            keys.append(key)
    s3.put_object(Bucket=src, Key="k/junk.bin", Body=os.urandom(300))
    queue = f"chaos-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "HIMIG_TEMPORAL_ADDRESS": client.service_client.config.target_host,
           "HIMIG_TASK_QUEUE": queue, "AWS_ENDPOINT_URL_S3": moto_url, "AWS_ENDPOINT_URL_EVENTBRIDGE": moto_url,
           "AWS_ENDPOINT_URL_MEDICAL_IMAGING": emulator_url, "HIMIG_GRACEFUL_SHUTDOWN_SECONDS": "1"}
    worker = WorkerProcess(env, tmp_path / "worker.log")
    wid = f"chaos-{uuid.uuid4().hex[:8]}"
    worker.start()
    try:
        handle = await client.start_workflow(
            MigrationWorkflow.run,
            MigrationInput(source_s3_uri=f"s3://{src}/k/", datastore_id=datastore_id, work_s3_uri=f"s3://{work}/w/",
                           inventory_page_size=5, max_files_per_batch=4, max_concurrent_jobs=1,
                           import_start_interval_seconds=1.0),
            id=wid, task_queue=queue, execution_timeout=timedelta(minutes=4))
        # Kill while pages are parsed, while batches import, and again while jobs are being reviewed.
        for cond in (lambda p: p.pages_done >= 1,
                     lambda p: p.phase == "importing" and p.batches_done >= 1,
                     lambda p: p.phase == "importing" and p.batches_done >= 3):
            await progress_until(handle, cond)
            worker.kill()
            worker.start()
        result = await handle.result()
    finally:
        worker.stop()

    assert result.files_total == len(keys) + 1
    bucket, key = result.files_uri[5:].split("/", 1)
    rows = [json.loads(line) for line in s3.get_object(Bucket=bucket, Key=key)["Body"].read().splitlines()]
    assert sorted(r["key"] for r in rows) == sorted([*keys, "k/junk.bin"])  # each file exactly once
    assert result.files_by_state[FileState.IMPORTED] == len(keys)
    batches = {r["batch"] for r in rows if r.get("batch") is not None}
    # One import job per batch, however many times the start activity ran.
    jobs = {r["job_id"] for r in rows if r.get("job_id")}
    assert len(jobs) == len(batches)
    state = emulator_admin(emulator_url, "state")
    job_names = [j for j in state["jobs"] if j.get("outputS3Uri", "").find(f"/{wid}/") >= 0 or
                 j.get("jobId") in jobs]
    assert len({j["jobId"] for j in job_names}) == len(batches)
    # One image set per series: no duplicate sets from re-run jobs.
    mi = make_medical_imaging(emulator_url)
    sets = {r["image_set_id"] for r in rows if r.get("image_set_id")}
    assert len(sets) == len(studies)
    for image_set in sets:
        assert mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set)["isPrimary"] is True
