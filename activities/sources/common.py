"""What every source connector shares: units, landing keys, the S3 sink and the resumable pull loop.

A connector enumerates *units* (a study, or a file for a local directory) and pulls one unit at a time into the
landing prefix. The enumeration is written once to S3 (``receive/units/page-N.ndjson``) so a retried activity
resumes at the same unit of the same list; the cursor (unit index and counts only: never a key, path or UID)
rides in the heartbeat. Whatever a unit could not deliver is written as failed ledger lines
(``receive/failures/unit-N.ndjson``) that the report shows.

A unit that keeps failing (a study the PACS answers 5xx or 403 for, a truncated WADO-RS stream) is retried a few
times here, then recorded as a failed row so the rest of the source still migrates, unless a probe of the source
shows that the whole source is down: then the activity fails and Temporal retries it at the same unit.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import islice
from typing import IO, Any, Protocol

import pydicom
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError
from pydantic import BaseModel
from pydicom.errors import InvalidDicomError
from temporalio.exceptions import ApplicationError

from activities.errors import classify
from activities.storage import iter_ndjson, list_objects, put_ndjson
from contracts import layout
from contracts.common import FileState
from contracts.errors import ErrorType
from contracts.records import LedgerEntry
from contracts.s3uri import S3Location
from contracts.sources import is_uid

UNITS_PER_PAGE = 1000
UNIT_ATTEMPTS = 3  # tries of one unit inside the activity before it becomes a failed row
UNIT_BACKOFF_SECONDS = 2.0  # first pause between tries of a unit; doubles per try
# A unit that is not a file or study but a finding of the enumeration (an unreadable directory, listing rows
# without a UID). NUL appears in no file name and no UID, so a marker cannot be mistaken for a real unit.
MARKER = "\x00"
_FAILURE_NAME = re.compile(r"unit-(\d+)\.ndjson$")
# Instances up to this size are one PutObject; bigger ones are streamed as a multipart upload.
MULTIPART_THRESHOLD = 64 * 1024 * 1024


class SourceUnavailable(Exception):
    """The source cannot be reached or refused us; retrying later may help."""


class SourceMisconfigured(Exception):
    """The connector configuration cannot work (no such directory, ...); retrying cannot help."""


class SourceForbidden(SourceMisconfigured):
    """The source refused our credentials (401/403). For the whole source it ends the migration; for one study
    (while the source answers others) that study becomes a ``Forbidden`` row."""


def marker(kind: str, detail: str) -> str:
    """A marker unit (see ``MARKER``)."""
    return f"{MARKER}{kind}:{detail}"


def parse_marker(unit: str) -> tuple[str, str] | None:
    """``(kind, detail)`` of a marker unit, None for a real unit."""
    if not unit.startswith(MARKER):
        return None
    kind, _, detail = unit[1:].partition(":")
    return kind, detail


def content_suffixed(key: str, body: IO[bytes]) -> str:
    """``key`` with a content-hash suffix (``<sop>.<sha256[:16]>.dcm``); ``body`` is rewound."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: body.read(1 << 20), b""):
        digest.update(chunk)
    body.seek(0)
    stem = key[: -len(".dcm")] if key.endswith(".dcm") else key
    return f"{stem}.{digest.hexdigest()[:16]}.dcm"


def landing_key(landing: S3Location, study: str, series: str | None, sop: str | None, body: IO[bytes],
                delivered: dict[str, str]) -> str:
    """The key of one received instance: ``instance_key``, or, when the SOP Instance UID is missing or was
    already delivered in this unit (e.g. one StudyUID under two patients), a content-hash suffixed key so nothing
    is overwritten; the pipeline's duplicate check decides its fate. The first key of a SOP Instance UID is
    recorded in ``delivered``."""
    key = instance_key(landing, study, series, sop)
    if sop is None or sop in delivered:
        key = content_suffixed(key, body)
    if sop is not None:
        delivered.setdefault(sop, key)
    return key


