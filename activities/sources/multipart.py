"""A streaming reader for ``multipart/related`` bodies (WADO-RS), one part at a time in bounded memory.

Each part's body is spooled (in memory up to ``SPOOL_BYTES``, then a temporary file), so an instance of any size
never sits whole in memory and the response is read exactly once.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO

SPOOL_BYTES = 16 * 1024 * 1024
MAX_HEADER_BYTES = 16 * 1024
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


class MultipartError(ValueError):
    pass


def boundary_of(content_type: str) -> bytes:
    match = _BOUNDARY.search(content_type or "")
    if not match or not content_type.lower().startswith("multipart/related"):
        raise MultipartError(f"expected multipart/related with a boundary, got {content_type[:100]!r}")
    return match.group(1).strip().encode("latin-1")


def iter_parts(chunks: Iterable[bytes], boundary: bytes) -> Iterator[tuple[dict[str, str], IO[bytes], int]]:
    """Yield ``(headers, body, size)`` per part; ``body`` is rewound and valid until the next part is read."""
    it = iter(chunks)
    buf = bytearray()
    first = b"--" + boundary
    delim = b"\r\n--" + boundary

    def fill() -> bool:
        for chunk in it:
            if chunk:
                buf.extend(chunk)
                return True
        return False

    # Preamble: everything up to the first delimiter.
    while (start := buf.find(first)) < 0:
        if len(buf) > MAX_HEADER_BYTES:
            del buf[: len(buf) - len(first)]
        if not fill():
            raise MultipartError("no multipart boundary in the response")
    del buf[: start + len(first)]
    while True:
        while len(buf) < 2:
            if not fill():
                raise MultipartError("the response ended after a boundary")
        if buf[:2] == b"--":
            return  # closing delimiter
        while (end := buf.find(b"\r\n\r\n")) < 0:
            if len(buf) > MAX_HEADER_BYTES:
                raise MultipartError("part headers are too long")
            if not fill():
                raise MultipartError("the response ended inside part headers")
        if len(buf) > MAX_HEADER_BYTES and end > MAX_HEADER_BYTES:
            raise MultipartError("part headers are too long")
        headers: dict[str, str] = {}
        for line in bytes(buf[:end]).decode("latin-1").split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        del buf[: end + 4]
        # Closed in the finally below, after the consumer has read the part.
        body = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115
        size = 0
        while (at := buf.find(delim)) < 0:
            # Keep a tail that could be the start of a delimiter split across chunks.
            keep = len(delim) - 1
            if len(buf) > keep:
                body.write(buf[: len(buf) - keep])
                size += len(buf) - keep
                del buf[: len(buf) - keep]
            if not fill():
                body.close()
                raise MultipartError("the response ended inside a part (truncated transfer)")
        body.write(buf[:at])
        size += at
        del buf[: at + len(delim)]
        body.seek(0)
        try:
            yield headers, body, size
        finally:
            body.close()
