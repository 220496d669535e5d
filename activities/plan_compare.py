"""Plan against actual, for the report of a migration started from a plan (`himig start --from-plan`).

``adopt_plan`` copied the plan's ``plan.json`` and per-file predictions under the migration's own id; the report
compares them with the files' terminal states (`contracts.plan.agrees`), writes the files whose outcome differs
(``plan/disagreements.ndjson``: keys, states and codes) and the comparison the report page shows
(``report/plan.json``, `contracts.report.PlanComparison`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError
from pydantic import ValidationError
from temporalio import activity

from activities.s3_stream import S3StreamWriter
from activities.spill_db import SpillDatabase
from activities.storage import get_bytes, is_missing, iter_ndjson, put_bytes
from contracts import layout
from contracts.common import FileState
from contracts.errors import describe_validation_error
from contracts.plan import PlanDocument, PredictedFile, agrees
from contracts.records import LedgerEntry
from contracts.report import PlanComparison, PlanRow
from contracts.s3uri import S3Location

CONFLICT_CODES = frozenset({"conflicting_duplicate_sop_instance", "conflicting_already_imported"})
IMPORTED = (FileState.IMPORTED, FileState.IMPORTED_WITH_WARNINGS)


def disagreement_location(work_s3_uri: str, migration_id: str) -> S3Location:
    return layout.root(work_s3_uri, migration_id).join("plan", "disagreements.ndjson")


_SCHEMA = """
CREATE TABLE predicted (key TEXT PRIMARY KEY, line TEXT NOT NULL, seen INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE TABLE differ (n INTEGER PRIMARY KEY, line TEXT NOT NULL);
"""
_CHUNK = 2000


class PlanComparer:
    """Plan against actual, one report row at a time: the plan's predictions wait on local disk (`SpillDatabase`),
    not in memory, so the comparison costs the same at a million files as at a thousand."""

    def __init__(self, doc: PlanDocument, predictions: Iterable[PredictedFile]) -> None:
        self._doc = doc
        self._spill = SpillDatabase("plan-compare", _SCHEMA)
        self._db = self._spill.db
        chunk: list[tuple[str, str]] = []
        for p in predictions:
            chunk.append((p.key, p.model_dump_json(exclude_none=True)))
            if len(chunk) >= _CHUNK:
                self._insert(chunk)
        self._insert(chunk)
        self._counts = dict.fromkeys(("files", "agreeing", "rejected", "conflicting", "skipped", "by_import",
                                      "imported", "failed_by_import", "non_primary"), 0)

    def _insert(self, chunk: list[tuple[str, str]]) -> None:
        # A key twice in the predictions: the last line stands (as in a dict built in order).
        self._db.executemany("INSERT OR REPLACE INTO predicted (key, line) VALUES (?, ?)", chunk)
        chunk.clear()

    def __enter__(self) -> PlanComparer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._spill.close()

    def add(self, row: LedgerEntry) -> None:
        c = self._counts
        c["files"] += 1
        found = self._db.execute("SELECT line FROM predicted WHERE key = ?", (row.key,)).fetchone()
        guess = PredictedFile.model_validate_json(found[0]) if found else None
        if found:
            self._db.execute("UPDATE predicted SET seen = 1 WHERE key = ?", (row.key,))
        if guess is not None and agrees(guess, row.state, row.code):
            c["agreeing"] += 1
        else:
            self._db.execute("INSERT INTO differ (line) VALUES (?)", (json.dumps(
                {"key": row.key, "predicted": guess.outcome.value if guess else None,
                 "predicted_code": guess.code if guess else None, "state": row.state.value, "code": row.code}),))
        if row.state is FileState.REJECTED:
            c["conflicting" if row.code in CONFLICT_CODES else "rejected"] += 1
        c["skipped"] += row.state is FileState.SKIPPED_DUPLICATE
        c["by_import"] += row.state in IMPORTED or (row.state is FileState.FAILED and row.batch is not None)
        c["imported"] += row.state in IMPORTED
        c["failed_by_import"] += row.state is FileState.FAILED and row.batch is not None
        c["non_primary"] += row.state in IMPORTED and row.is_primary is False

    def differences(self) -> Iterator[dict[str, Any]]:
        """One line per file whose outcome is not the predicted one, in report order."""
        for (line,) in self._db.execute("SELECT line FROM differ ORDER BY n"):
            yield json.loads(line)

    def comparison(self, jobs: int, seconds: float | None) -> PlanComparison:
        doc, c = self._doc, self._counts
        # predicted, yet not in this migration's report
        missing = int(self._db.execute("SELECT COUNT(*) FROM predicted WHERE seen = 0").fetchone()[0])
        planned_dups = doc.duplicates_in_source + doc.already_imported
        table: list[tuple[str, float | int | None, float | int | None]] = [
            ("files", doc.files + doc.source_failures, c["files"]),
            ("files with the predicted outcome", doc.files + doc.source_failures, c["agreeing"]),
            ("predicted files missing from the report", 0, missing),
            ("rejected by validation", doc.rejected_files, c["rejected"]),
            ("duplicates skipped", planned_dups, c["skipped"]),
            ("conflicting duplicates (rejected)",
             doc.conflicting_duplicates_in_source + doc.conflicting_already_imported, c["conflicting"]),
            ("files sent to import jobs", doc.batches.files_to_import, c["by_import"]),
            ("imported", None, c["imported"]),
            ("failed by the import", None, c["failed_by_import"]),
            ("import jobs", doc.batches.import_jobs, jobs),
            ("files in non-primary image sets", doc.predicted_non_primary_files, c["non_primary"]),
            ("wall time, seconds (estimate for a migration from the plan)", doc.estimate.total_from_plan_seconds,
             seconds),
        ]
        return PlanComparison(planned_at=doc.planned_at, rows=[
            PlanRow(label=label, planned=None if planned is None else float(planned),
                    actual=None if actual is None else float(actual)) for label, planned, actual in table])


def compare(doc: PlanDocument, predictions: dict[str, PredictedFile], rows: Iterable[LedgerEntry],
            jobs: int, seconds: float | None) -> tuple[PlanComparison, list[dict[str, Any]]]:
    """The comparison rows, and one line per file whose outcome is not the predicted one (all at once)."""
    with PlanComparer(doc, predictions.values()) as comparer:
        for row in rows:
            comparer.add(row)
        return comparer.comparison(jobs, seconds), list(comparer.differences())


def open_comparison(s3: Any, work_s3_uri: str, migration_id: str) -> PlanComparer | None:
    """A comparer, when this migration was started from a plan (its copy of plan.json exists) that is readable."""
    try:
        doc = PlanDocument.model_validate_json(get_bytes(s3, layout.plan_document(work_s3_uri, migration_id)))
        return PlanComparer(doc, (PredictedFile.model_validate(r)
                                  for r in iter_ndjson(s3, layout.plan_files(work_s3_uri, migration_id))))
    except ClientError as err:
        if is_missing(err):
            return None
        raise
    except ValidationError as err:
        # The migration's own report stands without the comparison: never fail it over the plan's copy.
        activity.logger.warning("plan copy unreadable; no plan against actual",
                                extra={"why": describe_validation_error(err)})
        return None


def write_comparison(s3: Any, work_s3_uri: str, migration_id: str, comparer: PlanComparer, jobs: int,
                     started: datetime | None, finished: datetime) -> PlanComparison:
    """Write the comparison the report page shows and the files whose outcome differs."""
    seconds = (finished - started).total_seconds() if started else None
    comparison = comparer.comparison(jobs, seconds)
    with S3StreamWriter(s3, disagreement_location(work_s3_uri, migration_id), "application/x-ndjson") as out:
        out.write_lines(json.dumps(line) for line in comparer.differences())
    put_bytes(s3, layout.report_plan(work_s3_uri, migration_id), comparison.model_dump_json().encode(),
              "application/json")
    return comparison
