"""Running import jobs: SUBMITTED → IN_PROGRESS → COMPLETED | FAILED, on the job clock.

A scheduler thread moves SUBMITTED jobs to IN_PROGRESS when the clock allows and a run slot is free, and starts
one worker thread per IN_PROGRESS job. The worker:

1. lists ``inputS3Uri`` (ListObjectsV2 pages) and reads every object exactly once (one GET, no HEAD) on a shared
   thread pool, parsing each from memory with pydicom and storing it content-addressed;
2. waits until the job clock lets it leave IN_PROGRESS (so tests can hold a job there);
3. applies the result in one SQLite transaction (image sets + the output documents), then PUTs the four output
   objects and marks the job COMPLETED.

A job found IN_PROGRESS at start-up (the server died mid-job) is simply run again: step 1 is read-only, image-set
ids are deterministic, and step 3 is atomic, so a re-run is idempotent. If the crash came after step 3's
transaction, only the PUTs and the final status are redone.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from emulator.config import Settings
from emulator.errors import ServiceQuotaExceededException
from emulator.faults import FaultInjector
from emulator.jobrunner import ClockedJobRunner, JobFailed, error_code
from emulator.medicalimaging.dicom import InstanceRejected, parse_instance
from emulator.medicalimaging.models import MedicalImagingBackend
from emulator.medicalimaging.records import FileOutcome, ImportJob
from emulator.medicalimaging.s3io import (
    ObjectReader,
    S3Object,
    count_folders,
    folder_prefix,
    list_objects,
    make_s3_client,
    split_s3_uri,
)
from emulator.store import Store

log = logging.getLogger("emulator.jobs")


class JobRunner(ClockedJobRunner[MedicalImagingBackend]):
    log = log  # the shared machinery logs under this module's logger, as before
    scheduler_thread_name = "job-scheduler"
    job_thread_prefix = "job-"
    job_label = "job"
    scheduler_error = "job scheduler pass failed"
    idle_wait = 1.0

    def __init__(self, backend: MedicalImagingBackend, settings: Settings, store: Store,
                 faults: FaultInjector | None = None) -> None:
        super().__init__(backend)
        self.faults = faults or FaultInjector()  # injected job / per-file faults (emulator/faults.py)
        self.settings = settings
        self.store = store
        self.s3 = make_s3_client(settings.region, pool=settings.threads + 8)
        self.reader = ObjectReader(self.s3, pool=settings.threads + 8)
        self._working = 0
        self._pool = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="import-io")

    # ---- lifecycle

    def _release_workers(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def wait_for(self, job_id: str, statuses: set[str], timeout: float) -> ImportJob | None:
        """Block until the job reaches one of ``statuses`` (admin helper); returns the job."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.backend.job(job_id)
            if job is None or job.status in statuses or time.monotonic() >= deadline:
                return job
            with self.cond:
                self.cond.wait(timeout=min(0.05, max(0.0, deadline - time.monotonic())))

    # ---- quota checks at submit (need S3, so they live here rather than in models)

    def check_input_quotas(self, input_uri: str) -> None:
        """Raise ServiceQuotaExceededException if the input prefix is over a per-job quota."""
        s = self.settings
        bucket, prefix = split_s3_uri(input_uri)
        prefix = folder_prefix(prefix)
        try:
            objects, _ = list_objects(self.s3, bucket, prefix)
        except (ClientError, BotoCoreError):
            return  # unreadable input is the job's failure to report, not the submit call's
        total = sum(o.size for o in objects)
        if len(objects) > s.max_files_per_job:
            raise ServiceQuotaExceededException(
                f"The input contains {len(objects)} files; the limit per import job is {s.max_files_per_job}")
        if total > s.max_bytes_per_job:
            raise ServiceQuotaExceededException(
                f"The input contains {total} bytes; the limit per import job is {s.max_bytes_per_job} bytes")
        biggest = max(objects, key=lambda o: o.size, default=None)
        if biggest is not None and biggest.size > s.max_file_bytes:
            raise ServiceQuotaExceededException(
                f"An input file is {biggest.size} bytes; the limit per file is {s.max_file_bytes} bytes")
        folders = count_folders(objects, prefix)
        if folders > s.max_nested_folders:
            raise ServiceQuotaExceededException(
                f"The input contains {folders} nested folders; the limit per import job is {s.max_nested_folders}")

    # ---- scheduling

    def _schedule(self) -> bool:
        waiting = False
        for job in self.backend.unfinished_jobs():
            if job.id in self._active:
                continue
            if job.status == "SUBMITTED":
                if self._working >= self.settings.max_running_jobs or not self.backend.gate_open(job):
                    waiting = True
                    continue
                if not self.backend.mark_in_progress(job.id):
                    continue
                log.info("job %s IN_PROGRESS", job.id)
            self._spawn(job.id)
        return waiting

    # ---- one job

    def _fail_crashed(self, job_id: str, message: str) -> None:
        self.backend.finish_job(job_id, "FAILED", message, None)

    def _run_job(self, job_id: str) -> None:
        job = self.backend.job(job_id)
        if job is None:
            return
        outputs = job.outputs if job.applied else None
        stats: dict[str, Any] = dict(job.stats or {})
        if outputs is None:
            started = time.perf_counter()
            with self.cond:
                self._working += 1
            try:
                outcomes, stats = self._read_all(job)
            except JobFailed as exc:
                self._fail(job, str(exc), stats)
                return
            finally:
                with self.cond:
                    self._working -= 1
                    self.cond.notify_all()
            injected = self.faults.job_failure(job)
            if injected is not None:
                # An injected whole-job failure: every file is reported as a server error, outputs still written.
                for o in outcomes:
                    o.parsed, o.server_error, o.error = None, True, injected
                self._fail(job, injected, stats, outcomes)
                return
            if not self._wait_gate(job_id):
                return
            t = time.perf_counter()
            outputs = self.backend.apply_import(job_id, outcomes, stats)
            if outputs is None:
                return  # job vanished (reset)
            stats["apply_seconds"] = round(time.perf_counter() - t, 6)
            stats["work_seconds"] = round(time.perf_counter() - started, 6)
        t = time.perf_counter()
        delay = self.faults.manifest_delay(job)
        delayed: dict[str, str] = {}
        if delay > 0:
            # Injected: the job COMPLETES first, the manifest shows up `delay` seconds later.
            outputs = dict(outputs)
            delayed = {"job-output-manifest.json": outputs.pop("job-output-manifest.json")}
        try:
            self._write_outputs(job, outputs)
        except (ClientError, BotoCoreError) as exc:
            self.backend.finish_job(job_id, "FAILED",
                                    f"Unable to write results to outputS3Uri: {error_code(exc)}", stats)
            return
        stats["write_seconds"] = round(time.perf_counter() - t, 6)
        stats["s3_put_requests"] = len(outputs)
        self.backend.finish_job(job_id, "COMPLETED", None, stats)
        log.info("job %s COMPLETED (%s files)", job_id, stats.get("files"))
        if delayed:
            timer = threading.Timer(delay, self._write_delayed, args=(job, delayed))
            timer.daemon = True
            timer.start()

    def _write_delayed(self, job: ImportJob, outputs: dict[str, str]) -> None:
        try:
            self._write_outputs(job, outputs)
        except (ClientError, BotoCoreError) as exc:
            log.warning("job %s: delayed manifest write failed: %s", job.id, error_code(exc))

    def _fail(self, job: ImportJob, message: str, stats: dict[str, Any],
              outcomes: list[FileOutcome] | None = None) -> None:
        outputs = self.backend.failure_outputs(job, outcomes or [])
        with contextlib.suppress(ClientError, BotoCoreError):  # the output location may be what is broken
            self._write_outputs(job, outputs)
        self.backend.finish_job(job.id, "FAILED", message, stats, outputs)
        log.info("job %s FAILED: %s", job.id, message)

    def _read_all(self, job: ImportJob) -> tuple[list[FileOutcome], dict[str, Any]]:
        wall = time.perf_counter()
        out_bucket, _ = split_s3_uri(job.output_uri)
        try:
            self.s3.head_bucket(Bucket=out_bucket)
        except (ClientError, BotoCoreError) as exc:
            raise JobFailed(f"Unable to access outputS3Uri bucket {out_bucket}: {error_code(exc)}") from None
        bucket, prefix = split_s3_uri(job.input_uri)
        prefix = folder_prefix(prefix)
        t = time.perf_counter()
        try:
            objects, list_requests = list_objects(self.s3, bucket, prefix)
        except (ClientError, BotoCoreError) as exc:
            raise JobFailed(f"Unable to list inputS3Uri: {error_code(exc)}") from None
        list_seconds = time.perf_counter() - t
        if not objects:
            raise JobFailed("No files were found under inputS3Uri")
        outcomes = list(self._pool.map(lambda o: self._read_one(bucket, o, job), objects))
        stats: dict[str, Any] = {
            "files": len(objects),
            "bytes": sum(o.size for o in objects),
            "threads": self.settings.threads,
            "s3_list_requests": list_requests,
            "s3_get_requests": sum(int(o.timings.get("gets", 0)) for o in outcomes),
            "list_seconds": round(list_seconds, 6),
            "read_seconds": round(sum(o.timings.get("read", 0.0) for o in outcomes), 6),
            "parse_seconds": round(sum(o.timings.get("parse", 0.0) for o in outcomes), 6),
            "store_seconds": round(sum(o.timings.get("store", 0.0) for o in outcomes), 6),
            "read_wall_seconds": round(time.perf_counter() - wall, 6),
            "imported": sum(1 for o in outcomes if o.parsed is not None),
            "rejected": sum(1 for o in outcomes if o.parsed is None),
        }
        return outcomes, stats

    def _read_one(self, bucket: str, obj: S3Object, job: ImportJob | None = None) -> FileOutcome:
        outcome = FileOutcome(key=obj.key, size=obj.size)
        if job is not None:
            injected = self.faults.file_error(job, obj.key)
            if injected is not None:
                outcome.error, outcome.server_error = injected, True
                return outcome
        if obj.size > self.settings.max_file_bytes:
            outcome.error = f"File size {obj.size} exceeds the maximum of {self.settings.max_file_bytes} bytes"
            return outcome
        t0 = time.perf_counter()
        gets = 1
        try:
            data, gets = self.reader.get(bucket, obj.key)
        except ClientError as exc:
            outcome.timings = {"read": time.perf_counter() - t0, "gets": 1}
            outcome.error = f"Unable to read the input file: {error_code(exc)}"
            return outcome
        except BotoCoreError as exc:
            outcome.timings = {"read": time.perf_counter() - t0, "gets": 1}
            outcome.error = f"Unable to read the input file: {type(exc).__name__}"
            outcome.server_error = True
            return outcome
        t1 = time.perf_counter()
        strict = job is not None and self.faults.strict_trailing_padding(job, obj.key)
        try:
            outcome.parsed = parse_instance(data, strict_trailing_padding=strict)
        except InstanceRejected as exc:
            outcome.error = str(exc)
        except Exception as exc:  # never let one odd file take the job down
            outcome.error = f"Input file could not be parsed as DICOM ({type(exc).__name__})"
        t2 = time.perf_counter()
        if outcome.parsed is not None and self.settings.store_instances:
            self.store.put_blob(data, outcome.parsed.sha256)
        t3 = time.perf_counter()
        outcome.timings = {"read": t1 - t0, "parse": t2 - t1, "store": t3 - t2, "gets": gets}
        if job is not None:
            if outcome.parsed is not None:
                outcome.warnings = self.faults.file_warnings(job, obj.key)
            self.faults.file_read(job)  # may end the process (injected crash)
        return outcome

    def _write_outputs(self, job: ImportJob, outputs: dict[str, str]) -> None:
        bucket, prefix = split_s3_uri(job.resolved_output_uri)
        for name, body in outputs.items():
            content_type = "application/json" if name.endswith(".json") else "application/x-ndjson"
            self.s3.put_object(Bucket=bucket, Key=prefix + name, Body=body.encode(), ContentType=content_type)