def header_uids(body: IO[bytes]) -> tuple[str | None, str | None]:
    """``(SeriesInstanceUID, SOPInstanceUID)`` from the header of a P10 ``body`` (pixels are not read; None when
    missing or unreadable); ``body`` is rewound."""
    try:
        ds = pydicom.dcmread(body, stop_before_pixels=True, force=True,
                             specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
        sop = str(ds.get("SOPInstanceUID", "") or ds.file_meta.get("MediaStorageSOPInstanceUID", "")) or None
        series = str(ds.get("SeriesInstanceUID", "")) or None
    except (InvalidDicomError, ValueError, AttributeError, EOFError, OSError):
        sop = series = None
    body.seek(0)
    return series, sop


def uid_segment(value: str | None) -> str:
    """A path segment for a UID: the UID itself when it is a valid DICOM UID, else a hash (no path tricks)."""
    if value and is_uid(value):
        return value
    return "x" + hashlib.sha256((value or "").encode("utf-8", "surrogateescape")).hexdigest()[:40]


def instance_key(landing: S3Location, study: str | None, series: str | None, sop: str | None) -> str:
    """``<landing>/<StudyUID>/<SeriesUID>/<SOPUID>.dcm``: deterministic, so a re-pull overwrites the same key."""
    return layout.landed_instance(landing, uid_segment(study), uid_segment(series), uid_segment(sop)).key


def study_key(landing: S3Location, study: str) -> str:
    """The report key of a whole study that could not be enumerated or pulled."""
    return layout.landed_study(landing, uid_segment(study)).key


@dataclass
class Landing:
    """Writes pulled objects under the landing prefix and counts the S3 requests it made."""

    s3: Any
    prefix: S3Location
    multipart_threshold: int = MULTIPART_THRESHOLD
    requests: int = 0
    objects: int = 0
    bytes_written: int = 0
    # Parallel pulls and C-MOVE receiver threads write through one Landing.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

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
        with self._lock:
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
    """A source: ``describe`` names it in errors (no PHI), ``units`` enumerates, ``pull`` lands one unit,
    ``probe`` raises when the whole source is unusable, ``unit_key`` is the report key of a unit given up on."""

    def describe(self) -> str: ...

    def units(self) -> Iterator[str]: ...

    def pull(self, unit: str, landing: Landing) -> UnitOutcome: ...

    def probe(self) -> None: ...

    def unit_key(self, unit: str, landing: Landing) -> str: ...


class StudyConnector:
    """What the PACS connectors share: a unit is a study, and listing rows without a UID (study or instance
    search) become ``UnusableListing`` rows. ``SEARCH`` names the search in report reasons, ``ROWS`` its rows."""

    SEARCH = ""  # "QIDO-RS", "C-FIND"
    ROWS = ""  # "entries", "matches"

    def unit_key(self, unit: str, landing: Landing) -> str:
        return study_key(landing.prefix, unit)

    def _study_units(self, study_uids: list[str] | None, listing: Callable[[], Iterable[str | None]]) -> Iterator[str]:
        """``study_uids`` when given, else every UID ``listing()`` yields (None for a row without a UID),
        followed by an ``unusable-studies`` marker counting those rows."""
        if study_uids:
            yield from study_uids
            return
        unusable = 0
        for uid in listing():
            if uid is None:
                unusable += 1
            else:
                yield uid
        if unusable:
            yield marker("unusable-studies", str(unusable))

    def _marker_outcome(self, unit: str, landing: Landing) -> UnitOutcome | None:
        """The outcome of a marker unit (a finding of the study search); None for a study."""
        found = parse_marker(unit)
        if found is None:
            return None
        kind, detail = found
        out = UnitOutcome()
        if kind == "search-truncated":
            # detail: "<first> to <last>[ (modality)]: <matches>"
            out.fail(layout.landed_object(landing.prefix, f"search-truncated/{uid_segment(detail)}").key,
                     "SearchTruncated",
                     f"the PACS's study search ({self.SEARCH}) for {detail.rpartition(': ')[0]} reached "
                     f"{detail.rpartition(': ')[2]} {self.ROWS}, its cap, even for a single day, so it may be cut "
                     "off; those studies were pulled, any beyond the cut were not enumerated (raise the PACS's "
                     "limit, or pull that day by study_uids)")
        elif kind == "undated-studies":
            # detail: "<matches of the cut-off answer>[ (modality)]: <studies without a date among them>"
            cut, _, undated = detail.rpartition(": ")
            out.fail(layout.landed_object(landing.prefix, f"undated-studies/{uid_segment(detail)}").key,
                     "SearchTruncated",
                     f"the PACS cut off the unsplit study search ({self.SEARCH}) at {cut} {self.ROWS}, {undated} "
                     "of them without a study date; those were pulled, but studies without a study date beyond "
                     "the cut cannot be found by date ranges")
        else:
            out.fail(layout.landed_object(landing.prefix, "unusable-study-listing").key, "UnusableListing",
                     f"the PACS's study search ({self.SEARCH}) listed {detail} {self.ROWS} without a "
                     "StudyInstanceUID")
        return out

    def list_unit(self, unit: str, landing: Landing) -> tuple[dict[str, str | None], UnitOutcome]:
        """Header-only (`himig verify` of a PACS): the instances one study lists (SOP Instance UID -> Series UID,
        None when the row has none), and, as failed rows keyed like a pull's, what the listing cannot show: the
        study search's findings (a marker unit), ``StudyNotFound``, ``UnusableListing`` and, where the PACS cut an
        instance search off, ``ListingTruncated``. Nothing is retrieved."""
        if (marked := self._marker_outcome(unit, landing)) is not None:
            return {}, marked
        out = UnitOutcome()
        instances, unusable, truncated = self._instances(unit)
        self._check_listing(unit, landing, out, bool(instances), unusable)
        for series, matches in sorted(truncated.items()):
            where = f"series {series}" if series else "the study's instance (or series) search"
            out.fail(f"{study_key(landing.prefix, unit)}listing-truncated/{uid_segment(series or 'series')}",
                     "ListingTruncated", f"the PACS cut off {where} at {matches} {self.ROWS}: instances beyond the "
                     "cut are not listed, so they are not checked (verify with a pull instead)")
        return instances, out

    def _instances(self, study: str) -> tuple[dict[str, str | None], int, dict[str, int]]:
        """(SOP Instance UID -> Series UID of ``study``'s instances, rows without a SOP Instance UID, cut-off
        searches -> their matches); a connector's own instance search."""
        raise NotImplementedError

    def _check_listing(self, unit: str, landing: Landing, out: UnitOutcome, found: bool, unusable: int) -> bool:
        """Record a study's instance rows without a SOP Instance UID and, when it listed no instance
        (``found`` false), a ``StudyNotFound`` row; False when there is nothing to pull."""
        if unusable:
            out.fail(f"{study_key(landing.prefix, unit)}unusable-listing", "UnusableListing",
                     f"the study's instance search ({self.SEARCH}) listed {unusable} {self.ROWS} without a "
                     "SOPInstanceUID")
        if not found:
            out.fail(study_key(landing.prefix, unit), "StudyNotFound",
                     f"{self.SEARCH} found no instances for this study (unknown StudyInstanceUID or an empty study)")
            return False
        return True


class PullCursor(BaseModel):
    """The pull part of the receive cursor (heartbeat details): indexes and counts, never a key, path or UID."""

    units_total: int | None = None  # set once the enumeration is written
    next_unit: int = 0
    pulled: int = 0
    source_failures: int = 0
    done: bool = False


def _write_units(s3: Any, connector: Connector, work: str, migration: str) -> int:
    page: list[dict[str, str]] = []
    pages = total = 0
    for unit in connector.units():
        page.append({"unit": unit})
        total += 1
        if len(page) == UNITS_PER_PAGE:
            put_ndjson(s3, layout.receive_units_page(work, migration, pages), page)
            pages, page = pages + 1, []
    if page:
        put_ndjson(s3, layout.receive_units_page(work, migration, pages), page)
    return total


def _iter_units(s3: Any, work: str, migration: str, start: int, total: int) -> Iterator[tuple[int, str]]:
    index = start
    while index < total:
        page = index // UNITS_PER_PAGE
        rows = list(iter_ndjson(s3, layout.receive_units_page(work, migration, page)))
        for offset in range(index - page * UNITS_PER_PAGE, len(rows)):
            yield index, str(rows[offset]["unit"])
            index += 1
        if len(rows) < UNITS_PER_PAGE and index < total:
            raise ApplicationError(f"receive: unit page {page} is short ({len(rows)} rows)", type=ErrorType.CORRUPT_UNIT_LIST)


def _failure_files(s3: Any, prefix: S3Location, start_after: str | None = None) -> Iterator[tuple[str, int]]:
    """(key, unit index) of every failure file under ``prefix`` (after ``start_after``)."""
    for obj in list_objects(s3, prefix, start_after):
        if m := _FAILURE_NAME.search(obj["Key"]):
            yield obj["Key"], int(m.group(1))


def _clear_failures(s3: Any, prefix: S3Location) -> None:
    """Delete every failure file: a fresh enumeration may list fewer units than a lost earlier one did."""
    keys = [key for key, _ in _failure_files(s3, prefix)]
    for start in range(0, len(keys), 1000):
        s3.delete_objects(Bucket=prefix.bucket,
                          Delete={"Objects": [{"Key": k} for k in keys[start : start + 1000]], "Quiet": True})


def pull_unit(connector: Connector, unit: str, landing: Landing, attempts: int = UNIT_ATTEMPTS,
              backoff_seconds: float = UNIT_BACKOFF_SECONDS) -> UnitOutcome:
    """Pull one unit, retrying it a bounded number of times; a unit that still fails becomes a failed row,
    unless ``connector.probe()`` shows the whole source is failing (then its error ends the activity)."""
    code, reason = "SourceUnavailable", ""
    for attempt in range(attempts):
        try:
            return connector.pull(unit, landing)
        except SourceForbidden as err:
            code, reason = "Forbidden", str(err)
            break  # the same credentials get the same answer
        except SourceUnavailable as err:
            code, reason = "SourceUnavailable", str(err)
            if attempt + 1 < attempts:
                time.sleep(backoff_seconds * 2**attempt)
    connector.probe()  # raises when it is the source, not this unit
    out = UnitOutcome()
    tries = "once" if code == "Forbidden" else f"{attempts} times"
    out.fail(connector.unit_key(unit, landing), code, f"tried {tries}, the source still failed: {reason}")
    return out


def pull_all(s3: Any, connector: Connector, landing: Landing, work: str, migration: str, cursor: PullCursor,
             save: Callable[[PullCursor], None], attempts: int = UNIT_ATTEMPTS, backoff_seconds: float = UNIT_BACKOFF_SECONDS) -> None:
    """Enumerate once, then pull unit after unit from ``cursor``; ``save(cursor)`` records progress."""
    try:
        failures_prefix = layout.receive_failures_prefix(work, migration)
        earlier: set[int] = set()
        if cursor.units_total is None:
            _clear_failures(s3, failures_prefix)
            cursor.units_total = _write_units(s3, connector, work, migration)
            save(cursor)
        elif cursor.next_unit < cursor.units_total:
            # Failure files an earlier attempt wrote for units this attempt pulls again: only those get deleted
            # if the unit now succeeds (one listing instead of a DeleteObject per unit).
            after = layout.receive_failures(work, migration, cursor.next_unit - 1).key if cursor.next_unit else None
            earlier = {index for _, index in _failure_files(s3, failures_prefix, after)}
        # Units are pulled ``parallel`` at a time (a connector's choice, 1 unless it says so); the cursor still
        # advances in unit order, after the whole window, so a resumed attempt re-pulls at most one window.
        parallel = max(1, int(getattr(connector, "parallel", 1)))
        units = _iter_units(s3, work, migration, cursor.next_unit, cursor.units_total)
        with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="pull") if parallel > 1 else nullcontext() as pool:
            while window := list(islice(units, parallel)):
                if pool is None:
                    outcomes = [pull_unit(connector, unit, landing, attempts, backoff_seconds) for _, unit in window]
                else:
                    outcomes = list(pool.map(lambda item: pull_unit(connector, item[1], landing, attempts,
                                                                    backoff_seconds), window))
                for (index, _), outcome in zip(window, outcomes, strict=True):
                    failures_loc = layout.receive_failures(work, migration, index)
                    if outcome.failures:
                        put_ndjson(s3, failures_loc, outcome.failures)
                    elif index in earlier:
                        # An earlier attempt recorded failures for this unit that this pull has now delivered.
                        s3.delete_object(Bucket=failures_loc.bucket, Key=failures_loc.key)
                    cursor.next_unit = index + 1
                    cursor.pulled += outcome.pulled
                    cursor.source_failures += len(outcome.failures)
                save(cursor)
        cursor.done = True
        save(cursor)
    except SourceUnavailable as err:
        raise ApplicationError(f"{connector.describe()}: {err}", type=ErrorType.SOURCE_UNAVAILABLE) from None
    except SourceMisconfigured as err:
        raise ApplicationError(f"{connector.describe()}: {err}", type=ErrorType.INVALID_SOURCE_CONNECTOR,
                               non_retryable=True) from None
    except ClientError as err:
        raise classify(err, f"{connector.describe()}: writing to S3") from None
