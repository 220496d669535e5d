"""Import jobs: StartDICOMImportJob / GetDICOMImportJob / ListDICOMImportJobs state, the job phases the runner
drives, and applying a job's parsed files as image-set versions.

The runner (``jobs.py``) reads S3 and calls in here; which image set each instance lands in is the import plan's
decision (``import_plan.py``). DICOMweb STOW-RS stores instances through the same plan (:meth:`apply_instances`).
"""

from __future__ import annotations

import json
import time
from typing import Any

from emulator.errors import ConflictException, ResourceNotFoundException, ServiceQuotaExceededException
from emulator.medicalimaging.datastores import DatastoreModel
from emulator.medicalimaging.import_plan import ImportPlan, job_outputs
from emulator.medicalimaging.records import (
    ACTIVE_JOB_STATES,
    JOB_ORDER,
    FileOutcome,
    ImportJob,
    job_from_row,
    page,
    request_hash,
)
from emulator.persistence import new_id


class ImportJobModel(DatastoreModel):
    """Import-job state transitions and their application to image sets."""

    # ---- import jobs

    JOB_PARAMS = ("dataAccessRoleArn", "inputS3Uri", "outputS3Uri", "jobName", "inputOwnerAccountId",
                  "importConfiguration")

    def find_job_by_token(self, datastore_id: str, token: str) -> ImportJob | None:
        with self.store.read() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE datastore_id=? AND client_token=?",
                               (datastore_id, token)).fetchone()
        return job_from_row(row) if row else None

    def check_job_token(self, datastore_id: str, params: dict[str, Any]) -> ImportJob | None:
        """The job this clientToken already started (idempotent retry), or None. Conflict on other params."""
        existing = self.find_job_by_token(datastore_id, params["clientToken"])
        if existing is None:
            return None
        with self.store.read() as conn:
            digest = conn.execute("SELECT request_hash FROM jobs WHERE id=?", (existing.id,)).fetchone()[0]
        if digest != request_hash(params, self.JOB_PARAMS):
            raise ConflictException(
                "The clientToken was already used by a StartDICOMImportJob request with different parameters")
        return existing

    def start_import_job(self, params: dict[str, Any]) -> ImportJob:
        """Record a SUBMITTED job. Quota checks that need S3 listing are done by the caller beforehand."""
        datastore_id = params["datastoreId"]
        self._active_datastore(datastore_id)
        with self.store.write() as conn:
            again = self.check_job_token(datastore_id, params)
            if again is not None:
                return again
            running = conn.execute("SELECT COUNT(*) FROM jobs WHERE datastore_id=? AND status IN (?, ?)",
                                   (datastore_id, *ACTIVE_JOB_STATES)).fetchone()[0]
            if running >= self.settings.max_concurrent_jobs:
                raise ServiceQuotaExceededException(
                    f"Concurrent import jobs per data store quota exceeded: {running} jobs are SUBMITTED or "
                    f"IN_PROGRESS (limit {self.settings.max_concurrent_jobs})")
            job_id = new_id()
            output = params["outputS3Uri"]
            output = output if output.endswith("/") else output + "/"
            resolved = f"{output}{datastore_id}-DicomImport-{job_id}/"
            conn.execute(
                "INSERT INTO jobs (id, seq, datastore_id, name, status, role_arn, input_uri, output_uri, "
                "resolved_output_uri, input_owner, import_config, client_token, request_hash, submitted_at, "
                "phase_clock) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (job_id, self.store.next_seq(conn, "jobs"), datastore_id, params.get("jobName") or job_id,
                 "SUBMITTED", params["dataAccessRoleArn"], params["inputS3Uri"], output, resolved,
                 params.get("inputOwnerAccountId"),
                 json.dumps(params["importConfiguration"]) if params.get("importConfiguration") else None,
                 params["clientToken"], request_hash(params, self.JOB_PARAMS), time.time(), self.clock.now()),
            )
            row = conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        job = job_from_row(row)
        self.events.job_event("Import Job Submitted", job)
        return job

    def get_import_job(self, datastore_id: str, job_id: str) -> ImportJob:
        self.get_datastore(datastore_id)
        job = self.job(job_id)
        if job is None or job.datastore_id != datastore_id:
            raise ResourceNotFoundException(f"Import job {job_id} does not exist in datastore {datastore_id}")
        return job

    def job(self, job_id: str) -> ImportJob | None:
        with self.store.read() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return job_from_row(row) if row else None

    def list_import_jobs(self, datastore_id: str, status: str | None, token: str | None,
                         max_results: int | None) -> tuple[list[ImportJob], str | None]:
        self.get_datastore(datastore_id)
        sql = "SELECT * FROM jobs WHERE datastore_id=?"
        args: list[Any] = [datastore_id]
        if status:
            sql += " AND status=?"
            args.append(status)
        with self.store.read() as conn:
            rows = conn.execute(sql + " ORDER BY seq DESC", args).fetchall()
        return page([job_from_row(r) for r in rows], token, max_results, f"ListDICOMImportJobs:{datastore_id}:{status}")

    def unfinished_jobs(self) -> list[ImportJob]:
        with self.store.read() as conn:
            rows = conn.execute("SELECT * FROM jobs WHERE status IN (?, ?) ORDER BY seq",
                                ACTIVE_JOB_STATES).fetchall()
        return [job_from_row(r) for r in rows]

    def gate_open(self, job: ImportJob) -> bool:
        """May ``job`` leave its current phase now (job clock, or an explicit admin release)?"""
        if job.release_to and JOB_ORDER.get(job.release_to, 0) > JOB_ORDER[job.status]:
            return True
        return self.clock.now() >= job.phase_clock + self.settings.phase_seconds(job.status)

    def release_job(self, job_id: str, to: str) -> ImportJob:
        with self.store.write() as conn:
            conn.execute("UPDATE jobs SET release_to=? WHERE id=?", (to, job_id))
        job = self.job(job_id)
        assert job is not None
        return job

    def mark_in_progress(self, job_id: str) -> bool:
        with self.store.write() as conn:
            cur = conn.execute(
                "UPDATE jobs SET status='IN_PROGRESS', started_at=?, phase_clock=? WHERE id=? AND status='SUBMITTED'",
                (time.time(), self.clock.now(), job_id))
        if cur.rowcount == 1:
            self._job_event("Import Job In Progress", job_id)
        return cur.rowcount == 1

    def _job_event(self, detail_type: str, job_id: str) -> None:
        job = self.job(job_id)
        if job is not None:
            self.events.job_event(detail_type, job)

    def finish_job(self, job_id: str, status: str, message: str | None, stats: dict[str, Any] | None,
                   outputs: dict[str, str] | None = None) -> None:
        with self.store.write() as conn:
            cur = conn.execute(
                "UPDATE jobs SET status=?, ended_at=?, message=?, stats=COALESCE(?, stats), "
                "outputs=COALESCE(?, outputs) WHERE id=? AND status IN (?, ?)",
                (status, time.time(), message, json.dumps(stats) if stats else None,
                 json.dumps(outputs) if outputs else None, job_id, *ACTIVE_JOB_STATES))
        if cur.rowcount == 1:
            self._job_event("Import Job Completed" if status == "COMPLETED" else "Import Job Failed", job_id)

    # ---- applying an import: the heart of the primary / non-primary logic

    def apply_import(self, job_id: str, outcomes: list[FileOutcome], stats: dict[str, Any]) -> dict[str, str] | None:
        """Turn a job's parsed files into image-set versions, atomically, and build its output documents.

        Files are processed in sorted key order, so the result is deterministic: the first file of a series that
        agrees with the existing primary data (or finds none) goes to the primary image set; a file whose
        normalized Patient/Study/Series attributes conflict goes to the non-primary set for that series and
        conflicting fingerprint (created on first use). Each image set the job touches gets exactly one new
        version. Returns None when the job no longer exists (e.g. after a reset).
        """
        with self.store.write() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                return None
            job = job_from_row(row)
            if job.applied and job.outputs:
                return job.outputs
            plan = ImportPlan(self.store, conn, job)
            for outcome in sorted(outcomes, key=lambda o: o.key):
                if outcome.parsed is not None:
                    plan.add(outcome)
            plan.commit()
            outputs = job_outputs(job, outcomes, plan)
            conn.execute("UPDATE jobs SET applied=1, outputs=?, stats=? WHERE id=?",
                         (json.dumps(outputs), json.dumps(stats), job_id))
        # After the commit, so a rolled-back or crashed apply announces nothing. Adding to an existing set is
        # announced as "Image Set Updated" (workflow IMPORTED): AWS documents no import-specific detail type.
        for t in plan.touched.values():
            self.events.image_set_event(
                "Image Set Created" if t.created else "Image Set Updated", datastore_id=job.datastore_id,
                image_set_id=t.image_set_id, version=t.version, is_primary=t.is_primary, state="ACTIVE",
                workflow_status="CREATED" if t.created else "IMPORTED")
        return outputs

    def failure_outputs(self, job: ImportJob, outcomes: list[FileOutcome]) -> dict[str, str]:
        return job_outputs(job, outcomes, None)

    def apply_instances(self, datastore_id: str, outcomes: list[FileOutcome],
                        source_id: str) -> dict[str, tuple[str, int, bool]]:
        """Store parsed instances outside an import job (DICOMweb STOW-RS) through the same plan as imports.

        One transaction; outcomes are applied in key order; each touched image set gets one new version.
        ``source_id`` stands in for the job id (image-set ids and ``image_set_versions.job_id``). Returns
        ``outcome.key -> (imageSetId, version, isPrimary)``.
        """
        self._active_datastore(datastore_id)
        now = time.time()
        source = ImportJob(
            id=source_id, datastore_id=datastore_id, name=source_id, status="COMPLETED", role_arn="", input_uri="",
            output_uri="", resolved_output_uri="", input_owner=None, import_config=None, submitted_at=now,
            started_at=now, ended_at=now, message=None, phase_clock=0.0, release_to=None, applied=True,
            outputs=None, stats=None)
        with self.store.write() as conn:
            plan = ImportPlan(self.store, conn, source)
            for outcome in sorted(outcomes, key=lambda o: o.key):
                if outcome.parsed is not None:
                    plan.add(outcome)
            plan.commit()
        for t in plan.touched.values():
            self.events.image_set_event(
                "Image Set Created" if t.created else "Image Set Updated", datastore_id=datastore_id,
                image_set_id=t.image_set_id, version=t.version, is_primary=t.is_primary, state="ACTIVE",
                workflow_status="CREATED" if t.created else "IMPORTED")
        return {key: (set_id, plan.touched[set_id].version, plan.touched[set_id].is_primary)
                for key, set_id in plan.assignment.items()}

