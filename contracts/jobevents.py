"""HealthImaging import-job events (EventBridge, source ``aws.medical-imaging``) as batch wake-ups.

An EventBridge rule sends the service's import-job events to an SQS queue; the worker's job-events listener
(`worker.jobevents`) parses each message with `parse_job_event` and signals `job_event(JobEvent)` to the
`ImportBatchWorkflow` that started the job. That batch is found without a lookup: every job himig starts writes
to ``<work>/<migration id>/import-output/batch-NNNNN[-pN]/`` (`contracts.layout`), and the event carries that
``outputS3Uri``, so the batch's workflow id ``<migration id>.batch-NNNNN`` follows from it (no visibility lag,
no history cost). The batch ignores an event whose job is not the one it waits on, and an event only wakes it:
it then polls GetDICOMImportJob at once and trusts only that answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from contracts.common import Closed
from contracts.layout import import_output_batch
from contracts.migration import DATASTORE_ID_PATTERN, batch_workflow_id

SOURCE = "aws.medical-imaging"
# The terminal detail-types of import-job events (research/healthimaging.md §4.2): only they wake a batch.
WAKING_DETAIL_TYPES = frozenset({"Import Job Completed", "Import Job Failed"})
TERMINAL_STATUSES = frozenset({"COMPLETED", "FAILED"})
# Job ids are 32 lowercase alphanumerics on AWS; accept a little more, but nothing that could break a
# visibility query (quotes, spaces) or carry free text.
JOB_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


# The EventBridge rule pattern deployed in front of the job-events queue.
RULE_PATTERN: dict[str, Any] = {"source": [SOURCE], "detail-type": sorted(WAKING_DETAIL_TYPES)}


class MalformedJobEvent(ValueError):
    """The message is not a usable import-job event; the reason names the field, never a value."""


class JobEvent(Closed):
    """Signal `job_event` of `ImportBatchWorkflow`: one import job reached (per the event) a status."""

    job_id: str = Field(pattern=JOB_ID_PATTERN)
    status: str = Field(pattern=r"^[A-Z_]{1,32}$")
    datastore_id: str | None = Field(None, pattern=DATASTORE_ID_PATTERN)


@dataclass
class ParsedJobEvent:
    event: JobEvent
    batch_workflow_id: str | None  # None: the job was not started by himig (its output is elsewhere)


def batch_of(output_s3_uri: str) -> str | None:
    """The `ImportBatchWorkflow` id that started a job writing to ``output_s3_uri``, or None."""
    found = import_output_batch(output_s3_uri)
    return batch_workflow_id(*found) if found else None


def parse_job_event(body: str) -> ParsedJobEvent | None:
    """The import-job event in one SQS message body, or None for an event that is not a waking job event.

    Raises:
        MalformedJobEvent: not JSON, not an EventBridge envelope, or a job event without a usable job id/status.
    """
    try:
        doc = json.loads(body)
    except ValueError:
        raise MalformedJobEvent("body is not JSON") from None
    if not isinstance(doc, dict) or "detail-type" not in doc:
        raise MalformedJobEvent("body is not an EventBridge event (no detail-type)")
    detail_type = doc.get("detail-type")
    # Checked for a string first: any JSON may arrive, and a list is not even hashable.
    if doc.get("source") != SOURCE or not isinstance(detail_type, str) or detail_type not in WAKING_DETAIL_TYPES:
        return None
    detail = doc.get("detail")
    if not isinstance(detail, dict):
        raise MalformedJobEvent("detail is not an object")
    job_id, status = detail.get("jobId"), detail.get("jobStatus")
    if not isinstance(job_id, str) or not re.match(JOB_ID_PATTERN, job_id):
        raise MalformedJobEvent("detail.jobId is missing or not a job id")
    if not isinstance(status, str) or status not in TERMINAL_STATUSES:
        raise MalformedJobEvent("detail.jobStatus is missing or not COMPLETED/FAILED")
    datastore = detail.get("datastoreId")
    output = detail.get("outputS3Uri")
    event = JobEvent(job_id=job_id, status=status,
                     datastore_id=datastore if isinstance(datastore, str) and re.match(DATASTORE_ID_PATTERN, datastore)
                     else None)
    return ParsedJobEvent(event, batch_of(output) if isinstance(output, str) else None)
