"""Token-bucket throttling with AWS's published rates (429 ThrottlingException) and the concurrent-job quota (402).

A dedicated emulator runs with ``--throttling on`` (the shared fixtures switch it off), so the buckets are real.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.emulator.conftest import ROLE_ARN, client_for, create_datastore, unique
from tests.emulator.resilience_support import admin, error_of, strict_client
from tests.support.servers import ServerProcess, start_emulator


@pytest.fixture(scope="module")
def throttled(moto_url: str, log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_emulator(tmp_path_factory.mktemp("throttled"), moto_url, log_dir,
                            extra_args=["--throttling", "on", "--throttle-rates", "ListDatastores=0:1,StartDICOMImportJob=1:2"])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def datastore(throttled: ServerProcess) -> str:
    # CreateDatastore allows one call per ~12 s (0.085/s, burst 1): create the module's only data store once.
    return create_datastore(strict_client(throttled.url))


@pytest.fixture(autouse=True)
def full_buckets(throttled: ServerProcess) -> None:
    admin(throttled.url, "POST", "throttling", {"reset": True, "enabled": True})


def _start(mi: Any, datastore_id: str, bucket: str) -> dict[str, Any]:
    result: dict[str, Any] = mi.start_dicom_import_job(
        datastoreId=datastore_id, dataAccessRoleArn=ROLE_ARN, inputS3Uri=f"s3://{bucket}/in/",
        outputS3Uri=f"s3://{bucket}/out/", clientToken=uuid.uuid4().hex)
    return result


def _calls(fn: Any, n: int) -> tuple[int, list[tuple[str, int]]]:
    ok, errors = 0, []
    for _ in range(n):
        try:
            fn()
            ok += 1
        except ClientError as exc:
            errors.append((exc.response["Error"]["Code"], exc.response["ResponseMetadata"]["HTTPStatusCode"]))
    return ok, errors


def test_quick_start_dicom_import_jobs_are_throttled(throttled: ServerProcess, datastore: str, s3: Any,
                                                     bucket: str) -> None:
    mi = strict_client(throttled.url)
    ok, errors = _calls(lambda: _start(mi, datastore, bucket), 3)
    assert ok >= 1 and errors, "burst 2 at 1/s: three back-to-back starts cannot all pass"
    assert set(errors) == {("ThrottlingException", 429)}
    snap = admin(throttled.url, "GET", "throttling")
    assert snap["enabled"] is True
    assert snap["operations"]["StartDICOMImportJob"]["rate"] == 1.0  # the start-up override of the 40 / 80 default
    assert snap["operations"]["StartDICOMImportJob"]["burst"] == 2.0
    assert snap["operations"]["StartDICOMImportJob"]["throttled"] == len(errors)


def test_default_start_rate_is_the_newest_published_one() -> None:
    from emulator.throttling import DEFAULT_RATES

    assert DEFAULT_RATES["StartDICOMImportJob"] == (40.0, 80.0)


def test_throttling_error_has_the_rest_json_shape(throttled: ServerProcess, datastore: str) -> None:
    mi = strict_client(throttled.url)
    mi.list_datastores()  # the start-up override ListDatastores=0:1 leaves no token after this call
    with pytest.raises(ClientError) as exc:
        mi.list_datastores()
    assert error_of(exc) == ("ThrottlingException", 429)
    assert exc.value.response["Error"]["Message"] == "Rate exceeded"
    assert exc.value.response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-errortype"] == "ThrottlingException"


def test_create_datastore_allows_one_call_per_twelve_seconds(throttled: ServerProcess, datastore: str) -> None:
    mi = strict_client(throttled.url)
    mi.create_datastore(datastoreName=unique("ds"))
    with pytest.raises(ClientError) as exc:
        mi.create_datastore(datastoreName=unique("ds"))
    assert error_of(exc) == ("ThrottlingException", 429)


def test_get_dicom_import_job_burst_is_fine(throttled: ServerProcess, datastore: str, bucket: str) -> None:
    mi = strict_client(throttled.url)
    job_id = _start(mi, datastore, bucket)["jobId"]
    ok, errors = _calls(lambda: mi.get_dicom_import_job(datastoreId=datastore, jobId=job_id), 40)
    assert (ok, errors) == (40, [])  # burst 50


def test_switched_off_through_admin_nothing_is_throttled(throttled: ServerProcess, datastore: str,
                                                         bucket: str) -> None:
    mi = strict_client(throttled.url)
    assert admin(throttled.url, "POST", "throttling", {"enabled": False})["enabled"] is False
    ok, errors = _calls(lambda: _start(mi, datastore, bucket), 6)
    assert (ok, errors) == (6, [])
    admin(throttled.url, "POST", "throttling", {"enabled": True})
    assert _calls(lambda: _start(mi, datastore, bucket), 4)[1], "back on: the bucket throttles again"


def test_rates_are_configurable_through_admin(throttled: ServerProcess, datastore: str) -> None:
    mi = strict_client(throttled.url)
    snap = admin(throttled.url, "POST", "throttling", {"rates": {"GetDatastore": {"rate": 0, "burst": 2}}})
    assert snap["operations"]["GetDatastore"] == {"rate": 0.0, "burst": 2.0, "tokens": 2.0, "allowed": 0,
                                                  "throttled": 0}
    ok, errors = _calls(lambda: mi.get_datastore(datastoreId=datastore), 3)
    assert (ok, errors) == (2, [("ThrottlingException", 429)])
    # Reset restores AWS's default (10/s, burst 20).
    admin(throttled.url, "POST", "throttling", {"reset": True})
    assert _calls(lambda: mi.get_datastore(datastoreId=datastore), 10) == (10, [])
    bad = admin(throttled.url, "POST", "throttling", {"rates": {"GetDatastore": {"rate": -1, "burst": 1}}})
    assert bad[0] == 400 and bad[2] == "ValidationException"


def test_concurrent_job_quota_is_402(private_emulator: Any, s3: Any, bucket: str) -> None:
    server = private_emulator("--max-concurrent-jobs", "1", "--clock", "manual")
    mi = client_for(server)
    ds_id = create_datastore(mi)
    assert _start(mi, ds_id, bucket)["jobStatus"] == "SUBMITTED"  # held by the manual clock
    with pytest.raises(ClientError) as exc:
        _start(mi, ds_id, bucket)
    assert error_of(exc) == ("ServiceQuotaExceededException", 402)
    assert "limit 1" in exc.value.response["Error"]["Message"]
