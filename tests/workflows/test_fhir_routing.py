"""FHIR ImagingStudy routing into HealthLake and the DICOMweb spot check, end to end on the real local stack.

Temporal dev server, moto S3 and the emulator (HealthImaging, its DICOMweb and its HealthLake subset): the
ImagingStudy is read back from the emulator's FHIR API, and the workflow histories are searched for PHI.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import urllib.parse
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pydicom
import pytest
import requests
from botocore.config import Config
from temporalio.client import Client, WorkflowHistory
from temporalio.exceptions import ApplicationError
from temporalio.worker import Replayer, Worker

from activities.fhir import endpoint_resource_id, study_resource_id
from activities.fhir_route import MAX_FAILURES, FhirRouteActivities, capped_refusals
from activities.signed_http import SignedHttp
from activities.spotcheck import SpotChecker
from activities.storage import get_bytes, get_json, read_models
from contracts import layout
from contracts.batch import BatchInput, BatchProgress
from contracts.common import FileState, ValidationLevel
from contracts.fhir import FhirFailure, FhirImportRef, FhirJobOutcome, FhirRouting
from contracts.migration import MigrationInput, MigrationResult
from contracts.records import InstanceRecord, LedgerEntry
from contracts.s3uri import parse_s3_uri
from contracts.stages import FhirReviewInput, ReviewResult, RouteInput
from tests.conftest import emulator_admin, make_medical_imaging
from tests.support.dicom import make_instance, uid
from tests.support.eventually import assert_eventually_sync
from tests.support.installation import converter, plain_history_json
from tests.support.temporal_cli import shown
from worker.registry import WORKFLOWS
from worker.settings import Settings
from workflows.batch import ImportBatchWorkflow
from workflows.migration import MigrationWorkflow

HISTORIES = Path(__file__).parent.parent / "histories"
PATIENT_ID, PATIENT_NAME = "SYNTH-FHIR-7731", "SYNTH^FHIRPATIENT"


@pytest.fixture
def settings(moto_url: str, emulator_url: str) -> Settings:
    """The shared worker settings plus the emulator's HealthLake endpoint (same port as HealthImaging)."""
    return Settings(
        s3_endpoint_url=moto_url, medical_imaging_endpoint_url=emulator_url, eventbridge_endpoint_url=moto_url,
        healthlake_endpoint_url=emulator_url, task_queue=f"test-{uuid.uuid4().hex[:8]}", parse_concurrency=4,
        max_concurrent_activities=16, graceful_shutdown_seconds=1,
    )


@pytest.fixture(scope="module")
def fhir_datastore(emulator_url: str) -> str:
    hl = boto3.client("healthlake", endpoint_url=emulator_url, region_name="us-east-1",
                      config=Config(retries={"mode": "standard", "max_attempts": 1}))
    ds: str = hl.create_fhir_datastore(DatastoreName=f"fhir-{uuid.uuid4().hex[:8]}",
                                       DatastoreTypeVersion="R4")["DatastoreId"]

    def active() -> None:
        assert hl.describe_fhir_datastore(DatastoreId=ds)["DatastoreProperties"]["DatastoreStatus"] == "ACTIVE", \
            "FHIR data store never became ACTIVE"

    assert_eventually_sync(active, timeout=10, interval=0.05)
    return ds


