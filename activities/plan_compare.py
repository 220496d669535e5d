"""Plan against actual, for the report of a migration started from a plan (`himig start --from-plan`).

``adopt_plan`` copied the plan's ``plan.json`` and per-file predictions under the migration's own id; the report
compares them with the files' terminal states (`contracts.plan.agrees`), writes the files whose outcome differs
(``plan/disagreements.ndjson``: keys, states and codes) and the comparison the report page shows
(``report/plan.json``, `contracts.report.PlanComparison`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError
from pydantic import ValidationError
from temporalio import activity

from activities.storage import get_bytes, is_missing, iter_ndjson, put_bytes, put_ndjson
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


def compare(doc: PlanDocument, predictions: dict[str, PredictedFile], rows: list[LedgerEntry],
            jobs: int, seconds: float | None) -> tuple[PlanComparison, list[dict[str, Any]]]:
    """The comparison rows, and one line per file whose outcome is not the predicted one."""
    differ: list[dict[str, Any]] = []
    agreeing = 0
    for row in rows:
        guess = predictions.get(row.key)
        if guess is not None and agrees(guess, row.state, row.code):
            agreeing += 1
        else:
            differ.append({"key": row.key, "predicted": guess.outcome.value if guess else None,
                           "predicted_code": guess.code if guess else None, "state": row.state.value,
                           "code": row.code})
    missing = len(set(predictions) - {r.key for r in rows})  # predicted, yet not in this migration's report
    rejected = [r for r in rows if r.state is FileState.REJECTED]
    by_import = [r for r in rows if r.state in IMPORTED or (r.state is FileState.FAILED and r.batch is not None)]
    planned_dups = doc.duplicates_in_source + doc.already_imported
    table: list[tuple[str, float | int | None, float | int | None]] = [
        ("files", doc.files + doc.source_failures, len(rows)),
        ("files with the predicted outcome", doc.files + doc.source_failures, agreeing),
        ("predicted files missing from the report", 0, missing),
        ("rejected by validation", doc.rejected_files, sum(1 for r in rejected if r.code not in CONFLICT_CODES)),
        ("duplicates skipped", planned_dups, sum(1 for r in rows if r.state is FileState.SKIPPED_DUPLICATE)),
        ("conflicting duplicates (rejected)", doc.conflicting_duplicates_in_source + doc.conflicting_already_imported,
         sum(1 for r in rejected if r.code in CONFLICT_CODES)),
        ("files sent to import jobs", doc.batches.files_to_import, len(by_import)),
        ("imported", None, sum(1 for r in rows if r.state in IMPORTED)),
        ("failed by the import", None, sum(1 for r in by_import if r.state is FileState.FAILED)),
        ("import jobs", doc.batches.import_jobs, jobs),
        ("files in non-primary image sets", doc.predicted_non_primary_files,
         sum(1 for r in rows if r.state in IMPORTED and r.is_primary is False)),
        ("wall time, seconds (estimate for a migration from the plan)", doc.estimate.total_from_plan_seconds,
         seconds),
    ]
    return PlanComparison(planned_at=doc.planned_at, rows=[
        PlanRow(label=label, planned=None if planned is None else float(planned),
                actual=None if actual is None else float(actual)) for label, planned, actual in table]), differ


def write_comparison(s3: Any, work_s3_uri: str, migration_id: str, rows: list[LedgerEntry], jobs: int,
                     started: datetime | None, finished: datetime) -> PlanComparison | None:
    """Compare and write, when this migration was started from a plan (its copy of plan.json exists)."""
    try:
        doc = PlanDocument.model_validate_json(get_bytes(s3, layout.plan_document(work_s3_uri, migration_id)))
        predictions = {p.key: p for p in (PredictedFile.model_validate(r) for r in
                                          iter_ndjson(s3, layout.plan_files(work_s3_uri, migration_id)))}
    except ClientError as err:
        if is_missing(err):
            return None
        raise
    except ValidationError as err:
        # The migration's own report stands without the comparison: never fail it over the plan's copy.
        activity.logger.warning("plan copy unreadable; no plan against actual",
                                extra={"why": describe_validation_error(err)})
        return None
    seconds = (finished - started).total_seconds() if started else None
    comparison, differ = compare(doc, predictions, rows, jobs, seconds)
    put_ndjson(s3, disagreement_location(work_s3_uri, migration_id), differ)
    put_bytes(s3, layout.report_plan(work_s3_uri, migration_id), comparison.model_dump_json().encode(),
              "application/json")
    return comparison

