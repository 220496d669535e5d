"""The HealthLake subset: unmodified boto3 ``healthlake`` clients and plain HTTP against the running emulator,
with moto S3 for import input and output (no mocks)."""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ParamValidationError

from tests.emulator.conftest import unique
from tests.support.eventually import assert_eventually_sync, wait_until
from tests.support.servers import ServerProcess

ROLE_ARN = "arn:aws:iam::123456789012:role/HealthLakeImportRole"
KMS_KEY = "arn:aws:kms:us-east-1:123456789012:key/0f7e3c3a-1111-2222-3333-444455556666"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
HI_DATASTORE = "0123456789abcdef0123456789abcdef"
IMAGE_SET = "fedcba9876543210fedcba9876543210"
TERMINAL = ("COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED")


# ---------------------------------------------------------------------------------------------- helpers


def make_healthlake(url: str, validate: bool = True) -> Any:
    return boto3.client("healthlake", endpoint_url=url, region_name="us-east-1",
                        config=Config(parameter_validation=validate, retries={"mode": "standard", "max_attempts": 1}))


@pytest.fixture
def hl(emulator_url: str) -> Any:
    return make_healthlake(emulator_url)


@pytest.fixture
def hl_raw(emulator_url: str) -> Any:
    """Skips botocore's client-side validation, so the server's own validation answers."""
    return make_healthlake(emulator_url, validate=False)


def create_fhir_datastore(hl: Any, **kwargs: Any) -> str:
    ds_id: str = hl.create_fhir_datastore(DatastoreName=unique("fhir"), DatastoreTypeVersion="R4", **kwargs)["DatastoreId"]
    wait_until(lambda: hl.describe_fhir_datastore(DatastoreId=ds_id)["DatastoreProperties"]["DatastoreStatus"]
               == "ACTIVE", "the FHIR data store to become ACTIVE", timeout=10, interval=0.02)
    return ds_id


@pytest.fixture
def fhir_ds(hl: Any) -> str:
    return create_fhir_datastore(hl)


def start_import(hl: Any, ds_id: str, bucket: str, input_key: str, level: str | None = None,
                 **kwargs: Any) -> str:
    params: dict[str, Any] = {
        "DatastoreId": ds_id, "DataAccessRoleArn": ROLE_ARN, "InputDataConfig": {"S3Uri": f"s3://{bucket}/{input_key}"},
        "JobOutputDataConfig": {"S3Configuration": {"S3Uri": f"s3://{bucket}/out", "KmsKeyId": KMS_KEY}},
        **kwargs,
    }
    if level:
        params["ValidationLevel"] = level
    job_id: str = hl.start_fhir_import_job(**params)["JobId"]
    return job_id


def wait_fhir_job(hl: Any, ds_id: str, job_id: str, timeout: float = 20.0) -> dict[str, Any]:

    def ended() -> dict[str, Any]:
        props: dict[str, Any] = hl.describe_fhir_import_job(DatastoreId=ds_id, JobId=job_id)["ImportJobProperties"]
        assert props["JobStatus"] in TERMINAL, f"import job still {props['JobStatus']}"
        return props

    return assert_eventually_sync(ended, timeout=timeout, interval=0.02)


def patient(pid: str = "pat-1") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "identifier": [{"system": "urn:example:mrn", "value": "MRN-1"}],
            "name": [{"family": "Synthetic", "given": ["Test"]}], "gender": "other", "birthDate": "1970-01-01"}


def endpoint(eid: str = "hi-endpoint") -> dict[str, Any]:
    """The §8.2 Endpoint: DICOMweb WADO-RS of the HealthImaging data store."""
    return {"resourceType": "Endpoint", "id": eid, "status": "active",
            "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                               "code": "dicom-wado-rs"},
            "payloadType": [{"text": "DICOM"}], "payloadMimeType": ["application/dicom"],
            "address": f"https://dicom-medical-imaging.us-east-1.amazonaws.com/datastore/{HI_DATASTORE}"}


