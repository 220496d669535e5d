"""End to end from a PACS: Orthanc (DICOMweb) -> landing prefix -> the emulator -> a report that lists every
instance Orthanc holds exactly once (and the study it could not find as a failed row)."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from contracts.common import FileState
from contracts.migration import MigrationInput
from contracts.sources import DicomwebSource
from tests.activities.sources.pacs import seed_two_studies
from tests.support.dicom import uid
from tests.support.orthanc import Orthanc
from workflows.migration import MigrationWorkflow


async def test_migration_from_a_dicomweb_pacs_reports_every_instance_once(
        client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str, orthanc: Orthanc) -> None:
    seeded = seed_two_studies(orthanc)
    held = orthanc.get("/instances")
    assert len(held) == len(seeded.instances) == 7
    s3, land, work = buckets["s3"], buckets["source"], buckets["work"]
    missing = uid()
    payload = MigrationInput(
        source_s3_uri=f"s3://{land}/landed/", datastore_id=datastore_id, work_s3_uri=f"s3://{work}/runs/",
        inventory_page_size=3, max_files_per_batch=5, import_start_interval_seconds=0,
        source_connector=DicomwebSource(kind="dicomweb", url=orthanc.dicomweb, study_uids=[*seeded.studies, missing]))
    wid = f"mig-pacs-{uuid.uuid4().hex[:8]}"
    result = await client.execute_workflow(MigrationWorkflow.run, payload, id=wid, task_queue=worker.task_queue,
                                           execution_timeout=timedelta(seconds=120))

    bucket, key = result.files_uri[5:].split("/", 1)
    lines = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines()
    rows = [json.loads(line) for line in lines]
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) == 8
    by_key = {r["key"]: r for r in rows}
    for instance_key in seeded.landing_keys():
        assert by_key[instance_key]["state"] == FileState.IMPORTED, by_key[instance_key]
    assert by_key[f"landed/{missing}/"]["state"] == FileState.FAILED
    assert by_key[f"landed/{missing}/"]["code"] == "StudyNotFound"
    assert result.files_total == 8
    assert result.files_by_state[FileState.IMPORTED] == 7 and result.files_by_state[FileState.FAILED] == 1
    progress = await client.get_workflow_handle(wid).query(MigrationWorkflow.progress)
    assert (progress.phase, progress.files_total, progress.files_done) == ("completed", 8, 8)
    report = json.loads(s3.get_object(Bucket=bucket, Key=result.report_uri[5:].split("/", 1)[1])["Body"].read())
    assert report["unaccounted"] == 0 and report["accounted_twice"] == 0
