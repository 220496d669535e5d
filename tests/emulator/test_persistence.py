"""State survives restarts of the emulator process, including jobs that were in flight."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from tests.conftest import emulator_admin
from tests.emulator.conftest import Importer, client_for, create_datastore, dicom_bytes, wait_job


def test_everything_is_still_there_after_a_restart(private_emulator: Any, s3: Any, bucket: str,
                                                   tmp_path: Path) -> None:
    data_dir = tmp_path / "persist"
    first = private_emulator(data_dir=data_dir)
    mi = client_for(first)
    ds_id = create_datastore(mi)
    imp = Importer(s3, mi, bucket, ds_id)
    props = imp.run("p/in/", {"a.dcm": dicom_bytes(sop="1.2.826.0.40.1")})
    set_id = imp.results(props)["success"][0]["importResponse"]["imageSetId"]
    first.stop()

    second = private_emulator(data_dir=data_dir)
    mi2 = client_for(second)
    assert mi2.get_datastore(datastoreId=ds_id)["datastoreProperties"]["datastoreStatus"] == "ACTIVE"
    again = mi2.get_dicom_import_job(datastoreId=ds_id, jobId=props["jobId"])["jobProperties"]
    assert again["jobStatus"] == "COMPLETED" and again["outputS3Uri"] == props["outputS3Uri"]
    assert mi2.get_image_set(datastoreId=ds_id, imageSetId=set_id)["versionId"] == "1"
    blob = mi2.get_image_set_metadata(datastoreId=ds_id, imageSetId=set_id)["imageSetMetadataBlob"].read()
    doc = json.loads(gzip.decompress(blob))
    assert list(doc["Study"]["Series"]["1.2.826.0.1.1.1"]["Instances"]) == ["1.2.826.0.40.1"]
    assert [d["datastoreId"] for d in mi2.list_datastores()["datastoreSummaries"]] == [ds_id]


def test_job_held_in_progress_resumes_after_a_crash(private_emulator: Any, s3: Any, bucket: str,
                                                    tmp_path: Path) -> None:
    data_dir = tmp_path / "crash"
    first = private_emulator("--clock", "manual", data_dir=data_dir)
    mi = client_for(first)
    ds_id = create_datastore(mi)
    imp = Importer(s3, mi, bucket, ds_id)
    imp.upload("c/in/", {f"{i}.dcm": dicom_bytes(sop=f"1.2.826.0.41.{i}") for i in range(3)})
    job_id = imp.start("c/in/", token="crash-test-job")["jobId"]
    assert mi.get_dicom_import_job(datastoreId=ds_id, jobId=job_id)["jobProperties"]["jobStatus"] == "SUBMITTED"
    assert emulator_admin(first.url, f"jobs/{job_id}/advance", {}) == {"jobId": job_id, "jobStatus": "IN_PROGRESS"}
    first.kill()  # SIGKILL: no chance to clean up

    second = private_emulator("--clock", "manual", data_dir=data_dir)
    mi2 = client_for(second)
    # Still held: the manual clock and the job's phase were persisted.
    assert mi2.get_dicom_import_job(datastoreId=ds_id, jobId=job_id)["jobProperties"]["jobStatus"] == "IN_PROGRESS"
    emulator_admin(second.url, "clock/advance", {"seconds": 1})
    props = wait_job(mi2, ds_id, job_id)
    assert props["jobStatus"] == "COMPLETED"
    result = Importer(s3, mi2, bucket, ds_id).results(props)
    assert len(result["success"]) == 3
    assert result["manifest"]["imageSetsSummary"][0]["imageSetVersion"] == 1
    # The same clientToken still maps to the same job after the restart.
    assert Importer(s3, mi2, bucket, ds_id).start("c/in/", token="crash-test-job")["jobId"] == job_id
    state = emulator_admin(second.url, "state")
    assert state["counts"] == {"datastores": 1, "jobs": 1, "imageSets": 1}


def test_reset_wipes_state(private_emulator: Any) -> None:
    server = private_emulator()
    mi = client_for(server)
    create_datastore(mi)
    assert emulator_admin(server.url, "state")["counts"]["datastores"] == 1
    assert emulator_admin(server.url, "reset", {}) == {"status": "reset"}
    assert emulator_admin(server.url, "state")["counts"] == {"datastores": 0, "jobs": 0, "imageSets": 0}
    assert mi.list_datastores()["datastoreSummaries"] == []
