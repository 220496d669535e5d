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
from contracts.sources import SourceConnector

DATASTORE_ID_PATTERN = r"^[0-9a-z]{32}$"
# Workflow ids become S3 path segments and Temporal ids: no PHI, no path tricks.
MIGRATION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
ROLE_ARN_PATTERN = r"^arn:aws(-[^:]+)?:iam::[0-9]{12}:role/.+$"
# HealthLake data store ids are 32 alphanumerics; the id becomes a URL path segment of the FHIR endpoint.
HEALTHLAKE_DATASTORE_ID_PATTERN = r"^[0-9A-Za-z]{1,32}$"
MAX_SPOT_CHECK = 100

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
    # FHIR routing (ImagingStudy resources): imported, and refused by the import job or by $validate.
    fhir_imported: int = 0
    fhir_refused: int = 0
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
    source_connector: SourceConnector | None = Field(
        None, description="pull this source (a local directory, a DICOMweb or a DIMSE PACS) into source_s3_uri "
        "first, then migrate that prefix")
    # Temporal decodes a workflow's arguments by type only when their count matches, so the state carried
    # across continue-as-new rides inside the one input object. Operators leave it out.
    continued: MigrationState | None = Field(None, description="set by the workflow when it continues as new")
    # Routing to HealthLake (off unless a FHIR data store is given) and the DICOMweb spot check in review.
    healthlake_datastore_id: Annotated[str | None, Field(
        pattern=HEALTHLAKE_DATASTORE_ID_PATTERN,
        description="HealthLake data store receiving one ImagingStudy per imported study; unset = no FHIR routing")] = None
    fhir_validation_level: ValidationLevel = Field(
        ValidationLevel.STRUCTURE_ONLY, description="ValidationLevel of the HealthLake import job")
    fhir_validate_first: bool = Field(
        False, description="call $validate on each resource first; failures are reported instead of imported")
    dicomweb_spot_check: int = Field(
        2, ge=0, le=MAX_SPOT_CHECK, description="imported instances per batch read back through DICOMweb; 0 = off")

    @model_validator(mode="after")
    def _fhir_options_need_a_datastore(self) -> MigrationInput:
        if self.healthlake_datastore_id is None and self.fhir_validate_first:
            raise ValueError("fhir_validate_first needs healthlake_datastore_id (FHIR routing is off without it)")
        return self

    @field_validator("source_manifest_uri")
    @classmethod
    def _manifest(cls, v: str | None) -> str | None:
        return None if v is None else _check_s3(v, "source_manifest_uri")

    @model_validator(mode="after")
    def _one_source_kind(self) -> MigrationInput:
        if self.source_connector is not None and self.source_manifest_uri is not None:
            raise ValueError("source_connector and source_manifest_uri are exclusive: a connector lists what it pulls")
        return self


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
    ROUTING_FHIR = "routing_fhir"
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
    fhir_imported: int = 0
    fhir_refused: int = 0
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


class FhirRouting(BaseModel):
    """Where and how a batch's ImagingStudy resources go into HealthLake."""

    datastore_id: str
    validation_level: ValidationLevel = ValidationLevel.STRUCTURE_ONLY
    validate_first: bool = False
    # 2: routed again because the study gained image sets while round 1 was in flight (see workflows/batch.py).
    round: int = Field(1, ge=1, le=2)


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
    # None: no FHIR routing for this batch.
    fhir: FhirRouting | None = None
    # Instances read back through DICOMweb during review (0 for batches started before the spot check existed).
    dicomweb_spot_check: int = Field(0, ge=0, le=MAX_SPOT_CHECK)


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


class FhirFailure(BaseModel):
    """One resource HealthLake (or `$validate`) refused: ids, issue codes and element paths only, never values."""

    resource_type: str
    resource_id: str | None = None
    stage: str = Field(description="validate ($validate refused it, not imported) or import (the job refused it)")
    issues: list[str] = Field(default_factory=list, description="'code at Element.path' per issue")


class FhirImportRef(BaseModel):
    """A started HealthLake import of one batch's ImagingStudy NDJSON (job_id None: nothing to import)."""

    datastore_id: str
    job_id: str | None
    input_s3_uri: str
    output_s3_uri: str
    studies: int
    resources: int
    validation_level: ValidationLevel
    # At most MAX_FAILURES (below) of the resources refused before import; the counts below
    # and the start record (``fhir/batch-NNNNN.start.json``) cover all of them.
    validate_rejected: list[FhirFailure] = Field(default_factory=list)
    rejected_by_validate: int = Field(0, description="resources $validate refused (not imported)")
    refused_at_build: int = Field(0, description="resources our builder made that the FHIR model refuses (not sent)")


class FhirJobOutcome(BaseModel):
    job_id: str
    status: str
    message: str | None = None


class FhirReviewInput(BaseModel):
    batch: BatchInput
    ref: FhirImportRef | None = Field(None, description="None when the import could not be started")
    outcome: FhirJobOutcome | None = None
    error: str | None = Field(None, description="why the import could not be started or awaited")


# A HealthLake import job in one of these states ran to its end: its review counts every resource it was sent.
FHIR_JOB_DONE = frozenset({"COMPLETED", "COMPLETED_WITH_ERRORS"})
# Refused resources kept in workflow payloads (FhirImportRef, FhirSummary); the job's FAILURE/ folder and the
# start record have all of them.
MAX_FAILURES = 20


def fhir_round_done(job_status: str | None, reviewed: bool | None) -> bool:
    """Did a HealthLake routing round run to its end and get reviewed? (A round 2 that did counts for its batch.)

    ``reviewed`` None (absent from a ``result.json``) counts as reviewed; pure, so workflow code may call it.
    """
    return job_status in FHIR_JOB_DONE and reviewed is not False


class FhirSummary(BaseModel):
    """The FHIR outcome of one batch: counts, plus the refused resources (ids and issue codes, no values)."""

    job_id: str | None = None
    job_status: str | None = None
    studies: int = 0
    resources: int = 0
    imported: int = 0
    failed: int = 0
    rejected_by_validate: int = 0
    # Imported studies whose primary image sets in HealthImaging now include sets the resource did not list.
    stale_studies: int = 0
    rerouted: bool = False
    # False: the job's output has not (yet) been reviewed; the counts above are not the job's (see problems).
    reviewed: bool = True
    failures: list[FhirFailure] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)
    summary_uri: str | None = None


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
    fhir: FhirSummary | None = None


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
    # Import-job events (signal `job_event`): those that woke the wait for the job, and those ignored
    # (another job, not awaiting, duplicates beyond the wake limit).
    job_events_received: int = 0
    job_events_ignored: int = 0
    fhir: FhirSummary | None = Field(None, description="HealthLake routing outcome, when FHIR routing is on")


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
