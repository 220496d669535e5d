"""Writing one large S3 object in parts, so the worker never holds the whole body (multipart upload).

A report or a ledger of a million files is hundreds of megabytes: built in memory and sent with one PUT, its
size is the worker's peak memory. `S3StreamWriter` keeps at most one part in memory; an object smaller than one
part is sent with a plain PUT, exactly as before, so small migrations make the same requests as ever.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from contracts.s3uri import S3Location

# S3 refuses parts under 5 MiB except the last; 8 MiB keeps the part count of a 1 GiB object at 128.
PART_BYTES = 8 * 1024 * 1024


class S3StreamWriter:
    """``with S3StreamWriter(s3, loc, "application/x-ndjson") as out: out.write(b"...")``.

    The object appears only when the block ends without an exception (CompleteMultipartUpload, or the one PUT);
    on an exception the upload is aborted, so a retried activity never finds a half-written object in place.
    """

    def __init__(self, s3: Any, loc: S3Location, content_type: str, part_bytes: int = PART_BYTES) -> None:
        if part_bytes < 5 * 1024 * 1024:
            raise ValueError(f"part_bytes must be at least 5 MiB (S3's smallest part), not {part_bytes}")
        self._s3 = s3
        self._loc = loc
        self._content_type = content_type
        self._part_bytes = part_bytes
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self.bytes_written = 0

    def write(self, data: bytes) -> None:
        self._buffer.append(data)
        self._buffered += len(data)
        self.bytes_written += len(data)
        if self._buffered >= self._part_bytes:
            self._flush_part()

    def write_lines(self, lines: Any) -> int:
        """Write each str of ``lines`` followed by a newline; returns how many."""
        n = 0
        for line in lines:
            self.write(line.encode() + b"\n")
            n += 1
        return n

    def _flush_part(self) -> None:
        body = b"".join(self._buffer)
        self._buffer, self._buffered = [], 0
        if self._upload_id is None:
            self._upload_id = self._s3.create_multipart_upload(
                Bucket=self._loc.bucket, Key=self._loc.key, ContentType=self._content_type)["UploadId"]
        number = len(self._parts) + 1
        etag = self._s3.upload_part(Bucket=self._loc.bucket, Key=self._loc.key, UploadId=self._upload_id,
                                    PartNumber=number, Body=body)["ETag"]
        self._parts.append({"PartNumber": number, "ETag": etag})

    def close(self) -> None:
        if self._upload_id is None:
            self._s3.put_object(Bucket=self._loc.bucket, Key=self._loc.key, Body=b"".join(self._buffer),
                                ContentType=self._content_type)
            self._buffer, self._buffered = [], 0
            return
        if self._buffer:
            self._flush_part()
        self._s3.complete_multipart_upload(Bucket=self._loc.bucket, Key=self._loc.key, UploadId=self._upload_id,
                                           MultipartUpload={"Parts": self._parts})

    def abort(self) -> None:
        if self._upload_id is not None:
            self._s3.abort_multipart_upload(Bucket=self._loc.bucket, Key=self._loc.key, UploadId=self._upload_id)
            self._upload_id = None

    def __enter__(self) -> S3StreamWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
