"""The activities, as the workflows see them: a name, one input model and one result type each.

Workflows cannot import activities/ (boto3, pydicom), so each activity is declared here by a stub with the
registered name and the signature of its implementation, and workflows pass the stub to
``workflow.execute_activity(parse_headers, input, ...)``: mypy checks the input against the declared parameter and
types the result, and the SDK takes the name and the result type (for the pydantic data converter) from the
declaration, so no call spells a name or a ``result_type`` by hand.

The implementations are methods of the classes in activities/, registered by ``worker.registry.build_activities``
under the same names; tests/worker/test_registry.py checks that both sides agree (names, parameter and return
types) and that the worker registers nothing undeclared. The stubs are never registered and never run.
"""

from __future__ import annotations

from temporalio import activity

from contracts.batch import BatchInput, ImportJobRef, JobOutcome
from contracts.fhir import FhirImportRef, FhirJobOutcome, FhirSummary
from contracts.ingest import IngestManifest, IngestManifestInput
from contracts.plan import AdoptInput, AdoptResult, WritePlanInput, WritePlanResult
from contracts.reconciliation import (
    ConflictDescription,
    DeleteResult,
    EscalationInput,
    ImageSetStatus,
    ImageSetTarget,
    PromoteInput,
    PromoteResult,
    ReviewerClaim,
    ReviewerVerdict,
    UpdateFirstInput,
    UpdateFirstResult,
)
from contracts.rollback import DeleteChunk, DeleteOutcome, RecordInput, RollbackInput, RollbackPlan
from contracts.stages import (
    FailedBatchInput,
    FhirReviewInput,
    NormalizeResult,
    PageInput,
    ParseResult,
    PlanInput,
    PlanResult,
    ReceiveInput,
    ReceiveResult,
    ReportInput,
    ReportResult,
    ReviewInput,
    ReviewResult,
    RouteInput,
    RouteResult,
    ValidateResult,
)
from contracts.sweep import NonPrimaryPage, NonPrimaryPageInput
from contracts.verify import PulledSourceInput, SourceVerifyInput, VerifyInput, VerifyResult

_DECLARATION = "a declaration: the worker runs the implementation registered under this name (worker/registry.py)"

# ---- MigrationWorkflow: source, pages, planning

@activity.defn(name="receive_inventory")
def receive_inventory(input: ReceiveInput) -> ReceiveResult:
    """List the source (or read its manifest, or pull a connector) into inventory pages (activities/receive.py)."""
    raise NotImplementedError(_DECLARATION)

@activity.defn(name="parse_headers")
def parse_headers(input: PageInput) -> ParseResult:
    """Read the DICOM headers of one inventory page (activities/parse.py)."""
    raise NotImplementedError(_DECLARATION)

@activity.defn(name="validate_page")
def validate_page(input: PageInput) -> ValidateResult:
    """Validate one parsed page at the migration's validation level (activities/validate.py)."""
    raise NotImplementedError(_DECLARATION)

@activity.defn(name="normalize_page")
def normalize_page(input: PageInput) -> NormalizeResult:
    """Normalize one validated page into instance records (activities/normalize.py)."""
    raise NotImplementedError(_DECLARATION)

@activity.defn(name="plan_batches")
def plan_batches(input: PlanInput) -> PlanResult:
    """Find duplicates and cut the instances into import batches (activities/plan.py)."""
    raise NotImplementedError(_DECLARATION)

# ---- PlanWorkflow (`himig plan`) and a migration started from a plan

@activity.defn(name="write_plan")
def write_plan(input: WritePlanInput) -> WritePlanResult:
    """Write a dry run's plan.json and per-file predictions from its ledgers and batches (activities/plan_report.py)."""
    raise NotImplementedError(_DECLARATION)

@activity.defn(name="adopt_plan")
def adopt_plan(input: AdoptInput) -> AdoptResult:
    """Check a finished plan still fits the source and copy its inventory and parse results (activities/plan_adopt.py)."""
    raise NotImplementedError(_DECLARATION)

# ---- ImportBatchWorkflow

@activity.defn(name="split_batch")
def split_batch(batch: BatchInput) -> list[int]:
    """Cut a batch whose whole job FAILED into two halves; their sizes (activities/plan.py)."""
    raise NotImplementedError(_DECLARATION)

@activity.defn(name="start_import_job")
def start_import_job(batch: BatchInput) -> ImportJobRef:
    """Stage one batch (or half) and start its DICOM import job (activities/importjob.py)."""
    raise NotImplementedError(_DECLARATION)

@activity.defn(name="await_import_job")
def await_import_job(job: ImportJobRef) -> JobOutcome:
    """Poll the import job until it ends (each retry is a poll) (activities/await_job.py)."""
    raise NotImplementedError(_DECLARATION)

@activity.defn(name="review_manifest")
def review_manifest(input: ReviewInput) -> ReviewResult:
    """Review the job's output against what was staged; write the batch ledger (activities/review.py)."""
    raise NotImplementedError(_DECLARATION)

@activity.defn(name="route_batch")
def route_batch(input: RouteInput) -> RouteResult:
    """Publish the batch's image set events (activities/route.py)."""
    raise NotImplementedError(_DECLARATION)

# ---- MigrationWorkflow: failed batches and the report

@activity.defn(name="record_failed_batch")
def record_failed_batch(input: FailedBatchInput) -> int:
    """Record every file of a batch whose workflow failed; how many were written (activities/review.py)."""
    raise NotImplementedError(_DECLARATION)

