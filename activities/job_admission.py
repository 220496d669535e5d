"""Admission of new import jobs: how fast to call StartDICOMImportJob, and whether the data store has room.

**Pacing, learned from the service.** StartDICOMImportJob's rate is a per-account quota that AWS has published as
1 TPS and, in its newest table, 40 TPS (burst 80); accounts and regions differ. `StartPacer` is one token bucket per
worker process, shared by every activity thread: it starts at ``initial_rate``, adds ``increase`` per accepted start
(additive increase) up to ``max_rate``, and halves on a ThrottlingException (multiplicative decrease), never below
``min_rate``. A throttled start is retried by Temporal (benign back-off), never failed. Several workers each
converge on their share, as AIMD senders do.

**Room in the data store.** HealthImaging runs at most 100 import jobs at once per data store (20 in some regions).
`free_job_slot` counts the data store's SUBMITTED and IN_PROGRESS jobs (ListDICOMImportJobs) before a start and
answers a benign retry while ``cap`` are running, whoever started them: every migration, every ingest flush (they
import through the same activity) and jobs started by other tools. The count is the service's own, so the cap
holds across workers and processes; two starts racing for the last slot can overshoot it by the number of racing
workers, and the service's own limit then answers ServiceQuotaExceeded, which is retried the same way. A start
retried after a crash is never held back by its own job: a job with the batch's name already running is it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from activities.errors import benign_retry, error_code, poll_delay
from contracts.errors import ErrorType

OPEN_STATUSES = ("SUBMITTED", "IN_PROGRESS")


class StartPacer:
    def __init__(self, initial_rate: float = 1.0, max_rate: float = 40.0, min_rate: float = 0.2,
                 increase: float = 0.5, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not 0 < min_rate <= initial_rate <= max_rate:
            raise ValueError("need 0 < min_rate <= initial_rate <= max_rate")
        self.rate = initial_rate
        self.max_rate, self.min_rate, self.increase = max_rate, min_rate, increase
        self._clock, self._sleep = clock, sleep
        self._next = 0.0  # when the next start may go (clock time)
        self._lock = threading.Lock()

    def wait(self) -> float:
        """Block until this caller may start a job; returns how long it waited."""
        with self._lock:
            now = self._clock()
            at = max(now, self._next)
            self._next = at + 1.0 / self.rate
        if at > now:
            self._sleep(at - now)
        return at - now

    def accepted(self) -> None:
        with self._lock:
            self.rate = min(self.max_rate, self.rate + self.increase)

    def throttled(self) -> None:
        with self._lock:
            self.rate = max(self.min_rate, self.rate / 2)
            # Let the bucket drain: nobody starts for one interval at the new rate.
            self._next = max(self._next, self._clock() + 1.0 / self.rate)

    def call(self, start: Callable[[], Any]) -> Any:
        """``start()`` paced; its throttling answer teaches the pacer (and propagates for Temporal's retry)."""
        self.wait()
        try:
            result = start()
        except ClientError as err:
            if error_code(err) in (ErrorType.THROTTLING, ErrorType.TOO_MANY_REQUESTS):
                self.throttled()
            raise
        self.accepted()
        return result


def open_jobs(medical_imaging: Any, datastore_id: str) -> list[dict[str, Any]]:
    """The data store's SUBMITTED and IN_PROGRESS import jobs (every page)."""
    jobs: list[dict[str, Any]] = []
    for status in OPEN_STATUSES:
        pages = medical_imaging.get_paginator("list_dicom_import_jobs").paginate(
            datastoreId=datastore_id, jobStatus=status)
        jobs += [j for page in pages for j in page.get("jobSummaries", [])]
    return jobs


def free_job_slot(medical_imaging: Any, datastore_id: str, cap: int, job_name: str) -> None:
    """Return when a job may start in the data store (or the batch's own job already runs); else raise a benign
    retry, so Temporal asks again after a back-off, without a failure."""
    try:
        running = open_jobs(medical_imaging, datastore_id)
    except ClientError as err:
        if error_code(err) in (ErrorType.THROTTLING, ErrorType.TOO_MANY_REQUESTS):
            raise benign_retry(f"counting the data store's running jobs: {error_code(err)}", ErrorType.THROTTLING) \
                from None
        raise
    if any(j.get("jobName") == job_name for j in running):
        return  # a retried start: its job is running; starting it again answers that job (same clientToken)
    if len(running) >= cap:
        raise benign_retry(f"the data store runs {len(running)} import jobs (cap {cap}); waiting for a slot",
                           ErrorType.JOB_SLOTS_FULL, lambda attempt: poll_delay(attempt, 2.0, 60.0))
