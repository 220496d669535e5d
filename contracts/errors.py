"""The `ApplicationError` types of the service: one vocabulary for raising, catching and retry policies.

Activities raise `ApplicationError(..., type=ErrorType.X)` (activities/errors.py turns AWS ``ClientError`` codes
into the same names), workflows compare ``err.type`` with these names, and the retry policies in
workflows/policies.py list `FATAL` as their non-retryable types. The values are part of recorded histories and of
the reports (failure messages carry them): never change one, only add.
"""

from __future__ import annotations

from enum import StrEnum

import pydantic


class ErrorType(StrEnum):
    """Every ``ApplicationError.type`` the service raises or treats specially.

    The first group are AWS error codes, kept as AWS spells them: `activities.errors.classify` raises an AWS
    ``ClientError`` under its own code, so these names reach Temporal unchanged. The rest are ours.
    """

    # ---- AWS codes waited out, never failed on (`BACKOFF`) ----------------------------------------------------
    THROTTLING = "ThrottlingException"
    """Request rate exceeded (HealthImaging: 1 TPS for StartDICOMImportJob, 0.25 TPS for mutations); also used
    for an HTTP 429 from the DICOMweb or FHIR ``$validate`` endpoints."""
    SERVICE_QUOTA_EXCEEDED = "ServiceQuotaExceededException"
    """A quota such as HealthImaging's 100 concurrent import jobs: waits until a job ends."""
    TOO_MANY_REQUESTS = "TooManyRequestsException"
    """Throttling, as some services spell it."""
    SLOW_DOWN = "SlowDown"
    """S3 throttling."""
    REQUEST_LIMIT_EXCEEDED = "RequestLimitExceeded"
    """Throttling, as some services spell it."""
    INTERNAL_SERVER = "InternalServerException"
    """A transient fault on the service side."""
    SERVICE_UNAVAILABLE = "ServiceUnavailable"
    """A transient outage on the service side."""

    # ---- AWS codes where a retry cannot help (`FATAL`) ---------------------------------------------------------
    VALIDATION_EXCEPTION = "ValidationException"
    """The request itself is wrong (bad parameter, bad ARN)."""
    RESOURCE_NOT_FOUND = "ResourceNotFoundException"
    """The data store, image set or job does not exist."""
    ACCESS_DENIED = "AccessDeniedException"
    """The worker's or the data-access role's permissions are missing."""
    CONFLICT = "ConflictException"
    """A conflicting request; reconciliation mutations turn it into `IMAGE_SET_BUSY` and wait instead."""
    NO_SUCH_BUCKET = "NoSuchBucket"
    """An S3 bucket named in the input does not exist."""

    # ---- ours: a retry cannot help (`FATAL`, or raised non-retryable) ------------------------------------------
    VALIDATION_ERROR = "ValidationError"
    """Input that does not validate: the type Temporal gives a pydantic ``ValidationError`` escaping an activity
    (e.g. a payload the activity cannot decode), and reconciliation's "the image set has no series"."""
    EMPTY_BATCH = "EmptyBatch"
    """start_import_job: a planned batch has no files to stage."""
    IMAGE_SET_MUTATION_FAILED = "ImageSetMutationFailed"
    """await_image_set: a copy, update or delete of an image set ended ``*_FAILED``."""
    PROMOTION_NOT_PRIMARY = "PromotionNotPrimary"
    """ReconciliationWorkflow: the promoted copy is not primary, so the non-primary source set is kept."""
    INVALID_SOURCE_MANIFEST = "InvalidSourceManifest"
    """receive_inventory: the source manifest cannot be read as a list of objects under the source prefix."""
    INVALID_SOURCE_CONNECTOR = "InvalidSourceConnector"
    """receive_inventory: a source connector is misconfigured (origin not allowed, root not allowed, bad auth)."""
    INVALID_MIGRATION_ID = "InvalidMigrationId"
    """MigrationWorkflow: its workflow id cannot name S3 keys and child workflow ids."""
    INVALID_INGEST_ID = "InvalidIngestId"
    """IngestWorkflow: its workflow id cannot name the migrations it flushes into."""
    CALLER_SET_INTERNAL_STATE = "CallerSetInternalState"
    """A workflow input carries ``continued`` (state only the workflow writes when it continues as new) in a run
    that no run of the workflow continued into: a caller set it, and the workflow refuses to start."""
    MISSING_BATCH_PLAN = "MissingBatchPlan"
    """start_import_job / record_failed_batch: a planned batch's manifest or plan is not in the work prefix."""
    DECISION_REJECTED = "DecisionRejected"
    """ReconciliationWorkflow's ``decide`` update: a second decision accepted by validation in the same task."""
    PLAN_REFUSED = "PlanRefused"
    """adopt_plan (a migration started from a plan): the plan is not finished, or was made for another source,
    data store or validation level (raised non-retryable)."""
    PLAN_STALE = "PlanStale"
    """adopt_plan: source objects were added, removed or rewritten since the plan listed them (raised
    non-retryable; plan again)."""
    ROLLBACK_REFUSED = "RollbackRefused"
    """plan_rollback / delete_image_sets: the migration has no report, or its report or plan names another data
    store (raised non-retryable by the activity)."""

    # ---- ours: transient, retried by the stage's retry policy ------------------------------------------------
    JOB_STILL_RUNNING = "JobStillRunning"
    """await_import_job / await_fhir_import: the job has not ended; each retry is the next poll (BENIGN)."""
    MANIFEST_NOT_YET_VISIBLE = "ManifestNotYetVisible"
    """review_manifest / review_fhir_import: a job's output appears shortly after it ends (BENIGN)."""
    IMAGE_SET_BUSY = "ImageSetBusy"
    """Reconciliation mutations: the image set is locked or its version is stale; retried after a short wait."""
    IMAGE_SET_NOT_READY = "ImageSetNotReady"
    """await_image_set: the set is still LOCKED by a mutation; polled by retry (BENIGN)."""
    JOB_SLOTS_FULL = "JobSlotsFull"
    """start_import_job: the data store already runs its cap of import jobs; asked again after a wait (BENIGN)."""
    DICOMWEB_UNAVAILABLE = "DicomWebUnavailable"
    """review_manifest's DICOMweb spot check: a connection error or HTTP 5xx (BENIGN back-off)."""
    HEALTHLAKE_UNAVAILABLE = "HealthLakeUnavailable"
    """start_fhir_import: HealthLake's ``$validate`` answered HTTP 5xx (BENIGN back-off)."""
    INPUT_WRITE_CONFLICT = "InputWriteConflict"
    """start_fhir_import: another attempt is writing the HealthLake import input; the retry reads it."""
    PUT_EVENTS_FAILED = "PutEventsFailed"
    """publish_escalation: EventBridge accepted the call but not the event."""
    CORRUPT_INVENTORY = "CorruptInventory"
    """receive_inventory: the inventory page a resumed listing continues from is empty (damaged work prefix)."""
    CORRUPT_UNIT_LIST = "CorruptUnitList"
    """receive_inventory (source connectors): a page of the unit list is shorter than the count says."""
    SOURCE_UNAVAILABLE = "SourceUnavailable"
    """receive_inventory (source connectors): the PACS or DICOMweb server cannot be reached."""


