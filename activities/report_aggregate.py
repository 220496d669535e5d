"""The report's aggregates, built in one pass over the report's lines (``report.json`` → ``details``).

Each line is added with the time its verdict was recorded (the ledger object it came from); memory follows
the number of studies, series, image sets and ledger objects, never the number of files, so the same pass
serves a report read page by page. Tables keep the rows that need attention first and are capped; the CSV
and the NDJSON keep every file.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from contracts.common import FileState
from contracts.reconciliation import reconciliation_workflow_id
from contracts.records import FindingOrigin, LedgerEntry
from contracts.report import (
    IMAGE_SETS_PER_ROW,
    TABLE_LIMIT,
    TIMELINE_BUCKETS,
    GroupRow,
    NonPrimarySet,
    ReportDetails,
    TimelineBucket,
    WarningCount,
)

_IMPORTED = (FileState.IMPORTED, FileState.IMPORTED_WITH_WARNINGS)


_STATES = tuple(FileState)
_INDEX = {state: i for i, state in enumerate(_STATES)}


@dataclass(slots=True)
class _Group:
    """One study's or series' counts: small and of fixed size, as there is one per series of the migration."""

    files: int = 0
    bytes: int = 0
    states: list[int] = field(default_factory=lambda: [0] * len(_STATES))
    # The first image sets met (at most IMAGE_SETS_PER_ROW of each kind): what a table row shows.
    primary: list[str] = field(default_factory=list)
    non_primary: list[str] = field(default_factory=list)

    def add(self, row: LedgerEntry) -> None:
        self.files += 1
        self.bytes += row.size
        self.states[_INDEX[row.state]] += 1
        if row.image_set_id and row.state in _IMPORTED:
            kept = self.non_primary if row.is_primary is False else self.primary
            if len(kept) < IMAGE_SETS_PER_ROW and row.image_set_id not in kept:
                kept.append(row.image_set_id)

    def row(self, study: str, series: str | None) -> GroupRow:
        return GroupRow(study_instance_uid=study, series_instance_uid=series, files=self.files, bytes=self.bytes,
                        files_by_state={s: n for s, n in zip(_STATES, self.states, strict=True) if n},
                        image_sets=(sorted(self.primary) + sorted(self.non_primary))[:IMAGE_SETS_PER_ROW],
                        non_primary_image_sets=sorted(self.non_primary))

    def rank(self) -> tuple[int, int]:
        """Groups with files not imported first, then the largest."""
        return (-(self.states[_INDEX[FileState.REJECTED]] + self.states[_INDEX[FileState.FAILED]]), -self.files)


@dataclass
class _NonPrimary:
    study: str | None
    series: str | None
    files: int = 0


class ReportAggregator:
    """Add every report line once (``add``), then read the aggregates (``details``)."""

    def __init__(self, datastore_id: str | None, table_limit: int = TABLE_LIMIT,
                 buckets: int = TIMELINE_BUCKETS) -> None:
        self._datastore_id = datastore_id
        self._limit = table_limit
        self._buckets = buckets
        self._studies: dict[str, _Group] = {}
        self._series: dict[tuple[str, str], _Group] = {}
        self._non_primary: dict[str, _NonPrimary] = {}
        self._warnings: Counter[tuple[str, str]] = Counter()
        self._unplaced = 0
        # (time, state) -> files and bytes: one entry per ledger object and state, not per file.
        self._at: Counter[tuple[datetime, FileState]] = Counter()
        self._bytes_at: Counter[tuple[datetime, FileState]] = Counter()

    def add(self, row: LedgerEntry, at: datetime) -> None:
        self._at[(at, row.state)] += 1
        self._bytes_at[(at, row.state)] += row.size
        if row.state is FileState.IMPORTED_WITH_WARNINGS:
            for origin, code in dict.fromkeys((f.origin.value, f.code) for f in row.findings or []):
                self._warnings[(origin, code)] += 1
        if row.study_instance_uid:
            self._studies.setdefault(row.study_instance_uid, _Group()).add(row)
            if row.series_instance_uid:
                self._series.setdefault((row.study_instance_uid, row.series_instance_uid), _Group()).add(row)
        else:
            self._unplaced += 1
        if row.image_set_id and row.is_primary is False and row.state in _IMPORTED:
            self._non_primary.setdefault(row.image_set_id,
                                         _NonPrimary(row.study_instance_uid, row.series_instance_uid)).files += 1

    def details(self, started_at: datetime | None, finished_at: datetime, dicomweb_url: str | None) -> ReportDetails:
        studies = sorted(self._studies.items(), key=lambda kv: (kv[1].rank(), kv[0]))[:self._limit]
        series = sorted(self._series.items(), key=lambda kv: (kv[1].rank(), kv[0]))[:self._limit]
        non_primary = sorted(self._non_primary.items(), key=lambda kv: (-kv[1].files, kv[0]))[:self._limit]
        return ReportDetails(
            started_at=started_at, finished_at=finished_at,
            timeline=self.timeline(started_at),
            studies_total=len(self._studies), studies=[g.row(uid, None) for uid, g in studies],
            series_total=len(self._series), series=[g.row(st, se) for (st, se), g in series],
            unplaced_files=self._unplaced,
            non_primary_total=len(self._non_primary),
            non_primary=[NonPrimarySet(image_set_id=i, study_instance_uid=n.study, series_instance_uid=n.series,
                                       files=n.files,
                                       reconciliation_id=reconciliation_workflow_id(self._datastore_id or "", i))
                         for i, n in non_primary],
            warnings=[WarningCount(origin=FindingOrigin(o), code=c, files=n)
                      for (o, c), n in sorted(self._warnings.items(), key=lambda kv: (-kv[1], kv[0]))],
            dicomweb_url=dicomweb_url)

    def timeline(self, started_at: datetime | None) -> list[TimelineBucket]:
        """Files per state in equal time buckets from the start (or the first verdict) to the last verdict."""
        if not self._at:
            return []
        first = min(at for at, _ in self._at)
        last = max(at for at, _ in self._at)
        start = min(started_at, first) if started_at else first
        end = max(last, start + timedelta(seconds=1))
        # Verdicts are timed per ledger object (a page's or a batch's), so buckets shorter than a second would
        # only show the objects' write instants as spikes.
        buckets = max(1, min(self._buckets, math.ceil((end - start).total_seconds())))
        width = (end - start) / buckets
        edges = [start + width * i for i in range(buckets)] + [end]
        counts: list[Counter[FileState]] = [Counter() for _ in range(buckets)]
        sizes = [0] * buckets
        for (at, state), n in self._at.items():
            i = min(int((at - start) / width), buckets - 1)
            counts[i][state] += n
            sizes[i] += self._bytes_at[(at, state)]
        return [TimelineBucket(start=edges[i], end=edges[i + 1], files_by_state=dict(counts[i]), bytes=sizes[i])
                for i in range(buckets)]
