"""The streaming multipart/related reader (pure; the real WADO-RS stream is tested against Orthanc)."""

from __future__ import annotations

import pytest

from activities.sources.multipart import MAX_HEADER_BYTES, MultipartError, boundary_of, iter_parts

B = b"abc-123"


def _body(parts: list[bytes]) -> bytes:
    out = b"preamble\r\n"
    for p in parts:
        out += b"--" + B + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
    return out + b"--" + B + b"--\r\n"


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
def test_parts_survive_any_chunking(chunk: int) -> None:
    # Bodies that contain near-boundaries and CRLFs must come back byte for byte.
    parts = [b"\r\n--abc-12", b"", b"x" * 1000 + b"\r\n--abc-124", b"--" + B]
    got = [(h, body.read(), size) for h, body, size in iter_parts(_chunks(_body(parts), chunk), B)]
    assert [g[1] for g in got] == parts
    assert [g[2] for g in got] == [len(p) for p in parts]
    assert all(h["content-type"] == "application/dicom" for h, _, _ in got)


@pytest.mark.parametrize(("data", "needle"), [
    (b"no boundary at all", "no multipart boundary"),
    (b"--" + B + b"\r\nContent-Type: x\r\n\r\npartial body without end", "truncated transfer"),
    (b"--" + B + b"\r\nContent-Type: x", "inside part headers"),
    (b"--" + B, "ended after a boundary"),
    (b"--" + B + b"\r\n" + b"X: " + b"y" * (MAX_HEADER_BYTES + 10), "part headers are too long"),
])
def test_broken_streams_are_errors_not_silent_truncation(data: bytes, needle: str) -> None:
    with pytest.raises(MultipartError, match=needle):
        list(iter_parts(_chunks(data, 5), B))


def test_boundary_is_read_from_the_content_type() -> None:
    assert boundary_of('multipart/related; type="application/dicom"; boundary=abc') == b"abc"
    assert boundary_of('multipart/related; boundary="q-1"; type="application/dicom"') == b"q-1"
    with pytest.raises(MultipartError, match="expected multipart/related"):
        boundary_of("application/dicom+json")
