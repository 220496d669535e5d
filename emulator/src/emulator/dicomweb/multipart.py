"""``multipart/related`` bodies (RFC 2046 / RFC 2387) for STOW-RS requests and WADO-RS responses.

The parser works on the whole body in memory (the server has already read it, bounded by the DICOMweb body
limit) and is deliberately strict about structure but tolerant about line endings: a body without a closing
delimiter, without any part, or with a part lacking the blank line after its headers is malformed. Each part's
bytes are returned as slices of the body, never copied twice.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

# RFC 2046 §5.1.1: 1-70 characters from this set, not ending with a space.
_BOUNDARY_RE = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM_RE = re.compile(rf"\s*;\s*({_TOKEN})\s*=\s*(\"(?:[^\"\\]|\\.)*\"|[^;]*)")


class MultipartError(ValueError):
    """The body is not a well-formed multipart message; ``str(exc)`` says why (no body bytes are echoed)."""


@dataclass
class MediaType:
    """A parsed media type: ``type/subtype`` lower-cased, parameters with lower-cased names, unquoted values."""

    mime: str
    params: dict[str, str]


def parse_media_type(text: str) -> MediaType:
    """Parse ``type/subtype; a=b; c="d"`` (RFC 9110 §8.3.1). Unparsable parameters are ignored."""
    mime, _, rest = text.partition(";")
    params: dict[str, str] = {}
    rest = ";" + rest if rest else ""
    for m in _PARAM_RE.finditer(rest):
        value = m.group(2).strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[m.group(1).lower()] = value
    return MediaType(mime.strip().lower(), params)


def split_accept(text: str) -> list[MediaType]:
    """Split an ``Accept`` header into media ranges, respecting commas inside quoted parameter values."""
    items: list[str] = []
    buf: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            items.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    items.append("".join(buf))
    return [parse_media_type(i) for i in items if i.strip()]


@dataclass
class Part:
    headers: dict[str, str]  # lower-cased names
    content: bytes

    @property
    def content_type(self) -> MediaType | None:
        value = self.headers.get("content-type")
        return parse_media_type(value) if value else None


def _line_end(body: bytes, pos: int) -> int | None:
    """Index just after the line break that ends the line starting at ``pos`` (CRLF or bare LF), or None."""
    nl = body.find(b"\n", pos)
    return None if nl < 0 else nl + 1


def parse_multipart(body: bytes, boundary: str, max_parts: int = 100_000) -> list[Part]:
    """Split ``body`` into parts at ``boundary``. Raises :class:`MultipartError` on anything malformed."""
    if not _BOUNDARY_RE.fullmatch(boundary):
        raise MultipartError("The multipart boundary parameter is missing or invalid")
    dash = b"--" + boundary.encode("ascii")
    # The first delimiter may start the body; every later one follows a line break (CRLF, or LF from sloppy
    # clients). A delimiter is only recognised at the start of a line, so boundary-like bytes inside DICOM data
    # that are not preceded by a line break are left alone.
    if body.startswith(dash):
        pos = 0
    else:
        pos = body.find(b"\n" + dash)
        if pos < 0:
            raise MultipartError("The body contains no multipart delimiter for the declared boundary")
        pos += 1
    parts: list[Part] = []
    while True:
        after = pos + len(dash)
        if body[after:after + 2] == b"--":
            break  # close delimiter; the epilogue is ignored
        # Transport padding (spaces/tabs) may follow the delimiter before its line break.
        eol = _line_end(body, after)
        if eol is None or body[after:eol].strip(b" \t\r\n"):
            raise MultipartError("A multipart delimiter is not followed by a line break")
        nxt = body.find(b"\n" + dash, eol)
        if nxt < 0:
            raise MultipartError("The multipart body has no closing delimiter")
        end = nxt - 1 if nxt > 0 and body[nxt - 1:nxt] == b"\r" else nxt
        parts.append(_parse_part(body, eol, end))
        if len(parts) > max_parts:
            raise MultipartError(f"The multipart body has more than {max_parts} parts")
        pos = nxt + 1
    if not parts:
        raise MultipartError("The multipart body contains no parts")
    return parts


def _parse_part(body: bytes, start: int, end: int) -> Part:
    headers: dict[str, str] = {}
    pos = start
    while True:
        eol = body.find(b"\n", pos, end + 1)
        if eol < 0:
            # No blank line: a part with no headers and no body separator is malformed.
            if pos == end:
                return Part(headers, b"")
            raise MultipartError("A multipart part has no blank line after its headers")
        line = body[pos:eol].rstrip(b"\r")
        pos = eol + 1
        if not line:
            break
        if len(headers) > 100 or len(line) > 8192:
            raise MultipartError("A multipart part has too many or too long header lines")
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            raise MultipartError("A multipart part has a malformed header line")
        headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    return Part(headers, body[pos:end])


def new_boundary() -> str:
    return uuid.uuid4().hex


def encode_multipart(parts: list[tuple[str, bytes]], boundary: str) -> bytes:
    """``parts`` as (Content-Type, bytes) into one multipart body with CRLF line breaks."""
    chunks: list[bytes] = []
    dash = b"--" + boundary.encode("ascii")
    for content_type, data in parts:
        chunks += [dash, b"\r\nContent-Type: ", content_type.encode("ascii"),
                   b"\r\nContent-Length: ", str(len(data)).encode("ascii"), b"\r\n\r\n", data, b"\r\n"]
    chunks += [dash, b"--\r\n"]
    return b"".join(chunks)