# Met by backing off, never by failing the batch (HealthImaging quotas: 1 TPS starts, 100 concurrent jobs).
BACKOFF: frozenset[ErrorType] = frozenset({
    ErrorType.THROTTLING, ErrorType.SERVICE_QUOTA_EXCEEDED, ErrorType.TOO_MANY_REQUESTS, ErrorType.SLOW_DOWN,
    ErrorType.REQUEST_LIMIT_EXCEEDED, ErrorType.INTERNAL_SERVER, ErrorType.SERVICE_UNAVAILABLE,
})

# A retry cannot help: the request or the data is wrong, or the resource does not exist. Every retry policy
# lists these as non-retryable, and an AWS error with one of these codes is raised non-retryable.
FATAL: frozenset[ErrorType] = frozenset({
    ErrorType.VALIDATION_EXCEPTION, ErrorType.RESOURCE_NOT_FOUND, ErrorType.ACCESS_DENIED, ErrorType.CONFLICT,
    ErrorType.NO_SUCH_BUCKET, ErrorType.VALIDATION_ERROR, ErrorType.EMPTY_BATCH,
    ErrorType.IMAGE_SET_MUTATION_FAILED, ErrorType.PROMOTION_NOT_PRIMARY, ErrorType.MISSING_BATCH_PLAN,
})


def describe_validation_error(err: pydantic.ValidationError) -> str:
    """Field locations and rules only: pydantic's own text echoes the input values, which may be patient data
    (or S3 keys naming patients). Use this, never ``str(err)``, wherever a validation error is logged or raised."""
    parts = []
    for e in err.errors(include_input=False, include_url=False, include_context=False):
        loc = ".".join(str(x) for x in e["loc"]) or "input"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)[:500]