@activity.defn(name="write_report")
def write_report(input: ReportInput) -> ReportResult:
    """Derive every file's final state from the ledgers and write the report (activities/report.py)."""
    raise NotImplementedError(_DECLARATION)

# ---- ImportBatchWorkflow: FHIR routing

@activity.defn(name="start_fhir_import")
def start_fhir_import(input: RouteInput) -> FhirImportRef:
    """Build the batch's ImagingStudy resources and start a HealthLake import (activities/fhir_route.py)."""
    raise NotImplementedError(_DECLARATION)

@activity.defn(name="await_fhir_import")
def await_fhir_import(ref: FhirImportRef) -> FhirJobOutcome:
    """Poll the HealthLake import job until it ends (activities/fhir_route.py)."""
    raise NotImplementedError(_DECLARATION)

@activity.defn(name="review_fhir_import")
def review_fhir_import(input: FhirReviewInput) -> FhirSummary:
    """Review the HealthLake import output (or record why there is none) (activities/fhir_route.py)."""
    raise NotImplementedError(_DECLARATION)

# ---- ReconciliationWorkflow (activities/reconcile.py)

@activity.defn(name="describe_conflict")
def describe_conflict(input: ImageSetTarget) -> ConflictDescription:
    """Describe a non-primary image set and the primary set it conflicts with."""
    raise NotImplementedError(_DECLARATION)

@activity.defn(name="await_image_set")
def await_image_set(input: ImageSetTarget) -> ImageSetStatus:
    """Wait until an image set is out of its transient (LOCKED) state."""
    raise NotImplementedError(_DECLARATION)

@activity.defn(name="update_before_promote")
def update_before_promote(input: UpdateFirstInput) -> UpdateFirstResult:
    """Update a non-primary set's metadata before it is promoted."""
    raise NotImplementedError(_DECLARATION)

@activity.defn(name="promote_image_set")
def promote_image_set(input: PromoteInput) -> PromoteResult:
    """Copy a non-primary set onto the primary set (promote it)."""
    raise NotImplementedError(_DECLARATION)

@activity.defn(name="delete_image_set")
def delete_image_set(input: ImageSetTarget) -> DeleteResult:
    """Delete an image set; one already gone counts as deleted."""
    raise NotImplementedError(_DECLARATION)

@activity.defn(name="publish_escalation")
def publish_escalation(input: EscalationInput) -> bool:
    """Publish the event of a reconciliation that got no decision in time."""
    raise NotImplementedError(_DECLARATION)

@activity.defn(name="verify_reviewer")
def verify_reviewer(input: ReviewerClaim) -> ReviewerVerdict:
    """Check a decision's reviewer attestation and the reviewer list; the verified identity or why not."""
    raise NotImplementedError(_DECLARATION)

# ---- ReconciliationSweepWorkflow (activities/reconcile_sweep.py)

@activity.defn(name="list_non_primary")
def list_non_primary(input: NonPrimaryPageInput) -> NonPrimaryPage:
    """One page of a data store's non-primary image sets."""
    raise NotImplementedError(_DECLARATION)

# ---- IngestWorkflow

@activity.defn(name="write_ingest_manifest")
def write_ingest_manifest(input: IngestManifestInput) -> IngestManifest:
    """Write buffered arrivals as the next flush's source manifest (activities/ingest.py)."""
    raise NotImplementedError(_DECLARATION)

# ---- RollbackWorkflow

@activity.defn(name="plan_rollback")
def plan_rollback(input: RollbackInput) -> RollbackPlan:
    """Which image sets a finished migration created and may delete, and which it must keep (activities/rollback.py)."""
    raise NotImplementedError(_DECLARATION)

@activity.defn(name="delete_image_sets")
def delete_image_sets(input: DeleteChunk) -> DeleteOutcome:
    """DeleteImageSet for one chunk of a rollback plan; already deleted sets count as done."""
    raise NotImplementedError(_DECLARATION)

@activity.defn(name="record_rollback")
def record_rollback(input: RecordInput) -> str:
    """Write the rollback's record next to the migration's report and note it in report.json."""
    raise NotImplementedError(_DECLARATION)

# ---- VerifyWorkflow

@activity.defn(name="verify_migration")
def verify_migration(input: VerifyInput) -> VerifyResult:
    """Check a finished migration's imports against HealthImaging (activities/verify.py)."""
    raise NotImplementedError(_DECLARATION)

@activity.defn(name="verify_source")
def verify_source(input: SourceVerifyInput) -> VerifyResult:
    """Check a bare source (an S3 prefix) against a data store, without a migration (activities/verify.py)."""
    raise NotImplementedError(_DECLARATION)

@activity.defn(name="check_verify_target")
def check_verify_target(input: SourceVerifyInput) -> bool:
    """Refuse unknown attribute keywords and an unreadable data store before a source is pulled (activities/verify.py)."""
    raise NotImplementedError(_DECLARATION)

@activity.defn(name="verify_listed_source")
def verify_listed_source(input: SourceVerifyInput) -> VerifyResult:
    """Check a PACS by its QIDO-RS / C-FIND listing against a data store, nothing pulled (activities/verify.py)."""
    raise NotImplementedError(_DECLARATION)

@activity.defn(name="verify_pulled_source")
def verify_pulled_source(input: PulledSourceInput) -> VerifyResult:
    """Check a connector source, pulled into its landing prefix, against a data store (activities/verify.py)."""
    raise NotImplementedError(_DECLARATION)
