"""The emulator survives what a careless or hostile client sends its controls and its sockets.

Non-finite or absurd numbers to the admin API are refused naming the field (once stored, a NaN job clock stopped
every import job for good, across restarts); stalled connections are closed after the idle timeout, and beyond
the connection cap a new one is answered 503 without a thread.
"""

from __future__ import annotations

import socket
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from emulator.medicalimaging.clock import JobClock
from emulator.store import Store
from tests.conftest import emulator_admin, make_medical_imaging
from tests.emulator.conftest import ROLE_ARN, create_datastore, unique
from tests.emulator.test_protocol import assert_healthy, raw, recv_all
from tests.support.eventually import assert_eventually_sync


class TestClockAdvance:
    @pytest.mark.parametrize("body", [
        b'{"seconds": NaN}', b'{"seconds": Infinity}', b'{"seconds": -Infinity}', b'{"seconds": 1e309}',
        b'{"seconds": 1e300}', b'{"seconds": -1}', b'{"seconds": true}', b'{"seconds": "1"}', b'{"seconds": null}',
        b"{}",
    ])
    def test_refused_naming_the_field_and_the_clock_does_not_move(self, emulator_url: str, body: bytes) -> None:
        before = emulator_admin(emulator_url, "clock")
        status, headers, doc = raw(emulator_url, "POST", "/_emulator/clock/advance", body)
        assert status == 400 and headers["x-amzn-errortype"] == "ValidationException", doc
        assert "'seconds'" in doc["message"], doc
        after = emulator_admin(emulator_url, "clock")
        assert after["mode"] == before["mode"] and after["now"] >= before["now"]
        assert after["now"] - before["now"] < 3600  # not moved by the refused advance (auto mode: wall time)

    def test_imports_still_run_after_refused_advances(self, emulator_url: str, s3: Any) -> None:
        for body in (b'{"seconds": NaN}', b'{"seconds": 1e309}'):
            raw(emulator_url, "POST", "/_emulator/clock/advance", body)
        mi = make_medical_imaging(emulator_url)
        datastore = create_datastore(mi)
        bucket = unique("clock")
        s3.create_bucket(Bucket=bucket)
        job = mi.start_dicom_import_job(datastoreId=datastore, dataAccessRoleArn=ROLE_ARN, clientToken=unique("t"),
                                        inputS3Uri=f"s3://{bucket}/in/", outputS3Uri=f"s3://{bucket}/out/")
        assert job["jobStatus"] == "SUBMITTED"

    def test_a_stored_non_finite_offset_is_read_as_none(self, tmp_path: Path) -> None:
        """An emulator that stored NaN before the check existed: after the restart, the clock works."""
        store = Store(tmp_path)
        for bad in ("nan", "inf", "-inf", "garbage"):
            store.set_meta("clock:manual", bad)
            clock = JobClock("manual", store)
            assert clock.now() == 0.0
            assert clock.advance(5) == 5.0
        with pytest.raises(ValueError):
            JobClock("manual", store).advance(float("nan"))


class TestNonFiniteNumbersAnywhere:
    @pytest.mark.parametrize("path,body,field", [
        ("/_emulator/throttling", b'{"rates": {"GetImageSet": {"rate": NaN, "burst": 1}}}',
         "rates.GetImageSet.rate"),
        ("/_emulator/throttling", b'{"rates": {"GetImageSet": [1, Infinity]}}', "rates.GetImageSet[1]"),
        ("/_emulator/faults", b'[{"kind": "server_error", "operation": "GetImageSet", "rate": NaN}]', "[0].rate"),
        ("/_emulator/jobs/abc/advance", b'{"timeoutSeconds": 1e309}', "timeoutSeconds"),
    ])
    def test_refused_naming_where(self, emulator_url: str, path: str, body: bytes, field: str) -> None:
        status, headers, doc = raw(emulator_url, "POST", path, body)
        assert status == 400 and headers["x-amzn-errortype"] == "ValidationException", doc
        assert f"'{field}'" in doc["message"], doc
        assert_healthy(emulator_url)


def _open(url: str) -> socket.socket:
    parsed = urllib.parse.urlsplit(url)
    return socket.create_connection((parsed.hostname, parsed.port), timeout=30)


class TestConnections:
    def test_stalled_headers_are_closed_and_the_cap_answers_503(self, private_emulator: Any) -> None:
        server = private_emulator("--idle-timeout-seconds", "2", "--max-connections", "6")
        stalled = [_open(server.url) for _ in range(6)]
        try:
            for sock in stalled:
                sock.sendall(b"GET /_emulator/health HTTP/1.1\r\nHost: x\r\n")  # the headers never end
            # Every thread is taken: one more connection is answered at once and closed.
            def refused() -> bytes:
                with _open(server.url) as extra:
                    extra.sendall(b"GET /_emulator/health HTTP/1.1\r\nHost: x\r\n\r\n")
                    reply = recv_all(extra)
                assert reply.startswith(b"HTTP/1.1 503"), reply
                return reply
            reply = assert_eventually_sync(refused, timeout=10)
            assert b"ServiceUnavailableException" in reply
            # The idle timeout closes the stalled ones (the server ends them: recv sees EOF)...
            for sock in stalled:
                assert recv_all(sock) == b""
        finally:
            for sock in stalled:
                sock.close()
        # ...and frees their threads for new clients.
        assert_eventually_sync(lambda: assert_healthy(server.url), timeout=15)

    def test_an_idle_kept_alive_connection_is_closed(self, private_emulator: Any) -> None:
        server = private_emulator("--idle-timeout-seconds", "1")
        with _open(server.url) as sock:
            sock.sendall(b"GET /_emulator/health HTTP/1.1\r\nHost: x\r\n\r\n")
            # recv_all returns at EOF only: the server closes the kept-alive connection once it idles.
            reply = recv_all(sock)
        assert reply.startswith(b"HTTP/1.1 200") and reply.count(b"HTTP/1.1 ") == 1

    def test_a_stalled_body_is_answered_408_and_closed(self, private_emulator: Any) -> None:
        server = private_emulator("--idle-timeout-seconds", "1")
        with _open(server.url) as sock:
            sock.sendall(b"POST /_emulator/clock/advance HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            reply = recv_all(sock)
        assert reply.startswith(b"HTTP/1.1 408") and b"Connection: close" in reply
        assert_healthy(server.url)
