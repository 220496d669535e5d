"""Machinery shared by the HealthImaging and HealthLake import-job runners.

Both services run jobs the same way: one scheduler thread polls the backend for unfinished jobs, moves SUBMITTED
jobs to IN_PROGRESS when the job clock (and the service's own rules) allow, and starts one worker thread per
IN_PROGRESS job, including jobs found IN_PROGRESS after a restart, which are simply run again. A worker waits on
the clock before it may leave IN_PROGRESS. What a service decides for itself (which job may start, what running
one means, how a crashed job is recorded) is left to the subclass.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Generic, Protocol, TypeVar

from botocore.exceptions import ClientError


class JobFailed(Exception):
    """The whole job fails (FAILED status) with this message."""


class JobBackend(Protocol):
    """What the shared machinery needs from a service backend."""

    def job(self, job_id: str) -> Any: ...

    def gate_open(self, job: Any) -> bool: ...


BackendT = TypeVar("BackendT", bound=JobBackend)


def error_code(exc: Exception) -> str:
    """The AWS error code of an S3 failure (or the exception's class name), safe to put in a job message."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "ClientError")
    return type(exc).__name__


class ClockedJobRunner(Generic[BackendT]):
    """Scheduler thread + one worker thread per IN_PROGRESS job; subclasses fill in the service-specific parts."""

    # Names and log texts differ per service (logs and thread dumps say which service a job belongs to).
    log: logging.Logger
    scheduler_thread_name: str
    job_thread_prefix: str
    job_label: str  # "job %s crashed" → "<job_label> %s crashed"
    scheduler_error: str
    idle_wait: float  # seconds the scheduler sleeps when nothing waits on the clock (a wake() cuts it short)

    def __init__(self, backend: BackendT) -> None:
        self.backend = backend
        self.cond = threading.Condition()
        self._stop = threading.Event()
        self._active: set[str] = set()
        self._thread = threading.Thread(target=self._loop, name=self.scheduler_thread_name, daemon=True)

    # ---- lifecycle

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake()
        self._release_workers()
        self._thread.join(timeout=5)

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def _release_workers(self) -> None:
        """Hook for ``stop``: free worker resources once the stop flag is set, before joining the scheduler."""

    # ---- scheduling

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                waiting = self._schedule()
            except Exception:
                self.log.exception(self.scheduler_error)
                waiting = True
            with self.cond:
                # Poll quickly only while some job waits on the clock; otherwise sleep until woken.
                self.cond.wait(timeout=0.05 if waiting else self.idle_wait)

    def _schedule(self) -> bool:
        """One scheduler pass: start what may start; True while some job waits on the clock."""
        raise NotImplementedError

    def _spawn(self, job_id: str) -> None:
        with self.cond:
            self._active.add(job_id)
        threading.Thread(target=self._run, args=(job_id,), name=f"{self.job_thread_prefix}{job_id[:8]}",
                         daemon=True).start()

    # ---- one job

    def _run(self, job_id: str) -> None:
        try:
            self._run_job(job_id)
        except Exception:
            if self._stop.is_set():
                return  # shutting down: leave the job IN_PROGRESS so the next start resumes it
            self.log.exception("%s %s crashed", self.job_label, job_id)
            self._fail_crashed(job_id, "Internal error while running the import job")
        finally:
            with self.cond:
                self._active.discard(job_id)
                self.cond.notify_all()

    def _run_job(self, job_id: str) -> None:
        raise NotImplementedError

    def _fail_crashed(self, job_id: str, message: str) -> None:
        """Record a job whose worker raised as FAILED with ``message``."""
        raise NotImplementedError

    def _wait_gate(self, job_id: str) -> bool:
        """Wait until the job clock lets the job leave its phase; False if the job vanished or we are stopping."""
        while not self._stop.is_set():
            job = self.backend.job(job_id)
            if job is None:
                return False
            if self.backend.gate_open(job):
                return True
            with self.cond:
                self.cond.wait(timeout=0.05)
        return False
