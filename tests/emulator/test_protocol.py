"""The wire protocol: model-driven validation, AWS-shaped errors, and hostile raw HTTP."""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import emulator_admin
from tests.emulator.conftest import ROLE_ARN


def error_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int, str]:
    err = exc.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"], err["Error"]["Message"]


class TestValidation:
    def test_bad_client_token_pattern(self, medical_imaging: Any) -> None:
        with pytest.raises(ClientError) as exc:
            medical_imaging.create_datastore(datastoreName="x", clientToken="bad token!")
        assert error_of(exc) == ("ValidationException", 400,
                                 "1 validation error detected: Value 'bad token!' at 'clientToken' failed to satisfy "
                                 "constraint: Member must satisfy regular expression pattern: [A-Za-z0-9._-]+")

    def test_bad_s3_uris_are_each_named(self, medical_imaging: Any, datastore_id: str) -> None:
        with pytest.raises(ClientError) as exc:
            medical_imaging.start_dicom_import_job(datastoreId=datastore_id, dataAccessRoleArn=ROLE_ARN,
                                                   inputS3Uri="http://bucket/x", outputS3Uri="s3://UPPER/x")
        code, status, message = error_of(exc)
        assert (code, status) == ("ValidationException", 400)
        assert message.startswith("2 validation errors detected: ")
        assert "Value 'http://bucket/x' at 'inputS3Uri' failed to satisfy constraint" in message
        assert "at 'outputS3Uri'" in message

    def test_missing_required_member(self, raw_client: Any, datastore_id: str) -> None:
        with pytest.raises(ClientError) as exc:
            raw_client.start_dicom_import_job(datastoreId=datastore_id, inputS3Uri="s3://bucket/in/",
                                              outputS3Uri="s3://bucket/out/")
        assert error_of(exc) == ("ValidationException", 400,
                                 "1 validation error detected: Value null at 'dataAccessRoleArn' failed to satisfy "
                                 "constraint: Member must not be null")

    def test_bad_enum_in_list_filter(self, medical_imaging: Any, datastore_id: str) -> None:
        with pytest.raises(ClientError) as exc:
            medical_imaging.list_dicom_import_jobs(datastoreId=datastore_id, jobStatus="DONE")
        code, _, message = error_of(exc)
        assert code == "ValidationException"
        assert ("Value 'DONE' at 'jobStatus' failed to satisfy constraint: Member must satisfy enum value set: "
                "[SUBMITTED, IN_PROGRESS, COMPLETED, FAILED]") in message

    @pytest.mark.parametrize(("value", "constraint"), [
        (51, "Member must have value less than or equal to 50"),
        (0, "Member must have value greater than or equal to 1"),
    ])
    def test_max_results_out_of_range(self, raw_client: Any, value: int, constraint: str) -> None:
        with pytest.raises(ClientError) as exc:
            raw_client.list_datastores(maxResults=value)
        assert error_of(exc)[2] == (f"1 validation error detected: Value '{value}' at 'maxResults' failed to "
                                    f"satisfy constraint: {constraint}")

    def test_bad_id_pattern_and_lengths(self, medical_imaging: Any, raw_client: Any) -> None:
        with pytest.raises(ClientError) as exc:
            medical_imaging.get_datastore(datastoreId="NOT-AN-ID")
        assert "at 'datastoreId' failed to satisfy constraint: Member must satisfy regular expression pattern: " \
               "[0-9a-z]{32}" in error_of(exc)[2]
        with pytest.raises(ClientError) as exc:
            raw_client.create_datastore(clientToken="x" * 65)
        assert "Member must have length less than or equal to 64" in error_of(exc)[2]

    def test_union_must_have_exactly_one_member(self, raw_client: Any, datastore_id: str) -> None:
        with pytest.raises(ClientError) as exc:
            raw_client.search_image_sets(datastoreId=datastore_id, searchCriteria={"filters": [{
                "operator": "EQUAL", "values": [{"DICOMPatientId": "a", "DICOMStudyId": "b"}]}]})
        code, _, message = error_of(exc)
        assert code == "ValidationException"
        assert "searchCriteria.filters.1.member.values.1.member" in message
        # searchCriteria is sensitive in the model: patient values are not echoed back.
        assert "'a'" not in message

    def test_invalid_next_token(self, medical_imaging: Any) -> None:
        with pytest.raises(ClientError) as exc:
            medical_imaging.list_datastores(nextToken="garbage")
        assert error_of(exc)[:2] == ("ValidationException", 400)


