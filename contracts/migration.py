"""What an operator passes to a `MigrationWorkflow`, what it carries across continue-as-new and what it answers.

Also the ids and patterns of a migration: ids become S3 path segments and Temporal workflow ids.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from contracts.common import Bool, Closed, FileState, Float, Int, Strict, ValidationLevel
from contracts.s3uri import parse_s3_uri
from contracts.sources import SourceConnector

DATASTORE_ID_PATTERN = r"^[0-9a-z]{32}$"
# Workflow ids become S3 path segments and Temporal ids: no PHI, no path tricks.
MIGRATION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
ROLE_ARN_PATTERN = r"^arn:aws(-[^:]+)?:iam::[0-9]{12}:role/.+$"
ACCOUNT_ID_PATTERN = r"^[0-9]{12}$"
# HealthLake data store ids are 32 alphanumerics; the id becomes a URL path segment of the FHIR endpoint.
HEALTHLAKE_DATASTORE_ID_PATTERN = r"^[0-9A-Za-z]{1,32}$"
MAX_SPOT_CHECK = 100

# HealthImaging quotas (research/healthimaging.md §3); configuration, not constants, because AWS changes them.
MAX_FILES_PER_JOB = 5_000
MAX_BYTES_PER_JOB = 10 * 1000**3


def _check_s3(value: str, field: str) -> str:
    parse_s3_uri(value, field=field)
    return value


class FinishedMigrationRef(Strict):
    """A finished migration as the commands that act on one (rollback, verify) name it: its id, the data store it
    imported into and the work prefix that holds its report."""

    migration_id: Annotated[str, Field(pattern=MIGRATION_ID_PATTERN)]
    datastore_id: Annotated[str, Field(pattern=DATASTORE_ID_PATTERN)]
    work_s3_uri: str = Field(description="the migration's work prefix (its report and ledger live there)")

    @field_validator("work_s3_uri")
    @classmethod
    def _work(cls, v: str) -> str:
        return _check_s3(v, "work_s3_uri")


class OperatorCommand(Closed):
    """Optional argument of the `pause`, `resume` and `cancel` signals: who asks, and why (no PHI)."""

    by: str | None = Field(None, max_length=200)
    reason: str | None = Field(None, max_length=1000)


class OperatorAction(Closed):
    action: str
    at: datetime
    by: str | None = None
    reason: str | None = None


MigrationPhase = Literal["receiving", "parsing", "planning", "importing", "reporting", "completed"]
Count = Annotated[Int, Field(ge=0)]


class MigrationState(Closed):
    """State carried across continue-as-new; counts only. Written by the workflow alone: a run that was not
    continued from one of its own runs refuses it (`workflows.carried`)."""

    phase: MigrationPhase = "receiving"
    inventory_pages: Count = 0
    pages_done: Count = 0
    # Planning in waves (patch `planning-waves`): pages [0, pages_planned) are planned; their batches are numbered
    # [0, batches_planned).
    pages_planned: Count = 0
    # Fixed when the first wave is planned (patch `large-folders-by-page`) and kept for every later wave and run:
    # `PlanInput.large_folders_by_page`.
    large_folders_by_page: Bool = False
    batches_planned: Count = 0
    batches_done: Count = 0
    files_total: Count = 0
    bytes_total: Count = 0
    files_by_state: dict[FileState, Count] = Field(default_factory=dict)
    rejected: Count = 0
    duplicates: Count = 0
    image_sets: Count = 0
    non_primary_image_sets: Count = 0
    predicted_non_primary: Count = 0
    batches_failed: Count = 0
    # FHIR routing (ImagingStudy resources): imported, and refused by the import job or by $validate.
    fhir_imported: Count = 0
    fhir_refused: Count = 0
    started_at: datetime | None = None
    runs: Annotated[Int, Field(ge=1)] = 1
    report_uri: str | None = None
    paused: Bool = False
    cancel_requested: Bool = False
    operator_log: list[OperatorAction] = Field(default_factory=list)


class SourceAndTarget(Strict):
    """Where files come from and where they go: shared by migrations and event-driven ingestion."""

    source_s3_uri: str = Field(description="S3 prefix holding the DICOM files to migrate, e.g. s3://bucket/dicom/")
    datastore_id: Annotated[str, Field(pattern=DATASTORE_ID_PATTERN, description="HealthImaging data store id")]
    work_s3_uri: str = Field(description="S3 prefix for inventory, staging, import output, ledger and report")
    validation_level: ValidationLevel = ValidationLevel.STRUCTURE_ONLY
    data_access_role_arn: Annotated[str | None, Field(pattern=ROLE_ARN_PATTERN)] = None
    source_owner_account_id: Annotated[str | None, Field(
        pattern=ACCOUNT_ID_PATTERN,
        description="12-digit AWS account that owns the source bucket, when it is not the data store's account: "
        "in-place imports then tell HealthImaging (inputOwnerAccountId), which reads the bucket there directly "
        "(its bucket policy must let the data-access role read); unset: the data store's own account")] = None

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
    max_files_per_batch: Int = Field(1_000, ge=1, le=MAX_FILES_PER_JOB)
    max_bytes_per_batch: Int = Field(MAX_BYTES_PER_JOB, ge=1, le=MAX_BYTES_PER_JOB)
    inventory_page_size: Int = Field(1_000, ge=1, le=10_000)
    max_concurrent_jobs: Int = Field(4, ge=1, le=100)
    max_parallel_pages: Int = Field(2, ge=1, le=50)
    import_start_interval_seconds: Float = Field(
        0.0, ge=0, le=3600, description="an extra pause between this migration's import-job starts; 0: none (each "
        "worker paces StartDICOMImportJob by what the service accepts, HIMIG_IMPORT_START_*_TPS)")
    manual_review: Bool = Field(
        False, description="hold each batch after its manifest is reviewed until an operator approves routing")
    source_connector: SourceConnector | None = Field(
        None, description="pull this source (a local directory, a DICOMweb or a DIMSE PACS) into source_s3_uri "
        "first, then migrate that prefix")
    # Temporal decodes a workflow's arguments by type only when their count matches, so the state carried
    # across continue-as-new rides inside the one input object. A caller cannot set it: the workflow refuses it
    # in a run that was not continued from one of its own runs (`workflows.carried`).
    continued: MigrationState | None = Field(
        None, description="internal: set by the workflow itself when it continues as new; a start with it fails")
    from_plan: Annotated[str | None, Field(
        pattern=MIGRATION_ID_PATTERN,
        description="id of a finished `himig plan` of this source, data store and validation level: its inventory "
        "and parse results are reused instead of reading the source again (refused when the source changed since); "
        "batches are planned afresh")] = None
    # Routing to HealthLake (off unless a FHIR data store is given) and the DICOMweb spot check in review.
    healthlake_datastore_id: Annotated[str | None, Field(
        pattern=HEALTHLAKE_DATASTORE_ID_PATTERN,
        description="HealthLake data store receiving one ImagingStudy per imported study; unset = no FHIR routing")] = None
    fhir_validation_level: ValidationLevel = Field(
        ValidationLevel.STRUCTURE_ONLY, description="ValidationLevel of the HealthLake import job")
    fhir_validate_first: Bool = Field(
        False, description="call $validate on each resource first; failures are reported instead of imported")
    dicomweb_spot_check: Int = Field(
        2, ge=0, le=MAX_SPOT_CHECK, description="imported instances per batch read back through DICOMweb; 0 = off")
    resend_failed: Bool = Field(
        False, description="send files whose import into this data store failed before for a reason that would "
        "fail again, although unchanged (what `himig retry` sets); off: such files are reported failed again, "
        "naming the earlier migration, and start no import job")

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

    @model_validator(mode="after")
    def _plan_pulled_already(self) -> MigrationInput:
        if self.from_plan is not None and self.source_connector is not None:
            raise ValueError("from_plan and source_connector are exclusive: the plan pulled the source into "
                             "source_s3_uri already, and the migration reuses what it read there")
        return self


class MigrationResult(BaseModel):
    migration_id: str
    report_uri: str
    summary_uri: str
    files_uri: str
    files_by_state: dict[FileState, int]
    files_total: int


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


def batch_workflow_id(migration_id: str, batch: int) -> str:
    return f"{migration_id}.batch-{batch:05d}"


def check_migration_id(value: str) -> str:
    if not re.match(MIGRATION_ID_PATTERN, value):
        raise ValueError(
            f"migration id {value!r} must be 1-100 characters of letters, digits, '.', '_' or '-', starting with "
            "a letter or digit"
        )
    return value
