"""`himig plan`: a dry run of a migration, what it predicts, and how a migration later reuses it.

A plan is a `PlanWorkflow` (id ``plan-...``) over the same input a migration takes. It runs the migration's own
stages up to and including batch planning (receive → parse → validate → normalize → plan_batches) under the plan's
id, so its files live under ``<work_s3_uri>/<plan id>/`` in the migration layout (`contracts.layout`), then
``write_plan`` writes what it found and predicts:

* ``<plan id>/plan/plan.json`` (`PlanDocument`): counts, rejections per code, duplicates, predicted non-primary
  series with the attribute groups that conflict (names only), batches and import jobs, S3 requests, and the
  estimated wall time (`PlanEstimate`);
* ``<plan id>/plan/files.ndjson`` (`PredictedFile`): one line per source file with the terminal state the
  migration would give it (keys, states and codes; no patient values).

``himig start --from-plan PLAN`` sets `MigrationInput.from_plan`: the migration's ``adopt_plan`` step checks the
plan (finished, same source, data store and validation level, source unchanged since) and copies the plan's
inventory, parse results and rejections into its own prefix instead of reading the source again; batches are
planned afresh (the data store may have changed). Its report then compares plan and actual (`compare`).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_validator

from contracts.common import Closed, FileState, Float, Int, Strict, ValidationLevel
from contracts.migration import MigrationInput
from contracts.stages import PlanResult

# Predicted non-primary series listed in plan.json (the rest are counted).
SERIES_LIMIT = 100


class PredictedOutcome(StrEnum):
    """The terminal state a migration would give a file, as far as anything before an import job can know.

    ``import``: the file goes into an import job; the job decides between ``imported``,
    ``imported_with_warnings`` and ``failed`` (a plan cannot know what the service will refuse)."""

    IMPORT = "import"
    REJECTED = "rejected"
    SKIPPED_DUPLICATE = "skipped_duplicate"
    FAILED = "failed"  # a source connector enumerated it but could not pull it


PlanPhase = Literal["receiving", "parsing", "planning", "writing", "completed"]
Count = Annotated[Int, Field(ge=0)]


class PlanState(Closed):
    """What a `PlanWorkflow` carries across continue-as-new (counts and stage timings only); written by the
    workflow alone (`workflows.carried`)."""

    phase: PlanPhase = "receiving"
    inventory_pages: Count = 0
    pages_done: Count = 0
    files_total: Count = 0
    bytes_total: Count = 0
    source_failures: Count = 0
    rejected: Count = 0
    header_bytes_read: Count = 0
    header_requests: Count = 0
    started_at: datetime | None = None
    # Seconds each stage took, measured by the workflow clock: the estimate's receive/parse/plan figures.
    receive_seconds: Annotated[Float, Field(ge=0)] = 0.0
    parse_seconds: Annotated[Float, Field(ge=0)] = 0.0
    plan_seconds: Annotated[Float, Field(ge=0)] = 0.0
    runs: Annotated[Int, Field(ge=1)] = 1
    plan_uri: str | None = None


class PlanRequest(Strict):
    """The input of a `PlanWorkflow`: the migration it plans, exactly as `himig start` would send it."""

    migration: MigrationInput = Field(description="the migration to plan (the JSON `himig start` sends)")
    continued: PlanState | None = Field(
        None, description="internal: set by the workflow itself when it continues as new; a start with it fails")

    @model_validator(mode="after")
    def _a_fresh_migration(self) -> PlanRequest:
        if self.migration.continued is not None:
            raise ValueError("migration.continued: internal state of a running migration; leave it out")
        if self.migration.from_plan is not None:
            raise ValueError("migration.from_plan: a plan reads its source itself; it cannot start from a plan")
        return self


class PlanProgress(BaseModel):
    """Answer of the `progress` query on `PlanWorkflow`."""

    plan_id: str
    phase: str
    files_total: int
    inventory_pages: int
    pages_done: int
    rejected: int
    plan_uri: str | None = None


class StageTimings(BaseModel):
    receive_seconds: float
    parse_seconds: float
    plan_seconds: float


class WritePlanInput(BaseModel):
    plan_id: str
    migration: MigrationInput
    pages: int
    source_failures: int
    header_bytes_read: int
    header_requests: int
    planned: PlanResult
    timings: StageTimings
    started_at: datetime


class WritePlanResult(BaseModel):
    plan_uri: str
    files_uri: str
    files: int


class NonPrimarySeries(BaseModel):
    """A series where files are predicted to land in a non-primary image set."""

    study_instance_uid: str
    series_instance_uid: str
    files: int
    # The attributes whose values conflict, by name only (the attribute group whose fingerprint differs); empty
    # when the other side is a series the data store already holds (its groups are not kept in the index).
    attributes: list[str] = Field(default_factory=list)
    against: Literal["this source", "the data store"]


class BatchSummary(BaseModel):
    batches: int
    import_jobs: int
    direct_batches: int
    files_to_import: int
    bytes_to_import: int
    staged_files: int
    largest_batch_files: int
    largest_batch_bytes: int


class PlanEstimate(BaseModel):
    """The migration's wall time under the configured quotas and concurrency, and where each figure comes from.

    Receive, parse and plan are the plan's own measured stage times (the migration repeats them; a migration
    started from the plan skips receive and parse). Import is a schedule of the planned jobs over
    min(max_concurrent_jobs, HIMIG_DATASTORE_MAX_RUNNING_JOBS) slots, started no faster than the start pacing
    allows, each lasting its staging copies at HIMIG_PLAN_STAGING_COPIES_PER_SECOND plus its files at
    HIMIG_PLAN_IMPORT_FILES_PER_SECOND plus HIMIG_PLAN_IMPORT_JOB_OVERHEAD_SECONDS (defaults measured in bench/)."""

    receive_seconds: float
    parse_seconds: float
    plan_seconds: float
    import_seconds: float
    total_seconds: float
    total_from_plan_seconds: float = Field(description="the same migration started with --from-plan")
    job_slots: int
    start_interval_seconds: float
    import_files_per_second: float
    staging_copies_per_second: float
    job_overhead_seconds: float


class PlanDocument(BaseModel):
    """``plan.json``."""

    plan_id: str
    planned_at: datetime
    migration: MigrationInput
    files: int
    bytes: int
    inventory_pages: int
    source_failures: int
    rejected_files: int
    rejected_by_code: dict[str, int]
    duplicates_in_source: int
    conflicting_duplicates_in_source: int
    already_imported: int
    conflicting_already_imported: int
    predicted_non_primary_files: int
    predicted_non_primary_series_total: int
    predicted_non_primary_series: list[NonPrimarySeries]
    batches: BatchSummary
    s3_requests: dict[str, int]
    estimate: PlanEstimate
    predicted_by_outcome: dict[PredictedOutcome, int]
    files_uri: str


class PredictedFile(BaseModel):
    """One line of the plan's ``files.ndjson``: a source file and the terminal state the migration would give it."""

    key: str
    outcome: PredictedOutcome
    code: str | None = None
    batch: int | None = None
    predicted_non_primary: bool | None = None


