"""What the report's aggregates, HTML page and CSV cost as a migration grows.

Builds synthetic report lines (every terminal state, warnings of both origins, one non-primary image set per
100 series; 10 files per series, 20 series per study) for each size in ``BENCH_REPORT_SIZES``, then measures,
per size, in this process:

- seconds and lines/s of the aggregation pass (`activities.report_aggregate.ReportAggregator.add` per line,
  then ``details``);
- seconds and lines/s of the CSV (`activities.report_html.csv_lines`) and its size;
- seconds of rendering the page (`activities.report_html.render_html`) and its size, which must not grow with
  the number of files (the tables are capped, the charts have a fixed number of buckets): the bench fails if the
  largest size's page is more than 1.5 times the smallest's;
- the peak of traced Python memory (`tracemalloc`, in a second, untimed pass) of the aggregation, which follows
  studies, series and ledger objects, not files (the lines themselves are held by the bench, outside the pass).

Prints one line per size and the page-size ratio. Nothing is asserted about time.

    .venv/bin/python bench/report_render.py     (BENCH_REPORT_SIZES=20000,100000,300000; the smallest
                                                 must exceed the tables' cap: 50 studies of 200 files)
"""

from __future__ import annotations

import os
import time
import tracemalloc
from datetime import UTC, datetime, timedelta

from activities.report_aggregate import ReportAggregator
from activities.report_html import csv_lines, render_html
from contracts.common import FileState
from contracts.records import Finding, FindingOrigin, LedgerEntry, Severity
from contracts.report import ReportDetails, ReportDocument

T0 = datetime(2026, 12, 3, tzinfo=UTC)
DS = "d" * 32
WARN = [Finding(code="empty_patient_id", severity=Severity.WARNING, reason="PatientID is missing or empty"),
        Finding(code="InvalidOffsetTable", severity=Severity.WARNING, reason="invalid offset table",
                origin=FindingOrigin.HEALTHIMAGING)]


def line(n: int) -> LedgerEntry:
    series, study = n // 10, n // 200
    common = {"key": f"archive/{study}/{series}/{n}.dcm", "size": 500_000 + n % 1000, "batch": n // 1000,
              "study_instance_uid": f"1.2.840.9.{study}", "series_instance_uid": f"1.2.840.9.{study}.{series}"}
    image_set = f"{series:032x}"
    kind = n % 50
    if kind == 0:
        return LedgerEntry(state=FileState.REJECTED, code="invalid_uid", reason="SOPInstanceUID is too long", **common)
    if kind == 1:
        return LedgerEntry(state=FileState.FAILED, code="ValidationException", reason="bad offset table", **common)
    if kind in (2, 3):
        return LedgerEntry(state=FileState.IMPORTED_WITH_WARNINGS, image_set_id=image_set, is_primary=True,
                           code="himig:empty_patient_id", reason="himig: PatientID is missing or empty",
                           findings=WARN, **common)
    return LedgerEntry(state=FileState.IMPORTED, image_set_id=image_set, is_primary=series % 100 != 7, **common)


def aggregate(rows: list[LedgerEntry], times: list[datetime]) -> ReportDetails:
    aggregator = ReportAggregator(DS)
    for row, at in zip(rows, times, strict=True):
        aggregator.add(row, at)
    return aggregator.details(T0, times[-1], "http://127.0.0.1:8400")


def measure(files: int) -> tuple[int, str]:
    rows = [line(n) for n in range(files)]
    times = [T0 + timedelta(seconds=n // 1000 * 4) for n in range(files)]  # a batch of 1,000 every 4 s
    started = time.perf_counter()
    details = aggregate(rows, times)
    aggregated = time.perf_counter() - started
    tracemalloc.start()  # a second, untimed pass: tracing slows every allocation
    aggregate(rows, times)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    states = {s: 0 for s in FileState}
    for row in rows:
        states[row.state] += 1
    doc = ReportDocument(migration_id="bench", datastore_id=DS, files_total=files,
                         bytes_total=sum(r.size for r in rows), files_by_state=states,
                         reasons={"rejected: SOPInstanceUID is too long": states[FileState.REJECTED]},
                         details=details)
    started = time.perf_counter()
    csv_bytes = sum(len(chunk.encode()) for chunk in csv_lines(rows))
    csv_seconds = time.perf_counter() - started
    started = time.perf_counter()
    page = render_html(doc)
    page_seconds = time.perf_counter() - started
    print(f"{files:>9,} files: aggregate {aggregated:6.2f} s ({files / aggregated:>9,.0f} lines/s, peak "
          f"{peak / 2**20:6.1f} MiB traced), csv {csv_seconds:6.2f} s ({files / csv_seconds:>9,.0f} lines/s, "
          f"{csv_bytes / 2**20:7.1f} MiB), page {page_seconds * 1000:6.1f} ms ({len(page.encode()) / 1024:6.1f} KiB)")
    return len(page.encode()), page


def main() -> int:
    sizes = [int(s) for s in os.environ.get("BENCH_REPORT_SIZES", "20000,100000,300000").split(",")]
    pages = [measure(n)[0] for n in sizes]
    ratio = pages[-1] / pages[0]
    print(f"page size, largest / smallest: {ratio:.2f}")
    if ratio > 1.5:
        print("FAIL: the page grows with the number of files")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
