"""DICOMweb servers that misbehave in ways Orthanc does not: a real HTTP server on 127.0.0.1 that ignores
``offset``, lists rows without UIDs and redirects, driven through the real receive activity and moto S3."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
from temporalio.exceptions import ApplicationError

from contracts.sources import DicomwebSource
from tests.activities.sources.support import buckets, failures, receive_input, run_receive

STUDY = "1.2.826.0.1.3680043.10.1"
SOP = "1.2.826.0.1.3680043.10.1.1"


class _Sloppy(BaseHTTPRequestHandler):
    """QIDO-RS that ignores limit/offset (same rows on every page), with one study and one instance row that
    carry no UID; WADO-RS answers 404; ``/moved`` redirects."""

    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        path = urlsplit(self.path).path
        if path.startswith("/moved"):
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:9/elsewhere")
            self.end_headers()
            return
        if path == "/dw/studies":
            rows: Any = [{"0020000D": {"vr": "UI", "Value": [STUDY]}}, {"00100010": {"vr": "PN"}}]
        elif path == f"/dw/studies/{STUDY}/instances":
            rows = [{"00080018": {"vr": "UI", "Value": [SOP]}, "0020000E": {"vr": "UI", "Value": ["1.2.3"]}},
                    {"0020000E": {"vr": "UI", "Value": ["1.2.3"]}}]
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps(rows).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def sloppy() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (_Sloppy,), {"requests": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_rows_without_uids_are_counted_and_offset_ignoring_paging_ends(s3: Any, sloppy: tuple[str, list[str]]) -> None:
    url, seen = sloppy
    land, work = buckets(s3)
    inp = receive_input(land, work, DicomwebSource(kind="dicomweb", url=f"{url}/dw", page_size=2))
    result, _ = run_receive(s3, inp)
    assert result is not None and result.files == 0
    rows = {r["key"]: r for r in failures(s3, inp)}
    assert rows["landed/unusable-study-listing"]["code"] == "UnusableListing"
    assert "listed 1 entries without a StudyInstanceUID" in rows["landed/unusable-study-listing"]["reason"]
    assert rows[f"landed/{STUDY}/unusable-listing"]["code"] == "UnusableListing"
    assert rows[f"landed/1.2.826.0.1.3680043.10.1/1.2.3/{SOP}.dcm"]["code"] == "NotDelivered"
    assert result.source_failures == len(rows) == 3
    # The server repeats its first page for every offset: the second page added nothing, so paging stopped.
    assert sum(1 for p in seen if urlsplit(p).path == "/dw/studies") == 2
    assert sum(1 for p in seen if urlsplit(p).path == f"/dw/studies/{STUDY}/instances") == 2


def test_redirects_are_not_followed(s3: Any, sloppy: tuple[str, list[str]]) -> None:
    url, _ = sloppy
    land, work = buckets(s3)
    inp = receive_input(land, work, DicomwebSource(kind="dicomweb", url=f"{url}/moved"))
    with pytest.raises(ApplicationError) as info:
        run_receive(s3, inp)
    assert info.value.non_retryable and "HTTP 302 redirect (not followed" in str(info.value)
    assert "source_connector.url" in str(info.value)