def imaging_study(sid: str = "study-1", uid: str = STUDY_UID) -> dict[str, Any]:
    """The §8.2 ImagingStudy: StudyInstanceUID and image-set identifiers, series pointing at the Endpoint."""
    return {
        "resourceType": "ImagingStudy", "id": sid, "status": "available",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"},
                       {"system": "urn:aws:healthimaging:imageset", "value": IMAGE_SET}],
        "subject": {"reference": "Patient/pat-1"}, "endpoint": [{"reference": "Endpoint/hi-endpoint"}],
        "numberOfSeries": 1, "numberOfInstances": 1,
        "series": [{"uid": f"{uid}.1", "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM",
                                                    "code": "CT"},
                    "endpoint": [{"reference": "Endpoint/hi-endpoint"}]}],
    }


def mixed_ndjson() -> bytes:
    """Three valid resources and five broken lines (plus a blank line, which is no resource)."""
    wrong_type = imaging_study("study-wrong-type")
    wrong_type["numberOfSeries"] = "three"  # structure error: an integer element given a string
    no_required = {"resourceType": "ImagingStudy", "id": "study-loose", "status": "bogus"}  # strict-only errors
    lines = [
        json.dumps(patient()),                                  # 1 valid
        json.dumps(endpoint()),                                 # 2 valid
        json.dumps(imaging_study()),                            # 3 valid
        json.dumps({"id": "no-type", "status": "available"}),  # 4 missing resourceType
        json.dumps(wrong_type),                                 # 5 wrong JSON type for a field
        '{"resourceType": "Patient", "id": "broken"',          # 6 invalid JSON
        json.dumps({"resourceType": "Starship", "id": "x1"}),  # 7 unknown resourceType
        json.dumps(no_required),                                # 8 bad code + missing subject
        "",                                                     # blank
    ]
    return ("\n".join(lines) + "\n").encode()


def s3_text(s3: Any, bucket: str, key: str) -> str:
    body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body.decode()


def keys_under(s3: Any, bucket: str, prefix: str) -> set[str]:
    return {o["Key"][len(prefix):] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])}


