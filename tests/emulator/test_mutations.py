"""Image-set mutations against the running emulator with unmodified boto3: UpdateImageSetMetadata, CopyImageSet,
DeleteImageSet, GetImageFrame, tagging, every paginator, and the reconciliation sequence the product runs."""

from __future__ import annotations

import gzip
import http.client
import io
import json
import threading
import urllib.parse
import zlib
from collections.abc import Callable
from typing import Any

import pydicom
import pytest
from botocore.exceptions import ClientError
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID

from tests.conftest import emulator_admin
from tests.emulator.conftest import Importer, client_for, create_datastore, dicom_bytes
from tests.support.eventually import assert_eventually_sync

STUDY = "1.2.826.0.50.1"
SERIES = "1.2.826.0.50.1.1"
SERIES_B = "1.2.826.0.50.1.2"


# ----------------------------------------------------------------------------------------------- helpers


def error_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int, str]:
    err = exc.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"], err["Error"]["Message"]


def blob(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def patient_update(**attrs: Any) -> dict[str, Any]:
    return {"DICOMUpdates": {"updatableAttributes": blob({"SchemaVersion": 1.1, "Patient": {"DICOM": attrs}})}}


def study_update(**attrs: Any) -> dict[str, Any]:
    return {"DICOMUpdates": {"updatableAttributes": blob({"SchemaVersion": 1.1, "Study": {"DICOM": attrs}})}}


def metadata(mi: Any, ds_id: str, set_id: str, version: str | None = None) -> dict[str, Any]:
    kwargs = {"versionId": version} if version else {}
    body = mi.get_image_set_metadata(datastoreId=ds_id, imageSetId=set_id, **kwargs)["imageSetMetadataBlob"]
    doc: dict[str, Any] = json.loads(gzip.decompress(body.read()))
    return doc


def wait_set(mi: Any, ds_id: str, set_id: str, state: str = "ACTIVE", timeout: float = 10.0) -> dict[str, Any]:
    """Poll GetImageSet until the set reaches ``state`` (mutations end after --mutation-seconds, 0.2 s)."""

    def reached() -> dict[str, Any]:
        got: dict[str, Any] = mi.get_image_set(datastoreId=ds_id, imageSetId=set_id)
        assert got["imageSetState"] == state, f"image set still {got['imageSetState']}/{got['imageSetWorkflowStatus']}"
        return got

    return assert_eventually_sync(reached, timeout=timeout, interval=0.02)


def primary_and_conflict(importer: Importer, prefix: str, series: str = SERIES) -> tuple[str, str]:
    """Import one consistent and one conflicting (other PatientID) file of a series: (primary, non-primary)."""
    files = {"1.dcm": dicom_bytes(STUDY, series, series + ".1", patient_id="PAT-1"),
             "2.dcm": dicom_bytes(STUDY, series, series + ".2", patient_id="PAT-WRONG")}
    lines = {x["inputFile"]: x["importResponse"] for x in importer.results(importer.run(prefix, files))["success"]}
    primary, other = lines[prefix + "1.dcm"], lines[prefix + "2.dcm"]
    assert primary["isPrimary"] is True and other["isPrimary"] is False
    return primary["imageSetId"], other["imageSetId"]


def import_one(importer: Importer, prefix: str, files: dict[str, bytes]) -> str:
    r = importer.results(importer.run(prefix, files))
    ids = {x["importResponse"]["imageSetId"] for x in r["success"]}
    assert len(ids) == 1
    return ids.pop()


def update(mi: Any, ds_id: str, set_id: str, version: str, updates: dict[str, Any], **kw: Any) -> dict[str, Any]:
    result: dict[str, Any] = mi.update_image_set_metadata(datastoreId=ds_id, imageSetId=set_id,
                                                          latestVersionId=version,
                                                          updateImageSetMetadataUpdates=updates, **kw)
    return result


def raw_post(url: str, path: str, body: bytes) -> tuple[int, dict[str, str], Any]:
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(data) if data else None
    finally:
        conn.close()


# ----------------------------------------------------------------------------------------------- update


class TestUpdateImageSetMetadata:
    def test_force_update_of_non_primary_makes_a_new_version_everywhere(self, importer: Importer) -> None:
        mi, ds_id = importer.mi, importer.datastore_id
        _, other = primary_and_conflict(importer, "in/u1/")
        got = update(mi, ds_id, other, "1", patient_update(PatientID="PAT-1"), force=True)
        assert (got["latestVersionId"], got["imageSetState"], got["imageSetWorkflowStatus"]) == \
            ("2", "LOCKED", "UPDATING")
        done = wait_set(mi, ds_id, other)
        assert (done["versionId"], done["imageSetWorkflowStatus"], done["isPrimary"]) == ("2", "UPDATED", False)
        assert done["overrides"] == {"forced": True}
        assert metadata(mi, ds_id, other)["Patient"]["DICOM"]["PatientID"] == "PAT-1"
        assert metadata(mi, ds_id, other, "1")["Patient"]["DICOM"]["PatientID"] == "PAT-WRONG"
        found = mi.search_image_sets(datastoreId=ds_id, searchCriteria={"filters": [
            {"operator": "EQUAL", "values": [{"DICOMPatientId": "PAT-1"}]}]})["imageSetsMetadataSummaries"]
        assert other in [s["imageSetId"] for s in found]
        versions = mi.list_image_set_versions(datastoreId=ds_id, imageSetId=other)["imageSetPropertiesList"]
        assert [(v["versionId"], v["imageSetState"], v["ImageSetWorkflowStatus"]) for v in versions] == \
            [("2", "ACTIVE", "UPDATED"), ("1", "ACTIVE", "CREATED")]

    def test_stale_latest_version_is_a_conflict(self, importer: Importer) -> None:
        mi, ds_id = importer.mi, importer.datastore_id
        set_id = import_one(importer, "in/u2/", {"a.dcm": dicom_bytes(STUDY, SERIES, SERIES + ".1")})
        update(mi, ds_id, set_id, "1", study_update(StudyDescription="FIRST"))
        wait_set(mi, ds_id, set_id)
        with pytest.raises(ClientError) as exc:
            update(mi, ds_id, set_id, "1", study_update(StudyDescription="SECOND"))
        code, status, message = error_of(exc)
        assert (code, status) == ("ConflictException", 409) and "latest is 2" in message

    @pytest.mark.parametrize("force", [False, True])
    def test_patient_level_change_on_a_primary_set_is_refused(self, importer: Importer, force: bool) -> None:
        mi, ds_id = importer.mi, importer.datastore_id
        set_id = import_one(importer, "in/u3/", {"a.dcm": dicom_bytes(STUDY, SERIES, SERIES + ".1")})
        with pytest.raises(ClientError) as exc:
            update(mi, ds_id, set_id, "1", patient_update(PatientID="PAT-NEW"), force=force)
        code, _, message = error_of(exc)
        assert code == "ValidationException"
        assert "Patient level attribute PatientID cannot be updated on a primary image set" in message
        assert "PAT-NEW" not in message  # values (patient data) are never echoed
        assert mi.get_image_set(datastoreId=ds_id, imageSetId=set_id)["versionId"] == "1"

    def test_revert_restores_the_old_metadata_and_instances(self, importer: Importer) -> None:
        mi, ds_id = importer.mi, importer.datastore_id
        set_id = import_one(importer, "in/u4/", {f"{i}.dcm": dicom_bytes(STUDY, SERIES, f"{SERIES}.{i}")
                                                 for i in range(2)})
        removal = {"DICOMUpdates": {"removableAttributes": blob({"SchemaVersion": 1.1, "Study": {
            "DICOM": {"StudyDescription": ""},
            "Series": {SERIES: {"Instances": {SERIES + ".1": {}}}}}})}}
        update(mi, ds_id, set_id, "1", removal)
        wait_set(mi, ds_id, set_id)
        v2 = metadata(mi, ds_id, set_id)
        assert "StudyDescription" not in v2["Study"]["DICOM"]
        assert list(v2["Study"]["Series"][SERIES]["Instances"]) == [SERIES + ".0"]
        got = update(mi, ds_id, set_id, "2", {"revertToVersionId": "1"})
        assert got["latestVersionId"] == "3"
        wait_set(mi, ds_id, set_id)
        assert metadata(mi, ds_id, set_id) == metadata(mi, ds_id, set_id, "1")
        with pytest.raises(ClientError) as exc:
            update(mi, ds_id, set_id, "3", {"revertToVersionId": "9"})
        assert error_of(exc)[0] == "ValidationException"

    def test_include_study_image_sets_updates_every_primary_set_and_refuses_revert(self,
                                                                                  importer: Importer) -> None:
        mi, ds_id = importer.mi, importer.datastore_id
        r = importer.results(importer.run("in/u5/", {"a.dcm": dicom_bytes(STUDY, SERIES, SERIES + ".1"),
                                                     "b.dcm": dicom_bytes(STUDY, SERIES_B, SERIES_B + ".1")}))
        a, b = (x["importResponse"]["imageSetId"] for x in r["success"])
        with pytest.raises(ClientError) as exc:
            update(mi, ds_id, a, "1", {"revertToVersionId": "1"}, includeStudyImageSets=True)
        assert error_of(exc)[0] == "ValidationException"
        update(mi, ds_id, a, "1", study_update(AccessionNumber="ACC-NEW"), includeStudyImageSets=True)
        assert mi.get_image_set(datastoreId=ds_id, imageSetId=b)["imageSetWorkflowStatus"] in (
            "UPDATING_FOR_STUDY_CONSISTENCY", "UPDATED")
        for set_id in (a, b):
            assert wait_set(mi, ds_id, set_id)["versionId"] == "2"
            assert metadata(mi, ds_id, set_id)["Study"]["DICOM"]["AccessionNumber"] == "ACC-NEW"

    @pytest.mark.parametrize(("doc", "force", "expected"), [
        ({"Study": {"DICOM": {"StudyID": "S2"}}}, False, "Updating StudyID requires force=true"),
        ({"Study": {"DICOM": {"PatientID": "X"}}}, True, "belongs to the Patient level"),
        ({"Patient": {"DICOM": {"NotAKeyword": "x"}}}, False, "is not a valid DICOM attribute"),
        ({"Study": {"DICOM": {"ImageSetID": "x"}}}, True, "generated by HealthImaging"),
        ({"Study": {"Series": {"1.2.3.999": {"DICOM": {"SeriesDescription": "x"}}}}}, False, "not present"),
        ({"Study": {"Series": {SERIES: {"Instances": {SERIES + ".1": {"DICOM": {"00091010": "x"}}}}}}}, False,
         "private attribute 00091010 requires force"),
        ({"Study": {"Series": {SERIES: {"Instances": {SERIES + ".1": {"DICOM": {"ImageType": ["A", "B"]}}}}}}},
         False, "multi-valued"),
        ({"Study": {"Series": {SERIES: {"Instances": {SERIES + ".1": {"DICOM": {
            "ReferencedImageSequence": [{"ReferencedSOPInstanceUID": "1.2"}]}}}}}}}, False, "sequence (SQ)"),
        ({"Study": {"Series": {SERIES: {"Instances": {SERIES + ".1": {"DICOM": {"Rows": "many"}}}}}}}, False,
         "does not match its VR US"),
        ({"Study": {"DICOM": {"StudyInstanceUID": "not-a-uid"}}}, True, "must be a valid UID"),
    ])
    def test_metadata_constraints(self, importer: Importer, doc: dict[str, Any], force: bool,
                                  expected: str) -> None:
        mi, ds_id = importer.mi, importer.datastore_id
        _, other = primary_and_conflict(importer, "in/u6/")
        # The non-primary set holds instance .2; point instance-level edits at it.
        text = json.dumps({"SchemaVersion": 1.1, **doc}).replace(SERIES + ".1", SERIES + ".2")
        with pytest.raises(ClientError) as exc:
            update(mi, ds_id, other, "1", {"DICOMUpdates": {"updatableAttributes": text.encode()}}, force=force)
        code, _, message = error_of(exc)
        assert code == "ValidationException" and expected in message

    def test_forced_uid_and_private_changes_on_a_non_primary_set(self, importer: Importer) -> None:
        mi, ds_id = importer.mi, importer.datastore_id
        _, other = primary_and_conflict(importer, "in/u7/")
        new_series, new_sop = "1.2.826.0.50.9", "1.2.826.0.50.9.1"
        doc = {"SchemaVersion": 1.1, "Study": {"Series": {SERIES: {
            "DICOM": {"SeriesInstanceUID": new_series},
            "Instances": {SERIES + ".2": {"DICOM": {"SOPInstanceUID": new_sop, "00091010": "note"}}}}}}}
        update(mi, ds_id, other, "1", {"DICOMUpdates": {"updatableAttributes": blob(doc)}}, force=True)
        wait_set(mi, ds_id, other)
        series = metadata(mi, ds_id, other)["Study"]["Series"]
        assert list(series) == [new_series]
        (sop, inst), = series[new_series]["Instances"].items()
        assert sop == new_sop and inst["DICOM"]["SOPInstanceUID"] == new_sop and inst["DICOM"]["00091010"] == "note"
        assert list(metadata(mi, ds_id, other, "1")["Study"]["Series"]) == [SERIES]


class TestHostileUpdates:
    @pytest.fixture
    def target(self, importer: Importer) -> str:
        return import_one(importer, "in/h/", {"a.dcm": dicom_bytes(STUDY, SERIES, SERIES + ".1")})

    @pytest.mark.parametrize(("payload", "expected"), [
        (b"not json at all", "is not a valid JSON document"),
        (b"[1, 2]", "must be a JSON object"),
        (b"\xff\xfe", "is not a valid JSON document"),
        (blob({"Study": {"DICOM": {"StudyDescription": "x"}}}), "SchemaVersion"),
        (blob({"SchemaVersion": 1.1, "Patient": ["x"]}), "Patient must be a JSON object"),
        (blob({"SchemaVersion": 1.1, "Evil": {}}), "may only contain SchemaVersion, Patient and Study"),
    ])
    def test_bad_documents(self, importer: Importer, target: str, payload: bytes, expected: str) -> None:
        with pytest.raises(ClientError) as exc:
            update(importer.mi, importer.datastore_id, target, "1",
                   {"DICOMUpdates": {"updatableAttributes": payload}})
        code, status, message = error_of(exc)
        assert (code, status) == ("ValidationException", 400) and expected in message

    def test_oversized_attributes(self, raw_client: Any, importer: Importer, target: str) -> None:
        big = blob({"SchemaVersion": 1.1, "Study": {"DICOM": {"StudyDescription": "x" * 30001}}})
        with pytest.raises(ClientError) as exc:
            update(raw_client, importer.datastore_id, target, "1", {"DICOMUpdates": {"updatableAttributes": big}})
        code, _, message = error_of(exc)
        assert code == "ValidationException"
        assert "updatableAttributes' failed to satisfy constraint: Member must have length less than or equal " \
               "to 30000" in message

    def test_both_or_neither_union_member(self, raw_client: Any, importer: Importer, target: str) -> None:
        for updates in ({"revertToVersionId": "1", **study_update(StudyDescription="x")}, {}):
            with pytest.raises(ClientError) as exc:
                update(raw_client, importer.datastore_id, target, "1", updates)
            assert error_of(exc)[0] == "ValidationException"
        with pytest.raises(ClientError) as exc:
            update(raw_client, importer.datastore_id, target, "1", {"DICOMUpdates": {}})
        assert "updatableAttributes or removableAttributes" in error_of(exc)[2]

    def test_bad_base64_is_refused(self, emulator_url: str, importer: Importer, target: str) -> None:
        path = (f"/datastore/{importer.datastore_id}/imageSet/{target}/updateImageSetMetadata?latestVersion=1")
        status, headers, body = raw_post(emulator_url, path,
                                         b'{"DICOMUpdates": {"updatableAttributes": "%%% not base64 %%%"}}')
        assert status == 400 and headers["x-amzn-errortype"] == "SerializationException"
        assert "base64" in body["message"]

    def test_unknown_versions(self, importer: Importer, target: str) -> None:
        mi, ds_id = importer.mi, importer.datastore_id
        with pytest.raises(ClientError) as exc:
            mi.get_image_set(datastoreId=ds_id, imageSetId=target, versionId="42")
        assert error_of(exc)[0] == "ResourceNotFoundException"
        with pytest.raises(ClientError) as exc:
            update(mi, ds_id, target, "42", study_update(StudyDescription="x"))
        assert error_of(exc)[0] == "ConflictException"
        with pytest.raises(ClientError) as exc:
            update(mi, ds_id, "0" * 32, "1", study_update(StudyDescription="x"))
        assert error_of(exc)[0] == "ResourceNotFoundException"


# ----------------------------------------------------------------------------------------------- copy


class TestCopyImageSet:
    def test_copy_to_a_new_image_set_and_a_subset(self, importer: Importer) -> None:
        mi, ds_id = importer.mi, importer.datastore_id
        source = import_one(importer, "in/c1/", {f"{i}.dcm": dicom_bytes(STUDY, SERIES, f"{SERIES}.{i}")
                                                 for i in range(3)})
        got = mi.copy_image_set(datastoreId=ds_id, sourceImageSetId=source,
                                copyImageSetInformation={"sourceImageSet": {"latestVersionId": "1"}})
        src, dst = got["sourceImageSetProperties"], got["destinationImageSetProperties"]
        assert (src["imageSetId"], src["imageSetState"], src["imageSetWorkflowStatus"]) == \
            (source, "LOCKED", "COPYING_WITH_READ_ONLY_ACCESS")
        assert (dst["latestVersionId"], dst["imageSetState"], dst["imageSetWorkflowStatus"]) == \
            ("1", "LOCKED", "COPYING")
        assert dst["imageSetId"] != source and dst["imageSetArn"].endswith("/imageset/" + dst["imageSetId"])
        done = wait_set(mi, ds_id, dst["imageSetId"])
        assert (done["imageSetWorkflowStatus"], done["isPrimary"]) == ("COPIED", False)
        assert wait_set(mi, ds_id, source)["imageSetWorkflowStatus"] == "CREATED"
        copied = metadata(mi, ds_id, dst["imageSetId"])
        original = metadata(mi, ds_id, source)
        assert copied["Study"] == original["Study"] and copied["ImageSetID"] == dst["imageSetId"]

        subset = {"SchemaVersion": 1.1, "Study": {"Series": {SERIES: {"Instances": {SERIES + ".1": {}}}}}}
        part = mi.copy_image_set(datastoreId=ds_id, sourceImageSetId=source, copyImageSetInformation={
            "sourceImageSet": {"latestVersionId": "1", "DICOMCopies": {"copiableAttributes": json.dumps(subset)}}})
        part_id = part["destinationImageSetProperties"]["imageSetId"]
        wait_set(mi, ds_id, part_id)
        assert list(metadata(mi, ds_id, part_id)["Study"]["Series"][SERIES]["Instances"]) == [SERIES + ".1"]

        bad = {"SchemaVersion": 1.1, "Study": {"Series": {SERIES: {"Instances": {"1.2.3.4": {}}}}}}
        with pytest.raises(ClientError) as exc:
            mi.copy_image_set(datastoreId=ds_id, sourceImageSetId=source, copyImageSetInformation={
                "sourceImageSet": {"latestVersionId": "1", "DICOMCopies": {"copiableAttributes": json.dumps(bad)}}})
        assert error_of(exc)[0] == "ValidationException"
        with pytest.raises(ClientError) as exc:
            mi.copy_image_set(datastoreId=ds_id, sourceImageSetId=source, copyImageSetInformation={
                "sourceImageSet": {"latestVersionId": "1", "DICOMCopies": {"copiableAttributes": "{oops"}}})
        assert error_of(exc)[0] == "ValidationException"
        with pytest.raises(ClientError) as exc:
            mi.copy_image_set(datastoreId=ds_id, sourceImageSetId=source,
                              copyImageSetInformation={"sourceImageSet": {"latestVersionId": "7"}})
        assert error_of(exc)[0] == "ConflictException"

    def test_copy_into_an_existing_image_set(self, importer: Importer) -> None:
        mi, ds_id = importer.mi, importer.datastore_id
        primary, other = primary_and_conflict(importer, "in/c2/")
        info = {"sourceImageSet": {"latestVersionId": "1"},
                "destinationImageSet": {"imageSetId": primary, "latestVersionId": "5"}}
        with pytest.raises(ClientError) as exc:
            mi.copy_image_set(datastoreId=ds_id, sourceImageSetId=other, copyImageSetInformation=info)
        assert error_of(exc)[0] == "ConflictException"
        info["destinationImageSet"]["latestVersionId"] = "1"
        with pytest.raises(ClientError) as exc:
            mi.copy_image_set(datastoreId=ds_id, sourceImageSetId=other, copyImageSetInformation=info)
        code, _, message = error_of(exc)
        assert code == "ValidationException" and "PatientID" in message and "PAT-" not in message
        got = mi.copy_image_set(datastoreId=ds_id, sourceImageSetId=other, copyImageSetInformation=info, force=True)
        assert got["destinationImageSetProperties"]["imageSetId"] == primary
        assert got["destinationImageSetProperties"]["latestVersionId"] == "2"
        done = wait_set(mi, ds_id, primary)
        assert (done["imageSetWorkflowStatus"], done["isPrimary"], done["overrides"]) == \
            ("COPIED", True, {"forced": True})
        doc = metadata(mi, ds_id, primary)
        assert sorted(doc["Study"]["Series"][SERIES]["Instances"]) == [SERIES + ".1", SERIES + ".2"]
        assert doc["Patient"]["DICOM"]["PatientID"] == "PAT-1"  # the destination keeps its own patient

    def test_promote_to_primary_gives_a_new_primary_id(self, importer: Importer) -> None:
        mi, ds_id = importer.mi, importer.datastore_id
        primary, other = primary_and_conflict(importer, "in/c3/")
        info = {"sourceImageSet": {"latestVersionId": "1"}}
        with pytest.raises(ClientError) as exc:  # still conflicting with the primary set
            mi.copy_image_set(datastoreId=ds_id, sourceImageSetId=other, copyImageSetInformation=info,
                              promoteToPrimary=True)
        assert error_of(exc)[0] == "ValidationException" and "PatientID" in error_of(exc)[2]
        got = mi.copy_image_set(datastoreId=ds_id, sourceImageSetId=other, copyImageSetInformation=info,
                                promoteToPrimary=True, force=True)
        new_id = got["destinationImageSetProperties"]["imageSetId"]
        assert new_id not in (primary, other)
        assert wait_set(mi, ds_id, new_id)["isPrimary"] is True
        demoted = wait_set(mi, ds_id, primary)
        assert demoted["isPrimary"] is False and demoted["versionId"] == "2"
        assert sorted(metadata(mi, ds_id, new_id)["Study"]["Series"][SERIES]["Instances"]) == \
            [SERIES + ".1", SERIES + ".2"]


# ----------------------------------------------------------------------------------------------- delete


class TestDeleteImageSet:
    def test_delete_lifecycle_search_and_datastore_deletion(self, importer: Importer) -> None:
        mi, ds_id = importer.mi, importer.datastore_id
        set_id = import_one(importer, "in/d/", {"a.dcm": dicom_bytes(STUDY, SERIES, SERIES + ".1")})
        got = mi.delete_image_set(datastoreId=ds_id, imageSetId=set_id)
        assert (got["imageSetState"], got["imageSetWorkflowStatus"]) == ("LOCKED", "DELETING")
        assert mi.search_image_sets(datastoreId=ds_id)["imageSetsMetadataSummaries"] == []
        again = mi.delete_image_set(datastoreId=ds_id, imageSetId=set_id)  # idempotent while DELETING
        assert again["imageSetWorkflowStatus"] in ("DELETING", "DELETED")
        done = wait_set(mi, ds_id, set_id, "DELETED")
        assert done["imageSetWorkflowStatus"] == "DELETED" and done["deletedAt"] is not None
        assert mi.delete_image_set(datastoreId=ds_id, imageSetId=set_id)["imageSetState"] == "DELETED"
        for call in (lambda: metadata(mi, ds_id, set_id),
                     lambda: mi.get_image_frame(datastoreId=ds_id, imageSetId=set_id,
                                                imageFrameInformation={"imageFrameId": "a" * 32})):
            with pytest.raises(ClientError) as exc:
                call()
            assert error_of(exc)[0] == "ResourceNotFoundException"
        with pytest.raises(ClientError) as exc:
            update(mi, ds_id, set_id, "1", study_update(StudyDescription="x"))
        assert error_of(exc)[0] == "ConflictException"
        versions = mi.list_image_set_versions(datastoreId=ds_id, imageSetId=set_id)["imageSetPropertiesList"]
        assert versions[0]["imageSetState"] == "DELETED"
        assert mi.delete_datastore(datastoreId=ds_id)["datastoreStatus"] == "DELETING"


# ----------------------------------------------------------------------------------------------- frames


def _testdata(name: str) -> Dataset:
    return pydicom.dcmread(str(get_testdata_file(name)))


def _from_testdata(name: str, sop: str) -> bytes:
    ds = _testdata(name)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.826.0.51", "1.2.826.0.51.1", sop
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


class TestGetImageFrame:
    def test_native_and_encapsulated_frames(self, importer: Importer) -> None:
        openjpeg = pytest.importorskip("openjpeg")
        mi, ds_id = importer.mi, importer.datastore_id
        set_id = import_one(importer, "in/f/", {"ct.dcm": dicom_bytes(STUDY, SERIES, SERIES + ".1")})
        inst = metadata(mi, ds_id, set_id)["Study"]["Series"][SERIES]["Instances"][SERIES + ".1"]
        (frame,) = inst["ImageFrames"]
        got = mi.get_image_frame(datastoreId=ds_id, imageSetId=set_id, imageFrameInformation={"imageFrameId":
                                                                                              frame["ID"]})
        data = got["imageFrameBlob"].read()
        # Transcoded to lossless J2K (test_frames.py has the details); the checksum describes the decoded pixels.
        assert got["contentType"] == "image/j2c" and inst["StoredTransferSyntaxUID"] == "1.2.840.10008.1.2.4.90"
        pixels = openjpeg.decode(data)
        assert (pixels == _testdata("CT_small.dcm").pixel_array).all()
        assert zlib.crc32(pixels.astype("<i2").tobytes()) == \
            frame["PixelDataChecksumFromBaseToFullResolution"][0]["Checksum"]
        with pytest.raises(ClientError) as exc:
            mi.get_image_frame(datastoreId=ds_id, imageSetId=set_id, imageFrameInformation={"imageFrameId":
                                                                                            "0" * 32})
        assert error_of(exc)[0] == "ResourceNotFoundException"

        j2k = import_one(importer, "in/f2/", {"mf.dcm": _from_testdata("emri_small_jpeg_2k_lossless.dcm",
                                                                       "1.2.826.0.51.1.1")})
        inst = metadata(mi, ds_id, j2k)["Study"]["Series"]["1.2.826.0.51.1"]["Instances"]["1.2.826.0.51.1.1"]
        assert len(inst["ImageFrames"]) == 10
        got = mi.get_image_frame(datastoreId=ds_id, imageSetId=j2k,
                                 imageFrameInformation={"imageFrameId": inst["ImageFrames"][3]["ID"]})
        source = _testdata("emri_small_jpeg_2k_lossless.dcm")
        expected = list(generate_frames(source.PixelData, number_of_frames=10))[3]
        assert got["contentType"] == "image/j2c" and got["imageFrameBlob"].read() == expected


# ----------------------------------------------------------------------------------------------- tags


class TestTags:
    def test_tags_on_data_stores_and_image_sets(self, importer: Importer) -> None:
        mi, ds_id = importer.mi, importer.datastore_id
        ds_arn = mi.get_datastore(datastoreId=ds_id)["datastoreProperties"]["datastoreArn"]
        set_id = import_one(importer, "in/t/", {"a.dcm": dicom_bytes(STUDY, SERIES, SERIES + ".1")})
        set_arn = mi.get_image_set(datastoreId=ds_id, imageSetId=set_id)["imageSetArn"]
        for arn in (ds_arn, set_arn):
            assert mi.list_tags_for_resource(resourceArn=arn)["tags"] == {}
            mi.tag_resource(resourceArn=arn, tags={"project": "migration", "batch": "7"})
            mi.tag_resource(resourceArn=arn, tags={"batch": "8"})
            assert mi.list_tags_for_resource(resourceArn=arn)["tags"] == {"project": "migration", "batch": "8"}
            mi.untag_resource(resourceArn=arn, tagKeys=["batch", "absent"])
            assert mi.list_tags_for_resource(resourceArn=arn)["tags"] == {"project": "migration"}
            with pytest.raises(ClientError) as exc:
                mi.tag_resource(resourceArn=arn, tags={f"k{i}": "v" for i in range(50)})
            assert error_of(exc)[0] == "ValidationException"

    def test_tags_given_at_creation_are_listed(self, medical_imaging: Any) -> None:
        ds_id = medical_imaging.create_datastore(datastoreName="tagged", tags={"owner": "team-a"})["datastoreId"]
        arn = medical_imaging.get_datastore(datastoreId=ds_id)["datastoreProperties"]["datastoreArn"]
        assert medical_imaging.list_tags_for_resource(resourceArn=arn)["tags"] == {"owner": "team-a"}

    def test_bad_and_unknown_arns(self, medical_imaging: Any, datastore_id: str) -> None:
        missing = [f"arn:aws:medical-imaging:us-east-1:123456789012:datastore/{'0' * 32}",
                   f"arn:aws:medical-imaging:eu-west-1:123456789012:datastore/{datastore_id}",
                   f"arn:aws:medical-imaging:us-east-1:123456789012:datastore/{datastore_id}/imageset/{'1' * 32}"]
        for arn in missing:
            with pytest.raises(ClientError) as exc:
                medical_imaging.list_tags_for_resource(resourceArn=arn)
            assert error_of(exc)[:2] == ("ResourceNotFoundException", 404)
        with pytest.raises(ClientError) as exc:
            medical_imaging.tag_resource(resourceArn="arn:aws:s3:::bucket", tags={"a": "b"})
        assert error_of(exc)[0] == "ValidationException"
        arn = f"arn:aws:medical-imaging:us-east-1:123456789012:datastore/{datastore_id}"
        with pytest.raises(ClientError) as exc:
            medical_imaging.tag_resource(resourceArn=arn, tags={"aws:reserved": "x"})
        assert error_of(exc)[0] == "ValidationException"


# ----------------------------------------------------------------------------------------------- paginators


def test_every_paginator_of_the_model(importer: Importer) -> None:
    mi, ds_id = importer.mi, importer.datastore_id
    assert sorted(mi._service_model.operation_names) == sorted(
        ["CopyImageSet", "CreateDatastore", "DeleteDatastore", "DeleteImageSet", "GetDICOMImportJob",
         "GetDatastore", "GetImageFrame", "GetImageSet", "GetImageSetMetadata", "ListDICOMImportJobs",
         "ListDatastores", "ListImageSetVersions", "ListTagsForResource", "SearchImageSets",
         "StartDICOMImportJob", "TagResource", "UntagResource", "UpdateImageSetMetadata"])
    for i in range(3):  # three jobs re-importing the same series: three versions of one image set
        set_id = import_one(importer, f"in/p{i}/", {"a.dcm": dicom_bytes(STUDY, SERIES, SERIES + ".1"),
                                                    "b.dcm": dicom_bytes(STUDY, SERIES, SERIES + ".2")})
    create_datastore(mi)
    create_datastore(mi)

    def collect(name: str, key: str, **kwargs: Any) -> list[Any]:
        pages = list(mi.get_paginator(name).paginate(PaginationConfig={"PageSize": 2}, **kwargs))
        assert all(len(p[key]) <= 2 for p in pages) and len(pages) >= 2
        return [item for p in pages for item in p[key]]

    assert len(collect("list_dicom_import_jobs", "jobSummaries", datastoreId=ds_id)) == 3
    versions = collect("list_image_set_versions", "imageSetPropertiesList", datastoreId=ds_id, imageSetId=set_id)
    assert [v["versionId"] for v in versions] == ["3", "2", "1"]
    ids = [d["datastoreId"] for d in collect("list_datastores", "datastoreSummaries")]
    assert ds_id in ids and len(ids) == len(set(ids))
    importer.run("in/p3/", {"c.dcm": dicom_bytes(STUDY, SERIES_B, SERIES_B + ".1"),
                            "d.dcm": dicom_bytes(STUDY, "1.2.826.0.50.1.3", "1.2.826.0.50.1.3.1")})
    found = collect("search_image_sets", "imageSetsMetadataSummaries", datastoreId=ds_id)
    assert len(found) == 3
    capped = mi.get_paginator("list_image_set_versions").paginate(
        datastoreId=ds_id, imageSetId=set_id, PaginationConfig={"PageSize": 1, "MaxItems": 2}).build_full_result()
    assert len(capped["imageSetPropertiesList"]) == 2 and "NextToken" in capped


# ----------------------------------------------------------------------------------------------- reconciliation


def test_reconciliation_sequence_with_retries(importer: Importer) -> None:
    """Non-primary set → UpdateImageSetMetadata(force) → CopyImageSet(promoteToPrimary) → DeleteImageSet,
    each step sent twice as a retrying activity would."""
    mi, ds_id = importer.mi, importer.datastore_id
    primary, other = primary_and_conflict(importer, "in/r/", series=SERIES_B)

    fixed = update(mi, ds_id, other, "1", patient_update(PatientID="PAT-1"), force=True)
    assert fixed["latestVersionId"] == "2"
    with pytest.raises(ClientError) as exc:  # the retry: latestVersion 1 is stale now (or the set is LOCKED)
        update(mi, ds_id, other, "1", patient_update(PatientID="PAT-1"), force=True)
    assert error_of(exc)[0] == "ConflictException"
    wait_set(mi, ds_id, other)

    info = {"sourceImageSet": {"latestVersionId": "2"}}
    first = mi.copy_image_set(datastoreId=ds_id, sourceImageSetId=other, copyImageSetInformation=info,
                              promoteToPrimary=True)
    new_primary = first["destinationImageSetProperties"]["imageSetId"]
    with pytest.raises(ClientError) as exc:  # an immediate retry finds the source LOCKED (read-only copy)
        mi.copy_image_set(datastoreId=ds_id, sourceImageSetId=other, copyImageSetInformation=info,
                          promoteToPrimary=True)
    assert error_of(exc)[0] == "ConflictException"
    assert wait_set(mi, ds_id, new_primary)["isPrimary"] is True
    assert mi.get_image_set(datastoreId=ds_id, imageSetId=primary)["isPrimary"] is False
    wait_set(mi, ds_id, other)

    assert mi.delete_image_set(datastoreId=ds_id, imageSetId=other)["imageSetWorkflowStatus"] == "DELETING"
    assert mi.delete_image_set(datastoreId=ds_id, imageSetId=other)["imageSetWorkflowStatus"] in (
        "DELETING", "DELETED")
    wait_set(mi, ds_id, other, "DELETED")

    primaries = mi.search_image_sets(datastoreId=ds_id, searchCriteria={"filters": [
        {"operator": "EQUAL", "values": [{"isPrimary": True}]}]})["imageSetsMetadataSummaries"]
    assert [s["imageSetId"] for s in primaries] == [new_primary]
    assert primaries[0]["DICOMTags"]["DICOMPatientId"] == "PAT-1"
    # The study is consistent again: a new file of the series lands in the new primary set.
    r = importer.results(importer.run("in/r2/", {"3.dcm": dicom_bytes(STUDY, SERIES_B, SERIES_B + ".3",
                                                                      patient_id="PAT-1")}))
    assert r["success"][0]["importResponse"] == {"imageSetId": new_primary, "imageSetVersion": 2,
                                                 "isPrimary": True}


# ----------------------------------------------------------------------------------------------- locks, restarts


def test_locked_sets_refuse_writes_until_the_clock_moves_and_survive_a_restart(
        private_emulator: Callable[..., Any], s3: Any, bucket: str, tmp_path: Any) -> None:
    data_dir = tmp_path / "locks"
    server = private_emulator("--mutation-seconds", "600", data_dir=data_dir)
    mi = client_for(server)
    ds_id = create_datastore(mi)
    importer = Importer(s3, mi, bucket, ds_id)
    set_id = import_one(importer, "lk/", {"a.dcm": dicom_bytes(STUDY, SERIES, SERIES + ".1")})
    arn = mi.get_image_set(datastoreId=ds_id, imageSetId=set_id)["imageSetArn"]
    mi.tag_resource(resourceArn=arn, tags={"k": "v"})

    # Concurrent updates with the same latestVersion: exactly one wins, the others see a conflict.
    outcomes: list[str] = []

    def attempt(i: int) -> None:
        try:
            update(client_for(server), ds_id, set_id, "1", study_update(StudyDescription=f"D{i}"))
            outcomes.append("ok")
        except ClientError as err:
            outcomes.append(err.response["Error"]["Code"])

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["ConflictException"] * 5 + ["ok"]

    got = mi.get_image_set(datastoreId=ds_id, imageSetId=set_id)
    assert (got["imageSetState"], got["imageSetWorkflowStatus"], got["versionId"]) == ("LOCKED", "UPDATING", "2")
    for call in (lambda: update(mi, ds_id, set_id, "2", study_update(StudyDescription="again")),
                 lambda: mi.copy_image_set(datastoreId=ds_id, sourceImageSetId=set_id,
                                           copyImageSetInformation={"sourceImageSet": {"latestVersionId": "2"}}),
                 lambda: mi.delete_image_set(datastoreId=ds_id, imageSetId=set_id)):
        with pytest.raises(ClientError) as exc:
            call()
        code, _, message = error_of(exc)
        assert code == "ConflictException" and "LOCKED" in message

    server.stop()
    again = private_emulator("--mutation-seconds", "600", data_dir=data_dir)
    mi2 = client_for(again)
    assert mi2.get_image_set(datastoreId=ds_id, imageSetId=set_id)["imageSetState"] == "LOCKED"
    assert mi2.list_tags_for_resource(resourceArn=arn)["tags"] == {"k": "v"}
    emulator_admin(again.url, "clock/advance", {"seconds": 600})
    done = wait_set(mi2, ds_id, set_id)
    assert (done["imageSetWorkflowStatus"], done["versionId"]) == ("UPDATED", "2")
    assert metadata(mi2, ds_id, set_id)["Study"]["DICOM"]["StudyDescription"].startswith("D")
