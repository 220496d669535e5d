"""report: merge every ledger into the final per-file report and prove each source file appears exactly once."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError
from pydantic import ValidationError
from temporalio import activity

from activities.heartbeat import current, keeps_alive
from activities.plan_compare import open_comparison, write_comparison
from activities.report_aggregate import ReportAggregator
from activities.report_html import csv_lines, render_html
from activities.report_store import ReportStore
from activities.s3_stream import S3StreamWriter
from activities.storage import get_bytes, get_json, is_missing, iter_ndjson, list_objects, put_bytes, put_json
from contracts import layout
from contracts.common import FileState
from contracts.fhir import fhir_round_done
from contracts.records import InventoryEntry, LedgerEntry
from contracts.report import PlanComparison, ReportDocument, VerifyResult
from contracts.s3uri import S3Location
from contracts.stages import ReportInput, ReportResult


def build_report(inventory: list[InventoryEntry], ledger: list[LedgerEntry],
                 cancelled: bool = False, unreceived: list[LedgerEntry] | None = None,
                 ) -> tuple[list[LedgerEntry], dict[str, Any]]:
    """Join the inventory with the ledger; files with no ledger line are reported ``failed``.

    After a cancel, such files are the ones the migration never reached (code ``Cancelled``); otherwise they
    are a bug somewhere (code ``Unaccounted``) and counted as such. ``unreceived`` are the instances a source
    connector enumerated but could not pull: they never reached the inventory and are reported ``failed``.
    """
    by_key: dict[str, LedgerEntry] = {}
    twice: list[str] = []
    for entry in ledger:
        if entry.key in by_key:
            twice.append(entry.key)
        by_key[entry.key] = entry
    rows: list[LedgerEntry] = []
    unaccounted = not_reached = 0
    for inv in sorted(inventory, key=lambda e: e.key):
        found = by_key.pop(inv.key, None)
        if found is not None:
            entry = found
        elif cancelled:
            not_reached += 1
            entry = LedgerEntry(key=inv.key, state=FileState.FAILED, size=inv.size, code="Cancelled",
                                reason="the migration was cancelled before this file was imported")
        else:
            unaccounted += 1
            entry = LedgerEntry(key=inv.key, state=FileState.FAILED, size=inv.size, code="Unaccounted",
                                reason="no stage recorded an outcome for this file")
        rows.append(entry)
    inventoried = {r.key for r in rows}
    # An instance that failed once and landed on a retry is in the inventory: the inventory wins.
    rows += sorted({u.key: u for u in unreceived or [] if u.key not in inventoried}.values(), key=lambda u: u.key)
    by_row_key = {r.key: r for r in rows}
    rows = [_resolve_duplicate(r, by_row_key.get) for r in rows]
    tally = ReportTally()
    for r in rows:
        tally.add(r)
    return rows, tally.summary(unaccounted=unaccounted, cancelled=cancelled, not_reached=not_reached,
                               accounted_twice=len(twice), outside_inventory=len(by_key))


class ReportTally:
    """The report's counts (``report.json`` minus ``details``), added one row at a time: memory follows the
    image sets, jobs and distinct reasons, not the files."""

    def __init__(self) -> None:
        self._files = self._bytes = 0
        self._states: Counter[FileState] = Counter()
        self._reasons: Counter[str] = Counter()
        self._image_sets: dict[str, bool] = {}
        self._jobs: set[str] = set()
        self._predicted = self._confirmed = self._not_confirmed = self._not_predicted = self._already = 0

    def add(self, r: LedgerEntry) -> None:
        self._files += 1
        self._bytes += r.size
        self._states[r.state] += 1
        if r.state in (FileState.REJECTED, FileState.FAILED, FileState.IMPORTED_WITH_WARNINGS):
            self._reasons[f"{r.state.value}: {r.reason}"] += 1
        if r.image_set_id and r.state is not FileState.SKIPPED_DUPLICATE:  # an earlier migration's image set
            self._image_sets[r.image_set_id] = bool(r.is_primary)
        if r.job_id:
            self._jobs.add(r.job_id)
        imported = r.state in (FileState.IMPORTED, FileState.IMPORTED_WITH_WARNINGS)
        if r.predicted_non_primary:
            self._predicted += 1
            self._confirmed += imported and r.is_primary is False
            self._not_confirmed += r.is_primary is True
        self._not_predicted += imported and r.is_primary is False and not r.predicted_non_primary
        self._already += r.code == "already_imported"

    def summary(self, *, unaccounted: int, cancelled: bool, not_reached: int, accounted_twice: int,
                outside_inventory: int) -> dict[str, Any]:
        return {
            "files_total": self._files,
            "bytes_total": self._bytes,
            "files_by_state": {s.value: self._states.get(s, 0) for s in FileState},
            "reasons": dict(self._reasons.most_common()),
            "image_sets": len(self._image_sets),
            "primary_image_sets": sum(1 for p in self._image_sets.values() if p),
            "non_primary_image_sets": sorted(k for k, p in self._image_sets.items() if not p),
            "jobs": sorted(self._jobs),
            # Planning's per-file prediction against what review saw (isPrimary per imported file).
            "predicted_non_primary": self._predicted,
            "predicted_non_primary_confirmed": self._confirmed,
            "predicted_non_primary_not_confirmed": self._not_confirmed,
            "non_primary_not_predicted": self._not_predicted,
            "already_imported": self._already,
            "unaccounted": unaccounted,
            "cancelled": cancelled,
            "not_reached_before_cancel": not_reached,
            "accounted_twice": accounted_twice,
            "outside_inventory": outside_inventory,
        }


def _resolve_duplicate(row: LedgerEntry, row_of: Callable[[str], LedgerEntry | None]) -> LedgerEntry:
    """A copy is only `skipped_duplicate` if its original really was imported; otherwise it shares its fate."""
    if row.state is not FileState.SKIPPED_DUPLICATE or not row.duplicate_of or row.code == "already_imported":
        return row  # (an earlier migration's import is checked at planning: its image set still exists)
    original = row_of(row.duplicate_of)
    if original is None or original.state in (FileState.IMPORTED, FileState.IMPORTED_WITH_WARNINGS,
                                              FileState.SKIPPED_DUPLICATE):
        return row  # (an original skipped as already in the data store: the copy is too, for the same reason)
    return row.model_copy(update={"state": original.state, "code": "DuplicateOfNotImported",
                                  # identical bytes or the same instance in another encoding alike
                                  "reason": f"the same instance as {row.duplicate_of}, which was not imported: "
                                            f"{original.reason or original.state.value}"})


def render_summary(migration_id: str, summary: dict[str, Any]) -> str:
    lines = [f"Migration {migration_id}", f"  files: {summary['files_total']}  bytes: {summary['bytes_total']}"]
    for state, n in summary["files_by_state"].items():
        lines.append(f"  {state:<24}{n:>8}")
    lines.append(f"  image sets: {summary['image_sets']} ({summary['primary_image_sets']} primary, "
                 f"{len(summary['non_primary_image_sets'])} non-primary)")
    if summary.get("predicted_non_primary"):
        lines.append(f"  predicted non-primary before import: {summary['predicted_non_primary']} files "
                     f"({summary['predicted_non_primary_confirmed']} confirmed, "
                     f"{summary['predicted_non_primary_not_confirmed']} landed primary); "
                     f"{summary['non_primary_not_predicted']} non-primary files were not predicted")
    if summary.get("already_imported"):
        lines.append(f"  already in the data store from earlier migrations (skipped): {summary['already_imported']}")
    if summary["non_primary_image_sets"]:
        lines.append("  non-primary image sets awaiting reconciliation: " + ", ".join(summary["non_primary_image_sets"]))
    if summary["reasons"]:
        lines.append("  reasons:")
        lines += [f"    {n:>6} x {reason}" for reason, n in summary["reasons"].items()]
    if warned := warnings_line(summary):
        lines.append(f"  warnings of imported files: {warned}")
    fhir = summary.get("fhir")
    if fhir:
        lines.append(f"  FHIR ImagingStudy (HealthLake): {fhir_line(fhir)}")
    if summary["unaccounted"] or summary["accounted_twice"]:
        lines.append(f"  ACCOUNTING PROBLEM: {summary['unaccounted']} unaccounted, {summary['accounted_twice']} twice")
    return "\n".join(lines) + "\n"


def warnings_line(summary: dict[str, Any], per_origin: int = 5) -> str:
    """The most frequent warning codes of imported files, by origin (``details.warnings``): '' when none."""
    by_origin: dict[str, list[str]] = {}
    for w in (summary.get("details") or {}).get("warnings") or []:
        listed = by_origin.setdefault(str(w["origin"]), [])
        if len(listed) < per_origin:
            listed.append(f"{w['code']} {w['files']}")
    return "; ".join(f"{origin}: " + ", ".join(codes) for origin, codes in by_origin.items())


def fhir_line(fhir: dict[str, Any]) -> str:
    """The report's FHIR totals (``summary["fhir"]``) in one sentence, as the summary and the CLI print them."""
    return (f"{fhir['imaging_studies_imported']} imported, {fhir['imaging_studies_failed']} refused by the import, "
            f"{fhir['rejected_by_validate']} refused by $validate, {fhir['batches_with_problems']} batches with "
            "problems")


