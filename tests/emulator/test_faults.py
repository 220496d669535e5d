"""Fault injection through ``/_emulator/faults`` (and ``--faults``), each kind observed through boto3 and S3."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.emulator.conftest import Importer, create_datastore, dicom_bytes, wait_job
from tests.emulator.resilience_support import admin, error_of, strict_client
from tests.support.eventually import assert_eventually_sync
from tests.support.servers import ServerProcess, start_emulator


@pytest.fixture(scope="module")
def emu(moto_url: str, log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_emulator(tmp_path_factory.mktemp("faults"), moto_url, log_dir, extra_args=["--events", "off"])
    yield server
    server.stop()


@pytest.fixture
def mi(emu: ServerProcess) -> Iterator[Any]:
    yield strict_client(emu.url)
    admin(emu.url, "DELETE", "faults")


@pytest.fixture
def imp(mi: Any, s3: Any, bucket: str) -> Importer:
    return Importer(s3, mi, bucket, create_datastore(mi))


def add(emu: ServerProcess, *specs: dict[str, Any]) -> list[dict[str, Any]]:
    faults: list[dict[str, Any]] = admin(emu.url, "POST", "faults", list(specs))["faults"]
    return faults


def files(n: int, base: str) -> dict[str, bytes]:
    return {f"{i}.dcm": dicom_bytes(sop=f"{base}.{i}") for i in range(n)}


def test_admin_endpoints_validate_list_and_remove(emu: ServerProcess, mi: Any) -> None:
    assert admin(emu.url, "POST", "faults", {"kind": "nope"})[:3:2] == (400, "ValidationException")
    assert admin(emu.url, "POST", "faults", {"kind": "throttle", "operaton": "X"})[0] == 400  # typo'd target
    assert admin(emu.url, "POST", "faults", {"kind": "throttle", "rate": 2})[0] == 400
    one, two = add(emu, {"kind": "throttle", "operation": "ListDatastores", "count": 3},
                   {"kind": "server_error", "operation": "Get*", "rate": 0.5, "seed": 1})
    assert one == {"id": one["id"], "kind": "throttle", "operation": "ListDatastores", "count": 3, "fired": 0,
                   "remaining": 3}
    assert [f["id"] for f in admin(emu.url, "GET", "faults")["faults"]] == [one["id"], two["id"]]
    assert admin(emu.url, "DELETE", f"faults/{one['id']}") == {"removed": 1}
    assert admin(emu.url, "DELETE", f"faults/{one['id']}")[0] == 404
    assert admin(emu.url, "DELETE", "faults") == {"removed": 1}


def test_throttle_fault_exact_count(emu: ServerProcess, mi: Any) -> None:
    add(emu, {"kind": "throttle", "operation": "ListDatastores", "count": 2})
    for _ in range(2):
        with pytest.raises(ClientError) as exc:
            mi.list_datastores()
        assert error_of(exc) == ("ThrottlingException", 429)
    mi.list_datastores()  # spent: the third call passes (and the buckets are off in this emulator)
    assert admin(emu.url, "GET", "faults")["faults"][0]["remaining"] == 0


def test_access_denied_fault_targets_one_data_store(emu: ServerProcess, mi: Any) -> None:
    denied, allowed = create_datastore(mi), create_datastore(mi)
    add(emu, {"kind": "access_denied", "operation": "GetDatastore", "datastoreId": denied})
    with pytest.raises(ClientError) as exc:
        mi.get_datastore(datastoreId=denied)
    assert error_of(exc) == ("AccessDeniedException", 403)
    assert "medical-imaging:GetDatastore" in str(exc.value)
    mi.get_datastore(datastoreId=allowed)  # another data store, another operation: not targeted
    mi.list_datastores()


def test_rate_faults_are_repeatable_with_a_seed(emu: ServerProcess, mi: Any) -> None:
    def pattern() -> list[bool]:
        (fault,) = add(emu, {"kind": "throttle", "operation": "ListDatastores", "rate": 0.5, "seed": 42})
        outcome = []
        for _ in range(16):
            try:
                mi.list_datastores()
                outcome.append(False)
            except ClientError:
                outcome.append(True)
        admin(emu.url, "DELETE", f"faults/{fault['id']}")
        return outcome

    first = pattern()
    assert 0 < sum(first) < 16
    assert pattern() == first


def test_server_error_then_success_and_job_targeting(emu: ServerProcess, mi: Any, imp: Importer) -> None:
    props = imp.run("se/in/", files(1, "1.2.826.0.70"))
    other = imp.run("se2/in/", files(1, "1.2.826.0.71"))
    add(emu, {"kind": "server_error", "operation": "GetDICOMImportJob", "jobId": props["jobId"], "count": 1})
    mi.get_dicom_import_job(datastoreId=imp.datastore_id, jobId=other["jobId"])  # another job: not targeted
    with pytest.raises(ClientError) as exc:
        mi.get_dicom_import_job(datastoreId=imp.datastore_id, jobId=props["jobId"])
    assert error_of(exc) == ("InternalServerException", 500)
    assert mi.get_dicom_import_job(datastoreId=imp.datastore_id, jobId=props["jobId"])["jobProperties"][
        "jobStatus"] == "COMPLETED"


def test_server_error_after_the_operation_took_effect(emu: ServerProcess, mi: Any, imp: Importer) -> None:
    imp.upload("after/in/", files(1, "1.2.826.0.72"))
    add(emu, {"kind": "server_error", "operation": "StartDICOMImportJob", "phase": "after", "count": 1})
    with pytest.raises(ClientError) as exc:
        imp.start("after/in/", token="ambiguous-start")
    assert error_of(exc) == ("InternalServerException", 500)
    # The job was created anyway: the client's retry with the same clientToken gets it back.
    job = imp.start("after/in/", token="ambiguous-start")
    jobs = mi.list_dicom_import_jobs(datastoreId=imp.datastore_id)["jobSummaries"]
    assert [j["jobId"] for j in jobs] == [job["jobId"]]


def test_failed_job_still_writes_manifest_and_failure_ndjson(emu: ServerProcess, imp: Importer) -> None:
    add(emu, {"kind": "job_failed", "jobName": "doomed-*", "message": "Injected failure"})
    imp.upload("fail/in/", files(3, "1.2.826.0.73"))
    job = imp.mi.start_dicom_import_job(
        datastoreId=imp.datastore_id, dataAccessRoleArn="arn:aws:iam::123456789012:role/r", jobName="doomed-1",
        inputS3Uri=f"s3://{imp.bucket}/fail/in/", outputS3Uri=f"s3://{imp.bucket}/out/")
    props = wait_job(imp.mi, imp.datastore_id, job["jobId"])
    assert (props["jobStatus"], props["message"]) == ("FAILED", "Injected failure")
    result = imp.results(props)
    summary = result["manifest"]
    assert summary["numberOfScannedFiles"] == 3 and summary["numberOfImportedFiles"] == 0
    assert summary["numberOfFilesWithServerError"] == 3 and summary["imageSetsSummary"] == []
    assert {line["exception"]["exceptionType"] for line in result["failure"]} == {"InternalServerException"}
    assert sorted(line["inputFile"] for line in result["failure"]) == [f"fail/in/{i}.dcm" for i in range(3)]
    assert result["success"] == [] and result["warning"] == []


def test_per_file_server_error_is_counted(emu: ServerProcess, imp: Importer) -> None:
    add(emu, {"kind": "file_server_error", "file": "*/1.dcm"})
    props = imp.run("fse/in/", files(3, "1.2.826.0.74"))
    assert props["jobStatus"] == "COMPLETED"
    result = imp.results(props)
    assert result["failure"] == [{"inputFile": "fse/in/1.dcm", "exception": {
        "exceptionType": "InternalServerException", "message": "An internal error occurred while importing the file"}}]
    summary = result["manifest"]
    assert (summary["numberOfImportedFiles"], summary["numberOfFilesWithServerError"],
            summary["numberOfFilesWithCustomerError"]) == (2, 1, 0)


def test_warning_line_shape(emu: ServerProcess, imp: Importer) -> None:
    add(emu, {"kind": "file_warning", "file": "warn/in/0.dcm"})
    props = imp.run("warn/in/", files(2, "1.2.826.0.75"))
    result = imp.results(props)
    (line,) = result["warning"]
    set_id = result["manifest"]["imageSetsSummary"][0]["imageSetId"]
    assert line == {"inputFile": "warn/in/0.dcm", "importResponse": {
        "imageSetId": set_id, "imageSetVersion": 1, "isPrimary": True,
        "warnings": [{"warning_reason_code": 45330, "type": "InvalidOffsetTable",
                      "message": "The file was imported but contains an invalid offset table"}]}}
    assert [s["inputFile"] for s in result["success"]] == ["warn/in/1.dcm"]
    assert result["manifest"]["numberOfImportedFiles"] == 2  # a warned file is still imported
    assert result["manifest"]["imageSetsSummary"][0]["numberOfMatchedSOPInstances"] == 2


def test_strict_trailing_padding_fails_only_padded_files(emu: ServerProcess, imp: Importer) -> None:
    def unpadded(sop: str) -> bytes:
        return dicom_bytes(sop=sop, mutate=lambda ds: ds.__delitem__(0xFFFCFFFC))  # ends at Pixel Data

    batch = {"padded.dcm": unpadded("1.2.826.0.79.1") + b"\0" * 8, "plain.dcm": unpadded("1.2.826.0.79.2")}
    lenient = imp.results(imp.run("pad/lenient/", batch))
    assert sorted(s["inputFile"] for s in lenient["success"]) == ["pad/lenient/padded.dcm", "pad/lenient/plain.dcm"]
    add(emu, {"kind": "strict_trailing_padding", "file": "pad/strict/*"})
    strict = imp.results(imp.run("pad/strict/", batch))
    assert strict["failure"] == [{"inputFile": "pad/strict/padded.dcm", "exception": {
        "exceptionType": "ValidationException", "message": "Input file is truncated: 8 trailing bytes after element "
                                                           "(7FE0,0010) do not form a complete data element"}}]
    assert [s["inputFile"] for s in strict["success"]] == ["pad/strict/plain.dcm"]
    assert strict["manifest"]["numberOfFilesWithCustomerError"] == 1


def test_manifest_appears_after_a_delay(emu: ServerProcess, imp: Importer) -> None:
    # Long enough that a loaded machine cannot spend it between the poll that sees COMPLETED and the read below
    # (1 s once did, in a full suite run on 2 cores); the wait for the manifest is bounded well past it.
    add(emu, {"kind": "manifest_delay", "delaySeconds": 10.0})
    props = imp.run("late/in/", files(1, "1.2.826.0.76"))
    assert props["jobStatus"] == "COMPLETED"
    bucket, key = imp.bucket, props["outputS3Uri"][len(f"s3://{imp.bucket}/"):] + "job-output-manifest.json"
    with pytest.raises(ClientError) as exc:
        imp.s3.get_object(Bucket=bucket, Key=key)
    assert exc.value.response["Error"]["Code"] == "NoSuchKey"
    assert imp.read(props["outputS3Uri"] + "SUCCESS/success.ndjson")  # the rest is already there

    def written() -> Any:
        try:
            return json.loads(imp.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        except ClientError as err:
            raise AssertionError("manifest never appeared") from err

    manifest = assert_eventually_sync(written, timeout=60, interval=0.1)
    assert manifest["jobSummary"]["numberOfImportedFiles"] == 1


def test_crash_mid_job_then_resume_after_restart(moto_url: str, log_dir: Path, tmp_path: Path, s3: Any,
                                                 bucket: str) -> None:
    data_dir = tmp_path / "crash"
    first = start_emulator(data_dir, moto_url, log_dir, extra_args=["--events", "off", "--threads", "2"])
    second: ServerProcess | None = None
    try:
        mi = strict_client(first.url)
        imp = Importer(s3, mi, bucket, create_datastore(mi))
        imp.upload("crash/in/", files(6, "1.2.826.0.77"))
        add(first, {"kind": "crash", "afterFiles": 2, "exitCode": 75})
        job_id = imp.start("crash/in/", token="crash-me")["jobId"]
        assert first.proc.wait(timeout=20) == 75  # the process died mid-job, like a kill -9

        # The restart brings a start-up fault (the --faults flag); the crash fault lived in memory only.
        second = start_emulator(data_dir, moto_url, log_dir, extra_args=[
            "--events", "off", "--faults", json.dumps({"kind": "file_warning", "file": "*/5.dcm"})])
        imp.mi = strict_client(second.url)
        props = wait_job(imp.mi, imp.datastore_id, job_id)
        assert props["jobStatus"] == "COMPLETED"
        result = imp.results(props)
        accounted = [line["inputFile"] for line in result["success"] + result["warning"] + result["failure"]]
        assert sorted(accounted) == [f"crash/in/{i}.dcm" for i in range(6)]  # each file exactly once
        assert [w["inputFile"] for w in result["warning"]] == ["crash/in/5.dcm"]
        summary = result["manifest"]
        assert (summary["numberOfScannedFiles"], summary["numberOfImportedFiles"]) == (6, 6)
        assert summary["imageSetsSummary"][0]["numberOfMatchedSOPInstances"] == 6
        assert summary["imageSetsSummary"][0]["imageSetVersion"] == 1
        assert admin(second.url, "GET", "faults")["faults"][0]["kind"] == "file_warning"
    finally:
        first.stop()
        if second is not None:
            second.stop()
