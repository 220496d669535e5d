"""One import batch (`ImportBatchWorkflow`): its input, its import job, its stages, progress and result."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from contracts.common import Bool, Closed, FileState, Int, Strict
from contracts.fhir import FhirRouting, FhirSummary
from contracts.migration import MAX_SPOT_CHECK


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


class BatchInput(Closed):
    """Input of one `ImportBatchWorkflow`: a planned batch, staged and imported as one import job."""

    migration_id: str
    batch: Int = Field(ge=0)
    source_s3_uri: str
    work_s3_uri: str
    datastore_id: str
    data_access_role_arn: str | None = None
    # The source bucket's owner when it is another account (`SourceAndTarget.source_owner_account_id`).
    source_owner_account_id: str | None = None
    manual_review: Bool = False
    # 1 or 2: one half of this batch, imported again after the whole batch's job FAILED.
    part: Int | None = Field(None, ge=1, le=2)
    # None: no FHIR routing for this batch.
    fhir: FhirRouting | None = None
    # Instances read back through DICOMweb during review (0 for batches started before the spot check existed).
    dicomweb_spot_check: Int = Field(0, ge=0, le=MAX_SPOT_CHECK)


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

    approve: Bool = Field(description="true: route the batch; false: hold it back from routing")
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