def call(url: str, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """A raw HTTP request (FHIR REST, or hand-made json-protocol calls): status, headers, decoded JSON body."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(raw) if raw else None
    finally:
        conn.close()


def json_call(url: str, target: str, body: bytes) -> tuple[int, dict[str, str], Any]:
    return call(url, "POST", "/", body, {"X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.0"})


def error_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int, str]:
    err = exc.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"], err["Error"]["Message"]


# ---------------------------------------------------------------------------------------------- data stores


def test_datastore_lifecycle(hl: Any, emulator_url: str) -> None:
    name = unique("lifecycle")
    created = hl.create_fhir_datastore(DatastoreName=name, DatastoreTypeVersion="R4")
    ds_id = created["DatastoreId"]
    assert created["DatastoreStatus"] == "CREATING"
    assert created["DatastoreArn"] == f"arn:aws:healthlake:us-east-1:123456789012:datastore/fhir/{ds_id}"
    assert created["DatastoreEndpoint"] == f"{emulator_url}/datastore/{ds_id}/r4/"
    props = hl.describe_fhir_datastore(DatastoreId=ds_id)["DatastoreProperties"]
    assert props["DatastoreStatus"] == "ACTIVE"  # create phase is 0 s by default
    assert props["DatastoreTypeVersion"] == "R4" and props["DatastoreName"] == name
    assert props["SseConfiguration"] == {"KmsEncryptionConfig": {"CmkType": "AWS_OWNED_KMS_KEY"}}
    assert props["IdentityProviderConfiguration"]["AuthorizationStrategy"] == "AWS_AUTH"
    listed = hl.list_fhir_datastores(Filter={"DatastoreName": name})["DatastorePropertiesList"]
    assert [d["DatastoreId"] for d in listed] == [ds_id]
    assert hl.delete_fhir_datastore(DatastoreId=ds_id)["DatastoreStatus"] == "DELETING"
    assert hl.describe_fhir_datastore(DatastoreId=ds_id)["DatastoreProperties"]["DatastoreStatus"] == "DELETED"
    status, _, outcome = call(emulator_url, "GET", f"/datastore/{ds_id}/r4/ImagingStudy")
    assert status == 404 and outcome["issue"][0]["code"] == "not-found"


def test_create_is_idempotent_on_client_token(hl: Any) -> None:
    token = unique("tok")
    first = hl.create_fhir_datastore(DatastoreName="same", DatastoreTypeVersion="R4", ClientToken=token)
    again = hl.create_fhir_datastore(DatastoreName="same", DatastoreTypeVersion="R4", ClientToken=token)
    assert again["DatastoreId"] == first["DatastoreId"]
    with pytest.raises(ClientError) as exc:
        hl.create_fhir_datastore(DatastoreName="other", DatastoreTypeVersion="R4", ClientToken=token)
    assert error_of(exc)[:2] == ("ValidationException", 400)


def test_only_r4_and_model_validation(hl_raw: Any) -> None:
    with pytest.raises(ClientError) as exc:
        hl_raw.create_fhir_datastore(DatastoreTypeVersion="R5")
    assert error_of(exc) == ("ValidationException", 400,
                             "1 validation error detected: Value 'R5' at 'datastoreTypeVersion' failed to satisfy "
                             "constraint: Member must satisfy enum value set: [R4]")


def test_unknown_datastore(hl: Any, bucket: str) -> None:
    missing = "0" * 32
    with pytest.raises(ClientError) as exc:
        hl.describe_fhir_datastore(DatastoreId=missing)
    assert error_of(exc)[:2] == ("ResourceNotFoundException", 400)  # awsJson: client errors are 400
    with pytest.raises(ClientError) as exc:
        start_import(hl, missing, bucket, "in/")
    assert error_of(exc)[0] == "ResourceNotFoundException"
    with pytest.raises(ClientError) as exc:
        hl.list_fhir_import_jobs(DatastoreId=missing)
    assert error_of(exc)[0] == "ResourceNotFoundException"


# ---------------------------------------------------------------------------------------------- import


EXPECTED = {
    # level: (imported line numbers, failed line numbers)
    "strict": ([1, 2, 3], [4, 5, 6, 7, 8]),
    "structure-only": ([1, 2, 3, 8], [4, 5, 6, 7]),
    "minimal": ([1, 2, 3, 5, 8], [4, 6, 7]),
}


@pytest.mark.parametrize("level", list(EXPECTED))
def test_import_validation_levels(hl: Any, s3: Any, bucket: str, fhir_ds: str, level: str) -> None:
    s3.put_object(Bucket=bucket, Key="in/batch/data.ndjson", Body=mixed_ndjson())
    job_id = start_import(hl, fhir_ds, bucket, "in/batch/", level, JobName="levels")
    props = wait_fhir_job(hl, fhir_ds, job_id)
    ok_lines, bad_lines = EXPECTED[level]
    assert props["JobStatus"] == "COMPLETED_WITH_ERRORS"
    assert props["ValidationLevel"] == level and props["JobName"] == "levels"
    assert props["JobOutputDataConfig"] == {"S3Configuration": {"S3Uri": f"s3://{bucket}/out", "KmsKeyId": KMS_KEY}}
    report = props["JobProgressReport"]
    assert report["TotalNumberOfScannedFiles"] == 1 and report["TotalNumberOfImportedFiles"] == 1
    assert report["TotalNumberOfResourcesScanned"] == 8
    assert report["TotalNumberOfResourcesImported"] == len(ok_lines)
    assert report["TotalNumberOfResourcesWithCustomerError"] == len(bad_lines)
    assert report["TotalNumberOfFilesReadWithCustomerError"] == 0

    folder = f"out/{fhir_ds}-FHIR_IMPORT-{job_id}/"
    assert keys_under(s3, bucket, folder) == {"manifest.json", "SUCCESS/data.ndjson", "FAILURE/data.ndjson"}
    manifest = json.loads(s3_text(s3, bucket, folder + "manifest.json"))
    size = len(mixed_ndjson())
    assert manifest["inputDataConfig"] == {"s3Uri": f"s3://{bucket}/in/batch/"}
    assert manifest["outputDataConfig"] == {"s3Uri": f"s3://{bucket}/{folder}", "encryptionKeyID": KMS_KEY}
    assert manifest["successOutput"] == {"successOutputS3Uri": f"s3://{bucket}/{folder}SUCCESS/"}
    assert manifest["failureOutput"] == {"failureOutputS3Uri": f"s3://{bucket}/{folder}FAILURE/"}
    assert manifest["numberOfScannedFiles"] == 1 and manifest["numberOfFilesImported"] == 1
    assert manifest["sizeOfScannedFilesInMB"] == round(size / 1e6, 6)
    assert 0 < manifest["sizeOfDataImportedSuccessfullyInMB"] <= manifest["sizeOfScannedFilesInMB"]
    assert manifest["numberOfResourcesScanned"] == 8
    assert manifest["numberOfResourcesImportedSuccessfully"] == len(ok_lines)
    assert manifest["numberOfResourcesWithCustomerError"] == len(bad_lines)
    assert manifest["numberOfResourcesWithServerError"] == 0

    success = [json.loads(x) for x in s3_text(s3, bucket, folder + "SUCCESS/data.ndjson").splitlines()]
    failure = [json.loads(x) for x in s3_text(s3, bucket, folder + "FAILURE/data.ndjson").splitlines()]
    assert [x["lineNumber"] for x in success] == ok_lines
    assert all(x["file"] == "in/batch/data.ndjson" and x["versionId"] == "1" for x in success)
    assert [x["lineNumber"] for x in failure] == bad_lines
    codes = {x["lineNumber"]: [i["code"] for i in x["operationOutcome"]["issue"]] for x in failure}
    assert codes[4] == ["required"] and codes[6] == ["structure"] and codes[7] == ["not-supported"]
    if level != "minimal":
        assert codes[5] == ["structure"]
        assert failure[1]["operationOutcome"]["issue"][0]["expression"] == ["ImagingStudy.numberOfSeries"]
    if level == "strict":
        # Value sets are checked once the structure is complete, so the missing subject is what is reported.
        assert codes[8] == ["required"]
    # Failure reasons never echo element values (they may be patient data).
    assert "three" not in s3_text(s3, bucket, folder + "FAILURE/data.ndjson")


def test_import_all_valid_single_object_then_read_and_search(hl: Any, s3: Any, bucket: str, fhir_ds: str,
                                                             emulator_url: str) -> None:
    lines = [patient(), endpoint(), imaging_study(), imaging_study("study-2", "1.2.826.0.1.3680043.8.498.2")]
    s3.put_object(Bucket=bucket, Key="single/route.ndjson", Body="\n".join(json.dumps(x) for x in lines).encode())
    s3.put_object(Bucket=bucket, Key="single/route.ndjson.bak", Body=b"not part of this import")
    job_id = start_import(hl, fhir_ds, bucket, "single/route.ndjson")
    props = wait_fhir_job(hl, fhir_ds, job_id)
    assert props["JobStatus"] == "COMPLETED" and props["ValidationLevel"] == "strict"
    assert props["JobProgressReport"]["TotalNumberOfResourcesImported"] == 4
    assert keys_under(s3, bucket, f"out/{fhir_ds}-FHIR_IMPORT-{job_id}/") == {"manifest.json",
                                                                               "SUCCESS/route.ndjson"}

    base = f"/datastore/{fhir_ds}/r4"
    status, headers, study = call(emulator_url, "GET", f"{base}/ImagingStudy/study-1")
    assert status == 200 and headers["content-type"] == "application/fhir+json"
    assert study["identifier"] == imaging_study()["identifier"]
    assert study["meta"]["versionId"] == "1" and study["meta"]["lastUpdated"].endswith("Z")

    query = urllib.parse.urlencode({"identifier": f"urn:dicom:uid|urn:oid:{STUDY_UID}"})
    status, _, bundle = call(emulator_url, "GET", f"{base}/ImagingStudy?{query}")
    assert status == 200 and bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    assert bundle["total"] == 1
    entry = bundle["entry"][0]
    assert entry["resource"]["id"] == "study-1" and entry["search"] == {"mode": "match"}
    assert entry["fullUrl"] == f"{emulator_url}{base}/ImagingStudy/study-1"
    # The image-set identifier and the Endpoint it links to are there for the route stage to check.
    assert entry["resource"]["series"][0]["endpoint"] == [{"reference": "Endpoint/hi-endpoint"}]
    status, _, ep = call(emulator_url, "GET", f"{base}/Endpoint/hi-endpoint")
    assert ep["connectionType"]["code"] == "dicom-wado-rs" and ep["address"].endswith(HI_DATASTORE)

    def total(q: str) -> int:
        st, _, b = call(emulator_url, "GET", f"{base}/ImagingStudy?{q}")
        assert st == 200, b
        return int(b["total"])

    assert total("_id=study-2") == 1
    assert total("_id=study-1,study-2") == 2
    assert total(urllib.parse.urlencode({"identifier": f"urn:aws:healthimaging:imageset|{IMAGE_SET}"})) == 2
    assert total(urllib.parse.urlencode({"identifier": f"urn:oid:{STUDY_UID}"})) == 1  # any system
    assert total(urllib.parse.urlencode({"identifier": "urn:dicom:uid|urn:oid:9.9"})) == 0
    assert total(urllib.parse.urlencode({"identifier": f"urn:dicom:uid|urn:oid:{STUDY_UID}", "_id": "study-2"})) == 0
    assert total("") == 2

    status, headers, outcome = call(emulator_url, "GET", f"{base}/ImagingStudy/nope")
    assert status == 404 and outcome["resourceType"] == "OperationOutcome"
    assert headers["x-amzn-errortype"] == "ResourceNotFoundException"
    status, _, outcome = call(emulator_url, "GET", f"{base}/ImagingStudy?modality=CT")
    assert status == 400 and outcome["issue"][0]["code"] == "not-supported"

    # Re-importing the same resources makes version 2.
    job2 = start_import(hl, fhir_ds, bucket, "single/route.ndjson")
    assert wait_fhir_job(hl, fhir_ds, job2)["JobStatus"] == "COMPLETED"
    assert call(emulator_url, "GET", f"{base}/ImagingStudy/study-1")[2]["meta"]["versionId"] == "2"


def test_kms_key_is_required(hl: Any, hl_raw: Any, bucket: str, fhir_ds: str) -> None:
    params = {"DatastoreId": fhir_ds, "DataAccessRoleArn": ROLE_ARN,
              "InputDataConfig": {"S3Uri": f"s3://{bucket}/in/"},
              "JobOutputDataConfig": {"S3Configuration": {"S3Uri": f"s3://{bucket}/out"}}}
    with pytest.raises(ParamValidationError):  # botocore itself refuses it client-side
        hl.start_fhir_import_job(**params)
    with pytest.raises(ClientError) as exc:
        hl_raw.start_fhir_import_job(**params)
    assert error_of(exc) == ("ValidationException", 400,
                             "1 validation error detected: Value null at 'jobOutputDataConfig.s3Configuration.kmsKeyId' "
                             "failed to satisfy constraint: Member must not be null")


def test_import_idempotency_listing_and_failed_job(hl: Any, s3: Any, bucket: str, fhir_ds: str) -> None:
    s3.put_object(Bucket=bucket, Key="idem/a.ndjson", Body=json.dumps(patient()).encode())
    token = unique("job")
    first = start_import(hl, fhir_ds, bucket, "idem/", ClientToken=token, JobName="first")
    assert start_import(hl, fhir_ds, bucket, "idem/", ClientToken=token, JobName="first") == first
    with pytest.raises(ClientError) as exc:
        start_import(hl, fhir_ds, bucket, "idem/", ClientToken=token, JobName="changed")
    assert error_of(exc)[0] == "ValidationException"
    second = start_import(hl, fhir_ds, bucket, "idem/", JobName="second")
    empty = start_import(hl, fhir_ds, bucket, "nothing-here/", JobName="empty")
    for job in (first, second):
        assert wait_fhir_job(hl, fhir_ds, job)["JobStatus"] == "COMPLETED"
    failed = wait_fhir_job(hl, fhir_ds, empty)
    assert failed["JobStatus"] == "FAILED" and "No files" in failed["Message"]

    listed = hl.list_fhir_import_jobs(DatastoreId=fhir_ds)["ImportJobPropertiesList"]
    assert [j["JobId"] for j in listed] == [first, second, empty]
    page1 = hl.list_fhir_import_jobs(DatastoreId=fhir_ds, MaxResults=2)
    assert len(page1["ImportJobPropertiesList"]) == 2 and page1["NextToken"]
    page2 = hl.list_fhir_import_jobs(DatastoreId=fhir_ds, MaxResults=2, NextToken=page1["NextToken"])
    assert [j["JobId"] for j in page2["ImportJobPropertiesList"]] == [empty] and "NextToken" not in page2
    by_name = hl.list_fhir_import_jobs(DatastoreId=fhir_ds, JobName="second")["ImportJobPropertiesList"]
    assert [j["JobId"] for j in by_name] == [second]
    by_status = hl.list_fhir_import_jobs(DatastoreId=fhir_ds, JobStatus="FAILED")["ImportJobPropertiesList"]
    assert [j["JobId"] for j in by_status] == [empty]
    assert hl.list_fhir_import_jobs(DatastoreId=fhir_ds, SubmittedAfter=time.time() + 60)[
        "ImportJobPropertiesList"] == []


# ---------------------------------------------------------------------------------------------- $validate


def test_validate_happy_and_failing(fhir_ds: str, emulator_url: str) -> None:
    base = f"/datastore/{fhir_ds}/r4"
    headers = {"Content-Type": "application/fhir+json"}
    status, _, outcome = call(emulator_url, "POST", f"{base}/ImagingStudy/$validate",
                              json.dumps(imaging_study()).encode(), headers)
    assert status == 200 and outcome["issue"] == [{"severity": "information", "code": "informational",
                                                   "diagnostics": "All OK"}]
    # A Parameters payload, a create without an id, and the [type]/[id] form.
    params = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": {
        k: v for k, v in patient().items() if k != "id"}}, {"name": "mode", "valueString": "create"}]}
    status, _, outcome = call(emulator_url, "POST", f"{base}/Patient/$validate", json.dumps(params).encode(), headers)
    assert status == 200 and outcome["issue"][0]["severity"] == "information"
    status, _, outcome = call(emulator_url, "POST", f"{base}/Endpoint/hi-endpoint/%24validate",
                              json.dumps(endpoint()).encode(), headers)
    assert status == 200 and outcome["issue"][0]["severity"] == "information"

    broken = {"resourceType": "ImagingStudy", "id": "v1", "status": "available", "numberOfSeries": "lots"}
    status, _, outcome = call(emulator_url, "POST", f"{base}/ImagingStudy/$validate", json.dumps(broken).encode(),
                              headers)
    assert status == 200
    assert [(i["severity"], i["code"], i["expression"]) for i in outcome["issue"]] == [
        ("error", "structure", ["ImagingStudy.numberOfSeries"]), ("error", "required", ["ImagingStudy.subject"])]
    assert "lots" not in json.dumps(outcome)
    status, _, outcome = call(emulator_url, "POST", f"{base}/Patient/$validate",
                              json.dumps({**patient(), "gender": "robot"}).encode(), headers)
    assert outcome["issue"][0]["code"] == "code-invalid" and outcome["issue"][0]["expression"] == ["Patient.gender"]
    status, _, outcome = call(emulator_url, "POST", f"{base}/Patient/$validate", json.dumps(endpoint()).encode(),
                              headers)
    assert outcome["issue"][0]["code"] == "invalid"
    status, _, outcome = call(emulator_url, "POST", f"{base}/Patient/$validate", b"{nope", headers)
    assert status == 400 and outcome["issue"][0]["code"] == "structure"
    # $validate never stores anything.
    status, _, _ = call(emulator_url, "GET", f"{base}/ImagingStudy/study-1")
    assert status == 404


# ---------------------------------------------------------------------------------------------- hostile input


def test_hostile_requests_get_aws_shaped_errors(fhir_ds: str, emulator_url: str, hl: Any) -> None:
    status, headers, body = json_call(emulator_url, "HealthLake.DescribeFHIRDatastore", b"{not json")
    assert status == 400 and body["__type"].endswith("#SerializationException")
    assert headers["content-type"] == "application/x-amz-json-1.0"
    status, _, body = json_call(emulator_url, "HealthLake.DescribeFHIRDatastore", b"[1, 2]")
    assert status == 400 and body["__type"].endswith("#SerializationException")
    status, _, body = json_call(emulator_url, "HealthLake.DescribeFHIRDatastore", b'{"DatastoreId": 7}')
    assert status == 400 and body["__type"].endswith("#SerializationException")
    status, _, body = json_call(emulator_url, "HealthLake.LaunchRockets", b"{}")
    assert status == 400 and body["__type"].endswith("#UnknownOperationException")
    status, _, body = json_call(emulator_url, "HealthLake.StartFHIRExportJob", b"{}")
    assert body["__type"].endswith("#ValidationException")  # modelled: validated first
    arn = f"arn:aws:healthlake:us-east-1:123456789012:datastore/fhir/{fhir_ds}"
    status, _, body = json_call(emulator_url, "HealthLake.ListTagsForResource", json.dumps({"ResourceARN": arn}).encode())
    assert status == 501 and body["__type"].endswith("#NotImplementedException")
    status, _, body = json_call(emulator_url, "HealthLake.DescribeFHIRDatastore",
                                b'{"DatastoreId": "../../etc/passwd"}')
    assert status == 400 and body["__type"].endswith("#ResourceNotFoundException")
    assert "passwd" not in body["Message"]

    base = f"/datastore/{fhir_ds}/r4"
    for path in (f"{base}/ImagingStudy/..%2F..%2Fetc%2Fpasswd", f"{base}/../../_emulator/reset",
                 f"{base}/ImagingStudy/%2e%2e", "/datastore/..%2F..%2Fetc/r4/ImagingStudy/x"):
        status, headers, outcome = call(emulator_url, "GET", path)
        assert status in (400, 404), path
        assert outcome["resourceType"] == "OperationOutcome" and headers["x-amzn-errortype"]
    status, _, outcome = call(emulator_url, "GET", f"{base}/Starship/x")
    assert status == 400 and outcome["issue"][0]["code"] == "not-supported"

    oversized = json.dumps({**patient(), "text": {"status": "generated",
                                                  "div": "<div>" + "x" * (5 * 1024 * 1024) + "</div>"}}).encode()
    status, headers, outcome = call(emulator_url, "POST", f"{base}/Patient/$validate", oversized,
                                    {"Content-Type": "application/fhir+json"})
    assert status == 413 and outcome["issue"][0]["code"] == "too-long"

    # The server is still healthy and still answers the real API.
    assert call(emulator_url, "GET", "/_emulator/health")[2] == {"status": "ok"}
    assert hl.describe_fhir_datastore(DatastoreId=fhir_ds)["DatastoreProperties"]["DatastoreStatus"] == "ACTIVE"


# ---------------------------------------------------------------------------------------------- persistence


def test_state_survives_restart(private_emulator: Any, s3: Any, bucket: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "hl-persist"
    args = ("--healthlake-datastore-create-seconds", "0.3", "--healthlake-max-resource-bytes", "4096")
    first: ServerProcess = private_emulator(*args, data_dir=data_dir)
    hl1 = make_healthlake(first.url)
    ds_id = hl1.create_fhir_datastore(DatastoreTypeVersion="R4")["DatastoreId"]
    assert hl1.describe_fhir_datastore(DatastoreId=ds_id)["DatastoreProperties"]["DatastoreStatus"] == "CREATING"
    with pytest.raises(ClientError) as exc:
        start_import(hl1, ds_id, bucket, "p/")
    assert error_of(exc)[0] == "ValidationException"  # not ACTIVE yet
    wait_until(lambda: hl1.describe_fhir_datastore(DatastoreId=ds_id)["DatastoreProperties"]["DatastoreStatus"]
               == "ACTIVE", "the FHIR data store to become ACTIVE", timeout=10)
    big = {**patient("big"), "text": {"status": "generated", "div": "<div>" + "y" * 5000 + "</div>"}}
    s3.put_object(Bucket=bucket, Key="p/data.ndjson",
                  Body="\n".join(json.dumps(x) for x in (imaging_study(), big, patient())).encode())
    job_id = start_import(hl1, ds_id, bucket, "p/")
    props = wait_fhir_job(hl1, ds_id, job_id)
    assert props["JobStatus"] == "COMPLETED_WITH_ERRORS"
    failure = s3_text(s3, bucket, f"out/{ds_id}-FHIR_IMPORT-{job_id}/FAILURE/data.ndjson")
    assert json.loads(failure)["operationOutcome"]["issue"][0]["code"] == "too-long"
    first.stop()

    second: ServerProcess = private_emulator(*args, data_dir=data_dir)
    hl2 = make_healthlake(second.url)
    assert hl2.describe_fhir_datastore(DatastoreId=ds_id)["DatastoreProperties"]["DatastoreStatus"] == "ACTIVE"
    again = hl2.describe_fhir_import_job(DatastoreId=ds_id, JobId=job_id)["ImportJobProperties"]
    assert again["JobStatus"] == "COMPLETED_WITH_ERRORS"
    assert again["JobProgressReport"] == props["JobProgressReport"]
    status, _, study = call(second.url, "GET", f"/datastore/{ds_id}/r4/ImagingStudy/study-1")
    assert status == 200 and study["id"] == "study-1"
    query = urllib.parse.urlencode({"identifier": f"urn:dicom:uid|urn:oid:{STUDY_UID}"})
    assert call(second.url, "GET", f"/datastore/{ds_id}/r4/ImagingStudy?{query}")[2]["total"] == 1
