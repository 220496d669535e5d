"""Inputs and results of the pipeline's activities, stage by stage (receive → parse → validate → normalize →
plan → review → route → report).

Workflows carry counts and S3 pointers, never file lists: per-file data lives in NDJSON objects under the
migration's work prefix (see `contracts.layout`).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from contracts.batch import BatchInput, ImportJobRef, JobOutcome
from contracts.common import FileState, ValidationLevel
from contracts.fhir import FhirImportRef, FhirJobOutcome
from contracts.sources import SourceConnector


class ReceiveInput(BaseModel):
    migration_id: str
    source_s3_uri: str
    work_s3_uri: str
    page_size: int
    source_manifest_uri: str | None = None
    source_connector: SourceConnector | None = None


class ReceiveResult(BaseModel):
    files: int
    bytes: int
    pages: int
    inventory_prefix_uri: str
    # Instances (or whole studies) a source connector enumerated but could not pull; each is a `failed` row
    # of the report (see `contracts.layout.receive_failures_prefix`).
    source_failures: int = 0


class PageInput(BaseModel):
    """One inventory page moving through parse → validate → normalize."""

    migration_id: str
    work_s3_uri: str
    page: int
    source_s3_uri: str
    validation_level: ValidationLevel = ValidationLevel.STRUCTURE_ONLY


class ParseResult(BaseModel):
    files: int
    parsed: int
    unreadable: int
    bytes_read: int
    s3_requests: int


class ValidateResult(BaseModel):
    valid: int
    rejected: int


class NormalizeResult(BaseModel):
    instances: int


class PlanInput(BaseModel):
    migration_id: str
    source_s3_uri: str
    work_s3_uri: str
    # Off for an explicit object list (ingestion): a folder may hold objects the list does not name.
    allow_direct: bool = True
    pages: int
    max_files_per_batch: int
    max_bytes_per_batch: int
    # The target data store: files it already holds unchanged (per the import index) are skipped.
    datastore_id: str | None = None
    # Send files whose import into the data store failed before, unchanged (`himig retry`); otherwise they are
    # recorded failed again without a job (activities/failed_before.py).
    resend_failed: bool = False
    # Planning in waves (MigrationWorkflow, patch `planning-waves`): this call plans the files that became ready
    # since page `first_page` (see activities/plan.py's module docstring for "ready") out of the `pages` parsed so
    # far, of `inventory_pages` in all, numbering its batches from `first_batch`. Unset `inventory_pages`: one plan
    # of every page (a `himig plan`, a migration started from a plan, histories from before waves).
    first_page: int = Field(0, ge=0)
    inventory_pages: int | None = Field(None, ge=0)
    first_batch: int = Field(0, ge=0)
    # Plan every parsed file now, ready or not: the last wave of a cancelled migration (nothing is parsed after it).
    complete: bool = False
    # A file whose folder (with everything under it) is larger than a batch is ready at its own page, not when its
    # folder is parsed whole (patch `large-folders-by-page`). The same for every wave of one migration.
    large_folders_by_page: bool = False


class BatchPlan(BaseModel):
    """Written next to each batch manifest (`layout.batch_meta`)."""

    files: int
    bytes: int
    studies: int
    # Set when the batch is exactly every object under one source folder: the job reads that folder directly
    # and no staging copy is made (one S3 request per file fewer).
    direct_input_s3_uri: str | None = None


class PlanResult(BaseModel):
    batches: int
    direct_batches: int
    files: int
    duplicates: int
    conflicting_duplicates: int
    predicted_non_primary: int
    # Of `duplicates` / `conflicting_duplicates`: those found in the data store's import index.
    already_imported: int = 0
    conflicting_already_imported: int = 0
    # Files not sent again: unchanged since an earlier migration's import of them failed for good (`failed`).
    failed_before: int = 0


class ReviewInput(BaseModel):
    batch: BatchInput
    job: ImportJobRef
    outcome: JobOutcome


class ImageSetRef(BaseModel):
    image_set_id: str
    version: int | None = None
    is_primary: bool
    instances: int


class ReviewResult(BaseModel):
    files_by_state: dict[FileState, int]
    image_sets: int
    non_primary_image_sets: list[str]
    ledger_uri: str
    counters_consistent: bool
    problems: list[str] = Field(default_factory=list)


class FailedBatchInput(BaseModel):
    batch: BatchInput
    reason: str
    job_id: str | None = None


class RouteInput(BaseModel):
    batch: BatchInput
    review: ReviewResult


class RouteResult(BaseModel):
    events_published: int
    non_primary_for_reconciliation: int


class FhirReviewInput(BaseModel):
    batch: BatchInput
    ref: FhirImportRef | None = Field(None, description="None when the import could not be started")
    outcome: FhirJobOutcome | None = None
    error: str | None = Field(None, description="why the import could not be started or awaited")


class ReportInput(BaseModel):
    migration_id: str
    work_s3_uri: str
    datastore_id: str
    cancelled: bool = False
    inventory_pages: int | None = None


class ReportResult(BaseModel):
    report_uri: str
    summary_uri: str
    files_uri: str
    files_total: int
    files_by_state: dict[FileState, int]
    unaccounted: int
    accounted_twice: int
