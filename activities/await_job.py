"""await completion: poll ``GetDICOMImportJob`` until the job is COMPLETED or FAILED.

Polling is by activity retry (no history per poll): a running job raises a BENIGN error, which Temporal
retries after ``next_retry_delay`` without logging a warning each time.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from botocore.exceptions import ClientError
from temporalio import activity

from activities.errors import benign_retry, classify, poll_delay
from contracts.batch import ImportJobRef, JobOutcome
from contracts.errors import ErrorType

TERMINAL = {"COMPLETED", "FAILED"}


class AwaitActivities:
    def __init__(self, medical_imaging: Any, initial_delay: float = 1.0, max_delay: float = 30.0) -> None:
        self._mi = medical_imaging
        self._initial, self._max = initial_delay, max(initial_delay, max_delay)

    @activity.defn(name="await_import_job")
    def await_import_job(self, job: ImportJobRef) -> JobOutcome:
        try:
            props = self._mi.get_dicom_import_job(datastoreId=job.datastore_id, jobId=job.job_id)["jobProperties"]
        except ClientError as err:
            raise classify(err, f"polling import job {job.job_id}") from None
        status = props["jobStatus"]
        if status not in TERMINAL:
            raise benign_retry(f"import job {job.job_id} is {status}", ErrorType.JOB_STILL_RUNNING,
                               partial(poll_delay, initial=self._initial, maximum=self._max))
        output = props["outputS3Uri"]
        return JobOutcome(job_id=job.job_id, status=status, output_s3_uri=output if output.endswith("/") else output + "/",
                          message=props.get("message"))
