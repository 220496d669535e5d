"""Image-set semantics: series grouping, non-primary sets, versions, metadata, search, data store deletion."""

from __future__ import annotations

import gzip
import importlib.util
import json
from typing import Any

import pytest
from botocore.exceptions import ClientError
from pydicom.dataset import Dataset

from tests.emulator.conftest import Importer, dicom_bytes

STUDY = "1.2.826.0.20.1"
SERIES_A = "1.2.826.0.20.1.1"
SERIES_B = "1.2.826.0.20.1.2"


def _summary(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["imageSetId"]: s for s in r["manifest"]["imageSetsSummary"]}


class TestGrouping:
    def test_one_image_set_per_series(self, importer: Importer) -> None:
        files = {
            "a1.dcm": dicom_bytes(STUDY, SERIES_A, SERIES_A + ".1"),
            "a2.dcm": dicom_bytes(STUDY, SERIES_A, SERIES_A + ".2"),
            "b1.dcm": dicom_bytes(STUDY, SERIES_B, SERIES_B + ".1"),
        }
        r = importer.results(importer.run("in/group/", files))
        by_file = {x["inputFile"]: x["importResponse"] for x in r["success"]}
        assert by_file["in/group/a1.dcm"]["imageSetId"] == by_file["in/group/a2.dcm"]["imageSetId"]
        assert by_file["in/group/a1.dcm"]["imageSetId"] != by_file["in/group/b1.dcm"]["imageSetId"]
        assert all(v["isPrimary"] for v in by_file.values())
        counts = sorted(s["numberOfMatchedSOPInstances"] for s in r["manifest"]["imageSetsSummary"])
        assert counts == [1, 2] and r["manifest"]["numberOfGeneratedImageSets"] == 2


class TestNonPrimary:
    def test_conflicting_patient_id_makes_non_primary_everywhere(self, importer: Importer) -> None:
        mi, ds_id = importer.mi, importer.datastore_id
        files = {
            "1.dcm": dicom_bytes(STUDY, SERIES_A, SERIES_A + ".1", patient_id="PAT-1"),
            "2.dcm": dicom_bytes(STUDY, SERIES_A, SERIES_A + ".2", patient_id="OTHER"),
            "3.dcm": dicom_bytes(STUDY, SERIES_A, SERIES_A + ".3", patient_id="OTHER"),
        }
        r = importer.results(importer.run("in/np/", files))
        lines = {x["inputFile"]: x["importResponse"] for x in r["success"]}
        primary, conflicting = lines["in/np/1.dcm"], lines["in/np/2.dcm"]
        assert primary["isPrimary"] is True and conflicting["isPrimary"] is False
        # One non-primary set per conflicting fingerprint: files 2 and 3 share it.
        assert lines["in/np/3.dcm"]["imageSetId"] == conflicting["imageSetId"] != primary["imageSetId"]
        summary = _summary(r)
        assert summary[conflicting["imageSetId"]]["isPrimary"] is False
        assert summary[conflicting["imageSetId"]]["numberOfMatchedSOPInstances"] == 2
        assert summary[primary["imageSetId"]]["isPrimary"] is True

        got = mi.get_image_set(datastoreId=ds_id, imageSetId=conflicting["imageSetId"])
        assert got["isPrimary"] is False and got["imageSetState"] == "ACTIVE"
        found = mi.search_image_sets(datastoreId=ds_id, searchCriteria={
            "filters": [{"operator": "EQUAL", "values": [{"isPrimary": False}]}]})["imageSetsMetadataSummaries"]
        assert [s["imageSetId"] for s in found] == [conflicting["imageSetId"]]
        assert found[0]["DICOMTags"]["DICOMPatientId"] == "OTHER"

    def test_conflict_with_primary_from_an_earlier_job(self, importer: Importer) -> None:
        first = importer.results(importer.run("in/np1/", {"a.dcm": dicom_bytes(STUDY, SERIES_A, SERIES_A + ".1")}))
        # A different series of the same study with a different accession number conflicts at study level.
        def other_accession(ds: Dataset) -> None:
            ds.AccessionNumber = "ACC-OTHER"
        second = importer.results(importer.run("in/np2/", {
            "b.dcm": dicom_bytes(STUDY, SERIES_B, SERIES_B + ".1", mutate=other_accession)}))
        assert first["success"][0]["importResponse"]["isPrimary"] is True
        assert second["success"][0]["importResponse"]["isPrimary"] is False
        # Consistent data for a new series of that study is primary.
        third = importer.results(importer.run("in/np3/", {
            "c.dcm": dicom_bytes(STUDY, "1.2.826.0.20.1.3", "1.2.826.0.20.1.3.1")}))
        assert third["success"][0]["importResponse"]["isPrimary"] is True