def fhir_get(emulator_url: str, path: str) -> tuple[int, Any]:
    parts = urllib.parse.urlsplit(emulator_url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()


async def migrate(client: Client, worker: Worker, payload: MigrationInput) -> tuple[str, MigrationResult]:
    wid = f"fhir-{uuid.uuid4().hex[:10]}"
    result = await client.execute_workflow(MigrationWorkflow.run, payload, id=wid, task_queue=worker.task_queue,
                                           execution_timeout=timedelta(seconds=120))
    return wid, result


def payload_texts(history: WorkflowHistory) -> str:
    """Every payload in a history, opened (sealed by the codec) and decoded (base64 in the JSON form)."""
    return shown(plain_history_json(history))


async def histories(client: Client, wid: str) -> list[WorkflowHistory]:
    found = [await client.get_workflow_handle(wid).fetch_history()]
    async for execution in client.list_workflows(f"WorkflowId STARTS_WITH '{wid}.batch-'"):
        found.append(await client.get_workflow_handle(execution.id).fetch_history())
    assert len(found) >= 2, "the batch workflows must be part of the check"
    return found


def payload(buckets: dict[str, Any], datastore_id: str, prefix: str, **kwargs: Any) -> MigrationInput:
    return MigrationInput(source_s3_uri=f"s3://{buckets['source']}/{prefix}/", datastore_id=datastore_id,
                          work_s3_uri=f"s3://{buckets['work']}/w/", import_start_interval_seconds=0, **kwargs)


def report_summary(s3: Any, result: MigrationResult) -> dict[str, Any]:
    summary: dict[str, Any] = get_json(s3, parse_s3_uri(result.report_uri))
    return summary


async def batch_progress(client: Client, wid: str, batch: int = 0) -> BatchProgress:
    progress: BatchProgress = await client.get_workflow_handle(f"{wid}.batch-{batch:05d}").query(
        ImportBatchWorkflow.progress)
    return progress


async def test_migration_routes_imaging_studies_into_healthlake(
        client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str, fhir_datastore: str,
        emulator_url: str) -> None:
    s3, src = buckets["s3"], buckets["source"]
    study_a, study_b = uid(), uid()
    series_a1, series_a2, series_b = uid(), uid(), uid()
    for i in range(2):
        s3.put_object(Bucket=src, Key=f"f/a/1/{i}.dcm", Body=make_instance(study_a, series_a1, patient_id=PATIENT_ID,
                                                                           patient_name=PATIENT_NAME))
    s3.put_object(Bucket=src, Key="f/a/2/0.dcm", Body=make_instance(study_a, series_a2, patient_id=PATIENT_ID,
                                                                    patient_name=PATIENT_NAME))
    s3.put_object(Bucket=src, Key="f/b/0.dcm", Body=make_instance(study_b, series_b, patient_id=PATIENT_ID + "B",
                                                                   patient_name=PATIENT_NAME))
    # Two batches, one per study folder (each clean and within the 3-file cap: imported in place).
    wid, result = await migrate(client, worker, payload(buckets, datastore_id, "f", max_files_per_batch=3,
                                                        healthlake_datastore_id=fhir_datastore))
    assert result.files_by_state[FileState.IMPORTED] == result.files_total == 4

    base = f"/datastore/{fhir_datastore}/r4"
    status, study = fhir_get(emulator_url, f"{base}/ImagingStudy/{study_resource_id(datastore_id, study_a)}")
    assert status == 200, study
    assert study["identifier"][0] == {"system": "urn:dicom:uid", "value": f"urn:oid:{study_a}"}
    image_sets = [i["value"] for i in study["identifier"] if i.get("system") == "urn:aws:healthimaging:imageset"]
    assert len(image_sets) == 2
    assert study["subject"]["identifier"]["value"] == PATIENT_ID
    assert study["numberOfSeries"] == 2 and study["numberOfInstances"] == 3
    assert sorted(s["uid"] for s in study["series"]) == sorted([series_a1, series_a2])
    by_series = {s["uid"]: s for s in study["series"]}
    assert len(by_series[series_a1]["instance"]) == 2
    assert {s["extension"][0]["valueString"] for s in study["series"]} == set(image_sets)
    endpoint_ref = {"reference": f"Endpoint/{endpoint_resource_id(datastore_id)}"}
    assert study["endpoint"] == [endpoint_ref] and by_series[series_a2]["endpoint"] == [endpoint_ref]
    assert PATIENT_NAME not in json.dumps(study)
    status, endpoint = fhir_get(emulator_url, f"{base}/Endpoint/{endpoint_resource_id(datastore_id)}")
    assert status == 200 and endpoint["connectionType"]["code"] == "dicom-wado-rs"
    assert endpoint["address"] == f"{emulator_url}/datastore/{datastore_id}"
    # Searchable by the image-set identifier, as a consumer holding an image set id would look it up.
    query = urllib.parse.urlencode({"identifier": f"urn:aws:healthimaging:imageset|{image_sets[0]}"})
    status, bundle = fhir_get(emulator_url, f"{base}/ImagingStudy?{query}")
    assert status == 200 and bundle["total"] == 1

    # The batch's progress and the report carry counts; the spot check found nothing on a clean batch.
    progress = await batch_progress(client, wid)
    assert progress.fhir is not None and progress.fhir.imported == 1 and progress.fhir.failed == 0
    assert progress.fhir.job_status == "COMPLETED" and progress.fhir.problems == []
    assert progress.problems == [] and progress.counters_consistent is True
    stages = [t.stage.value for t in progress.transitions]
    assert stages.index("routing") < stages.index("routing_fhir") < stages.index("done")
    fhir = report_summary(s3, result)["fhir"]
    assert fhir["imaging_studies_imported"] == 2 and fhir["imaging_studies_failed"] == 0
    assert set(fhir["batches"]) == {"batch-00000", "batch-00001"}
    migration = await client.get_workflow_handle(wid).query(MigrationWorkflow.progress)
    assert (migration.fhir_imported, migration.fhir_refused) == (2, 0)

    # No patient value anywhere in workflow history (inputs, activity results, child results).
    recorded = await histories(client, wid)
    text = "\n".join(payload_texts(h) for h in recorded)
    assert fhir_datastore in text and '"imported":1' in text  # the decoding sees the FHIR payloads
    for phi in (PATIENT_ID, PATIENT_NAME, "SYNTH^"):
        assert phi not in text
    # The FHIR path replays deterministically; HIMIG_RECORD_HISTORIES=1 stores a batch that took it, so
    # tests/workflows/test_replay.py guards it against command changes without workflow.patched.
    replayer = Replayer(workflows=WORKFLOWS, data_converter=converter())
    for history in recorded:
        await replayer.replay_workflow(history)
    if os.environ.get("HIMIG_RECORD_HISTORIES"):
        batch = next(h for h in recorded if h.workflow_id.endswith(".batch-00000"))
        (HISTORIES / f"{batch.workflow_id}.json").write_text(plain_history_json(batch))

    # A re-run over the same source with one more instance of study A: the four files already imported are
    # skipped (no job for study B), and study A is routed again, updating its resource instead of duplicating it.
    s3.put_object(Bucket=src, Key="f/a/1/2.dcm", Body=make_instance(study_a, series_a1, patient_id=PATIENT_ID,
                                                                    patient_name=PATIENT_NAME))
    _, again = await migrate(client, worker, payload(buckets, datastore_id, "f", max_files_per_batch=3,
                                                     healthlake_datastore_id=fhir_datastore))
    assert again.files_total == 5
    assert again.files_by_state[FileState.SKIPPED_DUPLICATE] == 4 and again.files_by_state[FileState.IMPORTED] == 1
    query = urllib.parse.urlencode({"identifier": f"urn:dicom:uid|urn:oid:{study_a}"})
    status, bundle = fhir_get(emulator_url, f"{base}/ImagingStudy?{query}")
    assert bundle["total"] == 1 and bundle["entry"][0]["resource"]["meta"]["versionId"] == "2"
    assert bundle["entry"][0]["resource"]["numberOfInstances"] == 4


@pytest.mark.parametrize("level,imported,failed", [
    (ValidationLevel.STRICT, 1, 1),
    (ValidationLevel.STRUCTURE_ONLY, 2, 0),
    (ValidationLevel.MINIMAL, 2, 0),
])
async def test_validation_level_decides_on_a_study_without_patient_id(
        client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str, fhir_datastore: str,
        emulator_url: str, level: ValidationLevel, imported: int, failed: int) -> None:
    s3, src = buckets["s3"], buckets["source"]
    good, anonymous = uid(), uid()
    s3.put_object(Bucket=src, Key="v/good.dcm", Body=make_instance(good, uid()))
    s3.put_object(Bucket=src, Key="v/anon.dcm", Body=make_instance(anonymous, uid(), drop=("PatientID",)))
    wid, result = await migrate(client, worker, payload(buckets, datastore_id, "v", healthlake_datastore_id=fhir_datastore,
                                                        fhir_validation_level=level))
    # FHIR never changes a file's state (the file without PatientID carries that warning).
    assert result.files_by_state[FileState.IMPORTED] == 1 and result.files_total == 2
    assert result.files_by_state[FileState.IMPORTED_WITH_WARNINGS] == 1
    progress = await batch_progress(client, wid)
    assert progress.fhir is not None
    assert (progress.fhir.imported, progress.fhir.failed) == (imported, failed)
    migration = await client.get_workflow_handle(wid).query(MigrationWorkflow.progress)
    assert (migration.fhir_imported, migration.fhir_refused) == (imported, failed)
    status, _ = fhir_get(emulator_url, f"/datastore/{fhir_datastore}/r4/ImagingStudy/"
                                       f"{study_resource_id(datastore_id, anonymous)}")
    if failed:
        assert status == 404
        assert progress.fhir.job_status == "COMPLETED_WITH_ERRORS"
        [failure] = progress.fhir.failures
        assert failure.stage == "import" and failure.resource_id == study_resource_id(datastore_id, anonymous)
        assert failure.issues == ["required at ImagingStudy.subject"]
    else:
        assert status == 200 and progress.fhir.job_status == "COMPLETED"


async def test_validate_first_reports_and_withholds_an_invalid_resource(
        client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str, fhir_datastore: str,
        emulator_url: str) -> None:
    s3, src = buckets["s3"], buckets["source"]
    good, anonymous = uid(), uid()
    s3.put_object(Bucket=src, Key="val/good.dcm", Body=make_instance(good, uid()))
    s3.put_object(Bucket=src, Key="val/anon.dcm", Body=make_instance(anonymous, uid(), drop=("PatientID",)))
    # structure-only would import it; $validate (strict) refuses it first, so it is never sent.
    wid, result = await migrate(client, worker, payload(buckets, datastore_id, "val", fhir_validate_first=True,
                                                        healthlake_datastore_id=fhir_datastore))
    progress = await batch_progress(client, wid)
    assert progress.fhir is not None
    assert progress.fhir.rejected_by_validate == 1 and progress.fhir.imported == 1 and progress.fhir.failed == 0
    [failure] = progress.fhir.failures
    assert failure.stage == "validate" and failure.resource_type == "ImagingStudy"
    assert failure.issues == ["required at ImagingStudy.subject"]
    base = f"/datastore/{fhir_datastore}/r4/ImagingStudy/"
    assert fhir_get(emulator_url, base + study_resource_id(datastore_id, anonymous))[0] == 404
    assert fhir_get(emulator_url, base + study_resource_id(datastore_id, good))[0] == 200
    # The NDJSON handed to HealthLake holds exactly what was imported: the Endpoint and the valid study.
    ndjson = s3.get_object(Bucket=buckets["work"], Key=f"w/{wid}/fhir/batch-00000/imaging-studies.ndjson")["Body"].read()
    assert [json.loads(line)["resourceType"] for line in ndjson.splitlines()] == ["Endpoint", "ImagingStudy"]
    assert report_summary(s3, result)["fhir"]["rejected_by_validate"] == 1


async def test_unknown_healthlake_datastore_is_reported_and_the_batch_completes(
        client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str) -> None:
    s3, src = buckets["s3"], buckets["source"]
    s3.put_object(Bucket=src, Key="u/0.dcm", Body=make_instance(uid(), uid()))
    wid, result = await migrate(client, worker, payload(buckets, datastore_id, "u",
                                                        healthlake_datastore_id="f" * 32))
    assert result.files_by_state[FileState.IMPORTED] == result.files_total == 1
    progress = await batch_progress(client, wid)
    assert progress.stage.value == "done"
    assert progress.fhir is not None and progress.fhir.job_id is None and progress.fhir.imported == 0
    [problem] = progress.fhir.problems
    assert "ResourceNotFoundException" in problem
    summary = report_summary(s3, result)
    assert summary["fhir"]["batches_with_problems"] == 1
    loc = layout.report_summary(f"s3://{buckets['work']}/w/", wid)
    text = s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read().decode()
    assert "FHIR ImagingStudy (HealthLake): 0 imported" in text


async def test_without_a_healthlake_datastore_nothing_is_routed(
        client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str) -> None:
    s3, src = buckets["s3"], buckets["source"]
    s3.put_object(Bucket=src, Key="n/0.dcm", Body=make_instance(uid(), uid()))
    wid, result = await migrate(client, worker, payload(buckets, datastore_id, "n"))
    progress = await batch_progress(client, wid)
    assert progress.fhir is None and "routing_fhir" not in [t.stage.value for t in progress.transitions]
    assert "fhir" not in report_summary(s3, result)
    assert s3.list_objects_v2(Bucket=buckets["work"], Prefix=f"w/{wid}/fhir").get("KeyCount") == 0


# ---- the DICOMweb spot check, on a batch a real migration imported --------------------------------------------


async def test_spot_check_detects_removed_instances_and_deleted_image_sets(
        client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str, emulator_url: str,
        settings: Settings) -> None:
    s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
    study, series_a, series_b = uid(), uid(), uid()
    for i in range(3):
        s3.put_object(Bucket=src, Key=f"s/a{i}.dcm", Body=make_instance(study, series_a))
    s3.put_object(Bucket=src, Key="s/b0.dcm", Body=make_instance(study, series_b))
    wid, _ = await migrate(client, worker, payload(buckets, datastore_id, "s", dicomweb_spot_check=4))
    # Clean: the review (metadata counts + 4 DICOMweb reads) found nothing.
    assert (await batch_progress(client, wid)).problems == []

    files = read_models(s3, layout.batch_manifest(f"s3://{work}/w/", wid, 0), InstanceRecord)
    ledger_by_key = {e.key: e for e in read_models(s3, layout.ledger_for_batch(f"s3://{work}/w/", wid, 0), LedgerEntry)}
    ledger = [ledger_by_key[f.key] for f in files]
    mi = make_medical_imaging(emulator_url)
    http = SignedHttp(boto3.session.Session().get_credentials(), "us-east-1", "medical-imaging")
    checker = SpotChecker(mi, http, emulator_url)
    assert checker.check(datastore_id, files, ledger, 4) == []

    # Remove one instance of series A from its image set, and delete series B's image set.
    set_a = ledger_by_key["s/a1.dcm"].image_set_id
    set_b = ledger_by_key["s/b0.dcm"].image_set_id
    assert set_a and set_b and set_a != set_b
    removed = next(f for f in files if f.key == "s/a1.dcm")
    version = mi.get_image_set(datastoreId=datastore_id, imageSetId=set_a)["versionId"]
    removal = {"SchemaVersion": 1.1, "Study": {"Series": {series_a: {"Instances": {removed.sop_instance_uid: {}}}}}}
    mi.update_image_set_metadata(datastoreId=datastore_id, imageSetId=set_a, latestVersionId=version,
                                 updateImageSetMetadataUpdates={"DICOMUpdates": {
                                     "removableAttributes": json.dumps(removal).encode()}})
    mi.delete_image_set(datastoreId=datastore_id, imageSetId=set_b)

    def deleted() -> None:
        assert mi.get_image_set(datastoreId=datastore_id, imageSetId=set_b)["imageSetState"] == "DELETED", \
            "image set was not deleted"

    assert_eventually_sync(deleted, timeout=10, interval=0.05)

    problems = checker.check(datastore_id, files, ledger, 4)
    line = files.index(removed) + 1
    assert f"image set {set_a}: 1 of 3 instances the job reported are not in GetImageSetMetadata (batch lines {line})" \
        in problems
    assert f"image set {set_b}: GetImageSetMetadata failed: ResourceNotFoundException" in problems
    dicomweb = sorted(p for p in problems if "DICOMweb" in p)
    assert dicomweb == sorted([
        f"image set {set_a}: sampled instance (batch line {line}): DICOMweb metadata answered HTTP 404 "
        "ResourceNotFoundException",
        f"image set {set_b}: sampled instance (batch line {files.index(next(f for f in files if f.key == 's/b0.dcm')) + 1}): "
        "DICOMweb metadata answered HTTP 404 ResourceNotFoundException"])
    # Problems name image sets and manifest lines, never UIDs or keys.
    assert not any(removed.sop_instance_uid in p or "s/a1.dcm" in p for p in problems)
    # The sample is off at 0: only the metadata check runs.
    assert not any("DICOMweb" in p for p in checker.check(datastore_id, files, ledger, 0))


async def test_spot_check_retries_throttling_instead_of_reporting_it(
        client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str, emulator_url: str) -> None:
    s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
    s3.put_object(Bucket=src, Key="t/0.dcm", Body=make_instance(uid(), uid()))
    wid, _ = await migrate(client, worker, payload(buckets, datastore_id, "t"))
    files = read_models(s3, layout.batch_manifest(f"s3://{work}/w/", wid, 0), InstanceRecord)
    ledger = read_models(s3, layout.ledger_for_batch(f"s3://{work}/w/", wid, 0), LedgerEntry)
    http = SignedHttp(boto3.session.Session().get_credentials(), "us-east-1", "medical-imaging")
    impatient = SpotChecker(make_medical_imaging(emulator_url), http, emulator_url, retry_delays=(0.05,))
    patient = SpotChecker(make_medical_imaging(emulator_url), http, emulator_url, retry_delays=(0.5,))
    picked = checker_sample(files, ledger)
    emulator_admin(emulator_url, "throttling", {"enabled": True, "rates": {
        "GetDICOMInstanceMetadata": {"rate": 0.001, "burst": 1}}})
    try:
        assert impatient.check_dicomweb(datastore_id, picked) == []  # the one token
        # Still throttled after the local retries: handed to Temporal as a retryable error, not a problem.
        with pytest.raises(ApplicationError) as info:
            impatient.check_dicomweb(datastore_id, picked)
        assert info.value.type == "ThrottlingException" and not info.value.non_retryable
        # A bucket that refills (5/s) within the local retry delay: the check passes without a problem.
        emulator_admin(emulator_url, "throttling", {"rates": {"GetDICOMInstanceMetadata": {"rate": 5, "burst": 1}}})
        assert patient.check_dicomweb(datastore_id, picked) == []
        assert patient.check_dicomweb(datastore_id, picked) == []  # the second call meets an empty bucket
        state = emulator_admin(emulator_url, "throttling")["operations"]["GetDICOMInstanceMetadata"]
        assert state["throttled"] >= 2
    finally:
        emulator_admin(emulator_url, "throttling", {"reset": True})
        emulator_admin(emulator_url, "throttling", {"enabled": False})


def checker_sample(files: list[InstanceRecord], ledger: list[LedgerEntry]) -> list[Any]:
    from activities.spotcheck import imported_instances, sample

    return sample(imported_instances(files, ledger), 1)


# ---- hostile input for the new fields --------------------------------------------------------------------------


@pytest.mark.parametrize("field,value,needle", [
    ("healthlake_datastore_id", "../../etc", "healthlake_datastore_id"),
    ("healthlake_datastore_id", "", "healthlake_datastore_id"),
    ("healthlake_datastore_id", "a" * 33, "healthlake_datastore_id"),
    ("healthlake_datastore_id", "ds id", "healthlake_datastore_id"),
    ("healthlake_datastore_id", 12345, "healthlake_datastore_id"),
    ("fhir_validation_level", "lenient", "fhir_validation_level"),
    ("fhir_validation_level", None, "fhir_validation_level"),
    ("fhir_validate_first", "maybe", "fhir_validate_first"),
    ("dicomweb_spot_check", -1, "dicomweb_spot_check"),
    ("dicomweb_spot_check", 101, "dicomweb_spot_check"),
    ("dicomweb_spot_check", "two", "dicomweb_spot_check"),
    ("dicomweb_spot_check", 2.5, "dicomweb_spot_check"),
])
def test_fhir_input_fields_name_the_field(field: str, value: Any, needle: str) -> None:
    base: dict[str, Any] = {"source_s3_uri": "s3://src-b/in/", "datastore_id": "a" * 32, "work_s3_uri": "s3://work-b/w/",
                            "healthlake_datastore_id": "b" * 32}
    base[field] = value
    with pytest.raises(ValueError, match=needle):
        MigrationInput.model_validate(base)


def test_validate_first_needs_a_healthlake_datastore() -> None:
    with pytest.raises(ValueError, match="fhir_validate_first needs healthlake_datastore_id"):
        MigrationInput.model_validate({"source_s3_uri": "s3://src-b/in/", "datastore_id": "a" * 32,
                                       "work_s3_uri": "s3://work-b/w/", "fhir_validate_first": True})


def test_fhir_defaults() -> None:
    m = MigrationInput.model_validate({"source_s3_uri": "s3://src-b/in/", "datastore_id": "a" * 32,
                                       "work_s3_uri": "s3://work-b/w/"})
    assert m.healthlake_datastore_id is None and m.fhir_validation_level is ValidationLevel.STRUCTURE_ONLY
    assert m.fhir_validate_first is False and m.dicomweb_spot_check == 2


@pytest.mark.parametrize("flag,value,needle", [
    ("--healthlake-datastore-id", "../x", "healthlake_datastore_id"),
    ("--dicomweb-spot-check", "-1", "dicomweb_spot_check"),
    ("--dicomweb-spot-check", "1000", "dicomweb_spot_check"),
    ("--fhir-validation-level", "lenient", "lenient"),
])
def test_cli_refuses_bad_fhir_flags_before_sending(monkeypatch: pytest.MonkeyPatch, flag: str, value: str,
                                                   needle: str) -> None:
    from typer.testing import CliRunner

    from cli.app import app

    monkeypatch.setenv("HIMIG_TEMPORAL_ADDRESS", "127.0.0.1:1")  # nothing listens: a send would fail differently
    result = CliRunner().invoke(app, ["start", "--source", "s3://src-bucket/in/", "--datastore-id", "a" * 32,
                                      "--work", "s3://work-bucket/w/", flag, value])
    assert result.exit_code == 2, result.output
    assert needle in " ".join(result.output.split())


def test_a_failed_healthlake_job_is_reviewed_and_reported(emulator_url: str, moto_url: str, buckets: dict[str, Any],
                                                          fhir_datastore: str) -> None:
    """A job HealthLake ends FAILED (here: its input prefix holds nothing) is a reported problem, not a crash."""
    from tests.conftest import make_s3
    from worker.aws import make_client

    settings = Settings(s3_endpoint_url=moto_url, medical_imaging_endpoint_url=emulator_url,
                        healthlake_endpoint_url=emulator_url)
    hl = make_client("healthlake", settings, settings.healthlake_endpoint_url)
    acts = FhirRouteActivities(make_s3(moto_url), make_medical_imaging(emulator_url), hl, None,
                               settings.dicomweb_base_url(), settings.healthlake_data_access_role_arn,
                               settings.healthlake_kms_key_id)
    work = f"s3://{buckets['work']}/w/"
    out = layout.fhir_output_prefix(work, "mig-failed", 0)
    job_id = hl.start_fhir_import_job(
        DatastoreId=fhir_datastore, InputDataConfig={"S3Uri": f"s3://{buckets['work']}/nothing-here/"},
        JobOutputDataConfig={"S3Configuration": {"S3Uri": out.uri, "KmsKeyId": settings.healthlake_kms_key_id}},
        DataAccessRoleArn=settings.healthlake_data_access_role_arn)["JobId"]
    ref = FhirImportRef(datastore_id=fhir_datastore, job_id=job_id, input_s3_uri=f"s3://{buckets['work']}/nothing-here/",
                        output_s3_uri=out.uri, studies=1, resources=2, validation_level=ValidationLevel.STRICT)

    def ended() -> FhirJobOutcome:
        try:
            return acts.await_fhir_import(ref)
        except ApplicationError as err:
            if err.type != "JobStillRunning":
                raise  # any other error fails the test at once: it is not retried
            raise AssertionError("the HealthLake job never ended") from err

    outcome = assert_eventually_sync(ended, timeout=20, interval=0.1)
    assert outcome.status == "FAILED" and outcome.message
    batch = BatchInput(migration_id="mig-failed", batch=0, source_s3_uri="s3://src-b/x/", work_s3_uri=work,
                       datastore_id="a" * 32, fhir=FhirRouting(datastore_id=fhir_datastore))
    summary = acts.review_fhir_import(FhirReviewInput(batch=batch, ref=ref, outcome=outcome))
    assert summary.job_status == "FAILED" and summary.imported == 0
    assert any(p.startswith(f"HealthLake import job {job_id} FAILED: ") for p in summary.problems)
    # Written for the report, next to the batch's NDJSON.
    written = get_json(buckets["s3"], layout.fhir_summary(work, "mig-failed", 0))
    assert written["job_status"] == "FAILED" and written["problems"] == summary.problems


async def test_halves_of_a_failed_batch_each_route_and_the_counts_add_up(
        client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str, fhir_datastore: str,
        emulator_url: str) -> None:
    from activities.importjob import job_name

    s3, src = buckets["s3"], buckets["source"]
    studies = [uid(), uid()]
    for n, study in enumerate(studies):
        series = uid()
        for i in range(2):
            s3.put_object(Bucket=src, Key=f"h/{n}/{i}.dcm", Body=make_instance(study, series))
    wid = f"fhir-{uuid.uuid4().hex[:10]}"
    name = job_name(BatchInput(migration_id=wid, batch=0, source_s3_uri="s3://x-b/", work_s3_uri="s3://y-b/",
                               datastore_id=datastore_id))
    emulator_admin(emulator_url, "faults", {"kind": "job_failed", "jobName": f"{name}*", "count": 1,
                                            "message": "Internal error (injected)"})
    await client.execute_workflow(MigrationWorkflow.run, payload(buckets, datastore_id, "h",
                                                                 healthlake_datastore_id=fhir_datastore),
                                  id=wid, task_queue=worker.task_queue, execution_timeout=timedelta(seconds=120))
    progress = await batch_progress(client, wid)
    assert progress.failed_job is not None
    assert [t.stage.value for t in progress.transitions].count("routing_fhir") == 2
    assert progress.fhir is not None and progress.fhir.studies == 2 and progress.fhir.imported == 2
    for study in studies:
        status, _ = fhir_get(emulator_url, f"/datastore/{fhir_datastore}/r4/ImagingStudy/"
                                           f"{study_resource_id(datastore_id, study)}")
        assert status == 200
    work = buckets["work"]
    for part in (1, 2):
        s3.head_object(Bucket=work, Key=f"w/{wid}/fhir/batch-00000-p{part}.result.json")


def route_activities(moto_url: str, emulator_url: str) -> FhirRouteActivities:
    """The FHIR activities as the worker builds them, to call one as a retry would."""
    from tests.conftest import make_s3
    from worker.aws import make_client

    settings = Settings(s3_endpoint_url=moto_url, medical_imaging_endpoint_url=emulator_url,
                        healthlake_endpoint_url=emulator_url)
    return FhirRouteActivities(make_s3(moto_url), make_medical_imaging(emulator_url),
                               make_client("healthlake", settings, settings.healthlake_endpoint_url), None,
                               settings.dicomweb_base_url(), settings.healthlake_data_access_role_arn,
                               settings.healthlake_kms_key_id)


async def test_a_retried_start_imports_exactly_what_the_first_attempt_wrote(
        client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str, fhir_datastore: str,
        emulator_url: str, moto_url: str) -> None:
    from dicomweb_client.api import DICOMwebClient

    from tests.support.oidc_issuer import SigV4RequestsAuth

    s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
    study = uid()
    s3.put_object(Bucket=src, Key="once/0.dcm", Body=make_instance(study, uid()))
    # A migration without routing imports the study; start_fhir_import is then run as two attempts of one start.
    wid, _ = await migrate(client, worker, payload(buckets, datastore_id, "once"))
    work_uri = f"s3://{work}/w/"
    batch = BatchInput(migration_id=wid, batch=0, source_s3_uri=f"s3://{src}/once/", work_s3_uri=work_uri,
                       datastore_id=datastore_id, fhir=FhirRouting(datastore_id=fhir_datastore))
    route = RouteInput(batch=batch, review=ReviewResult(
        files_by_state={}, image_sets=1, non_primary_image_sets=[], counters_consistent=True,
        ledger_uri=layout.ledger_for_batch(work_uri, wid, 0).uri))
    acts = route_activities(moto_url, emulator_url)
    in_loc = layout.fhir_input(work_uri, wid, 0)
    first = acts.start_fhir_import(route)
    written = get_bytes(s3, in_loc)
    assert first.job_id and first.studies == 1 and first.resources == len(written.splitlines()) == 2

    # Between the attempts the study gains a series (another batch's import, here a DICOMweb STOW-RS).
    session = requests.Session()
    session.auth = SigV4RequestsAuth()
    stow = DICOMwebClient(url=f"{emulator_url}/datastore/{datastore_id}", session=session)
    stow.store_instances([pydicom.dcmread(io.BytesIO(make_instance(study, uid())))])
    assert acts._build_input(route).body != written  # a rebuild would now send another resource

    second = acts.start_fhir_import(route)
    # The same job (ClientToken), reading the same input, described by the same counts.
    assert get_bytes(s3, in_loc) == written and second == first
    start_record = get_json(s3, layout.fhir_start_record(work_uri, wid, 0))
    assert start_record["resources"] == 2 and start_record["studies"] == 1
    # An input without a usable start record (a crash between the writes, a damaged record) is still read back,
    # counted from itself.
    record_key = layout.fhir_start_record(work_uri, wid, 0).key
    for damaged in (None, b"{not json", json.dumps(start_record | {"studies": "x", "rejected": 5}).encode(),
                    json.dumps(start_record | {"input_sha256": "0" * 64}).encode()):
        if damaged is None:
            s3.delete_object(Bucket=work, Key=record_key)
        else:
            s3.put_object(Bucket=work, Key=record_key, Body=damaged)
        assert acts.start_fhir_import(route) == first
        assert get_bytes(s3, in_loc) == written


def test_a_review_that_gives_up_still_leaves_the_batch_for_the_report(
        buckets: dict[str, Any], fhir_datastore: str, emulator_url: str, moto_url: str) -> None:
    """The job's output cannot be read (its bucket is gone): the review fails, and result.json says so."""
    work_uri = f"s3://{buckets['work']}/w/"
    batch = BatchInput(migration_id="mig-unread", batch=3, source_s3_uri="s3://src-b/x/", work_s3_uri=work_uri,
                       datastore_id="a" * 32, fhir=FhirRouting(datastore_id=fhir_datastore))
    refused = [FhirFailure(resource_type="ImagingStudy", resource_id=f"{n:064x}", stage="validate",
                           issues=["required at ImagingStudy.subject"]) for n in range(30)]
    ref = FhirImportRef(datastore_id=fhir_datastore, job_id="0" * 32, input_s3_uri=f"{work_uri}mig-unread/fhir/x/",
                        output_s3_uri=f"s3://gone-{uuid.uuid4().hex[:10]}/out/", studies=31, resources=2,
                        validation_level=ValidationLevel.STRICT, **capped_refusals(refused))
    acts = route_activities(moto_url, emulator_url)
    with pytest.raises(ApplicationError) as raised:
        acts.review_fhir_import(FhirReviewInput(batch=batch, ref=ref,
                                                outcome=FhirJobOutcome(job_id="0" * 32, status="COMPLETED")))
    assert raised.value.type == "NoSuchBucket" and raised.value.non_retryable
    written = get_json(buckets["s3"], layout.fhir_summary(work_uri, "mig-unread", 3))
    assert written["reviewed"] is False and written["job_status"] == "COMPLETED" and written["imported"] == 0
    assert written["rejected_by_validate"] == 30 and len(written["failures"]) == MAX_FAILURES
    [problem] = written["problems"]
    assert problem.startswith("HealthLake import output not reviewed: ") and "NoSuchBucket" in problem
    # The report counts it as a batch with a problem, not as a round that ran to its end.
    from activities.report import fhir_section

    section = fhir_section({"batch-00003": written})
    assert section is not None and section["batches_with_problems"] == 1 and section["rejected_by_validate"] == 30


def test_demo_finds_or_creates_its_fhir_datastore_once(emulator_url: str) -> None:
    from devstack.demo import ensure_fhir_datastore

    hl = boto3.client("healthlake", endpoint_url=emulator_url, region_name="us-east-1")
    name = f"demo-{uuid.uuid4().hex[:8]}"
    first = ensure_fhir_datastore(hl, name)
    assert ensure_fhir_datastore(hl, name) == first
    props = hl.describe_fhir_datastore(DatastoreId=first)["DatastoreProperties"]
    assert props["DatastoreName"] == name and props["DatastoreTypeVersion"] == "R4"


def test_a_worker_without_the_healthlake_role_or_key_fails_the_start_naming_them() -> None:
    """No placeholder defaults: routing to HealthLake on a worker that lacks its settings fails at once, not
    retried, before anything is read or written (no clients: any call would fail differently)."""
    work_uri = "s3://work/w/"
    batch = BatchInput(migration_id="m", batch=0, source_s3_uri="s3://src/p/", work_s3_uri=work_uri,
                       datastore_id="0" * 32, fhir=FhirRouting(datastore_id="1" * 32))
    route = RouteInput(batch=batch, review=ReviewResult(
        files_by_state={}, image_sets=1, non_primary_image_sets=[], counters_consistent=True,
        ledger_uri=layout.ledger_for_batch(work_uri, "m", 0).uri))
    role = "arn:aws:iam::123456789012:role/fhir"
    for settings in ((None, "alias/fhir"), (role, None)):
        acts = FhirRouteActivities(None, None, None, None, "http://127.0.0.1:9", *settings)
        with pytest.raises(ApplicationError) as caught:
            acts.start_fhir_import(route)
        assert caught.value.non_retryable
        assert "HIMIG_HEALTHLAKE_DATA_ACCESS_ROLE_ARN and HIMIG_HEALTHLAKE_KMS_KEY_ID" in str(caught.value)
