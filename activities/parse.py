"""parse: header-only reads of one inventory page.

One ranged GET of the first 64 KiB per file; the object's total size comes from ``Content-Range`` (no HEAD),
and a second, larger GET happens only when the header is longer than the first range. When the header walk
shows bytes after the end of Pixel Data that were not read, and at most ``TAIL_CAP`` of them, one more ranged GET
fetches just that tail to check it is padding or well-formed elements (not garbage).

A page is parsed in chunks; every finished chunk but the last is checkpointed to S3 and its number heartbeated,
so a retried activity (worker killed, timeout) reads the finished chunks back and parses only the rest.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel, Field, ValidationError
from temporalio import activity

from activities import phi
from activities.dicom_header import check_tail, fingerprint_key_bytes, parse_header
from activities.errors import classify, error_code
from activities.heartbeat import current, keeps_alive
from activities.storage import is_missing, object_size, put_ndjson, read_models
from contracts import layout, metrics
from contracts.records import Finding, InventoryEntry, ParsedRecord, Severity
from contracts.s3uri import parse_s3_uri
from contracts.stages import PageInput, ParseResult

FIRST_RANGE = 64 * 1024
MIN_FIRST_RANGE = 8 * 1024
# Files per checkpoint: a retry re-reads at most this many headers; each checkpoint is one PUT (and one GET on
# resume): 3 PUTs for a 1,000-file page, 0.003 requests per file.
CHECKPOINT_EVERY = 250


class _ParseCursor(BaseModel):
    """Heartbeat details of `parse_headers`: how many chunks are checkpointed, and what they cost."""

    chunks: int = Field(0, ge=0)
    requests: int = Field(0, ge=0)
    bytes: int = Field(0, ge=0)

    @classmethod
    def from_details(cls, details: Any) -> _ParseCursor:
        # Anything else (no details, or another shape left by an older worker) means: start from the beginning.
        if details and isinstance(details[0], dict):
            try:
                return cls.model_validate(details[0])
            except ValidationError:
                pass
        return cls()


class _RangeSizer:
    """Chooses the first ranged GET per file from the headers seen so far in this page.

    Files of one source are alike (a series shares its header layout), so 1.5x the largest header seen is
    almost always enough; the cap keeps one outlier (a 240 KB Siemens CSA header) from inflating every read.
    Bytes read fall from 64 KiB per file to a few KiB, while extra GETs stay rare.
    """

    def __init__(self) -> None:
        self._largest = 0
        self._lock = threading.Lock()

    def first(self) -> int:
        if not self._largest:
            return FIRST_RANGE
        return max(MIN_FIRST_RANGE, min(FIRST_RANGE, (self._largest * 3 // 2 + 4095) // 4096 * 4096))

    def saw(self, header_bytes: int) -> None:
        with self._lock:
            self._largest = max(self._largest, header_bytes)


class ParseActivities:
    def __init__(self, s3: Any, concurrency: int = 8, *, fingerprint_key: bytes,
                 checkpoint_every: int = CHECKPOINT_EVERY, padding_rejected: bool = False) -> None:
        """``fingerprint_key`` (HIMIG_FINGERPRINT_KEY, at least 16 bytes) keys the fingerprints in the ledgers.

        ``padding_rejected`` (HIMIG_IMPORT_REJECTS_TRAILING_PADDING): the data store's import fails files with zero
        padding after Pixel Data, so parse names them as errors and validation rejects them before import.
        """
        self._s3 = s3
        self._padding_rejected = padding_rejected
        self._concurrency = concurrency
        self._fingerprint_key = fingerprint_key_bytes(fingerprint_key)
        self._checkpoint_every = checkpoint_every

    def _read(self, bucket: str, entry: InventoryEntry, counter: list[int], sizer: _RangeSizer) -> ParsedRecord:
        """Parse one object; per-file problems become findings, only infrastructure errors raise."""
        record = ParsedRecord(key=entry.key, size=entry.size, etag=entry.etag, readable=False)
        if entry.size == 0:
            record.findings.append(Finding(code="zero_byte", severity=Severity.ERROR, reason="empty file (0 bytes)"))
            return record
        buf = b""
        total = entry.size
        want = sizer.first()
        result = parse_header(b"", 0)  # what an object with no readable bytes amounts to
        while True:
            try:
                resp = self._s3.get_object(Bucket=bucket, Key=entry.key, Range=f"bytes={len(buf)}-{want - 1}")
            except ClientError as err:
                code = error_code(err)
                if code in ("NoSuchKey", "404"):
                    record.findings.append(Finding(code="source_missing", severity=Severity.ERROR,
                                                   reason="object was listed but no longer exists in the source"))
                    return record
                if code == "InvalidRange":  # the object shrank (e.g. rewritten empty) since it was listed
                    if not buf:
                        record.findings.append(Finding(code="zero_byte", severity=Severity.ERROR,
                                                       reason="empty file (0 bytes) when it was read"))
                        return record
                    break
                if code in ("AccessDenied", "403", "InvalidObjectState"):
                    # One unreadable object is a finding about that file, not a reason to fail the page.
                    record.findings.append(Finding(code="source_unreadable", severity=Severity.ERROR,
                                                   reason=f"the object cannot be read from the source ({code})"))
                    return record
                raise
            counter[0] += 1
            chunk = resp["Body"].read()
            total = object_size(resp, len(buf) + len(chunk))
            buf += chunk
            result = parse_header(buf, total, entry.key, self._fingerprint_key,
                                  padding_rejected=self._padding_rejected)
            if result.need_bytes and len(buf) < total:
                want = max(result.need_bytes, len(buf) + 1)
                continue
            break
        record.size = total
        counter[1] += len(buf)
        if result.tail_start is not None:  # set only for a tail of at most TAIL_CAP bytes
            # Bytes follow Pixel Data beyond what was read (padding, a private group, or garbage): one more ranged
            # GET of just that tail, so a header-only read still catches garbage after the dataset.
            tail = self._tail(bucket, entry.key, result.tail_start, total, counter)
            if tail is not None:
                finding = check_tail(tail, *result.tail_encoding, padding_rejected=self._padding_rejected)
                if finding:
                    result.findings.append(finding)
        if result.readable and result.header_bytes < len(buf):
            sizer.saw(result.header_bytes)
        record.readable = result.readable
        record.findings.extend(result.findings)
        record.header_bytes = result.header_bytes
        record.header_sha256 = hashlib.sha256(buf[: max(result.header_bytes, 0) or len(buf)]).hexdigest()
        for name, value in result.values.items():
            setattr(record, name, value)
        return record

    def _tail(self, bucket: str, key: str, start: int, total: int, counter: list[int]) -> bytes | None:
        try:
            resp = self._s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{total - 1}")
        except ClientError as err:
            if is_missing(err) or error_code(err) == "InvalidRange":
                return None  # changed since it was listed: staging's ETag check reports it
            raise
        counter[0] += 1
        body: bytes = resp["Body"].read()
        counter[1] += len(body)
        return body

    def _resume(self, input: PageInput, cursor: _ParseCursor) -> tuple[list[ParsedRecord], _ParseCursor]:
        """The records of the checkpointed chunks; a missing checkpoint restarts from the chunk before it."""
        records: list[ParsedRecord] = []
        for chunk in range(cursor.chunks):
            try:
                records += read_models(self._s3, layout.parsed_checkpoint(input.work_s3_uri, input.migration_id,
                                                                          input.page, chunk), ParsedRecord)
            except ClientError as err:
                if not is_missing(err):
                    raise
                return records, cursor.model_copy(update={"chunks": chunk})
        return records, cursor

    @activity.defn(name="parse_headers")
    @keeps_alive
    def parse_headers(self, input: PageInput) -> ParseResult:
        page_loc = layout.inventory_page(input.work_s3_uri, input.migration_id, input.page)
        details = activity.info().heartbeat_details if activity.in_activity() else ()
        try:
            entries = read_models(self._s3, page_loc, InventoryEntry)
            records, cursor = self._resume(input, _ParseCursor.from_details(details))
        except ClientError as err:
            raise classify(err, "reading the inventory page") from None
        source_bucket = _source_bucket(input)
        # GETs of the source and bytes read (checkpoints not included), across attempts; list mutation under
        # the GIL is enough for these counters.
        counter = [cursor.requests, cursor.bytes]
        sizer = _RangeSizer()
        for rec in records:
            if rec.readable and rec.header_bytes:
                sizer.saw(rec.header_bytes)
        keep = current()
        step = self._checkpoint_every
        # The pool's threads run in a copy of this context: log ids and the patient-value scrub set go with them.
        read = phi.in_context(lambda e: self._read(source_bucket, e, counter, sizer))
        try:
            with _metered(counter), ThreadPoolExecutor(self._concurrency) as pool:
                for start in range(cursor.chunks * step, len(entries), step):
                    chunk = entries[start : start + step]
                    records += pool.map(read, chunk)
                    if start + step >= len(entries):
                        break  # the last chunk goes straight into the page
                    put_ndjson(self._s3, layout.parsed_checkpoint(input.work_s3_uri, input.migration_id, input.page,
                                                                  cursor.chunks), records[start:])
                    cursor = _ParseCursor(chunks=cursor.chunks + 1, requests=counter[0], bytes=counter[1])
                    if keep:
                        keep.record(cursor.model_dump())
        except ClientError as err:
            raise classify(err, "reading DICOM headers") from None
        put_ndjson(self._s3, layout.parsed_page(input.work_s3_uri, input.migration_id, input.page), records)
        unreadable = sum(1 for r in records if not r.readable)
        held = phi.held_count()
        if held:
            # pydicom warns per file and per value; those lines are at debug level, this one says they exist.
            activity.logger.info("pydicom warned while reading headers (each warning is logged at debug level; "
                                 "the files' findings are in the report)", extra={"pydicom_warnings": held})
        return ParseResult(files=len(records), parsed=len(records) - unreadable, unreadable=unreadable,
                           bytes_read=counter[1], s3_requests=counter[0])


@contextmanager
def _metered(counter: list[int]) -> Iterator[None]:
    """Add the bytes this attempt reads (``counter[1]`` grows from the resumed total) to BYTES_READ at its end,
    whether it succeeds or not: bytes a failed attempt read were read all the same."""
    before = counter[1]
    try:
        yield
    finally:
        if counter[1] > before and activity.in_activity():
            with suppress(Exception):  # a metric must never fail the page
                activity.metric_meter().create_counter(
                    metrics.BYTES_READ.name, metrics.BYTES_READ.description, metrics.BYTES_READ.unit,
                ).add(counter[1] - before)


def _source_bucket(input: PageInput) -> str:
    # The inventory stores keys only; the source bucket travels in the page input.
    if not input.source_s3_uri:
        raise ValueError("source_s3_uri is required to parse a page")
    return parse_s3_uri(input.source_s3_uri, field="source_s3_uri").bucket
