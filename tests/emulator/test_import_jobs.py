"""Import jobs through unmodified boto3: S3 output layout, ndjson lines, manifest, idempotency, failures, quotas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from tests.conftest import emulator_admin
from tests.emulator.conftest import (
    ROLE_ARN,
    Importer,
    client_for,
    create_datastore,
    dicom_bytes,
    unique,
    wait_job,
)


def series_files(n: int, study: str = "1.2.826.0.9.1", series: str = "1.2.826.0.9.1.1",
                 patient_id: str = "PAT-A") -> dict[str, bytes]:
    return {f"img{i:03d}.dcm": dicom_bytes(study, series, f"{series}.{i}", patient_id) for i in range(n)}


class TestOutputLayout:
    def test_exact_s3_layout_and_lines(self, importer: Importer, s3: Any, datastore_id: str) -> None:
        prefix = "in/layout/"
        files = series_files(3)
        files["notes.txt"] = b"not dicom at all"
        props = importer.run(prefix, files, output=f"s3://{importer.bucket}/results")  # no trailing slash

        assert props["jobStatus"] == "COMPLETED"
        job_id = props["jobId"]
        folder = f"results/{datastore_id}-DicomImport-{job_id}/"
        assert props["outputS3Uri"] == f"s3://{importer.bucket}/{folder}"
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=importer.bucket, Prefix="results/")["Contents"])
        assert keys == [folder + k for k in ("FAILURE/failure.ndjson", "SUCCESS/success.ndjson",
                                              "WARNING/warning.ndjson", "job-output-manifest.json")]

        r = importer.results(props)
        assert [line["inputFile"] for line in r["success"]] == [f"{prefix}img00{i}.dcm" for i in range(3)]
        line = r["success"][0]
        assert set(line) == {"inputFile", "importResponse"}
        assert set(line["importResponse"]) == {"imageSetId", "imageSetVersion", "isPrimary"}
        assert line["importResponse"]["isPrimary"] is True
        assert line["importResponse"]["imageSetVersion"] == 1
        assert len({x["importResponse"]["imageSetId"] for x in r["success"]}) == 1
        assert r["failure"] == [{"inputFile": f"{prefix}notes.txt", "exception": {
            "exceptionType": "ValidationException", "message": r["failure"][0]["exception"]["message"]}}]
        assert "DICM" in r["failure"][0]["exception"]["message"]
        assert r["warning"] == []

        m = r["manifest"]
        base = props["outputS3Uri"]
        assert m["jobId"] == job_id and m["datastoreId"] == datastore_id
        assert m["inputS3Uri"] == f"s3://{importer.bucket}/{prefix}"
        assert m["outputS3Uri"] == base
        assert m["successOutputS3Uri"] == base + "SUCCESS/"
        assert m["failureOutputS3Uri"] == base + "FAILURE/"
        assert m["warningsOutputS3Uri"] == base + "WARNING/"
        assert (m["numberOfScannedFiles"], m["numberOfImportedFiles"], m["numberOfFilesWithCustomerError"],
                m["numberOfFilesWithServerError"], m["numberOfGeneratedImageSets"]) == (4, 3, 1, 0, 1)
        assert m["imageSetsSummary"] == [{
            "imageSetId": line["importResponse"]["imageSetId"], "imageSetVersion": 1, "isPrimary": True,
            "numberOfMatchedSOPInstances": 3}]

    def test_input_is_read_recursively_and_as_a_folder(self, importer: Importer) -> None:
        importer.upload("in/rec/", {"a/b/c/deep.dcm": dicom_bytes(sop="1.2.826.0.5.1"),
                                    "top.dcm": dicom_bytes(sop="1.2.826.0.5.2")})
        # A sibling whose name merely starts with the same text is not part of the folder.
        importer.upload("in/rec-other/", {"x.dcm": dicom_bytes(sop="1.2.826.0.5.3")})
        props = importer.run("in/rec")
        inputs = sorted(x["inputFile"] for x in importer.results(props)["success"])
        assert inputs == ["in/rec/a/b/c/deep.dcm", "in/rec/top.dcm"]

    def test_empty_ndjson_files_are_still_written(self, importer: Importer) -> None:
        props = importer.run("in/onlybad/", {"bad.bin": b"\x00" * 10})
        assert props["jobStatus"] == "COMPLETED"
        r = importer.results(props)
        assert r["success"] == [] and r["warning"] == [] and len(r["failure"]) == 1
        assert r["manifest"]["imageSetsSummary"] == []


def _drop(name: str) -> Any:
    def mutate(ds: Dataset) -> None:
        delattr(ds, name)
    return mutate


class TestPerFileFailures:
    @pytest.mark.parametrize(("mutate", "expected"), [
        (_drop("SOPClassUID"), "DICOM attribute SOPClassUID does not exist"),
        (_drop("StudyInstanceUID"), "DICOM attribute StudyInstanceUID does not exist"),
        (_drop("SeriesInstanceUID"), "DICOM attribute SeriesInstanceUID does not exist"),
        (lambda ds: setattr(ds, "PatientID", "P" * 300), "PatientID has length 300"),
        (lambda ds: setattr(ds, "StudyID", "S" * 17), "StudyID has length 17"),
    ])
    def test_invalid_instance_goes_to_failure_ndjson(self, importer: Importer, mutate: Any, expected: str) -> None:
        good = dicom_bytes(sop="1.2.826.0.7.1")
        bad = dicom_bytes(sop="1.2.826.0.7.2", mutate=mutate, enforce_file_format=False)
        props = importer.run("in/bad/", {"good.dcm": good, "bad.dcm": bad})
        assert props["jobStatus"] == "COMPLETED"
        r = importer.results(props)
        assert [x["inputFile"] for x in r["success"]] == ["in/bad/good.dcm"]
        (failure,) = r["failure"]
        assert failure["inputFile"] == "in/bad/bad.dcm"
        assert failure["exception"]["exceptionType"] == "ValidationException"
        assert expected in failure["exception"]["message"]

    def test_missing_transfer_syntax_dicomdir_and_truncated(self, importer: Importer) -> None:
        whole = dicom_bytes(sop="1.2.826.0.8.1")
        files = {
            "no-ts.dcm": Path(get_testdata_file("meta_missing_tsyntax.dcm")).read_bytes(),
            "DICOMDIR": Path(get_testdata_file("DICOMDIR")).read_bytes(),
            "truncated-pixels.dcm": whole[:-1000],
            "truncated-header.dcm": whole[:603],
            "empty.dcm": b"",
        }
        props = importer.run("in/odd/", files)
        r = importer.results(props)
        messages = {x["inputFile"].rsplit("/", 1)[1]: x["exception"]["message"] for x in r["failure"]}
        assert r["success"] == []
        assert messages["no-ts.dcm"] == "DICOM attribute TransferSyntaxUID does not exist"
        assert "DICOMDIR" in messages["DICOMDIR"]
        assert "truncated" in messages["truncated-pixels.dcm"]
        assert "truncated" in messages["truncated-header.dcm"]
        assert "DICM" in messages["empty.dcm"]
        assert r["manifest"]["numberOfFilesWithCustomerError"] == 5


class TestIdempotency:
    def test_same_client_token_returns_same_job(self, importer: Importer) -> None:
        importer.upload("in/idem/", series_files(1))
        first = importer.start("in/idem/", token="migration-1.batch-0001")
        again = importer.start("in/idem/", token="migration-1.batch-0001")
        assert again["jobId"] == first["jobId"]
        wait_job(importer.mi, importer.datastore_id, first["jobId"])
        after = importer.start("in/idem/", token="migration-1.batch-0001")
        assert after["jobId"] == first["jobId"] and after["jobStatus"] == "COMPLETED"
        jobs = importer.mi.list_dicom_import_jobs(datastoreId=importer.datastore_id)["jobSummaries"]
        assert [j["jobId"] for j in jobs] == [first["jobId"]]

    def test_same_token_different_parameters_conflicts(self, importer: Importer) -> None:
        importer.upload("in/idem2/", series_files(1))
        importer.start("in/idem2/", token="tok-conflict")
        with pytest.raises(ClientError) as exc:
            importer.start("in/idem2/", token="tok-conflict", output=f"s3://{importer.bucket}/elsewhere/")
        assert exc.value.response["Error"]["Code"] == "ConflictException"
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409


class TestJobListing:
    def test_list_filter_and_paginate(self, importer: Importer) -> None:
        importer.upload("in/list/", series_files(1))
        ids = [importer.start("in/list/", token=f"list-{i}")["jobId"] for i in range(5)]
        for job_id in ids:
            wait_job(importer.mi, importer.datastore_id, job_id)
        paginator = importer.mi.get_paginator("list_dicom_import_jobs")
        pages = list(paginator.paginate(datastoreId=importer.datastore_id, jobStatus="COMPLETED",
                                        PaginationConfig={"PageSize": 2}))
        assert [len(p["jobSummaries"]) for p in pages] == [2, 2, 1]
        seen = [j["jobId"] for p in pages for j in p["jobSummaries"]]
        assert sorted(seen) == sorted(ids)
        assert all(j["jobStatus"] == "COMPLETED" and j["dataAccessRoleArn"] == ROLE_ARN
                   for p in pages for j in p["jobSummaries"])
        failed = importer.mi.list_dicom_import_jobs(datastoreId=importer.datastore_id, jobStatus="FAILED")
        assert failed["jobSummaries"] == []

    def test_unreadable_input_fails_the_job(self, importer: Importer) -> None:
        props = importer.run("in/nothing-here/")
        assert props["jobStatus"] == "FAILED"
        assert props["message"]
        assert "endedAt" in props and "submittedAt" in props


class TestQuotasAndClock:
    def test_quotas_at_submit(self, private_emulator: Any, s3: Any, bucket: str) -> None:
        server = private_emulator("--max-files-per-job", "2", "--max-concurrent-jobs", "1", "--clock", "manual")
        mi = client_for(server)
        ds_id = create_datastore(mi)
        imp = Importer(s3, mi, bucket, ds_id)
        imp.upload("q/three/", series_files(3))
        imp.upload("q/one/", series_files(1))
        with pytest.raises(ClientError) as exc:
            imp.start("q/three/")
        assert exc.value.response["Error"]["Code"] == "ServiceQuotaExceededException"
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 402
        assert "limit per import job is 2" in exc.value.response["Error"]["Message"]

        held = imp.start("q/one/")  # manual clock: stays SUBMITTED
        with pytest.raises(ClientError) as exc:
            imp.start("q/one/")
        assert exc.value.response["Error"]["Code"] == "ServiceQuotaExceededException"

        # The clock releases the held job phase by phase.
        assert emulator_admin(server.url, "clock/advance", {"seconds": 1})["mode"] == "manual"
        wait_job(mi, ds_id, held["jobId"], statuses=("IN_PROGRESS",))
        emulator_admin(server.url, "clock/advance", {"seconds": 1})
        assert wait_job(mi, ds_id, held["jobId"])["jobStatus"] == "COMPLETED"
        second = imp.start("q/one/")  # the slot is free again
        done = emulator_admin(server.url, f"jobs/{second['jobId']}/advance", {"to": "COMPLETED"})
        assert done == {"jobId": second["jobId"], "jobStatus": "COMPLETED"}

    def test_stats_report_one_get_per_file(self, importer: Importer, emulator_url: str) -> None:
        props = importer.run("in/stats/", series_files(4))
        stats = emulator_admin(emulator_url, f"stats?jobId={props['jobId']}")
        (job,) = stats["jobs"]
        assert job["files"] == 4 and job["s3_get_requests"] == 4 and job["s3_put_requests"] == 4
        for key in ("read_seconds", "parse_seconds", "write_seconds", "list_seconds"):
            assert key in job
        state = emulator_admin(emulator_url, "state")
        assert any(j["jobId"] == props["jobId"] and j["jobStatus"] == "COMPLETED" for j in state["jobs"])
        assert json.dumps(state)  # plain JSON


def test_import_into_unknown_datastore(medical_imaging: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as exc:
        medical_imaging.start_dicom_import_job(
            datastoreId="0" * 32, dataAccessRoleArn=ROLE_ARN, inputS3Uri=f"s3://{bucket}/x/",
            outputS3Uri=f"s3://{bucket}/y/", jobName=unique("job"))
    assert exc.value.response["Error"]["Code"] == "ResourceNotFoundException"
