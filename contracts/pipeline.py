"""Inputs, outputs and progress of the migration pipeline.

Workflows carry counts and S3 pointers, never file lists: per-file data lives in NDJSON objects under the
migration's work prefix (see `contracts.layout`).
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contracts.s3uri import parse_s3_uri

DATASTORE_ID_PATTERN = r"^[0-9a-z]{32}$"
# Workflow ids become S3 path segments and Temporal ids: no PHI, no path tricks.
MIGRATION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
ROLE_ARN_PATTERN = r"^arn:aws(-[^:]+)?:iam::[0-9]{12}:role/.+$"

# HealthImaging quotas (research/healthimaging.md §3); configuration, not constants, because AWS changes them.
MAX_FILES_PER_JOB = 5_000
MAX_BYTES_PER_JOB = 10 * 1000**3


class ValidationLevel(StrEnum):
    """How strictly files are checked before import (names follow HealthLake's validation levels)."""

    STRICT = "strict"
    STRUCTURE_ONLY = "structure-only"
    MINIMAL = "minimal"


class FileState(StrEnum):
    """The terminal state of one source file. Every file ends in exactly one."""

    IMPORTED = "imported"
    IMPORTED_WITH_WARNINGS = "imported_with_warnings"
    REJECTED = "rejected"
    FAILED = "failed"
    SKIPPED_DUPLICATE = "skipped_duplicate"


class Strict(BaseModel):
    """Base for inputs that operators type: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_s3(value: str, field: str) -> str:
    parse_s3_uri(value, field=field)
    return value


class OperatorCommand(BaseModel):
    """Optional argument of the `pause`, `resume` and `cancel` signals: who asks, and why (no PHI)."""

    model_config = ConfigDict(extra="forbid")

    by: str | None = Field(None, max_length=200)
    reason: str | None = Field(None, max_length=1000)


class OperatorAction(BaseModel):
    action: str
    at: datetime
    by: str | None = None
    reason: str | None = None


class MigrationState(BaseModel):
    """State carried across continue-as-new; counts only."""

    phase: str = "receiving"
    inventory_pages: int = 0
    pages_done: int = 0
    batches_planned: int = 0
    batches_done: int = 0
    files_total: int = 0
    bytes_total: int = 0
    files_by_state: dict[FileState, int] = Field(default_factory=dict)
    rejected: int = 0
    duplicates: int = 0
    image_sets: int = 0
    non_primary_image_sets: int = 0
    predicted_non_primary: int = 0
    batches_failed: int = 0
    started_at: datetime | None = None
    runs: int = 1
    report_uri: str | None = None
    paused: bool = False
    cancel_requested: bool = False
    operator_log: list[OperatorAction] = Field(default_factory=list)


class SourceAndTarget(Strict):
    """Where files come from and where they go: shared by migrations and event-driven ingestion."""

    source_s3_uri: str = Field(description="S3 prefix holding the DICOM files to migrate, e.g. s3://bucket/dicom/")
    datastore_id: Annotated[str, Field(pattern=DATASTORE_ID_PATTERN, description="HealthImaging data store id")]
    work_s3_uri: str = Field(description="S3 prefix for inventory, staging, import output, ledger and report")
    validation_level: ValidationLevel = ValidationLevel.STRUCTURE_ONLY
    data_access_role_arn: Annotated[str | None, Field(pattern=ROLE_ARN_PATTERN)] = None

    @field_validator("source_s3_uri")
    @classmethod
    def _source(cls, v: str) -> str:
        return _check_s3(v, "source_s3_uri")

    @field_validator("work_s3_uri")
    @classmethod
    def _work(cls, v: str) -> str:
        return _check_s3(v, "work_s3_uri")

    @model_validator(mode="after")
    def _work_outside_source(self) -> SourceAndTarget:
        src = parse_s3_uri(self.source_s3_uri).as_prefix()
        work = parse_s3_uri(self.work_s3_uri).as_prefix()
        if src.bucket == work.bucket and (work.key.startswith(src.key) or src.key.startswith(work.key)):
            # Staged copies and reports under the source would be inventoried as source files next time.
            raise ValueError("work_s3_uri must not overlap source_s3_uri (staged copies would be re-inventoried)")
        return self


class MigrationInput(SourceAndTarget):
    """What an operator passes to start a `MigrationWorkflow` (plain JSON from the CLI or the Temporal UI)."""

    source_manifest_uri: str | None = Field(
        None, description="NDJSON of {key, size, etag} objects (keys in the source bucket, under the source prefix) "
        "to migrate instead of listing the whole prefix; used by event-driven ingestion")
    max_files_per_batch: int = Field(1_000, ge=1, le=MAX_FILES_PER_JOB)
    max_bytes_per_batch: int = Field(MAX_BYTES_PER_JOB, ge=1, le=MAX_BYTES_PER_JOB)
    inventory_page_size: int = Field(1_000, ge=1, le=10_000)
    max_concurrent_jobs: int = Field(4, ge=1, le=100)
    max_parallel_pages: int = Field(2, ge=1, le=50)
    import_start_interval_seconds: float = Field(
        1.0, ge=0, le=3600, description="pause between import job starts (StartDICOMImportJob allows 1 TPS)")
    manual_review: bool = Field(
        False, description="hold each batch after its manifest is reviewed until an operator approves routing")
    # Temporal decodes a workflow's arguments by type only when their count matches, so the state carried
    # across continue-as-new rides inside the one input object. Operators leave it out.
    continued: MigrationState | None = Field(None, description="set by the workflow when it continues as new")

    @field_validator("source_manifest_uri")
    @classmethod
    def _manifest(cls, v: str | None) -> str | None:
        return None if v is None else _check_s3(v, "source_manifest_uri")


class MigrationResult(BaseModel):
    migration_id: str
    report_uri: str
    summary_uri: str
    files_uri: str
    files_by_state: dict[FileState, int]
    files_total: int


class BatchStage(StrEnum):
    """Stages of one import batch, in order. `JOB_COMPLETED` and `MANIFEST_REVIEWED` are distinct on purpose."""

    PENDING = "pending"
    IMPORTING = "importing"
    AWAITING_JOB = "awaiting_job"
    JOB_COMPLETED = "job_completed"
    JOB_FAILED = "job_failed"
    REVIEWING_MANIFEST = "reviewing_manifest"
    MANIFEST_REVIEWED = "manifest_reviewed"
    AWAITING_APPROVAL = "awaiting_approval"
    ROUTING = "routing"
    NOT_ROUTED = "not_routed"
    DONE = "done"


class MigrationProgress(BaseModel):
    """Answer of the `progress` query on `MigrationWorkflow`."""

    migration_id: str
    phase: str
    files_total: int
    bytes_total: int
    inventory_pages: int
    pages_done: int
    batches_planned: int
    batches_done: int
    batches_by_stage: dict[str, int]
    running_batches: list[int]
    files_by_state: dict[FileState, int]
    files_done: int
    rejected: int
    duplicates: int
    image_sets: int
    non_primary_image_sets: int
    elapsed_seconds: float
    predicted_non_primary: int = 0
    files_per_second: float
    eta_seconds: float | None
    report_uri: str | None = None
    paused: bool = False
    cancel_requested: bool = False
    operator_log: list[OperatorAction] = Field(default_factory=list)


# ---- activity contracts -------------------------------------------------------------------------------------


class ReceiveInput(BaseModel):
    migration_id: str
    source_s3_uri: str
    work_s3_uri: str
    page_size: int
    source_manifest_uri: str | None = None


class ReceiveResult(BaseModel):
    files: int
    bytes: int
    pages: int
    inventory_prefix_uri: str


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


class BatchInput(BaseModel):
    """Input of one `ImportBatchWorkflow`: a planned batch, staged and imported as one import job."""

    migration_id: str
    batch: int
    source_s3_uri: str
    work_s3_uri: str
    datastore_id: str
    data_access_role_arn: str | None = None
    manual_review: bool = False
    # 1 or 2: one half of this batch, imported again after the whole batch's job FAILED.
    part: int | None = Field(None, ge=1, le=2)


class FailedBatchInput(BaseModel):
    batch: BatchInput
    reason: str
    job_id: str | None = None


class ImportJobRef(BaseModel):
    datastore_id: str
    job_id: str
    input_s3_uri: str
    # inputFile in the job's output = input_key_prefix + source key ("" when imported straight from the source)
    input_key_prefix: str
    direct: bool = False
    staged_files: int
    output_s3_uri: str
    reused_existing_job: bool = False
    # Files not staged because their source object changed since it was validated (code SourceChanged). When
    # every file changed, no job is started: job_id is "" and staged_files 0.
    source_changed: int = 0


class JobOutcome(BaseModel):
    job_id: str
    status: str
    output_s3_uri: str
    message: str | None = None


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


class RouteInput(BaseModel):
    batch: BatchInput
    review: ReviewResult


class RouteResult(BaseModel):
    events_published: int
    non_primary_for_reconciliation: int


class BatchResult(BaseModel):
    batch: int
    job_id: str | None
    job_status: str | None
    # Set when the batch's job FAILED and its files were imported again in two halves.
    failed_job: JobOutcome | None = None
    files_by_state: dict[FileState, int]
    image_sets: int
    non_primary_image_sets: list[str]
    stage: BatchStage


class ManifestApproval(Strict):
    """Argument of the `approve_manifest` update on `ImportBatchWorkflow` (manual review gate)."""

    approve: bool = Field(description="true: route the batch; false: hold it back from routing")
    reviewer: str = Field(min_length=1, max_length=200)
    reason: str | None = Field(None, max_length=1000, description="why (no PHI)")


class StageTransition(BaseModel):
    stage: BatchStage
    at: datetime


class BatchProgress(BaseModel):
    """Answer of the `progress` query on `ImportBatchWorkflow`.

    ``transitions`` lists every stage reached, so a step that is left at once (job COMPLETED → review) is
    still visible as its own state.
    """

    batch: int
    stage: BatchStage
    transitions: list[StageTransition] = Field(default_factory=list)
    job_id: str | None = None
    job_status: str | None = None
    staged_files: int = 0
    files_by_state: dict[FileState, int] = Field(default_factory=dict)
    # What a manual reviewer decides on: the review's consistency verdict and problems, then the decision.
    counters_consistent: bool | None = None
    problems: list[str] = Field(default_factory=list)
    non_primary_image_sets: list[str] = Field(default_factory=list)
    approval: ManifestApproval | None = None
    failed_job: JobOutcome | None = Field(None, description="set when the job FAILED and the batch was split")


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


def batch_workflow_id(migration_id: str, batch: int) -> str:
    return f"{migration_id}.batch-{batch:05d}"


def check_migration_id(value: str) -> str:
    if not re.match(MIGRATION_ID_PATTERN, value):
        raise ValueError(
            f"migration id {value!r} must be 1-100 characters of letters, digits, '.', '_' or '-', starting with "
            "a letter or digit"
        )
    return value
