"""Cross-account sources (#15 item 10): an in-place import from another account's bucket names that account.

start_import_job runs as a worker runs it, against moto (S3) and the emulator (StartDICOMImportJob), which records
the ``inputOwnerAccountId`` it accepted. The owner is declared in the migration input; it is validated there and by
the emulator (12 ASCII digits, as the service model says).
"""

from __future__ import annotations

import uuid
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from pydantic import ValidationError
from temporalio.testing import ActivityEnvironment

from activities.importjob import ImportActivities, input_owner
from activities.storage import put_ndjson
from contracts import layout
from contracts.batch import BatchInput
from contracts.migration import MigrationInput
from contracts.records import InstanceRecord
from contracts.stages import BatchPlan
from tests.conftest import emulator_admin
from tests.emulator.conftest import ROLE_ARN, create_datastore, dicom_bytes
from tests.support.dicom import uid

OTHER_ACCOUNT = "210987654321"
# Twelve digits to Python's \d, but not to Java's (nor to the service model's pattern): not an account id.
FULLWIDTH = OTHER_ACCOUNT.translate({ord(d): ord(d) - ord("0") + 0xFF10 for d in "0123456789"})
ARABIC_INDIC = OTHER_ACCOUNT.translate({ord(d): ord(d) - ord("0") + 0x0660 for d in "0123456789"})


def _bucket(s3: Any, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    return name


def _batch(s3: Any, datastore_id: str, owner: str | None, in_place: bool) -> BatchInput:
    """One planned batch of two files in a source folder (planned in place or not), written as planning does."""
    source, work = _bucket(s3, "src"), _bucket(s3, "work")
    study, series = uid(), uid()
    files = []
    for name in ("a.dcm", "b.dcm"):
        sop = uid()
        body = dicom_bytes(study, series, sop)
        etag = s3.put_object(Bucket=source, Key=f"in/s1/{name}", Body=body)["ETag"].strip('"')
        files.append(InstanceRecord(key=f"in/s1/{name}", size=len(body), etag=etag, sop_instance_uid=sop,
                                    study_instance_uid=study, series_instance_uid=series,
                                    transfer_syntax_uid="1.2.840.10008.1.2.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                                    patient_fingerprint="p", study_fingerprint="s", series_fingerprint="se",
                                    content_id=sop))
    batch = BatchInput(migration_id=f"m-{uuid.uuid4().hex[:8]}", batch=0, source_s3_uri=f"s3://{source}/in/",
                       work_s3_uri=f"s3://{work}/w/", datastore_id=datastore_id, source_owner_account_id=owner)
    put_ndjson(s3, layout.batch_manifest(batch.work_s3_uri, batch.migration_id, 0), files)
    plan = BatchPlan(files=2, bytes=sum(f.size for f in files), studies=1,
                     direct_input_s3_uri=f"s3://{source}/in/s1/" if in_place else None)
    s3.put_object(Bucket=work, Key=layout.batch_meta(batch.work_s3_uri, batch.migration_id, 0).key,
                  Body=plan.model_dump_json().encode())
    return batch


def _recorded_owner(emulator_url: str, job_id: str) -> str | None:
    [job] = [j for j in emulator_admin(emulator_url, "state")["jobs"] if j["jobId"] == job_id]
    owner: str | None = job["inputOwnerAccountId"]
    return owner


@pytest.mark.parametrize(("owner", "in_place", "sent"), [
    pytest.param(OTHER_ACCOUNT, True, OTHER_ACCOUNT, id="in-place-from-another-account"),
    pytest.param(OTHER_ACCOUNT, False, None, id="staged-copy-is-in-our-bucket"),
    pytest.param(None, True, None, id="in-place-from-our-account"),
])
def test_the_owner_goes_with_in_place_imports_only(s3: Any, medical_imaging: Any, emulator_url: str,
                                                   owner: str | None, in_place: bool, sent: str | None) -> None:
    datastore_id = create_datastore(medical_imaging)
    batch = _batch(s3, datastore_id, owner, in_place)
    ref = ActivityEnvironment().run(ImportActivities(s3, medical_imaging, ROLE_ARN).start_import_job, batch)
    assert ref.direct is in_place and ref.staged_files == 2
    assert _recorded_owner(emulator_url, ref.job_id) == sent
    # A retried activity gets the same job back: the owner is part of the same request, not a conflict.
    again = ActivityEnvironment().run(ImportActivities(s3, medical_imaging, ROLE_ARN).start_import_job, batch)
    assert again.job_id == ref.job_id


def test_input_owner_is_only_for_direct_batches() -> None:
    batch = BatchInput(migration_id="m", batch=0, source_s3_uri="s3://a/b/", work_s3_uri="s3://c/d/",
                       datastore_id="0" * 32, source_owner_account_id=OTHER_ACCOUNT)
    assert input_owner(batch, True) == {"inputOwnerAccountId": OTHER_ACCOUNT}
    assert input_owner(batch, False) == {}
    assert input_owner(batch.model_copy(update={"source_owner_account_id": None}), True) == {}


@pytest.mark.parametrize("value", ["12345678901", "1234567890123", "21098765432x", FULLWIDTH, ARABIC_INDIC,
                                   " 210987654321", 210987654321, "", True])
def test_a_malformed_owner_is_refused_naming_the_field(value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        MigrationInput.model_validate({"source_s3_uri": "s3://src/in/", "work_s3_uri": "s3://work/w/",
                                       "datastore_id": "0" * 32, "source_owner_account_id": value})
    assert [e["loc"] for e in info.value.errors()] == [("source_owner_account_id",)]


@pytest.mark.parametrize("value", ["12345", "1234567890123", ARABIC_INDIC, FULLWIDTH, "21098765432a"])
def test_the_emulator_validates_input_owner_account_id(emulator_url: str, value: str) -> None:
    # botocore would refuse some of these itself; the emulator must refuse all of them on its own.
    unchecked = boto3.client("medical-imaging", endpoint_url=emulator_url, region_name="us-east-1",
                             config=Config(inject_host_prefix=False, parameter_validation=False,
                                           retries={"max_attempts": 1}))
    datastore_id = create_datastore(unchecked)
    with pytest.raises(ClientError) as info:
        unchecked.start_dicom_import_job(
            datastoreId=datastore_id, dataAccessRoleArn=ROLE_ARN, clientToken=uuid.uuid4().hex,
            inputS3Uri="s3://nowhere-bucket/in/", outputS3Uri="s3://nowhere-bucket/out/", inputOwnerAccountId=value)
    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert "inputOwnerAccountId" in info.value.response["Error"]["Message"]
