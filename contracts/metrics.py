"""The service's own metrics: one list of names, types, labels and meanings, used where each is emitted (workflows
through ``workflow.metric_meter()``, activities through ``activity.metric_meter()``, the worker through the
runtime's meter) and by the README's "Metrics" table (a test keeps them equal).

All of them appear on the Temporal SDK runtime's Prometheus endpoint (``HIMIG_METRICS_PORT``), next to the SDK's
own ``temporal_*`` metrics. The SDK adds ``namespace``, ``task_queue`` and ``workflow_type`` / ``activity_type`` to
what workflows and activities emit, and ``service_name`` to everything.

Label values come from small fixed sets (file states, job statuses, AWS operation names, activity types): never a
workflow id, a file key, a job id or anything derived from a file's content, which may be patient data.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


# Who emits a metric decides the labels the SDK adds to it (besides ``service_name``).
SDK_LABELS = {"workflow": ("namespace", "task_queue", "workflow_type"),
              "activity": ("namespace", "task_queue", "activity_type"), "worker": ()}


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Kind
    unit: str
    description: str
    labels: tuple[str, ...] = ()
    emitted_by: str = "worker"

    def all_labels(self) -> tuple[str, ...]:
        """Its own labels, then those the SDK adds (`SDK_LABELS`)."""
        return self.labels + SDK_LABELS[self.emitted_by]


FILES = Metric(
    "himig_files", Kind.COUNTER, "1",
    "Files by terminal state (label `state`), counted once per file per migration: by the migration workflow "
    "when its report is written (the report re-derives every file's state from the ledgers), never by an "
    "activity, so activity retries and continue-as-new do not count twice and replay is not counted. Equal "
    "to the report's `files_by_state` summed over migrations; a workflow task re-run after a worker died "
    "in it may count one migration again.",
    ("state",), "workflow")
BYTES_READ = Metric(
    "himig_bytes_read", Kind.COUNTER, "By",
    "Bytes of source objects read by header parsing (ranged GETs, tails included), as each parse attempt reads "
    "them: a retried page counts what its new attempt reads again.", (), "activity")
S3_REQUESTS = Metric(
    "himig_s3_requests", Kind.COUNTER, "1",
    "S3 requests sent by this worker's activities (source and work buckets) by operation (GetObject, "
    "PutObject, CopyObject, ListObjectsV2, ...): one per HTTP attempt, so a request botocore retried counts twice.",
    ("operation",))
IMPORT_JOBS = Metric(
    "himig_import_jobs", Kind.COUNTER, "1",
    "HealthImaging import jobs by status: `SUBMITTED` when a batch's job is started, `COMPLETED` / `FAILED` "
    "when it ends (counted by the batch workflow, once per job; a FAILED job split in two halves starts two more).",
    ("status",), "workflow")
THROTTLES = Metric(
    "himig_throttles", Kind.COUNTER, "1",
    "Throttling answers met (ThrottlingException, SlowDown, TooManyRequestsException, RequestLimitExceeded; "
    "HTTP 429 or 503 SlowDown), every attempt counted, including those botocore retried itself.",
    ("service", "operation"))
RECONCILIATIONS_PENDING = Metric(
    "himig_reconciliations_pending", Kind.GAUGE, "1",
    "Running reconciliation workflows on this task queue waiting for an operator's decision (`state` "
    "awaiting_decision or escalated), counted from Temporal's visibility by each worker every "
    "HIMIG_METRICS_POLL_SECONDS: every worker reports the same number (aggregate with max, not sum).",
    ("state",))
INGEST_BUFFER = Metric(
    "himig_ingest_buffer_depth", Kind.GAUGE, "1",
    "Objects an ingest workflow holds in its buffer, not yet flushed into a migration (set by the ingest "
    "workflow on each change, on the worker that ran it).", (), "workflow")
ACTIVITY_LATENCY = Metric(
    "himig_activity_latency", Kind.HISTOGRAM, "ms",
    "Duration of each activity attempt, by activity type (the stage) and `outcome`: completed, retry (a "
    "benign wait such as an import job still running or a throttle), cancelled, failed.",
    ("outcome",), "activity")
RECEIVED_INSTANCES = Metric(
    "himig_received_instances", Kind.COUNTER, "1",
    "C-STOREs the DICOM receiver answered, by `outcome`: `stored` (in S3 and handed to its ingest workflow, "
    "acknowledged) or the refusal code (`unreadable`, `truncated`, `sop_mismatch`, `missing_uid`, `not_stored`, "
    "`not_handed_over`, `shutting_down`; each also recorded under the work prefix's receiver/rejected/).",
    ("outcome",))
RECEIVER_ASSOCIATIONS_REJECTED = Metric(
    "himig_receiver_associations_rejected", Kind.COUNTER, "1",
    "Associations the DICOM receiver rejected, by `reason`: `calling_ae` (not in "
    "HIMIG_RECEIVER_ALLOWED_CALLING_AES), `called_ae` (not our AE title), `limit` (HIMIG_RECEIVER_MAX_ASSOCIATIONS "
    "reached).", ("reason",))

ALL = (FILES, BYTES_READ, S3_REQUESTS, IMPORT_JOBS, THROTTLES, RECONCILIATIONS_PENDING, INGEST_BUFFER,
       ACTIVITY_LATENCY, RECEIVED_INSTANCES, RECEIVER_ASSOCIATIONS_REJECTED)

# AWS error codes that mean "slow down" (counted by THROTTLES).
THROTTLE_CODES = frozenset({"ThrottlingException", "Throttling", "SlowDown", "TooManyRequestsException",
                            "RequestLimitExceeded", "ProvisionedThroughputExceededException"})
