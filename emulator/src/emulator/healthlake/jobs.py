"""Running FHIR import jobs: SUBMITTED → IN_PROGRESS → COMPLETED | COMPLETED_WITH_ERRORS | FAILED.

One scheduler thread; jobs of one data store run one at a time in submission order (HealthLake queues them FIFO),
jobs of different data stores run in parallel. Phases follow the shared job clock (``--clock``,
``--submitted-seconds``, ``--in-progress-seconds``), like HealthImaging jobs. A job:

1. checks the output bucket (HeadBucket), lists the input (the single object the S3Uri names, or every object
   under it as a folder), and streams each object line by line, validating every non-blank line at the job's
   validation level;
2. waits until the clock lets it leave IN_PROGRESS;
3. stores the accepted resources together with its output documents in one transaction, then PUTs
   ``manifest.json`` and the SUCCESS/FAILURE NDJSON files (SSE-KMS with the job's key) and finishes.

A job found IN_PROGRESS at start-up is re-run: step 1 is read-only and step 3 is atomic; if step 3 had committed,
only the PUTs are redone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from emulator.config import Settings
from emulator.healthlake.fhir import Issue, check_resource, has_errors, operation_outcome, parse_json
from emulator.healthlake.models import Accepted, FhirImportJob, HealthLakeBackend
from emulator.jobrunner import ClockedJobRunner, JobFailed, error_code
from emulator.medicalimaging.s3io import S3Object, folder_prefix, list_objects, make_s3_client, split_s3_uri

log = logging.getLogger("emulator.healthlake")

MB = 1_000_000
CHUNK = 1024 * 1024


@dataclass
class FileResult:
    """Outcome of one input object."""

    key: str
    rel: str  # output file name below SUCCESS/ and FAILURE/
    size: int
    accepted: list[Accepted] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    scanned: int = 0
    read_error: bool = False


def iter_lines(body: Any, max_line: int) -> Iterator[tuple[int, bytes | None]]:
    """``(line_number, bytes)`` of each line of a streaming body; ``None`` for a line longer than ``max_line``.

    An over-long line is skipped without being held in memory.
    """
    pending = bytearray()
    number = 1
    oversized = False
    while True:
        chunk = body.read(CHUNK)
        if not chunk:
            break
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            piece = chunk[start:] if nl < 0 else chunk[start:nl]
            if not oversized:
                pending += piece
                if len(pending) > max_line:
                    oversized = True
                    pending.clear()
            if nl < 0:
                break
            yield number, (None if oversized else bytes(pending))
            number += 1
            pending.clear()
            oversized = False
            start = nl + 1
    if pending or oversized:
        yield number, (None if oversized else bytes(pending))


class FhirImportRunner(ClockedJobRunner[HealthLakeBackend]):
    log = log  # the shared machinery logs under this module's logger, as before
    scheduler_thread_name = "healthlake-jobs"
    job_thread_prefix = "hl-job-"
    job_label = "FHIR import job"
    scheduler_error = "HealthLake job scheduler pass failed"
    idle_wait = 0.5

    def __init__(self, backend: HealthLakeBackend, settings: Settings) -> None:
        super().__init__(backend)
        self.settings = settings
        self.s3 = make_s3_client(settings.region, pool=8)

    # ---- scheduling

    def _schedule(self) -> bool:
        waiting = False
        busy: set[str] = set()
        for job in self.backend.unfinished_jobs():  # in submission order
            if job.status == "IN_PROGRESS":
                busy.add(job.datastore_id)
                if job.id not in self._active:
                    self._spawn(job.id)  # e.g. resumed after a restart
                continue
            waiting = True
            if job.datastore_id in busy or not self.backend.gate_open(job):
                busy.add(job.datastore_id)  # FIFO: later jobs of this data store wait behind this one
                continue
            busy.add(job.datastore_id)
            if self.backend.mark_in_progress(job.id):
                log.info("FHIR import job %s IN_PROGRESS", job.id)
                self._spawn(job.id)
        return waiting or bool(self._active)

    # ---- one job

    def _fail_crashed(self, job_id: str, message: str) -> None:
        self.backend.finish_job(job_id, "FAILED", message)

    def _run_job(self, job_id: str) -> None:
        job = self.backend.job(job_id)
        if job is None:
            return
        if not job.applied:
            started = time.monotonic()
            submitted = job
            try:
                results = self._read_all(job)
            except JobFailed as exc:
                self._fail(job, str(exc))
                return
            if not self._wait_gate(job_id):
                return
            seconds = max(time.monotonic() - started, 1e-6)
            accepted = [a for r in results for a in r.accepted]
            if not self.backend.apply_import(job_id, accepted, lambda v: self._outputs(submitted, results, v, seconds)):
                return
            job = self.backend.job(job_id)
            if job is None:
                return
        assert job.outputs is not None
        try:
            self._write_outputs(job, job.outputs)
        except (ClientError, BotoCoreError) as exc:
            self.backend.finish_job(job_id, "FAILED",
                                    f"Unable to write results to the output S3Uri: {error_code(exc)}")
            return
        status = job.final_status or "COMPLETED"
        self.backend.finish_job(job_id, status, None)
        log.info("FHIR import job %s %s (%s resources imported)", job_id, status,
                 job.progress.get("TotalNumberOfResourcesImported"))

    def _fail(self, job: FhirImportJob, message: str) -> None:
        manifest = self._manifest(job, [], 0)
        with contextlib.suppress(ClientError, BotoCoreError):  # the output location may be what is broken
            self._write_outputs(job, {"manifest.json": json.dumps(manifest, indent=2)})
        self.backend.finish_job(job.id, "FAILED", message, _progress([], 0))
        log.info("FHIR import job %s FAILED: %s", job.id, message)

    def _read_all(self, job: FhirImportJob) -> list[FileResult]:
        out_bucket, _ = split_s3_uri(job.output_uri)
        try:
            self.s3.head_bucket(Bucket=out_bucket)
        except (ClientError, BotoCoreError) as exc:
            raise JobFailed(f"Unable to access the output S3 bucket: {error_code(exc)}") from None
        bucket, prefix = split_s3_uri(job.input_uri)
        try:
            objects, base = self._input_objects(bucket, prefix)
        except (ClientError, BotoCoreError) as exc:
            raise JobFailed(f"Unable to list the input S3Uri: {error_code(exc)}") from None
        if not objects:
            raise JobFailed("No files were found at the input S3Uri")
        results: list[FileResult] = []
        started = time.monotonic()
        for obj in objects:
            if self._stop.is_set():
                raise RuntimeError("shutting down")
            results.append(self._read_file(job, bucket, obj, base))
            self.backend.update_progress(job.id, _progress(results, time.monotonic() - started))
        return results

    def _input_objects(self, bucket: str, prefix: str) -> tuple[list[S3Object], str]:
        """The S3Uri names one object, or a folder (every object below it, recursively)."""
        if prefix and not prefix.endswith("/"):
            objects, _ = list_objects(self.s3, bucket, prefix)
            exact = [o for o in objects if o.key == prefix]
            if exact:
                return exact, prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
        folder = folder_prefix(prefix)
        objects, _ = list_objects(self.s3, bucket, folder)
        return sorted(objects, key=lambda o: o.key), folder

    def _read_file(self, job: FhirImportJob, bucket: str, obj: S3Object, base: str) -> FileResult:
        rel = obj.key[len(base):] or obj.key.rsplit("/", 1)[-1]
        result = FileResult(obj.key, rel if rel.endswith(".ndjson") else rel + ".ndjson", obj.size)
        try:
            body = self.s3.get_object(Bucket=bucket, Key=obj.key)["Body"]
            for number, raw in iter_lines(body, self.settings.healthlake_max_resource_bytes):
                if raw is not None and not raw.strip():
                    continue  # blank lines (e.g. a trailing newline) are not resources
                result.scanned += 1
                self._check_line(job, result, number, raw)
        except (ClientError, BotoCoreError) as exc:
            result.read_error = True
            result.failures.append({"file": obj.key, "errorType": "CustomerError",
                                    "operationOutcome": operation_outcome([Issue(
                                        "error", "exception", f"Unable to read the file: {error_code(exc)}")])})
        return result

    def _check_line(self, job: FhirImportJob, result: FileResult, number: int, raw: bytes | None) -> None:
        doc: Any = None
        if raw is None:
            issues = [Issue("error", "too-long", "Resource exceeds the maximum size of "
                                                 f"{self.settings.healthlake_max_resource_bytes} bytes")]
        else:
            doc, issues = parse_json(raw)
            if not issues:
                issues = check_resource(doc, job.validation_level)
        if not has_errors(issues):
            result.accepted.append(Accepted(result.key, number, doc["resourceType"], doc["id"], doc))
            return
        line: dict[str, Any] = {"file": result.key, "lineNumber": number}
        if isinstance(doc, dict):
            if isinstance(doc.get("resourceType"), str) and len(doc["resourceType"]) <= 64:
                line["resourceType"] = doc["resourceType"]
            if isinstance(doc.get("id"), str) and len(doc["id"]) <= 64:
                line["id"] = doc["id"]
        line["errorType"] = "CustomerError"
        line["operationOutcome"] = operation_outcome(issues)
        result.failures.append(line)

    # ---- outputs

    def _manifest(self, job: FhirImportJob, results: list[FileResult], imported_bytes: int) -> dict[str, Any]:
        folder = job.output_folder
        return {
            "inputDataConfig": {"s3Uri": job.input_uri},
            "outputDataConfig": {"s3Uri": folder, "encryptionKeyID": job.kms_key_id},
            "successOutput": {"successOutputS3Uri": folder + "SUCCESS/"},
            "failureOutput": {"failureOutputS3Uri": folder + "FAILURE/"},
            "numberOfScannedFiles": len(results),
            "numberOfFilesImported": sum(1 for r in results if r.accepted),
            "sizeOfScannedFilesInMB": round(sum(r.size for r in results) / MB, 6),
            "sizeOfDataImportedSuccessfullyInMB": round(imported_bytes / MB, 6),
            "numberOfResourcesScanned": sum(r.scanned for r in results),
            "numberOfResourcesImportedSuccessfully": sum(len(r.accepted) for r in results),
            "numberOfResourcesWithCustomerError": sum(len(r.failures) - r.read_error for r in results),
            "numberOfResourcesWithServerError": 0,
        }

    def _outputs(self, job: FhirImportJob, results: list[FileResult], versions: list[int],
                 seconds: float) -> tuple[dict[str, str], dict[str, Any], str]:
        """Output documents, final progress report and final status (called inside the apply transaction)."""
        outputs: dict[str, str] = {}
        it = iter(versions)
        imported_bytes = 0
        for r in results:
            lines = []
            for a in r.accepted:
                lines.append(json.dumps({"file": r.key, "lineNumber": a.line, "resourceType": a.resource_type,
                                         "id": a.id, "versionId": str(next(it))}, separators=(",", ":")))
                imported_bytes += len(json.dumps(a.doc, separators=(",", ":")).encode())
            if lines:
                outputs[f"SUCCESS/{r.rel}"] = "\n".join(lines) + "\n"
            if r.failures:
                outputs[f"FAILURE/{r.rel}"] = "\n".join(json.dumps(f, separators=(",", ":"))
                                                       for f in r.failures) + "\n"
        outputs["manifest.json"] = json.dumps(self._manifest(job, results, imported_bytes), indent=2)
        errors = any(r.failures for r in results)
        return outputs, _progress(results, seconds), "COMPLETED_WITH_ERRORS" if errors else "COMPLETED"

    def _write_outputs(self, job: FhirImportJob, outputs: dict[str, str]) -> None:
        bucket, prefix = split_s3_uri(job.output_folder)
        for name, body in sorted(outputs.items()):
            content_type = "application/json" if name.endswith(".json") else "application/fhir+ndjson"
            # Outputs may hold resource ids: encrypted with the job's key, as HealthLake requires.
            self.s3.put_object(Bucket=bucket, Key=prefix + name, Body=body.encode(), ContentType=content_type,
                               ServerSideEncryption="aws:kms", SSEKMSKeyId=job.kms_key_id)


def _progress(results: list[FileResult], seconds: float) -> dict[str, Any]:
    """``JobProgressReport`` members."""
    size_mb = sum(r.size for r in results) / MB
    return {
        "TotalNumberOfScannedFiles": len(results),
        "TotalSizeOfScannedFilesInMB": round(size_mb, 6),
        "TotalNumberOfImportedFiles": sum(1 for r in results if r.accepted),
        "TotalNumberOfResourcesScanned": sum(r.scanned for r in results),
        "TotalNumberOfResourcesImported": sum(len(r.accepted) for r in results),
        "TotalNumberOfResourcesWithCustomerError": sum(len(r.failures) - r.read_error for r in results),
        "TotalNumberOfFilesReadWithCustomerError": sum(1 for r in results if r.read_error),
        "Throughput": round(size_mb / seconds, 6) if seconds > 0 else 0.0,
    }