class TestNotFound:
    def test_unknown_ids(self, medical_imaging: Any, datastore_id: str) -> None:
        unknown = "f" * 32
        calls = [
            lambda: medical_imaging.get_datastore(datastoreId=unknown),
            lambda: medical_imaging.delete_datastore(datastoreId=unknown),
            lambda: medical_imaging.get_dicom_import_job(datastoreId=datastore_id, jobId="abc123"),
            lambda: medical_imaging.list_dicom_import_jobs(datastoreId=unknown),
            lambda: medical_imaging.get_image_set(datastoreId=datastore_id, imageSetId=unknown),
            lambda: medical_imaging.get_image_set_metadata(datastoreId=datastore_id, imageSetId=unknown),
            lambda: medical_imaging.list_image_set_versions(datastoreId=datastore_id, imageSetId=unknown),
            lambda: medical_imaging.search_image_sets(datastoreId=unknown),
        ]
        for call in calls:
            with pytest.raises(ClientError) as exc:
                call()
            assert error_of(exc)[:2] == ("ResourceNotFoundException", 404)

    def test_every_model_operation_is_implemented(self, medical_imaging: Any, datastore_id: str) -> None:
        # An operation without a handler would answer NotImplementedException (501); none is left.
        from botocore import xform_name

        from emulator.medicalimaging.handlers import MedicalImagingHandlers

        missing = [op for op in medical_imaging._service_model.operation_names
                   if not hasattr(MedicalImagingHandlers, xform_name(op))]
        assert missing == []
        with pytest.raises(ClientError) as exc:
            medical_imaging.delete_image_set(datastoreId=datastore_id, imageSetId="f" * 32)
        assert error_of(exc)[:2] == ("ResourceNotFoundException", 404)


def raw(url: str, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(data) if data else None
    finally:
        conn.close()


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def assert_healthy(url: str) -> None:
    assert emulator_admin(url, "health") == {"status": "ok"}


class TestHostileHttp:
    def test_malformed_json(self, emulator_url: str) -> None:
        status, headers, body = raw(emulator_url, "POST", "/datastore", b"{not json",
                                    {"Content-Type": "application/json"})
        assert status == 400 and headers["x-amzn-errortype"] == "SerializationException"
        assert set(body) == {"message"}
        status, headers, _ = raw(emulator_url, "POST", "/datastore", b'["a list"]')
        assert status == 400 and headers["x-amzn-errortype"] == "SerializationException"
        status, headers, _ = raw(emulator_url, "POST", "/datastore", b'{"clientToken": 5}')
        assert status == 400 and headers["x-amzn-errortype"] == "SerializationException"
        assert_healthy(emulator_url)

    def test_unknown_routes_and_methods(self, emulator_url: str) -> None:
        for method, path in [("GET", "/nope"), ("PUT", "/datastore"), ("GET", "/_emulator/unknown"),
                             ("POST", "/datastore/" + "a" * 32 + "/imageSet")]:
            status, headers, body = raw(emulator_url, method, path)
            assert status == 404, (method, path)
            assert headers["x-amzn-errortype"] == "UnknownOperationException"
            assert "message" in body
        assert_healthy(emulator_url)

    def test_path_traversal_ids_fail_validation(self, emulator_url: str, datastore_id: str) -> None:
        for path in ["/datastore/..%2F..%2Fetc%2Fpasswd",
                     f"/getDICOMImportJob/datastore/{datastore_id}/job/..%2F..",
                     f"/datastore/{datastore_id}/imageSet/%2e%2e/getImageSet"]:
            status, headers, body = raw(emulator_url, "POST" if "imageSet" in path else "GET", path)
            assert status == 400 and headers["x-amzn-errortype"] == "ValidationException", path
            assert "failed to satisfy constraint" in body["message"]
        assert_healthy(emulator_url)

    def test_huge_content_length_is_refused_without_reading(self, emulator_url: str) -> None:
        parsed = urllib.parse.urlsplit(emulator_url)
        with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as sock:
            sock.sendall(b"POST /datastore HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000000000000\r\n\r\n")
            reply = recv_all(sock).decode()
        head, _, payload = reply.partition("\r\n\r\n")
        assert head.startswith("HTTP/1.1 413")
        assert "x-amzn-ErrorType: RequestEntityTooLargeException" in head
        assert "message" in json.loads(payload)
        assert_healthy(emulator_url)

    def test_garbage_request_line(self, emulator_url: str) -> None:
        parsed = urllib.parse.urlsplit(emulator_url)
        with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as sock:
            sock.sendall(b"\x16\x03\x01 garbage that is not http\r\n\r\n")
            reply = recv_all(sock)
        assert reply.startswith(b"HTTP/1.1 400")
        assert b"Traceback" not in reply
        assert_healthy(emulator_url)

    def test_bad_content_length_and_admin_json(self, emulator_url: str) -> None:
        status, headers, _ = raw(emulator_url, "POST", "/_emulator/clock/advance", b"[1,2]")
        assert status == 400 and headers["x-amzn-errortype"] == "SerializationException"
        status, headers, _ = raw(emulator_url, "POST", "/_emulator/clock/advance", b'{"seconds": "soon"}')
        assert status == 400 and headers["x-amzn-errortype"] == "ValidationException"
        assert_healthy(emulator_url)