class TestVersions:
    def test_reimport_bumps_version_once_per_job(self, importer: Importer) -> None:
        mi, ds_id = importer.mi, importer.datastore_id
        files = {f"{i}.dcm": dicom_bytes(STUDY, SERIES_A, f"{SERIES_A}.{i}") for i in range(2)}
        r1 = importer.results(importer.run("in/v1/", files))
        set_id = r1["success"][0]["importResponse"]["imageSetId"]
        # Same two instances again plus a new one, in one job: one new version.
        files["2.dcm"] = dicom_bytes(STUDY, SERIES_A, f"{SERIES_A}.2")
        r2 = importer.results(importer.run("in/v2/", files))
        assert {x["importResponse"]["imageSetId"] for x in r2["success"]} == {set_id}
        assert {x["importResponse"]["imageSetVersion"] for x in r2["success"]} == {2}
        assert _summary(r2)[set_id] == {"imageSetId": set_id, "imageSetVersion": 2, "isPrimary": True,
                                        "numberOfMatchedSOPInstances": 3}
        assert mi.get_image_set(datastoreId=ds_id, imageSetId=set_id)["versionId"] == "2"
        assert mi.get_image_set(datastoreId=ds_id, imageSetId=set_id, versionId="1")["versionId"] == "1"
        versions = mi.list_image_set_versions(datastoreId=ds_id, imageSetId=set_id)["imageSetPropertiesList"]
        assert [v["versionId"] for v in versions] == ["2", "1"]
        assert all(v["isPrimary"] for v in versions)

        def instances(version: str | None) -> list[str]:
            kwargs = {"versionId": version} if version else {}
            blob = mi.get_image_set_metadata(datastoreId=ds_id, imageSetId=set_id, **kwargs)
            doc = json.loads(gzip.decompress(blob["imageSetMetadataBlob"].read()))
            return sorted(doc["Study"]["Series"][SERIES_A]["Instances"])

        assert instances("1") == [f"{SERIES_A}.0", f"{SERIES_A}.1"]
        assert instances(None) == [f"{SERIES_A}.{i}" for i in range(3)]


class TestMetadataDocument:
    def test_document_shape_and_headers(self, importer: Importer) -> None:
        mi, ds_id = importer.mi, importer.datastore_id
        r = importer.results(importer.run("in/meta/", {"x.dcm": dicom_bytes(STUDY, SERIES_A, SERIES_A + ".9")}))
        set_id = r["success"][0]["importResponse"]["imageSetId"]
        resp = mi.get_image_set_metadata(datastoreId=ds_id, imageSetId=set_id)
        assert resp["contentEncoding"] == "gzip"
        assert resp["contentType"] == "text/plain"
        doc = json.loads(gzip.decompress(resp["imageSetMetadataBlob"].read()))
        assert doc["SchemaVersion"] == "1.1"
        assert doc["DatastoreID"] == ds_id and doc["ImageSetID"] == set_id
        assert doc["Patient"]["DICOM"]["PatientID"] == "PAT-1"
        assert doc["Study"]["DICOM"]["StudyInstanceUID"] == STUDY
        series = doc["Study"]["Series"][SERIES_A]
        assert series["DICOM"]["Modality"] == "CT"
        inst = series["Instances"][SERIES_A + ".9"]
        assert inst["DICOM"]["SOPInstanceUID"] == SERIES_A + ".9"
        assert "PixelData" not in inst["DICOM"]
        # Frames of an explicit-little-endian source are served as lossless J2K (the emulator's HTJ2K stand-in)
        # when the encoder is installed; the source syntax stays in the file meta attributes.
        j2k = importlib.util.find_spec("openjpeg") is not None
        assert inst["StoredTransferSyntaxUID"] == ("1.2.840.10008.1.2.4.90" if j2k else "1.2.840.10008.1.2.1")
        assert inst["DICOM"]["TransferSyntaxUID"] == "1.2.840.10008.1.2.1"
        assert isinstance(inst["DICOMVRs"], dict)
        (frame,) = inst["ImageFrames"]
        assert len(frame["ID"]) == 32
        assert frame["FrameSizeInBytes"] == 128 * 128 * 2
        (checksum,) = frame["PixelDataChecksumFromBaseToFullResolution"]
        assert checksum["Width"] == 128 and checksum["Height"] == 128 and isinstance(checksum["Checksum"], int)


