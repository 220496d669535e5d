"""Property-based fuzzing of the emulator's admin API, DICOMweb routes and rest-json API over raw HTTP.

One private emulator (DICOMweb auth off, so requests reach the handlers) with one imported instance; hypothesis
sends requests built from the real route shapes with fuzzed path segments, query strings and bodies (JSON of any
shape, NaN and Infinity included, or raw bytes). Nothing may answer 5xx or leave the server unhealthy; every
error is the AWS JSON shape; and the job clock never becomes non-finite.
"""

from __future__ import annotations

import http.client
import json
import math
import urllib.parse
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import emulator_admin
from tests.emulator.conftest import Importer, client_for, create_datastore, dicom_bytes, unique

JSON_SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20))
JSON = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=10), inner, max_size=3), max_leaves=8)
SEGMENT = st.text(st.characters(codec="ascii", exclude_characters="/?#"), max_size=40).map(
    lambda s: urllib.parse.quote(s, safe=""))


def _request(url: str, method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    try:
        conn.request(method, path, body=body or None, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_no_request_makes_the_emulator_fail(private_emulator: Any, s3: Any) -> None:
    server = private_emulator("--dicomweb-auth", "off")
    mi = client_for(server)
    datastore = create_datastore(mi)
    bucket = unique("fuzz")
    s3.create_bucket(Bucket=bucket)
    study, series, sop = "1.2.826.0.1.9", "1.2.826.0.1.9.1", "1.2.826.0.1.9.1.1"
    props = Importer(s3, mi, bucket, datastore).run("in/", {"a.dcm": dicom_bytes(study, series, sop)})
    assert props["jobStatus"] == "COMPLETED"
    known = {"ds": datastore, "study": study, "series": series, "sop": sop}

    templates = [
        ("POST", "/_emulator/clock/advance"), ("GET", "/_emulator/clock"), ("GET", "/_emulator/state"),
        ("GET", "/_emulator/stats"), ("POST", "/_emulator/throttling"), ("GET", "/_emulator/throttling"),
        ("POST", "/_emulator/jobs/{seg}/advance"), ("GET", "/_emulator/events"),
        ("GET", "/datastore/{ds}/studies"), ("GET", "/datastore/{ds}/studies/{study}/series"),
        ("GET", "/datastore/{ds}/studies/{study}/series/{series}/instances"),
        ("GET", "/datastore/{ds}/studies/{study}/series/{series}/instances/{sop}"),
        ("GET", "/datastore/{ds}/studies/{seg}/series/{seg}/instances/{seg}"), ("GET", "/datastore/{seg}/studies"),
        ("POST", "/datastore/{ds}/studies"), ("GET", "/datastore/{ds}/series"),
        ("POST", "/datastore/{ds}/searchImageSets"), ("GET", "/datastore/{ds}"), ("POST", "/datastore"),
        ("GET", "/datastore/{ds}/importJob/{seg}"), ("POST", "/startDICOMImportJob/datastore/{ds}"),
        ("GET", "/{seg}"), ("DELETE", "/datastore/{seg}"),
    ]

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(templates), SEGMENT,
           st.dictionaries(st.sampled_from(["limit", "offset", "StudyInstanceUID", "includefield", "jobId",
                                            "maxResults", "x"]), st.text(max_size=12), max_size=3),
           JSON.map(lambda v: json.dumps(v, allow_nan=True).encode()) | st.binary(max_size=64) | st.just(b""))
    def one(template: tuple[str, str], seg: str, query: dict[str, str], body: bytes) -> None:
        method, shape = template
        path = shape.format(seg=seg or "x", **known)
        if query:
            path += "?" + urllib.parse.urlencode(query)
        status, headers, data = _request(server.url, method, path, body)
        assert status < 500, (method, path, body[:80], status, data[:300])
        if status >= 400 and headers.get("content-type", "").startswith("application"):
            doc = json.loads(data)
            assert "message" in doc or "Message" in doc, doc

    one()
    clock = emulator_admin(server.url, "clock")
    assert math.isfinite(clock["now"])
    assert emulator_admin(server.url, "health") == {"status": "ok"}
