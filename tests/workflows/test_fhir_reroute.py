"""FHIR routing when the study grows while the batch's HealthLake job is in flight: the batch routes again.

A private emulator runs on a manual job clock, so the test holds the HealthLake job queued (SUBMITTED) while
another series of the same study is stored through DICOMweb STOW-RS, then lets the clock run again. This is the
real interleaving two batches of one study can produce, made deterministic.
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pydicom
import pytest
import requests
from botocore.config import Config
from dicomweb_client.api import DICOMwebClient
from temporalio.client import Client
from temporalio.worker import Worker

from activities.fhir import study_resource_id
from contracts import layout
from contracts.batch import BatchProgress, BatchStage
from contracts.migration import MigrationInput
from tests.conftest import emulator_admin, make_medical_imaging
from tests.support.dicom import make_instance, uid
from tests.support.eventually import assert_eventually, assert_eventually_sync, wait_until_async
from tests.support.oidc_issuer import SigV4RequestsAuth
from tests.support.servers import ServerProcess, start_emulator
from tests.workflows.test_fhir_routing import fhir_get
from worker.settings import Settings
from workflows.batch import ImportBatchWorkflow
from workflows.migration import MigrationWorkflow


@pytest.fixture(scope="module")
def manual_emulator(moto_url: str, log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_emulator(tmp_path_factory.mktemp("manual-clock"), moto_url, log_dir, extra_args=["--clock", "manual"])
    yield server
    server.stop()


@pytest.fixture
def settings(moto_url: str, manual_emulator: ServerProcess) -> Settings:
    return Settings(
        s3_endpoint_url=moto_url, medical_imaging_endpoint_url=manual_emulator.url, eventbridge_endpoint_url=moto_url,
        healthlake_endpoint_url=manual_emulator.url, task_queue=f"test-{uuid.uuid4().hex[:8]}", parse_concurrency=4,
        max_concurrent_activities=16, graceful_shutdown_seconds=1,
    )


class Clock:
    """Advances the emulator's manual job clock in the background until held."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.running = True

    async def run(self) -> None:
        for _ in range(3000):  # bounded: at most ~5 minutes of ticks
            if self.running:
                await asyncio.to_thread(emulator_admin, self.url, "clock/advance", {"seconds": 1})
            # Not a wait for a condition: the pace of the job clock while the workflow runs alongside.
            await asyncio.sleep(0.1)


@pytest.fixture
async def clock(manual_emulator: ServerProcess) -> AsyncIterator[Clock]:
    ticker = Clock(manual_emulator.url)
    task = asyncio.create_task(ticker.run())
    yield ticker
    task.cancel()


def _wait_active(check: Any, what: str) -> None:
    def active() -> None:
        assert check(), f"{what} never became ACTIVE"

    assert_eventually_sync(active, timeout=30, interval=0.05)


async def test_a_study_that_grows_while_its_job_is_queued_is_routed_again(
        client: Client, worker: Worker, buckets: dict[str, Any], manual_emulator: ServerProcess, clock: Clock) -> None:
    url = manual_emulator.url
    mi = make_medical_imaging(url)
    ds = mi.create_datastore(datastoreName=f"reroute-{uuid.uuid4().hex[:6]}", clientToken=uuid.uuid4().hex)["datastoreId"]
    _wait_active(lambda: mi.get_datastore(datastoreId=ds)["datastoreProperties"]["datastoreStatus"] == "ACTIVE",
                 "data store")
    hl = boto3.client("healthlake", endpoint_url=url, region_name="us-east-1",
                      config=Config(retries={"mode": "standard", "max_attempts": 1}))
    fhir_ds = hl.create_fhir_datastore(DatastoreName=f"reroute-{uuid.uuid4().hex[:6]}",
                                       DatastoreTypeVersion="R4")["DatastoreId"]
    _wait_active(lambda: hl.describe_fhir_datastore(DatastoreId=fhir_ds)["DatastoreProperties"][
        "DatastoreStatus"] == "ACTIVE", "FHIR data store")

    s3, src = buckets["s3"], buckets["source"]
    study, first_series, second_series = uid(), uid(), uid()
    s3.put_object(Bucket=src, Key="r/0.dcm", Body=make_instance(study, first_series))
    wid = f"reroute-{uuid.uuid4().hex[:8]}"
    handle = await client.start_workflow(
        MigrationWorkflow.run, MigrationInput(source_s3_uri=f"s3://{src}/r/", datastore_id=ds,
                                              work_s3_uri=f"s3://{buckets['work']}/w/", import_start_interval_seconds=0,
                                              healthlake_datastore_id=fhir_ds),
        id=wid, task_queue=worker.task_queue, execution_timeout=timedelta(seconds=120))

    # Hold the clock once the DICOM import job is done: the HealthLake job then waits in SUBMITTED.
    batch = client.get_workflow_handle(f"{wid}.batch-00000")

    async def dicom_job_completed() -> None:
        try:
            progress: BatchProgress = await batch.query(ImportBatchWorkflow.progress)
        except Exception as err:  # the batch workflow may not exist yet
            raise AssertionError(f"the DICOM import job never completed (batch not queryable: {err})") from err
        assert BatchStage.JOB_COMPLETED in [t.stage for t in progress.transitions], \
            "the DICOM import job never completed"

    await assert_eventually(dicom_job_completed, timeout=60, interval=0.05)
    clock.running = False

    async def fhir_jobs() -> list[Any]:
        jobs: list[Any] = hl.list_fhir_import_jobs(DatastoreId=fhir_ds)["ImportJobPropertiesList"]
        return jobs

    jobs = await wait_until_async(fhir_jobs, "a HealthLake import job to be listed", timeout=60, interval=0.05)
    assert [j["JobStatus"] for j in jobs] == ["SUBMITTED"]

    # Meanwhile another series of the study arrives (as another batch's import would add it).
    session = requests.Session()
    session.auth = SigV4RequestsAuth()
    stow = DICOMwebClient(url=f"{url}/datastore/{ds}", session=session)
    stow.store_instances([pydicom.dcmread(io.BytesIO(make_instance(study, second_series)))])
    clock.running = True
    await handle.result()

    progress = await batch.query(ImportBatchWorkflow.progress)
    assert progress.fhir is not None and progress.fhir.rerouted is True
    assert progress.fhir.stale_studies == 0 and progress.fhir.problems == [] and progress.fhir.imported == 1
    assert [t.stage.value for t in progress.transitions].count("routing_fhir") == 2
    assert len(hl.list_fhir_import_jobs(DatastoreId=fhir_ds)["ImportJobPropertiesList"]) == 2
    status, resource = fhir_get(url, f"/datastore/{fhir_ds}/r4/ImagingStudy/{study_resource_id(ds, study)}")
    assert status == 200 and resource["meta"]["versionId"] == "2"
    assert sorted(s["uid"] for s in resource["series"]) == sorted([first_series, second_series])
    # The report counts the batch once, by its last round.
    loc = layout.report_document(f"s3://{buckets['work']}/w/", wid)
    report = json.loads(s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read())
    assert list(report["fhir"]["batches"]) == ["batch-00000-r2"]
    assert report["fhir"]["imaging_studies_imported"] == 1