class TestSearch:
    @pytest.fixture
    def three_series(self, importer: Importer) -> list[str]:
        files = {}
        for i in range(3):  # three studies (differing study dates in one study would be a conflict)
            study = f"1.2.826.0.30.{i + 1}"
            series = study + ".1"

            def mutate(ds: Dataset, i: int = i) -> None:
                ds.StudyDate = f"2020010{i + 1}"
                ds.AccessionNumber = "ACC-30"
            files[f"{i}.dcm"] = dicom_bytes(study, series, series + ".1", patient_id="PAT-30",
                                            mutate=mutate)
        r = importer.results(importer.run("in/search/", files))
        return [x["importResponse"]["imageSetId"] for x in r["success"]]

    def test_filters_sort_and_pagination(self, importer: Importer, three_series: list[str]) -> None:
        mi, ds_id = importer.mi, importer.datastore_id
        crit = {"filters": [{"operator": "EQUAL", "values": [{"DICOMPatientId": "PAT-30"}]}],
                "sort": {"sortField": "DICOMStudyDateAndTime", "sortOrder": "ASC"}}
        pages = list(mi.get_paginator("search_image_sets").paginate(
            datastoreId=ds_id, searchCriteria=crit, PaginationConfig={"PageSize": 2}))
        assert [len(p["imageSetsMetadataSummaries"]) for p in pages] == [2, 1]
        ordered = [s["imageSetId"] for p in pages for s in p["imageSetsMetadataSummaries"]]
        assert ordered == three_series  # study dates ascend with the file order
        assert pages[0]["sort"] == crit["sort"]

        between = mi.search_image_sets(datastoreId=ds_id, searchCriteria={"filters": [{
            "operator": "BETWEEN", "values": [{"DICOMStudyDateAndTime": {"DICOMStudyDate": "20200102"}},
                                              {"DICOMStudyDateAndTime": {"DICOMStudyDate": "20200103"}}]}]})
        assert sorted(s["imageSetId"] for s in between["imageSetsMetadataSummaries"]) == sorted(three_series[1:])

        two_filters = mi.search_image_sets(datastoreId=ds_id, searchCriteria={"filters": [
            {"operator": "EQUAL", "values": [{"DICOMAccessionNumber": "ACC-30"}]},
            {"operator": "EQUAL", "values": [{"DICOMSeriesInstanceUID": "1.2.826.0.30.3.1"}]}]})
        assert [s["imageSetId"] for s in two_filters["imageSetsMetadataSummaries"]] == [three_series[2]]
        summary = two_filters["imageSetsMetadataSummaries"][0]
        assert summary["isPrimary"] is True and summary["version"] == 1
        assert summary["DICOMTags"]["DICOMStudyInstanceUID"] == "1.2.826.0.30.3"

        created = mi.search_image_sets(datastoreId=ds_id, searchCriteria={"filters": [{
            "operator": "BETWEEN", "values": [{"createdAt": 0}, {"createdAt": 4102444800}]}]})
        assert len(created["imageSetsMetadataSummaries"]) == 3

    def test_equal_with_two_values_is_rejected(self, importer: Importer, three_series: list[str]) -> None:
        with pytest.raises(ClientError) as exc:
            importer.mi.search_image_sets(datastoreId=importer.datastore_id, searchCriteria={"filters": [{
                "operator": "EQUAL", "values": [{"DICOMPatientId": "a"}, {"DICOMPatientId": "b"}]}]})
        assert exc.value.response["Error"]["Code"] == "ValidationException"


class TestDatastores:
    def test_delete_refused_while_image_sets_remain(self, importer: Importer) -> None:
        mi = importer.mi
        importer.run("in/del/", {"a.dcm": dicom_bytes()})
        with pytest.raises(ClientError) as exc:
            mi.delete_datastore(datastoreId=importer.datastore_id)
        assert exc.value.response["Error"]["Code"] == "ConflictException"

    def test_lifecycle_idempotent_create_list_and_delete(self, medical_imaging: Any) -> None:
        mi = medical_imaging
        created = mi.create_datastore(datastoreName="lifecycle", clientToken="ds-token-lifecycle-1")
        assert created["datastoreStatus"] == "CREATING"
        again = mi.create_datastore(datastoreName="lifecycle", clientToken="ds-token-lifecycle-1")
        assert again["datastoreId"] == created["datastoreId"]
        with pytest.raises(ClientError) as exc:
            mi.create_datastore(datastoreName="other-name", clientToken="ds-token-lifecycle-1")
        assert exc.value.response["Error"]["Code"] == "ConflictException"

        props = mi.get_datastore(datastoreId=created["datastoreId"])["datastoreProperties"]
        assert props["datastoreStatus"] == "ACTIVE" and props["datastoreName"] == "lifecycle"
        assert props["datastoreArn"].endswith(":datastore/" + created["datastoreId"])

        for i in range(3):
            mi.create_datastore(datastoreName=f"page-{i}")
        pages = list(mi.get_paginator("list_datastores").paginate(PaginationConfig={"PageSize": 2}))
        assert all(len(p["datastoreSummaries"]) <= 2 for p in pages) and len(pages) >= 2
        ids = [d["datastoreId"] for p in pages for d in p["datastoreSummaries"]]
        assert created["datastoreId"] in ids and len(ids) == len(set(ids))

        deleted = mi.delete_datastore(datastoreId=created["datastoreId"])
        assert deleted["datastoreStatus"] == "DELETING"
        assert mi.get_datastore(datastoreId=created["datastoreId"])["datastoreProperties"]["datastoreStatus"] \
            == "DELETED"