class AdoptInput(BaseModel):
    migration_id: str
    plan_id: str
    source_s3_uri: str
    work_s3_uri: str
    datastore_id: str
    validation_level: ValidationLevel
    source_manifest_uri: str | None = None


class AdoptResult(BaseModel):
    pages: int
    files: int
    bytes: int
    source_failures: int
    rejected: int
    objects_copied: int


# The states an import job decides between: a prediction of `import` agrees with any of them.
IMPORT_STATES = frozenset({FileState.IMPORTED, FileState.IMPORTED_WITH_WARNINGS, FileState.FAILED})

# Codes of `failed` lines that no import job wrote: a plan predicting `import` does not agree with these.
NOT_BY_IMPORT = frozenset({"Cancelled", "Unaccounted", "SourceChanged", "DuplicateOfNotImported"})


def agrees(predicted: PredictedFile, state: FileState, code: str | None) -> bool:
    """Whether a file's actual terminal state is the one predicted: the same state (and, for a rejection, the same
    code), or for ``import`` any state an import job decides."""
    if predicted.outcome is PredictedOutcome.IMPORT:
        return state in IMPORT_STATES and (state is not FileState.FAILED or code not in NOT_BY_IMPORT)
    if predicted.outcome is PredictedOutcome.REJECTED:
        return state is FileState.REJECTED and code == predicted.code
    return state.value == predicted.outcome.value