def _never_reviewed(record: dict[str, Any]) -> dict[str, Any]:
    """A batch whose import started (``.start.json``) but whose review wrote no ``result.json``."""
    listed = record.get("rejected")
    rejected: list[Any] = listed if isinstance(listed, list) else []
    return {"studies": record.get("studies"), "reviewed": False,
            "rejected_by_validate": len([f for f in rejected if isinstance(f, dict) and f.get("stage") == "validate"]),
            "problems": ["HealthLake import started but its output was never reviewed (no result.json)"]}


def fhir_section(results: dict[str, dict[str, Any]],
                 started: dict[str, dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """Totals and per-batch counts of the HealthLake routing (``fhir/batch-*.result.json``); None when off.

    ``started`` are the start records (``fhir/batch-*.start.json``): a batch with one and no result is counted
    as not reviewed, so a review that gave up before writing anything still shows.
    """
    results = dict(results)
    for name, record in (started or {}).items():
        if name not in results:
            results[name] = _never_reviewed(record)
    if not results:
        return None
    # A batch routed twice (round 2, "-r2") counts by round 2 only if its job ran to its end (round 2 re-sent
    # every study); otherwise round 1's counts stand (HealthLake holds what round 1 imported). Both rounds'
    # problems are kept.
    counted: dict[str, dict[str, Any]] = {}
    for name, r in results.items():
        if name.endswith("-r2") and name.removesuffix("-r2") in results:
            continue
        second = results.get(f"{name}-r2")
        if second is None:
            counted[name] = r
            continue
        problems = list(r.get("problems") or []) + list(second.get("problems") or [])
        if fhir_round_done(second.get("job_status"), second.get("reviewed")):
            counted[f"{name}-r2"] = second | {"problems": problems}
        else:
            counted[name] = r | {"problems": problems}
    batches = {name: {k: r.get(k) for k in ("job_id", "job_status", "studies", "imported", "failed",
                                            "rejected_by_validate")} | {"problems": len(r.get("problems") or [])}
               for name, r in sorted(counted.items())}
    return {
        "imaging_studies_imported": sum(int(r.get("imported") or 0) for r in counted.values()),
        "imaging_studies_failed": sum(int(r.get("failed") or 0) for r in counted.values()),
        "rejected_by_validate": sum(int(r.get("rejected_by_validate") or 0) for r in counted.values()),
        "batches_with_problems": sum(1 for r in counted.values() if r.get("problems")),
        "batches": batches,
    }


def optional_sections(s3: Any, plan: S3Location, verify: S3Location) -> dict[str, Any]:
    """``plan``, ``verify`` and ``section_problems`` of `contracts.report.ReportDetails`, from the documents those
    steps leave next to the report (absent: the step did not run). A document that does not fit is reported as a
    problem naming the field, never fatal: the report of the migration itself stands."""
    found: dict[str, Any] = {"section_problems": []}
    for name, loc, model in (("plan", plan, PlanComparison), ("verify", verify, VerifyResult)):
        try:
            found[name] = model.model_validate_json(get_bytes(s3, loc))
        except ClientError as err:
            if not is_missing(err):
                raise
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "the document"
            found["section_problems"].append(f"{loc.key.rsplit('/', 1)[-1]} cannot be shown: {where}: {first['msg']}")
    return found


class ReportActivities:
    def __init__(self, s3: Any, dicomweb_url: str | None = None) -> None:
        self._s3 = s3
        self._dicomweb_url = dicomweb_url

    def _fhir_docs(self, fhir: S3Location) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """batch name -> reviewed HealthLake outcome, and -> start record for the batches without one (both
        written only when FHIR routing is on): a start record is read only where ``fhir_section`` uses it."""
        keys: dict[str, dict[str, str]] = {".result.json": {}, ".start.json": {}}
        for obj in list_objects(self._s3, fhir):
            file_name = obj["Key"].rsplit("/", 1)[-1]
            for suffix, names in keys.items():
                if file_name.endswith(suffix):
                    names[file_name.removesuffix(suffix)] = obj["Key"]
        results = {name: get_json(self._s3, S3Location(fhir.bucket, key))
                   for name, key in keys[".result.json"].items()}
        started = {name: get_json(self._s3, S3Location(fhir.bucket, key))
                   for name, key in keys[".start.json"].items() if name not in results}
        return results, started

    def _read_lines(self, prefix: S3Location, add: Callable[[int, Iterable[LedgerEntry]], None],
                    times: list[datetime]) -> None:
        """Every ledger line under ``prefix`` into ``add``, object by object; ``times`` gets each object's time
        (an object is numbered by its place in ``times``)."""
        for obj in list_objects(self._s3, prefix):
            times.append(obj["LastModified"])
            add(len(times) - 1, (LedgerEntry.model_validate(r)
                                 for r in iter_ndjson(self._s3, S3Location(prefix.bucket, obj["Key"]))))

    @activity.defn(name="write_report")
    @keeps_alive
    def write_report(self, input: ReportInput) -> ReportResult:
        """Join the inventory with every ledger (`ReportStore`, on local disk) and write the per-file lines as
        they are produced (multipart uploads of files.ndjson and files.csv), counting as they pass: memory
        follows the studies, series and image sets, never the files."""
        root = layout.root(input.work_s3_uri, input.migration_id)
        if input.inventory_pages is not None:
            # Exactly the pages this run wrote: a stale page from an earlier run of the same id must not count.
            page_locs = [layout.inventory_page(input.work_s3_uri, input.migration_id, n) for n in range(input.inventory_pages)]
        else:
            page_locs = [S3Location(root.bucket, o["Key"]) for o in list_objects(self._s3, layout.inventory_prefix(input.work_s3_uri, input.migration_id))]
        # The migration's start: when its first inventory page was written (pages of an earlier run of the same
        # id, which page_locs leaves out, do not count).
        pages = {loc.key for loc in page_locs}
        started = [o["LastModified"] for o in list_objects(
            self._s3, layout.inventory_prefix(input.work_s3_uri, input.migration_id)) if o["Key"] in pages]
        # A migration started from a plan: plan against actual, row by row as the report is written.
        comparer = open_comparison(self._s3, input.work_s3_uri, input.migration_id)
        with ReportStore() as store, comparer or nullcontext():
            for loc in page_locs:
                store.add_inventory(InventoryEntry.model_validate(r) for r in iter_ndjson(self._s3, loc))
            times: list[datetime] = []
            self._read_lines(layout.ledger_prefix(input.work_s3_uri, input.migration_id), store.add_ledger, times)
            self._read_lines(layout.receive_failures_prefix(input.work_s3_uri, input.migration_id),
                             store.add_unreceived, times)
            store.finish_loading()
            unaccounted, not_reached = store.build_rows(input.cancelled)
            tally = ReportTally()
            # Files no stage recorded (cancelled, unaccounted) get their verdict now, from this report.
            now = datetime.now(UTC)
            aggregate = ReportAggregator(input.datastore_id)
            files_loc = layout.report_files(input.work_s3_uri, input.migration_id)
            csv_loc = layout.report_csv(input.work_s3_uri, input.migration_id)
            with S3StreamWriter(self._s3, files_loc, "application/x-ndjson") as lines, \
                    S3StreamWriter(self._s3, csv_loc, "text/csv; charset=utf-8") as table:

                def rows() -> Iterator[LedgerEntry]:
                    for n, (row, obj) in enumerate(store.rows()):
                        row = _resolve_duplicate(row, store.row)
                        lines.write(row.model_dump_json(exclude_none=True).encode() + b"\n")
                        tally.add(row)
                        aggregate.add(row, times[obj] if obj is not None else now)
                        if comparer is not None:
                            comparer.add(row)
                        if n % 10_000 == 0 and (keep := current()):
                            keep.record("rows", n)
                        yield row

                for text in csv_lines(rows()):
                    table.write(text.encode())
            summary = tally.summary(unaccounted=unaccounted, cancelled=input.cancelled, not_reached=not_reached,
                                    accounted_twice=store.accounted_twice(),
                                    outside_inventory=store.outside_inventory())
            if comparer is not None:
                write_comparison(self._s3, input.work_s3_uri, input.migration_id, comparer, len(summary["jobs"]),
                                 min(started, default=None), now)
        if (fhir := fhir_section(*self._fhir_docs(layout.fhir_prefix(input.work_s3_uri, input.migration_id)))) is not None:
            summary["fhir"] = fhir
        summary.update({"migration_id": input.migration_id, "datastore_id": input.datastore_id})
        plan_loc = layout.report_plan(input.work_s3_uri, input.migration_id)
        verify_loc = layout.report_verify(input.work_s3_uri, input.migration_id)
        summary.update({"plan_uri": plan_loc.uri, "verify_uri": verify_loc.uri})
        details = aggregate.details(min(started, default=None), now, self._dicomweb_url).model_copy(
            update=optional_sections(self._s3, plan_loc, verify_loc))
        summary["details"] = details.model_dump(mode="json", exclude_none=True)
        report_loc = layout.report_document(input.work_s3_uri, input.migration_id)
        text_loc = layout.report_summary(input.work_s3_uri, input.migration_id)
        html_loc = layout.report_html(input.work_s3_uri, input.migration_id)
        summary.update({"files_uri": files_loc.uri, "csv_uri": csv_loc.uri, "html_uri": html_loc.uri})
        put_json(self._s3, report_loc, summary)
        put_bytes(self._s3, text_loc, render_summary(input.migration_id, summary).encode(), "text/plain; charset=utf-8")
        document = ReportDocument.model_validate_json(json.dumps(summary, default=str))
        put_bytes(self._s3, html_loc, render_html(document).encode(), "text/html; charset=utf-8")
        return ReportResult(report_uri=report_loc.uri, summary_uri=text_loc.uri, files_uri=files_loc.uri,
                            files_total=summary["files_total"],
                            files_by_state={FileState(k): v for k, v in summary["files_by_state"].items()},
                            unaccounted=summary["unaccounted"], accounted_twice=summary["accounted_twice"])
