"""What every source connector shares: units, landing keys, the S3 sink and the resumable pull loop.

A connector enumerates *units* (a study, or a file for a local directory) and pulls one unit at a time into the
landing prefix. The enumeration is written once to S3 (``receive/units/page-N.ndjson``) so a retried activity
resumes at the same unit of the same list; the cursor (next unit, counts) rides in the heartbeat. Whatever a unit
could not deliver is written as failed ledger lines (``receive/failures/unit-N.ndjson``) that the report shows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError
from pydantic import BaseModel
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import classify
from activities.storage import iter_ndjson, put_ndjson
from contracts import layout
from contracts.pipeline import FileState
from contracts.records import LedgerEntry
from contracts.s3uri import S3Location
from contracts.sources import is_uid

UNITS_PER_PAGE = 1000
# Instances up to this size are one PutObject; bigger ones are streamed as a multipart upload.
MULTIPART_THRESHOLD = 64 * 1024 * 1024


class SourceUnavailable(Exception):
    """The source cannot be reached or refused us; retrying later may help."""


class SourceMisconfigured(Exception):
    """The connector configuration cannot work (no such directory, ...); retrying cannot help."""


def uid_segment(value: str | None) -> str:
    """A path segment for a UID: the UID itself when it is a valid DICOM UID, else a hash (no path tricks)."""
    if value and is_uid(value):
        return value
    return "x" + hashlib.sha256((value or "").encode("utf-8", "surrogateescape")).hexdigest()[:40]


def instance_key(landing: S3Location, study: str | None, series: str | None, sop: str | None) -> str:
    """``<landing>/<StudyUID>/<SeriesUID>/<SOPUID>.dcm``: deterministic, so a re-pull overwrites the same key."""
    return f"{landing.key}{uid_segment(study)}/{uid_segment(series)}/{uid_segment(sop)}.dcm"


def study_key(landing: S3Location, study: str) -> str:
    """The report key of a whole study that could not be enumerated or pulled."""
    return f"{landing.key}{uid_segment(study)}/"


@dataclass
class Landing:
    """Writes pulled objects under the landing prefix and counts the S3 requests it made."""

    s3: Any
    prefix: S3Location
    multipart_threshold: int = MULTIPART_THRESHOLD
    requests: int = 0
    objects: int = 0
    bytes_written: int = 0

    def put(self, key: str, body: IO[bytes], size: int) -> None:
        try:
            if size < self.multipart_threshold:
                # One PutObject streaming the file object (upload_fileobj would start a thread pool per object).
                self.s3.put_object(Bucket=self.prefix.bucket, Key=key, Body=body, ContentLength=size,
                                   ContentType="application/dicom")
            else:
                # Streamed in parts of the threshold's size; at most a few parts in memory at once.
                config = TransferConfig(multipart_threshold=self.multipart_threshold,
                                        multipart_chunksize=self.multipart_threshold, max_concurrency=4)
                self.s3.upload_fileobj(body, self.prefix.bucket, key, Config=config,
                                       ExtraArgs={"ContentType": "application/dicom"})
        except ClientError as err:
            raise classify(err, "writing a pulled object to the landing prefix") from None
        # One PutObject, or create + parts + complete for a multipart upload.
        self.requests += 1 if size < self.multipart_threshold else 2 + -(-size // self.multipart_threshold)
        self.objects += 1
        self.bytes_written += size


@dataclass
class UnitOutcome:
    """What pulling one unit produced: objects written, and what the source enumerated but did not deliver."""

    pulled: int = 0
    failures: list[LedgerEntry] = field(default_factory=list)

    def fail(self, key: str, code: str, reason: str) -> None:
        self.failures.append(LedgerEntry(key=key, state=FileState.FAILED, code=code, reason=reason[:1000]))


class Connector(Protocol):
    """A source: ``describe`` names it in errors (no PHI), ``units`` enumerates, ``pull`` lands one unit."""

    def describe(self) -> str: ...

    def units(self) -> Iterator[str]: ...

    def pull(self, unit: str, landing: Landing) -> UnitOutcome: ...


class PullCursor(BaseModel):
    """The pull part of the receive cursor (heartbeat details)."""

    units_total: int | None = None  # set once the enumeration is written
    next_unit: int = 0
    pulled: int = 0
    source_failures: int = 0
    done: bool = False


def _units_page(work: str, migration: str, page: int) -> S3Location:
    return layout.root(work, migration).join("receive", "units", f"page-{page:06d}.ndjson")


def _write_units(s3: Any, connector: Connector, work: str, migration: str) -> int:
    page: list[dict[str, str]] = []
    pages = total = 0
    for unit in connector.units():
        page.append({"unit": unit})
        total += 1
        if len(page) == UNITS_PER_PAGE:
            put_ndjson(s3, _units_page(work, migration, pages), page)
            pages, page = pages + 1, []
    if page:
        put_ndjson(s3, _units_page(work, migration, pages), page)
    return total


def _iter_units(s3: Any, work: str, migration: str, start: int, total: int) -> Iterator[tuple[int, str]]:
    index = start
    while index < total:
        page = index // UNITS_PER_PAGE
        rows = list(iter_ndjson(s3, _units_page(work, migration, page)))
        for offset in range(index - page * UNITS_PER_PAGE, len(rows)):
            yield index, str(rows[offset]["unit"])
            index += 1
        if len(rows) < UNITS_PER_PAGE and index < total:
            raise ApplicationError(f"receive: unit page {page} is short ({len(rows)} rows)", type="CorruptUnitList")


def pull_all(s3: Any, connector: Connector, landing: Landing, work: str, migration: str, cursor: PullCursor,
             save: Any) -> None:
    """Enumerate once, then pull unit after unit from ``cursor``; ``save(cursor)`` records progress."""
    try:
        if cursor.units_total is None:
            cursor.units_total = _write_units(s3, connector, work, migration)
            save(cursor)
        attempt = activity.info().attempt if activity.in_activity() else 1
        for index, unit in _iter_units(s3, work, migration, cursor.next_unit, cursor.units_total):
            outcome = connector.pull(unit, landing)
            failures_loc = layout.receive_failures(work, migration, index)
            if outcome.failures:
                put_ndjson(s3, failures_loc, outcome.failures)
            elif attempt > 1:
                # An earlier attempt may have recorded failures for this unit that this pull has now delivered.
                s3.delete_object(Bucket=failures_loc.bucket, Key=failures_loc.key)
            cursor.next_unit = index + 1
            cursor.pulled += outcome.pulled
            cursor.source_failures += len(outcome.failures)
            save(cursor)
        cursor.done = True
        save(cursor)
    except SourceUnavailable as err:
        raise ApplicationError(f"{connector.describe()}: {err}", type="SourceUnavailable") from None
    except SourceMisconfigured as err:
        raise ApplicationError(f"{connector.describe()}: {err}", type="InvalidSourceConnector",
                               non_retryable=True) from None
    except ClientError as err:
        raise classify(err, f"{connector.describe()}: writing to S3") from None
