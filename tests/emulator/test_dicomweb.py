"""DICOMweb (STOW-RS, QIDO-RS, WADO-RS) against a dedicated emulator, with dicomweb-client as the client.

Requests are SigV4-signed (botocore's signer on ``requests``); the OIDC side is in test_dicomweb_auth.py.
"""

from __future__ import annotations

import io
import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from tests.conftest import emulator_admin, make_medical_imaging, make_s3
from tests.emulator.conftest import Importer, create_datastore, dicom_bytes, unique
from tests.support.oidc_issuer import SigV4RequestsAuth
from tests.support.servers import ServerProcess, start_emulator

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(scope="module")
def dw_emulator(oidc_emulator: ServerProcess) -> ServerProcess:
    """This module's emulator: the conftest one with an OIDC issuer (the bearer-token tests need it)."""
    return oidc_emulator


@pytest.fixture(scope="module")
def mi(dw_emulator: ServerProcess) -> Any:
    return make_medical_imaging(dw_emulator.url)


@pytest.fixture
def ds_id(mi: Any) -> str:
    return create_datastore(mi)


def session() -> requests.Session:
    s = requests.Session()
    s.auth = SigV4RequestsAuth()
    return s


def client(base: str, ds: str) -> DICOMwebClient:
    return DICOMwebClient(url=f"{base}/datastore/{ds}", session=session())


def uid() -> str:
    return str(generate_uid(prefix="1.2.826.0.1.3680043.8.498."))


def multipart(parts: list[bytes], boundary: str = "test-boundary-7d3f", content_type: str = "application/dicom"
              ) -> tuple[bytes, str]:
    body = b"".join(b"--" + boundary.encode() + f"\r\nContent-Type: {content_type}\r\n\r\n".encode() + p + b"\r\n"
                    for p in parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow_raw(base: str, ds: str, parts: list[bytes], study: str | None = None) -> requests.Response:
    body, ctype = multipart(parts)
    url = f"{base}/datastore/{ds}/studies" + (f"/{study}" if study else "")
    return session().post(url, data=body, headers={"Content-Type": ctype, "Accept": "application/dicom+json"})


def values(obj: dict[str, Any], tag: str) -> list[Any]:
    return list(obj.get(tag, {}).get("Value", []))


def with_study_fields(study_date: str, accession: str, modality: str = "CT", number: int = 1) -> Any:
    def mutate(ds: pydicom.Dataset) -> None:
        ds.StudyDate = study_date
        ds.AccessionNumber = accession
        ds.Modality = modality
        ds.InstanceNumber = number
    return mutate


class TestStowQidoWado:
    def test_round_trip_with_dicomweb_client(self, dw_emulator: ServerProcess, ds_id: str) -> None:
        study_a, study_b = uid(), uid()
        series_a1, series_a2, series_b = uid(), uid(), uid()
        sops = [uid() for _ in range(4)]
        raw = [
            dicom_bytes(study_a, series_a1, sops[0], "PAT-A", with_study_fields("20200315", "ACC-A", number=2)),
            dicom_bytes(study_a, series_a1, sops[1], "PAT-A", with_study_fields("20200315", "ACC-A", number=1)),
            dicom_bytes(study_a, series_a2, sops[2], "PAT-A", with_study_fields("20200315", "ACC-A", "MR")),
            dicom_bytes(study_b, series_b, sops[3], "PAT-B", with_study_fields("20211201", "ACC-B")),
        ]
        dw = client(dw_emulator.url, ds_id)
        result = dw.store_instances([pydicom.dcmread(io.BytesIO(b)) for b in raw])
        assert sorted(i.ReferencedSOPInstanceUID for i in result.ReferencedSOPSequence) == sorted(sops)
        assert all(i.ReferencedSOPClassUID == CT_IMAGE_STORAGE for i in result.ReferencedSOPSequence)
        assert "FailedSOPSequence" not in result

        studies = dw.search_for_studies()
        assert {values(s, "0020000D")[0] for s in studies} == {study_a, study_b}
        by_uid = {values(s, "0020000D")[0]: s for s in studies}
        assert values(by_uid[study_a], "00201206") == [2]  # NumberOfStudyRelatedSeries
        assert values(by_uid[study_a], "00201208") == [3]  # NumberOfStudyRelatedInstances
        assert sorted(values(by_uid[study_a], "00080061")) == ["CT", "MR"]  # ModalitiesInStudy
        assert values(by_uid[study_a], "00100010") == [{"Alphabetic": "TEST^SYNTHETIC"}]
        assert values(by_uid[study_a], "00081190")[0].endswith(f"/datastore/{ds_id}/studies/{study_a}")

        def study_uids(**filters: Any) -> set[str]:
            return {values(s, "0020000D")[0] for s in dw.search_for_studies(search_filters=filters)}

        assert study_uids(PatientID="PAT-B") == {study_b}
        assert study_uids(AccessionNumber="ACC-A") == {study_a}
        assert study_uids(StudyDate="20200101-20201231") == {study_a}
        assert study_uids(StudyDate="20210101-") == {study_b}
        assert study_uids(StudyDate="-20200315") == {study_a}
        assert study_uids(StudyInstanceUID=f"{study_b},{uid()}") == {study_b}
        assert study_uids(Modality="MR") == {study_a}
        assert study_uids(PatientID="PAT-*") == {study_a, study_b}
        assert study_uids(PatientName="test^synthetic") == {study_a, study_b}
        assert study_uids(PatientID="NOBODY") == set()

        # limit/offset page through all studies; the union is everything, without repeats.
        first = dw.search_for_studies(limit=1)
        second = dw.search_for_studies(limit=1, offset=1)
        assert len(first) == len(second) == 1
        assert {values(first[0], "0020000D")[0], values(second[0], "0020000D")[0]} == {study_a, study_b}
        assert dw.search_for_studies(offset=2) == []

        series = dw.search_for_series(study_a)
        assert {values(s, "0020000E")[0] for s in series} == {series_a1, series_a2}
        assert {values(s, "00201209")[0] for s in series} == {1, 2}  # NumberOfSeriesRelatedInstances
        assert {values(s, "0020000E")[0] for s in dw.search_for_series(study_a, search_filters={"Modality": "MR"})} \
            == {series_a2}
        all_series = dw.search_for_series(search_filters={"PatientID": "PAT-B"})
        assert [values(s, "0020000E")[0] for s in all_series] == [series_b]
        assert values(all_series[0], "00100020") == ["PAT-B"]  # study-level attributes on the all-series search

        instances = dw.search_for_instances(study_a, series_a1)
        # Ordered by InstanceNumber: sops[1] has number 1, sops[0] has number 2.
        assert [values(i, "00080018")[0] for i in instances] == [sops[1], sops[0]]
        assert values(instances[0], "00280010") == [128]  # Rows
        only = dw.search_for_instances(study_a, series_a1, search_filters={"SOPInstanceUID": sops[0]})
        assert [values(i, "00080018")[0] for i in only] == [sops[0]]
        fields = dw.search_for_instances(study_a, series_a1, fields=["ImageType"])
        assert values(fields[0], "00080008")[:2] == ["ORIGINAL", "PRIMARY"]

        ds = dw.retrieve_instance(study_a, series_a1, sops[0])
        assert ds.SOPInstanceUID == sops[0]
        assert ds.PixelData == pydicom.dcmread(io.BytesIO(raw[0])).PixelData

        meta = dw.retrieve_instance_metadata(study_a, series_a1, sops[0])
        parsed = pydicom.Dataset.from_json(meta)
        assert parsed.PatientID == "PAT-A"
        assert parsed.StudyInstanceUID == study_a
        assert "PixelData" not in parsed  # bulk data is left out
        series_meta = dw.retrieve_series_metadata(study_a, series_a1)
        assert [values(m, "00080018")[0] for m in series_meta] == [sops[1], sops[0]]

        frames = dw.retrieve_instance_frames(study_a, series_a1, sops[0], [1])
        assert list(frames) == [pydicom.dcmread(io.BytesIO(raw[0])).PixelData]

    def test_instance_bytes_are_exactly_what_was_stored(self, dw_emulator: ServerProcess, ds_id: str) -> None:
        study, series, sop = uid(), uid(), uid()
        data = dicom_bytes(study, series, sop)
        resp = stow_raw(dw_emulator.url, ds_id, [data], study=study)
        assert resp.status_code == 200, resp.text
        assert resp.headers["Content-Type"] == "application/dicom+json"
        url = f"{dw_emulator.url}/datastore/{ds_id}/studies/{study}/series/{series}/instances/{sop}"
        single = session().get(url, headers={"Accept": "application/dicom; transfer-syntax=*"})
        assert single.status_code == 200
        assert single.headers["Content-Type"].startswith("application/dicom")
        assert single.content == data
        multi = session().get(url, headers={"Accept": 'multipart/related; type="application/dicom"; '
                                                      "transfer-syntax=1.2.840.10008.1.2.1"})
        assert multi.status_code == 200 and multi.headers["Content-Type"].startswith("multipart/related")
        assert data in multi.content
        # A transfer syntax the emulator does not transcode to → 406 in the AWS shape.
        jpeg = session().get(url, headers={"Accept": "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50"})
        assert jpeg.status_code == 406
        assert jpeg.headers["x-amzn-ErrorType"] == "NotAcceptableException"

    def test_large_stow_is_sent_chunked(self, dw_emulator: ServerProcess, ds_id: str) -> None:
        study, series = uid(), uid()
        raw = [dicom_bytes(study, series, uid()) for _ in range(3)]
        dw = client(dw_emulator.url, ds_id)
        dw.set_chunk_size(16 * 1024)  # dicomweb-client switches to Transfer-Encoding: chunked above this
        result = dw.store_instances([pydicom.dcmread(io.BytesIO(b)) for b in raw])
        assert len(result.ReferencedSOPSequence) == 3
        assert len(dw.search_for_instances(study, series)) == 3


    def test_frames_of_an_encapsulated_multiframe_instance(self, dw_emulator: ServerProcess, ds_id: str) -> None:
        ds = pydicom.dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm"))  # RLE, 2 frames, stays encapsulated
        study, series, sop = uid(), uid(), uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        assert stow_raw(dw_emulator.url, ds_id, [buf.getvalue()]).status_code == 200
        expected = list(generate_frames(ds.PixelData, number_of_frames=2))
        dw = client(dw_emulator.url, ds_id)
        frames = dw.retrieve_instance_frames(study, series, sop, [2, 1],
                                             media_types=(("application/octet-stream", "*"),))
        assert list(frames) == [expected[1], expected[0]]
        url = f"{dw_emulator.url}/datastore/{ds_id}/studies/{study}/series/{series}/instances/{sop}/frames/1"
        resp = session().get(url)
        assert resp.headers["Content-Type"].startswith('multipart/related; type="image/dicom-rle"')
        assert b"transfer-syntax=1.2.840.10008.1.2.5" in resp.content


class TestPrimaryAndFailures:
    def test_conflicting_instance_goes_to_a_non_primary_set(self, dw_emulator: ServerProcess, ds_id: str,
                                                             mi: Any) -> None:
        study, series, sop1, sop2 = uid(), uid(), uid(), uid()
        assert stow_raw(dw_emulator.url, ds_id, [dicom_bytes(study, series, sop1, "PAT-1")]).status_code == 200
        # Same study and series, different PatientID: conflicts with the primary set.
        conflicting = dicom_bytes(study, series, sop2, "PAT-OTHER")
        assert stow_raw(dw_emulator.url, ds_id, [conflicting]).status_code == 200

        dw = client(dw_emulator.url, ds_id)
        assert [values(i, "00080018")[0] for i in dw.search_for_instances(study, series)] == [sop1]
        sets = mi.search_image_sets(datastoreId=ds_id, searchCriteria={"filters": [
            {"values": [{"DICOMStudyInstanceUID": study}], "operator": "EQUAL"}]})["imageSetsMetadataSummaries"]
        assert sorted(s["isPrimary"] for s in sets) == [False, True]
        non_primary = next(s["imageSetId"] for s in sets if not s["isPrimary"])

        url = f"{dw_emulator.url}/datastore/{ds_id}/studies/{study}/series/{series}/instances/{sop2}"
        hidden = session().get(url, headers={"Accept": "application/dicom"})
        assert hidden.status_code == 404
        assert hidden.headers["x-amzn-ErrorType"] == "ResourceNotFoundException"
        found = session().get(url, params={"imageSetId": non_primary}, headers={"Accept": "application/dicom"})
        assert found.status_code == 200 and found.content == conflicting
        via_qido = dw.search_for_instances(study, series, additional_params={"imageSetId": non_primary})
        assert [values(i, "00080018")[0] for i in via_qido] == [sop2]
        meta = dw.retrieve_instance_metadata(study, series, sop2, additional_params={"imageSetId": non_primary})
        assert values(meta, "00100020") == ["PAT-OTHER"]
        assert session().get(url, params={"imageSetId": uuid.uuid4().hex}).status_code == 404

    def test_partial_failure_is_409_with_failed_sop_sequence(self, dw_emulator: ServerProcess, ds_id: str) -> None:
        study, series = uid(), uid()
        good, other_study, no_sop = uid(), uid(), uid()

        def drop_sop(ds: pydicom.Dataset) -> None:
            del ds.SOPInstanceUID

        parts = [
            dicom_bytes(study, series, good),
            dicom_bytes(uid(), uid(), other_study),  # study UID does not match the path
            b"this is not DICOM at all" * 10,
            dicom_bytes(study, series, no_sop, mutate=drop_sop),
        ]
        resp = stow_raw(dw_emulator.url, ds_id, parts, study=study)
        assert resp.status_code == 409
        assert resp.headers["Content-Type"] == "application/dicom+json"
        body = pydicom.Dataset.from_json(resp.json())
        assert [i.ReferencedSOPInstanceUID for i in body.ReferencedSOPSequence] == [good]
        # Study mismatch → 0xA900 with its UIDs; not DICOM → 0xC000; no SOPInstanceUID → 0xA900 (UID unknown).
        failed = sorted((str(i.ReferencedSOPInstanceUID or ""), i.FailureReason) for i in body.FailedSOPSequence)
        assert failed == sorted([(other_study, 0xA900), ("", 0xC000), ("", 0xA900)])
        dw = client(dw_emulator.url, ds_id)
        assert [values(i, "00080018")[0] for i in dw.search_for_instances(study, series)] == [good]

    def test_imported_instances_are_visible_through_dicomweb(self, dw_emulator: ServerProcess, ds_id: str,
                                                             moto_url: str, mi: Any) -> None:
        s3 = make_s3(moto_url)
        bucket = unique("dw")
        s3.create_bucket(Bucket=bucket)
        study, series, sop = uid(), uid(), uid()
        data = dicom_bytes(study, series, sop, "PAT-IMPORT")
        props = Importer(s3, mi, bucket, ds_id).run("in/", {"a.dcm": data})
        assert props["jobStatus"] == "COMPLETED"
        dw = client(dw_emulator.url, ds_id)
        studies = dw.search_for_studies(search_filters={"PatientID": "PAT-IMPORT"})
        assert [values(s, "0020000D")[0] for s in studies] == [study]
        url = f"{dw_emulator.url}/datastore/{ds_id}/studies/{study}/series/{series}/instances/{sop}"
        assert session().get(url, headers={"Accept": "application/dicom"}).content == data


class TestHostile:
    def test_hostile_requests_fail_cleanly_and_change_nothing(self, dw_emulator: ServerProcess, ds_id: str) -> None:
        base = dw_emulator.url
        study, series, sop = uid(), uid(), uid()
        assert stow_raw(base, ds_id, [dicom_bytes(study, series, sop)]).status_code == 200
        before = {k: v for k, v in emulator_admin(base, "state").items() if k != "clock"}
        s = session()
        root = f"{base}/datastore/{ds_id}"
        part = dicom_bytes(study, series, uid())

        def post(body: bytes, ctype: str, url: str = root + "/studies") -> requests.Response:
            return s.post(url, data=body, headers={"Content-Type": ctype})

        body, ctype = multipart([part])
        cases: list[tuple[requests.Response, int, str]] = [
            (post(body[:-30], ctype), 400, "BadRequestException"),  # no closing delimiter
            (post(body, "multipart/related; type=\"application/dicom\""), 400, "BadRequestException"),  # no boundary
            (post(b"garbage without any delimiter", ctype), 400, "BadRequestException"),
            (post(body, "application/json"), 415, "UnsupportedMediaTypeException"),
            (post(body, 'multipart/related; type="application/dicom+json"; boundary=test-boundary-7d3f'), 415,
             "UnsupportedMediaTypeException"),
            (post(body, ctype, f"{base}/datastore/{uuid.uuid4().hex}/studies"), 404, "ResourceNotFoundException"),
            (post(body, ctype, f"{root}/studies/..%2F..%2Fetc"), 400, "ValidationException"),
            (s.get(f"{root}/studies/..%2F..%2F..%2Fetc%2Fpasswd/series"), 400, "ValidationException"),
            (s.get(f"{root}/studies/{study}/series/{series}/instances/..%2Fx/metadata"), 400, "ValidationException"),
            (s.get(f"{base}/datastore/..%2F..%2Fdata/studies"), 400, "ValidationException"),
            (s.get(f"{base}/datastore/{uuid.uuid4().hex}/studies"), 404, "ResourceNotFoundException"),
            (s.get(f"{root}/studies/{study}/series/{series}/instances/{uid()}"), 404, "ResourceNotFoundException"),
            (s.get(f"{root}/studies/{uid()}/series/{series}/metadata"), 404, "ResourceNotFoundException"),
            (s.get(f"{root}/studies/{study}/series/{series}/instances/{sop}/frames/0"), 400, "BadRequestException"),
            (s.get(f"{root}/studies/{study}/series/{series}/instances/{sop}/frames/1,x"), 400,
             "BadRequestException"),
            (s.get(f"{root}/studies/{study}/series/{series}/instances/{sop}/frames/2"), 400, "BadRequestException"),
            (s.get(f"{root}/studies", params={"limit": "-1"}), 400, "BadRequestException"),
            (s.get(f"{root}/studies", params={"NotATag": "x"}), 400, "BadRequestException"),
            (s.get(f"{root}/studies", params={"imageSetId": "../x"}), 400, "ValidationException"),
            (s.get(f"{root}/studies", headers={"Accept": "application/dicom+xml"}), 406, "NotAcceptableException"),
            (s.get(f"{root}/studies/{study}/series/{series}/instances/{sop}/frames/1",
                   headers={"Accept": 'multipart/related; type="image/jpeg"'}), 406, "NotAcceptableException"),
        ]
        for resp, status, code in cases:
            assert (resp.status_code, resp.headers.get("x-amzn-ErrorType")) == (status, code), resp.request.url
            assert "message" in resp.json()
        assert {k: v for k, v in emulator_admin(base, "state").items() if k != "clock"} == before
        assert emulator_admin(base, "health") == {"status": "ok"}

    def test_oversized_body_is_refused_without_reading_it(self, dw_emulator: ServerProcess, ds_id: str) -> None:
        host, port = dw_emulator.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            # A known key and a current time pass the head's checks; the signature would need the body.
            now = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            sock.sendall((f"POST /datastore/{ds_id}/studies HTTP/1.1\r\nHost: {host}\r\n"
                          'Content-Type: multipart/related; type="application/dicom"; boundary=b\r\n'
                          f"X-Amz-Date: {now}\r\n"
                          f"Authorization: AWS4-HMAC-SHA256 Credential=testing/{now[:8]}/us-east-1/medical-imaging/"
                          "aws4_request, SignedHeaders=host;x-amz-date, Signature=abc\r\n"
                          f"Content-Length: {2 * 1024**3}\r\n\r\n").encode())
            head = sock.recv(65536).decode("latin-1")
        assert head.startswith("HTTP/1.1 413")
        assert "RequestEntityTooLargeException" in head
        assert emulator_admin(dw_emulator.url, "health") == {"status": "ok"}

    @pytest.mark.parametrize("framing", ["Content-Length: 500000000", "Transfer-Encoding: chunked"])
    def test_unauthenticated_stow_is_refused_before_its_body_is_read(self, dw_emulator: ServerProcess, ds_id: str,
                                                                     framing: str) -> None:
        host, port = dw_emulator.url.removeprefix("http://").split(":")
        # The body is never sent, so an answer at all proves the server did not wait for it. A server that
        # did would leave this recv waiting until the socket timeout (TimeoutError: the test fails); 30 s is
        # far above a loaded machine's answer and below the emulator's 60 s idle timeout, which would otherwise
        # end such a wait with a close instead.
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall((f"POST /datastore/{ds_id}/studies HTTP/1.1\r\nHost: {host}\r\n"
                          'Content-Type: multipart/related; type="application/dicom"; boundary=b\r\n'
                          f"{framing}\r\n\r\n").encode())
            received = b""
            while chunk := sock.recv(65536):  # until the server closes: the unread body is never waited for
                received += chunk
        head = received.decode("latin-1")
        assert head.startswith("HTTP/1.1 401")
        assert "UnauthorizedException" in head and "Connection: close" in head
        assert "WWW-Authenticate: Bearer" in head
        assert emulator_admin(dw_emulator.url, "health") == {"status": "ok"}

    def test_stow_response_body_is_dicom_json(self, dw_emulator: ServerProcess, ds_id: str) -> None:
        study, series, sop = uid(), uid(), uid()
        resp = stow_raw(dw_emulator.url, ds_id, [dicom_bytes(study, series, sop)])
        doc = resp.json()
        assert doc["00081199"]["vr"] == "SQ"
        item = doc["00081199"]["Value"][0]
        assert item["00081155"] == {"vr": "UI", "Value": [sop]}
        assert json.dumps(doc)  # plain JSON, no bytes


# ---- throttling: WADO-RS shares the rest-json API's token buckets (AWS publishes rates for these four actions)

WADO_RATES = ("GetDICOMInstanceMetadata=0:2,GetDICOMInstance=0:1,GetDICOMInstanceFrames=0:1,"
              "GetDICOMSeriesMetadata=0:1")


@pytest.fixture(scope="module")
def throttled_dw(moto_url: str, log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Rate 0: a bucket never refills, so the test does not depend on timing.
    server = start_emulator(tmp_path_factory.mktemp("dicomweb-throttled"), moto_url, log_dir,
                            extra_args=["--throttling", "on", "--throttle-rates", WADO_RATES])
    yield server
    server.stop()


def test_wado_rs_is_throttled_stow_and_qido_are_not(throttled_dw: ServerProcess) -> None:
    base = throttled_dw.url
    ds = create_datastore(make_medical_imaging(base))
    study, series, sops = uid(), uid(), [uid() for _ in range(3)]
    for sop in sops:  # STOW-RS three times: no bucket
        assert stow_raw(base, ds, [dicom_bytes(study, series, sop)]).status_code == 200
    s = session()
    root = f"{base}/datastore/{ds}/studies/{study}/series/{series}"
    for _ in range(4):  # QIDO-RS: no bucket either
        assert s.get(f"{base}/datastore/{ds}/studies").status_code == 200
        assert s.get(root + "/instances").status_code == 200

    def status(url: str, accept: str = "application/dicom+json") -> tuple[int, str | None]:
        resp = s.get(url, headers={"Accept": accept})
        return resp.status_code, resp.headers.get("x-amzn-ErrorType")

    inst = f"{root}/instances/{sops[0]}"
    throttled = (429, "ThrottlingException")
    assert [status(inst + "/metadata") for _ in range(3)] == [(200, None), (200, None), throttled]
    assert [status(inst, "application/dicom") for _ in range(2)] == [(200, None), throttled]
    frames_accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    assert [status(inst + "/frames/1", frames_accept) for _ in range(2)] == [(200, None), throttled]
    assert [status(root + "/metadata") for _ in range(2)] == [(200, None), throttled]

    resp = s.get(inst + "/metadata")
    assert resp.status_code == 429 and resp.json() == {"message": "Rate exceeded"}
    # Authentication comes first: without credentials an empty bucket still answers 401.
    assert requests.get(inst + "/metadata").status_code == 401
    ops = emulator_admin(base, "throttling")["operations"]
    assert {op: (ops[op]["allowed"], ops[op]["throttled"]) for op in
            ("GetDICOMInstanceMetadata", "GetDICOMInstance", "GetDICOMInstanceFrames", "GetDICOMSeriesMetadata")} \
        == {"GetDICOMInstanceMetadata": (2, 2), "GetDICOMInstance": (1, 1), "GetDICOMInstanceFrames": (1, 1),
            "GetDICOMSeriesMetadata": (1, 1)}
