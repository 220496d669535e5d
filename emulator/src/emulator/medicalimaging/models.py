"""HealthImaging state and logic: data stores, import jobs, image sets. No HTTP here (moto's ``models.py`` role).

Everything lives in SQLite (``emulator.store``), so every method is safe to call from any thread and state
survives restarts. S3 reading for jobs is in ``jobs.py``; this module decides what an import *means*: which image
set each instance lands in, primary or not, which version, and the exact output documents.

The mutating image-set operations (UpdateImageSetMetadata, CopyImageSet, DeleteImageSet), GetImageFrame and
tagging live in ``mutations.py``; they write new versions of the same rows (``image_set_versions`` and per-version
instance rows, ``instances.first_version/until_version``). This module ends their transient LOCKED states
(:meth:`MedicalImagingBackend.finalize_locks`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from emulator.config import Settings
from emulator.errors import (
    ConflictException,
    ResourceNotFoundException,
    ServiceQuotaExceededException,
    ValidationException,
)
from emulator.events import EventSink
from emulator.medicalimaging.clock import JobClock
from emulator.medicalimaging.dicom import ParsedInstance
from emulator.persistence import canonical, canonical_digest, new_id, offset_page, replayed_request
from emulator.store import Store

ACTIVE_JOB_STATES = ("SUBMITTED", "IN_PROGRESS")
JOB_ORDER = {"SUBMITTED": 0, "IN_PROGRESS": 1, "COMPLETED": 2, "FAILED": 2}


def stable_id(*parts: str) -> str:
    """A deterministic id, so a job re-run after a crash creates the same image-set ids."""
    return hashlib.md5("\x1f".join(parts).encode()).hexdigest()


def request_hash(params: dict[str, Any], names: Sequence[str]) -> str:
    return canonical_digest({n: params.get(n) for n in names})


def page(items: list[Any], token: str | None, max_results: int | None, scope: str,
         default_max: int = 50) -> tuple[list[Any], str | None]:
    return offset_page(items, token, max_results, scope, default_max,
                       "Invalid pagination token: nextToken does not belong to this request")


# ----------------------------------------------------------------------------------------------- records


@dataclass
class Datastore:
    id: str
    name: str
    status: str
    kms_key_arn: str | None
    lambda_authorizer_arn: str | None
    lossless_storage_format: str | None
    created_at: float
    updated_at: float
    arn: str


@dataclass
class ImportJob:
    id: str
    datastore_id: str
    name: str
    status: str
    role_arn: str
    input_uri: str
    output_uri: str
    resolved_output_uri: str
    input_owner: str | None
    import_config: dict[str, Any] | None
    submitted_at: float
    started_at: float | None
    ended_at: float | None
    message: str | None
    phase_clock: float
    release_to: str | None
    applied: bool
    outputs: dict[str, str] | None
    stats: dict[str, Any] | None


@dataclass
class ImageSetVersion:
    image_set_id: str
    datastore_id: str
    version: int
    latest_version: int
    state: str
    workflow_status: str
    is_primary: bool
    created_at: float
    updated_at: float
    message: str | None
    arn: str
    deleted_at: float | None = None
    forced: bool = False


@dataclass
class FileOutcome:
    """What reading one input object produced: a parsed instance, or a failure message."""

    key: str
    size: int
    parsed: ParsedInstance | None = None
    error: str | None = None
    server_error: bool = False
    warnings: list[dict[str, Any]] = field(default_factory=list)  # imported, but reported in warning.ndjson
    timings: dict[str, float] = field(default_factory=dict)


def _job(row: sqlite3.Row) -> ImportJob:
    return ImportJob(
        id=row["id"], datastore_id=row["datastore_id"], name=row["name"], status=row["status"],
        role_arn=row["role_arn"], input_uri=row["input_uri"], output_uri=row["output_uri"],
        resolved_output_uri=row["resolved_output_uri"], input_owner=row["input_owner"],
        import_config=json.loads(row["import_config"]) if row["import_config"] else None,
        submitted_at=row["submitted_at"], started_at=row["started_at"], ended_at=row["ended_at"],
        message=row["message"], phase_clock=row["phase_clock"], release_to=row["release_to"],
        applied=bool(row["applied"]), outputs=json.loads(row["outputs"]) if row["outputs"] else None,
        stats=json.loads(row["stats"]) if row["stats"] else None,
    )


# ----------------------------------------------------------------------------------------------- backend


class MedicalImagingBackend:
    """All HealthImaging state transitions. Thread-safe; every write is one SQLite transaction."""

    def __init__(self, settings: Settings, store: Store, clock: JobClock) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        # The notification hook: state changes call self.events.emit(detail_type, detail, resources) or one of its
        # helpers (datastore_event / job_event / image_set_event, emulator/events.py). A no-op until app.build
        # installs the EventBridge publisher.
        self.events: EventSink = EventSink()
        # Mutations (mutations.py) leave image sets LOCKED for settings.mutation_seconds; a sweeper thread ends
        # those locks on time (so their events go out), and every read ends the due ones first anyway.
        self._sweeper: threading.Thread | None = None
        self._sweeper_lock = threading.Lock()
        self._migrate()
        self._ensure_sweeper()

    # ---- schema additions for mutations and tagging (additive, idempotent, also for older data dirs)

    _IMAGE_SET_COLUMNS = (("lock_until", "REAL"), ("final_state", "TEXT"), ("final_status", "TEXT"),
                          ("lock_version", "INTEGER"), ("deleted_at", "REAL"), ("tags", "TEXT"))

    def _migrate(self) -> None:
        with self.store.write() as conn:
            have = {r["name"] for r in conn.execute("PRAGMA table_info(image_sets)")}
            for name, kind in self._IMAGE_SET_COLUMNS:
                if name not in have:
                    conn.execute(f"ALTER TABLE image_sets ADD COLUMN {name} {kind}")
            if "forced" not in {r["name"] for r in conn.execute("PRAGMA table_info(image_set_versions)")}:
                conn.execute("ALTER TABLE image_set_versions ADD COLUMN forced INTEGER NOT NULL DEFAULT 0")
            conn.execute("CREATE INDEX IF NOT EXISTS image_sets_lock ON image_sets(lock_until)")

    # ---- transient LOCKED states of mutations

    def image_set_event_args(self, row: sqlite3.Row, detail_type: str,
                             extra: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """(detail type, keyword arguments of ``events.image_set_event``) for an image-set row."""
        return detail_type, {"datastore_id": row["datastore_id"], "image_set_id": row["id"],
                             "version": row["version"], "is_primary": bool(row["is_primary"]),
                             "state": row["state"], "workflow_status": row["workflow_status"], "extra": extra}

    def locks_changed(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Called by a mutation after its commit: publish its events and make sure the locks will end."""
        for detail_type, kwargs in events:
            self.events.image_set_event(detail_type, **kwargs)
        self._ensure_sweeper()

    _FINAL_EVENTS = {"UPDATED": "Image Set Updated", "COPIED": "Image Set Copied", "DELETED": "Image Set Deleted"}

    def finalize_locks(self) -> int:
        """End every lock whose time on the job clock is up (ACTIVE/UPDATED, ACTIVE/COPIED, DELETED/DELETED)."""
        now = self.clock.now()
        with self.store.read() as conn:
            if conn.execute("SELECT 1 FROM image_sets WHERE lock_until IS NOT NULL AND lock_until<=? LIMIT 1",
                            (now,)).fetchone() is None:
                return 0
        events = []
        with self.store.write() as conn:
            rows = conn.execute("SELECT * FROM image_sets WHERE lock_until IS NOT NULL AND lock_until<=?",
                                (now,)).fetchall()
            for r in rows:
                final_state, final_status = r["final_state"], r["final_status"]
                # An import may have added a version meanwhile; its workflow status (IMPORTED) then stays.
                status = final_status if r["version"] == r["lock_version"] else r["workflow_status"]
                conn.execute(
                    "UPDATE image_sets SET state=?, workflow_status=?, lock_until=NULL, final_state=NULL, "
                    "final_status=NULL, deleted_at=? WHERE id=?",
                    (final_state, status, time.time() if final_state == "DELETED" else r["deleted_at"], r["id"]))
                conn.execute("UPDATE image_set_versions SET state=?, workflow_status=? WHERE image_set_id=? AND "
                             "version=?", (final_state, final_status, r["id"], r["lock_version"]))
                kind = self._FINAL_EVENTS.get(final_status)
                if kind:
                    row = conn.execute("SELECT * FROM image_sets WHERE id=?", (r["id"],)).fetchone()
                    events.append(self.image_set_event_args(row, kind))
        for detail_type, kwargs in events:
            self.events.image_set_event(detail_type, **kwargs)
        return len(rows)

    def _ensure_sweeper(self) -> None:
        with self._sweeper_lock:
            if self._sweeper is None and self._locks_pending():
                self._sweeper = threading.Thread(target=self._sweep, name="image-set-locks", daemon=True)
                self._sweeper.start()

    def _locks_pending(self) -> bool:
        with self.store.read() as conn:
            return conn.execute("SELECT 1 FROM image_sets WHERE lock_until IS NOT NULL LIMIT 1").fetchone() is not None

    def _sweep(self) -> None:
        try:
            while True:
                time.sleep(0.05)
                self.finalize_locks()
                with self._sweeper_lock:
                    if not self._locks_pending():
                        self._sweeper = None
                        return
        except Exception:  # the store was closed (shutdown) or reset under us: reads still finalize lazily
            with self._sweeper_lock:
                self._sweeper = None

    # ---- ARNs

    def datastore_arn(self, datastore_id: str) -> str:
        s = self.settings
        return f"arn:aws:medical-imaging:{s.region}:{s.account_id}:datastore/{datastore_id}"

    def image_set_arn(self, datastore_id: str, image_set_id: str) -> str:
        return f"{self.datastore_arn(datastore_id)}/imageset/{image_set_id}"

    # ---- data stores

    def _datastore(self, row: sqlite3.Row) -> Datastore:
        status = row["status"]
        if status == "CREATING" and self.clock.now() >= row["created_clock"] + self.settings.datastore_create_seconds:
            status = "ACTIVE"
            with self.store.write() as conn:
                cur = conn.execute(
                    "UPDATE datastores SET status='ACTIVE', updated_at=? WHERE id=? AND status='CREATING'",
                    (time.time(), row["id"]))
            if cur.rowcount == 1:  # only the caller that made the transition announces it
                self.events.datastore_event("Data Store Created", row["id"], row["name"], "ACTIVE")
        return Datastore(
            id=row["id"], name=row["name"], status=status, kms_key_arn=row["kms_key_arn"],
            lambda_authorizer_arn=row["lambda_authorizer_arn"],
            lossless_storage_format=row["lossless_storage_format"], created_at=row["created_at"],
            updated_at=row["updated_at"], arn=self.datastore_arn(row["id"]),
        )

    def create_datastore(self, params: dict[str, Any]) -> Datastore:
        names = ("datastoreName", "tags", "kmsKeyArn", "lambdaAuthorizerArn", "losslessStorageFormat")
        digest = request_hash(params, names)
        token = params["clientToken"]
        with self.store.write() as conn:
            row = replayed_request(
                conn, "SELECT * FROM datastores WHERE client_token=?", (token,), digest, ConflictException,
                "The clientToken was already used by a CreateDatastore request with different parameters")
            if row is not None:
                created = row
            else:
                now = time.time()
                ds_id = new_id()
                conn.execute(
                    "INSERT INTO datastores (id, seq, name, status, kms_key_arn, lambda_authorizer_arn, "
                    "lossless_storage_format, client_token, request_hash, tags, created_at, updated_at, "
                    "created_clock) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (ds_id, self.store.next_seq(conn, "datastores"), params.get("datastoreName") or ds_id,
                     "CREATING", params.get("kmsKeyArn"), params.get("lambdaAuthorizerArn"),
                     params.get("losslessStorageFormat") or "HTJ2K", token, digest,
                     json.dumps(params.get("tags") or {}), now, now, self.clock.now()),
                )
                created = conn.execute("SELECT * FROM datastores WHERE id=?", (ds_id,)).fetchone()
        if row is None:
            self.events.datastore_event("Data Store Creating", created["id"], created["name"], "CREATING")
        ds = self._datastore(created)
        if row is None:
            ds.status = "CREATING"  # the create call itself always reports CREATING, like AWS
        return ds

    def get_datastore(self, datastore_id: str) -> Datastore:
        with self.store.read() as conn:
            row = conn.execute("SELECT * FROM datastores WHERE id=?", (datastore_id,)).fetchone()
        if row is None:
            raise ResourceNotFoundException(f"Datastore {datastore_id} does not exist")
        return self._datastore(row)

    def list_datastores(self, status: str | None, token: str | None,
                        max_results: int | None) -> tuple[list[Datastore], str | None]:
        with self.store.read() as conn:
            rows = conn.execute("SELECT * FROM datastores ORDER BY seq").fetchall()
        items = [self._datastore(r) for r in rows]
        if status:
            items = [d for d in items if d.status == status]
        return page(items, token, max_results, f"ListDatastores:{status}")

    def delete_datastore(self, datastore_id: str) -> Datastore:
        ds = self.get_datastore(datastore_id)
        self.finalize_locks()  # image sets whose deletion is due count as deleted
        with self.store.write() as conn:
            n = conn.execute("SELECT COUNT(*) FROM image_sets WHERE datastore_id=? AND state!='DELETED'",
                             (datastore_id,)).fetchone()[0]
            if n:
                raise ConflictException(
                    f"Datastore {datastore_id} cannot be deleted because it still contains {n} image set(s); "
                    "delete all image sets first")
            active = conn.execute("SELECT COUNT(*) FROM jobs WHERE datastore_id=? AND status IN (?, ?)",
                                  (datastore_id, *ACTIVE_JOB_STATES)).fetchone()[0]
            if active:
                raise ConflictException(f"Datastore {datastore_id} has import jobs in progress")
            if ds.status in ("DELETING", "DELETED"):
                return ds
            conn.execute("UPDATE datastores SET status='DELETED', updated_at=? WHERE id=?",
                         (time.time(), datastore_id))
        self.events.datastore_event("Data Store Deleting", ds.id, ds.name, "DELETING")
        self.events.datastore_event("Data Store Deleted", ds.id, ds.name, "DELETED")
        ds.status = "DELETING"
        return ds

    def _active_datastore(self, datastore_id: str) -> Datastore:
        ds = self.get_datastore(datastore_id)
        if ds.status != "ACTIVE":
            raise ConflictException(f"Datastore {datastore_id} is {ds.status}, not ACTIVE")
        return ds

    # ---- import jobs

    JOB_PARAMS = ("dataAccessRoleArn", "inputS3Uri", "outputS3Uri", "jobName", "inputOwnerAccountId",
                  "importConfiguration")

    def find_job_by_token(self, datastore_id: str, token: str) -> ImportJob | None:
        with self.store.read() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE datastore_id=? AND client_token=?",
                               (datastore_id, token)).fetchone()
        return _job(row) if row else None

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
        job = _job(row)
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
        return _job(row) if row else None

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
        return page([_job(r) for r in rows], token, max_results, f"ListDICOMImportJobs:{datastore_id}:{status}")

    def unfinished_jobs(self) -> list[ImportJob]:
        with self.store.read() as conn:
            rows = conn.execute("SELECT * FROM jobs WHERE status IN (?, ?) ORDER BY seq",
                                ACTIVE_JOB_STATES).fetchall()
        return [_job(r) for r in rows]

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
            job = _job(row)
            if job.applied and job.outputs:
                return job.outputs
            plan = _ImportPlan(self, conn, job)
            for outcome in sorted(outcomes, key=lambda o: o.key):
                if outcome.parsed is not None:
                    plan.add(outcome)
            plan.commit()
            outputs = self._outputs(job, outcomes, plan)
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
        return self._outputs(job, outcomes, None)

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
            plan = _ImportPlan(self, conn, source)
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

    def _outputs(self, job: ImportJob, outcomes: list[FileOutcome], plan: _ImportPlan | None) -> dict[str, str]:
        success: list[str] = []
        failure: list[str] = []
        warning: list[str] = []
        customer_errors = server_errors = 0
        for o in sorted(outcomes, key=lambda o: o.key):
            if o.parsed is not None and plan is not None and o.warnings:
                # Imported with warnings (injected, emulator/faults.py): reported in warning.ndjson instead.
                info = plan.touched[plan.assignment[o.key]]
                warning.append(canonical_line({"inputFile": o.key, "importResponse": {
                    "imageSetId": info.image_set_id, "imageSetVersion": info.version, "isPrimary": info.is_primary,
                    "warnings": o.warnings}}))
            elif o.parsed is not None and plan is not None:
                set_id = plan.assignment[o.key]
                info = plan.touched[set_id]
                success.append(canonical_line({
                    "inputFile": o.key,
                    "importResponse": {"imageSetId": set_id, "imageSetVersion": info.version,
                                       "isPrimary": info.is_primary},
                }))
            else:
                if o.server_error:
                    server_errors += 1
                else:
                    customer_errors += 1
                failure.append(canonical_line({
                    "inputFile": o.key,
                    "exception": {"exceptionType": "InternalServerException" if o.server_error
                                  else "ValidationException", "message": o.error or "Import failed"},
                }))
        base = job.resolved_output_uri
        summaries = [] if plan is None else [
            {"imageSetId": set_id, "imageSetVersion": info.version, "isPrimary": info.is_primary,
             "numberOfMatchedSOPInstances": len(info.sops)}
            for set_id, info in plan.touched.items()
        ]
        manifest = {"jobSummary": {
            "jobId": job.id,
            "datastoreId": job.datastore_id,
            "inputS3Uri": job.input_uri,
            "outputS3Uri": base,
            "successOutputS3Uri": base + "SUCCESS/",
            "failureOutputS3Uri": base + "FAILURE/",
            "warningsOutputS3Uri": base + "WARNING/",
            "numberOfScannedFiles": len(outcomes),
            "numberOfImportedFiles": len(success) + len(warning),
            "numberOfFilesWithCustomerError": customer_errors,
            "numberOfFilesWithServerError": server_errors,
            "numberOfGeneratedImageSets": len(summaries),
            "imageSetsSummary": summaries,
        }}
        return {
            "job-output-manifest.json": json.dumps(manifest, indent=2),
            "SUCCESS/success.ndjson": "".join(line + "\n" for line in success),
            "FAILURE/failure.ndjson": "".join(line + "\n" for line in failure),
            "WARNING/warning.ndjson": "".join(line + "\n" for line in warning),
        }

    # ---- image sets

    def _image_set_row(self, conn: sqlite3.Connection, datastore_id: str, image_set_id: str) -> sqlite3.Row:
        self.get_datastore(datastore_id)
        row = conn.execute("SELECT * FROM image_sets WHERE id=? AND datastore_id=?",
                           (image_set_id, datastore_id)).fetchone()
        if row is None:
            raise ResourceNotFoundException(f"Image set {image_set_id} does not exist in datastore {datastore_id}")
        return row

    def _version_row(self, conn: sqlite3.Connection, image_set_id: str, version: int) -> sqlite3.Row:
        vrow = conn.execute("SELECT * FROM image_set_versions WHERE image_set_id=? AND version=?",
                            (image_set_id, version)).fetchone()
        if vrow is None:
            raise ResourceNotFoundException(f"Version {version} of image set {image_set_id} does not exist")
        return vrow

    def _version(self, row: sqlite3.Row, vrow: sqlite3.Row) -> ImageSetVersion:
        latest = vrow["version"] == row["version"]
        deleted = row["state"] == "DELETED"
        # The set row carries the live state (LOCKED during a mutation, DELETED, a demotion); history keeps its own.
        return ImageSetVersion(
            image_set_id=row["id"], datastore_id=row["datastore_id"], version=vrow["version"],
            latest_version=row["version"], state="DELETED" if deleted else (row["state"] if latest else vrow["state"]),
            workflow_status=row["workflow_status"] if latest else vrow["workflow_status"],
            is_primary=bool(row["is_primary"] if latest else vrow["is_primary"]), created_at=vrow["created_at"],
            updated_at=vrow["updated_at"], message=vrow["message"],
            arn=self.image_set_arn(row["datastore_id"], row["id"]),
            deleted_at=row["deleted_at"] if deleted else None, forced=bool(vrow["forced"]),
        )

    def get_image_set(self, datastore_id: str, image_set_id: str, version: str | None) -> ImageSetVersion:
        self.finalize_locks()
        with self.store.read() as conn:
            row = self._image_set_row(conn, datastore_id, image_set_id)
            vrow = self._version_row(conn, image_set_id, int(version) if version else row["version"])
        return self._version(row, vrow)

    def list_image_set_versions(self, datastore_id: str, image_set_id: str, token: str | None,
                                max_results: int | None) -> tuple[list[ImageSetVersion], str | None]:
        self.finalize_locks()
        with self.store.read() as conn:
            row = self._image_set_row(conn, datastore_id, image_set_id)
            vrows = conn.execute("SELECT * FROM image_set_versions WHERE image_set_id=? ORDER BY version DESC",
                                 (image_set_id,)).fetchall()
        return page([self._version(row, v) for v in vrows], token, max_results,
                    f"ListImageSetVersions:{image_set_id}")

    def get_image_set_metadata(self, datastore_id: str, image_set_id: str, version: str | None) -> bytes:
        """The gzip-compressed metadata document of one image-set version."""
        self.finalize_locks()
        with self.store.read() as conn:
            row = self._image_set_row(conn, datastore_id, image_set_id)
            if row["state"] == "DELETED":
                raise ResourceNotFoundException(f"Image set {image_set_id} is deleted")
            v = int(version) if version else row["version"]
            vrow = self._version_row(conn, image_set_id, v)
            docs = conn.execute(
                "SELECT sop_uid, doc FROM instances WHERE image_set_id=? AND first_version<=? "
                "AND (until_version IS NULL OR until_version>?) ORDER BY sop_uid", (image_set_id, v, v)).fetchall()
        # The instance documents are stored as JSON text; splice them in instead of re-parsing thousands of them.
        instances = ",".join(f"{json.dumps(r['sop_uid'])}:{r['doc']}" for r in docs)
        # A forced update may have changed the SeriesInstanceUID: each version is keyed by its own.
        series_uid = json.loads(vrow["series"]).get("SeriesInstanceUID") or row["series_uid"]
        series = (f"{json.dumps(series_uid)}:{{\"DICOM\":{vrow['series']},"
                  f"\"Instances\":{{{instances}}}}}")
        text = (f"{{\"SchemaVersion\":\"1.1\",\"DatastoreID\":{json.dumps(datastore_id)},"
                f"\"ImageSetID\":{json.dumps(image_set_id)},\"Patient\":{{\"DICOM\":{vrow['patient']}}},"
                f"\"Study\":{{\"DICOM\":{vrow['study']},\"Series\":{{{series}}}}}}}")
        return gzip.compress(text.encode(), compresslevel=5)

    def search_image_sets(self, datastore_id: str, criteria: dict[str, Any] | None, token: str | None,
                          max_results: int | None) -> tuple[list[dict[str, Any]], str | None, dict[str, Any] | None]:
        self.get_datastore(datastore_id)
        self.finalize_locks()
        criteria = criteria or {}
        filters = criteria.get("filters") or []
        predicates = [_filter_predicate(f, i) for i, f in enumerate(filters, start=1)]
        with self.store.read() as conn:
            rows = conn.execute("SELECT * FROM image_sets WHERE datastore_id=? AND state!='DELETED' "
                                "AND workflow_status!='DELETING'", (datastore_id,)).fetchall()
        items = []
        for r in rows:
            tags = json.loads(r["dicom_tags"])
            summary = {
                "imageSetId": r["id"], "version": r["version"], "createdAt": r["created_at"],
                "updatedAt": r["updated_at"], "isPrimary": bool(r["is_primary"]), "DICOMTags": tags,
                "storageTier": "FREQUENT_ACCESS",
            }
            if all(p(summary) for p in predicates):
                items.append(summary)
        sort = criteria.get("sort")
        field_name = sort["sortField"] if sort else "updatedAt"
        descending = (sort["sortOrder"] == "DESC") if sort else True
        items.sort(key=lambda s: (_sort_value(s, field_name), s["imageSetId"]), reverse=descending)
        chunk, nxt = page(items, token, max_results, f"SearchImageSets:{datastore_id}:{canonical(criteria)}")
        return chunk, nxt, sort

    # ---- admin

    def reset(self) -> None:
        self.store.wipe()

    def state(self) -> dict[str, Any]:
        with self.store.read() as conn:
            stores = conn.execute("SELECT id, name, status FROM datastores ORDER BY seq").fetchall()
            jobs = conn.execute("SELECT id, datastore_id, status, applied, message FROM jobs ORDER BY seq").fetchall()
            sets = conn.execute(
                "SELECT s.id, s.datastore_id, s.version, s.is_primary, s.state, "
                "(SELECT COUNT(*) FROM instances i WHERE i.image_set_id=s.id AND i.until_version IS NULL) AS n "
                "FROM image_sets s ORDER BY s.seq").fetchall()
        return {
            "clock": {"mode": self.clock.mode, "now": self.clock.now()},
            "datastores": [{"datastoreId": r["id"], "status": r["status"],
                            "imageSets": sum(1 for s in sets if s["datastore_id"] == r["id"]),
                            "jobs": sum(1 for j in jobs if j["datastore_id"] == r["id"])} for r in stores],
            "jobs": [{"jobId": j["id"], "datastoreId": j["datastore_id"], "jobStatus": j["status"],
                      "applied": bool(j["applied"]), "message": j["message"]} for j in jobs],
            "imageSets": [{"imageSetId": s["id"], "datastoreId": s["datastore_id"], "version": s["version"],
                           "isPrimary": bool(s["is_primary"]), "state": s["state"], "instances": s["n"]}
                          for s in sets],
            "counts": {"datastores": len(stores), "jobs": len(jobs), "imageSets": len(sets)},
        }

    def stats(self, job_id: str | None = None) -> dict[str, Any]:
        sql = "SELECT id, datastore_id, status, stats FROM jobs"
        args: tuple[Any, ...] = ()
        if job_id:
            sql += " WHERE id=?"
            args = (job_id,)
        with self.store.read() as conn:
            rows = conn.execute(sql + " ORDER BY seq", args).fetchall()
        jobs = [{"jobId": r["id"], "datastoreId": r["datastore_id"], "jobStatus": r["status"],
                 **(json.loads(r["stats"]) if r["stats"] else {})} for r in rows]
        totals: dict[str, float] = {}
        for j in jobs:
            for k, v in j.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    totals[k] = totals.get(k, 0) + v
        return {"jobs": jobs, "totals": totals}


def canonical_line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


# ----------------------------------------------------------------------------------------------- import plan


@dataclass
class _Touched:
    image_set_id: str
    created: bool
    is_primary: bool
    study_uid: str
    series_uid: str
    conflict_key: str
    docs: tuple[dict[str, Any], dict[str, Any], dict[str, Any]]
    sops: dict[str, FileOutcome] = field(default_factory=dict)
    version: int = 1


class _ImportPlan:
    """Assigns a job's instances to image sets inside one write transaction, then writes the new versions."""

    def __init__(self, backend: MedicalImagingBackend, conn: sqlite3.Connection, job: ImportJob) -> None:
        self.backend = backend
        self.conn = conn
        self.job = job
        self.touched: dict[str, _Touched] = {}  # insertion order = order of first touch (manifest order)
        self.assignment: dict[str, str] = {}  # input key -> image set id

    def _existing(self, sql: str, args: tuple[Any, ...]) -> list[sqlite3.Row]:
        return self.conn.execute(sql, args).fetchall()

    def _study_primaries(self, study_uid: str) -> list[tuple[str, dict[str, Any]]]:
        rows = self._existing(
            "SELECT id, series_uid, conflict_key FROM image_sets WHERE datastore_id=? AND study_uid=? "
            "AND is_primary=1 AND state!='DELETED' AND workflow_status!='DELETING'",
            (self.job.datastore_id, study_uid))
        found = [(r["series_uid"], json.loads(r["conflict_key"])) for r in rows]
        found += [(t.series_uid, json.loads(t.conflict_key)) for t in self.touched.values()
                  if t.created and t.is_primary and t.study_uid == study_uid]
        return found

    def _set_row(self, where: str, args: tuple[Any, ...]) -> sqlite3.Row | None:
        return self.conn.execute(f"SELECT * FROM image_sets WHERE {where} AND state!='DELETED' "
                                 "AND workflow_status!='DELETING'", args).fetchone()

    def add(self, outcome: FileOutcome) -> None:
        p = outcome.parsed
        assert p is not None
        key = p.conflict_key()
        ds_id = self.job.datastore_id
        conflict = False
        for _series_uid, other in self._study_primaries(p.study_instance_uid):
            if other["patient"] != key["patient"] or other["study"] != key["study"]:
                conflict = True
            if _series_uid == p.series_instance_uid and other["series"] != key["series"]:
                conflict = True
        key_text = canonical(key)
        if not conflict:
            target = self._find_or_create(
                primary=True, key_text=key_text, parsed=p,
                where="datastore_id=? AND study_uid=? AND series_uid=? AND is_primary=1",
                args=(ds_id, p.study_instance_uid, p.series_instance_uid))
        else:
            target = self._find_or_create(
                primary=False, key_text=key_text, parsed=p,
                where="datastore_id=? AND study_uid=? AND series_uid=? AND is_primary=0 AND conflict_key=?",
                args=(ds_id, p.study_instance_uid, p.series_instance_uid, key_text))
        target.sops[p.sop_instance_uid] = outcome  # a later file with the same SOP overwrites, in key order
        self.assignment[outcome.key] = target.image_set_id

    def _find_or_create(self, primary: bool, key_text: str, parsed: ParsedInstance, where: str,
                        args: tuple[Any, ...]) -> _Touched:
        for t in self.touched.values():
            if (t.is_primary == primary and t.study_uid == parsed.study_instance_uid
                    and t.series_uid == parsed.series_instance_uid and (primary or t.conflict_key == key_text)):
                return t
        row = self._set_row(where, args)
        if row is not None:
            touched = _Touched(row["id"], False, bool(row["is_primary"]), row["study_uid"], row["series_uid"],
                               row["conflict_key"], (parsed.patient, parsed.study, parsed.series))
        else:
            set_id = stable_id(self.job.datastore_id, self.job.id, parsed.study_instance_uid,
                               parsed.series_instance_uid, "primary" if primary else key_text)
            touched = _Touched(set_id, True, primary, parsed.study_instance_uid, parsed.series_instance_uid,
                               key_text, (parsed.patient, parsed.study, parsed.series))
        self.touched[touched.image_set_id] = touched
        return touched

    def commit(self) -> None:
        conn = self.conn
        now = time.time()
        store = self.backend.store
        for t in self.touched.values():
            patient, study, series = t.docs
            if t.created:
                t.version = 1
                conn.execute(
                    "INSERT INTO image_sets (id, seq, datastore_id, study_uid, series_uid, is_primary, conflict_key,"
                    " version, state, workflow_status, created_at, updated_at, dicom_tags) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (t.image_set_id, store.next_seq(conn, "image_sets"), self.job.datastore_id, t.study_uid,
                     t.series_uid, int(t.is_primary), t.conflict_key, 1, "ACTIVE", "CREATED", now, now, "{}"))
                created_at = now
                workflow = "CREATED"
            else:
                row = conn.execute("SELECT version, created_at FROM image_sets WHERE id=?",
                                   (t.image_set_id,)).fetchone()
                prev = conn.execute("SELECT patient, study, series FROM image_set_versions WHERE image_set_id=? "
                                    "AND version=?", (t.image_set_id, row["version"])).fetchone()
                # Keep the set's existing Patient/Study/Series documents; add attributes it did not have yet.
                patient = {**patient, **json.loads(prev["patient"])}
                study = {**study, **json.loads(prev["study"])}
                series = {**series, **json.loads(prev["series"])}
                t.version = row["version"] + 1
                created_at = row["created_at"]
                workflow = "IMPORTED"
                sops = list(t.sops)
                for i in range(0, len(sops), 500):
                    chunk = sops[i:i + 500]
                    conn.execute(
                        f"UPDATE instances SET until_version=? WHERE image_set_id=? AND until_version IS NULL "
                        f"AND sop_uid IN ({','.join('?' * len(chunk))})", (t.version, t.image_set_id, *chunk))
            conn.executemany(
                "INSERT OR REPLACE INTO instances (image_set_id, sop_uid, first_version, until_version, doc, "
                "blob_sha256, size) VALUES (?,?,?,NULL,?,?,?)",
                [(t.image_set_id, sop, t.version, o.parsed.instance_document(), o.parsed.sha256, o.parsed.size)
                 for sop, o in t.sops.items() if o.parsed is not None])
            conn.execute(
                "INSERT INTO image_set_versions (image_set_id, version, job_id, state, workflow_status, is_primary,"
                " created_at, updated_at, patient, study, series) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (t.image_set_id, t.version, self.job.id, "ACTIVE", workflow, int(t.is_primary), created_at, now,
                 json.dumps(patient), json.dumps(study), json.dumps(series)))
            count = conn.execute("SELECT COUNT(*) FROM instances WHERE image_set_id=? AND until_version IS NULL",
                                 (t.image_set_id,)).fetchone()[0]
            conn.execute(
                "UPDATE image_sets SET version=?, updated_at=?, workflow_status=?, dicom_tags=? WHERE id=?",
                (t.version, now, workflow, json.dumps(_dicom_tags(patient, study, series, count)), t.image_set_id))


def _dicom_tags(patient: dict[str, Any], study: dict[str, Any], series: dict[str, Any],
                instances: int) -> dict[str, Any]:
    """The ``DICOMTags`` summary SearchImageSets returns (and filters on)."""
    def text(doc: dict[str, Any], name: str) -> str | None:
        v = doc.get(name)
        if v is None:
            return None
        return "\\".join(map(str, v)) if isinstance(v, list) else str(v)

    series_number = text(series, "SeriesNumber")
    tags: dict[str, Any] = {
        "DICOMPatientId": text(patient, "PatientID"),
        "DICOMPatientName": text(patient, "PatientName"),
        "DICOMPatientBirthDate": text(patient, "PatientBirthDate"),
        "DICOMPatientSex": text(patient, "PatientSex"),
        "DICOMStudyInstanceUID": text(study, "StudyInstanceUID"),
        "DICOMStudyId": text(study, "StudyID"),
        "DICOMStudyDescription": text(study, "StudyDescription"),
        "DICOMNumberOfStudyRelatedSeries": 1,
        "DICOMNumberOfStudyRelatedInstances": instances,
        "DICOMAccessionNumber": text(study, "AccessionNumber"),
        "DICOMSeriesInstanceUID": text(series, "SeriesInstanceUID"),
        "DICOMSeriesModality": text(series, "Modality"),
        "DICOMSeriesBodyPart": text(series, "BodyPartExamined"),
        "DICOMSeriesNumber": int(series_number) if series_number and series_number.strip().lstrip("-").isdigit()
        else None,
        "DICOMStudyDate": text(study, "StudyDate"),
        "DICOMStudyTime": text(study, "StudyTime"),
    }
    return {k: v for k, v in tags.items() if v is not None}


# ----------------------------------------------------------------------------------------------- search


_EQUAL_TAGS = {
    "DICOMPatientId": "DICOMPatientId",
    "DICOMAccessionNumber": "DICOMAccessionNumber",
    "DICOMStudyId": "DICOMStudyId",
    "DICOMStudyInstanceUID": "DICOMStudyInstanceUID",
    "DICOMSeriesInstanceUID": "DICOMSeriesInstanceUID",
}
_RANGE_FIELDS = ("createdAt", "updatedAt", "DICOMStudyDateAndTime")


def _study_datetime(value: dict[str, Any]) -> str:
    date = str(value.get("DICOMStudyDate") or "")
    time_ = str(value.get("DICOMStudyTime") or "").split(".")[0]
    return date + time_.ljust(6, "0") if date else ""


def _summary_value(summary: dict[str, Any], name: str) -> Any:
    if name in _EQUAL_TAGS:
        return summary["DICOMTags"].get(_EQUAL_TAGS[name])
    if name == "DICOMStudyDateAndTime":
        return _study_datetime(summary["DICOMTags"])
    return summary.get(name)


def _sort_value(summary: dict[str, Any], name: str) -> Any:
    v = _summary_value(summary, name)
    return "" if v is None and name == "DICOMStudyDateAndTime" else (v or 0)


def _filter_predicate(flt: dict[str, Any], index: int) -> Any:
    values = flt["values"]
    operator = flt["operator"]
    names = [next(iter(v)) for v in values]
    where = f"searchCriteria.filters.{index}.member"
    if len(set(names)) != 1:
        raise ValidationException(f"1 validation error detected: Value at '{where}.values' failed to satisfy "
                                  "constraint: all values of one filter must use the same attribute")
    name = names[0]
    if operator == "EQUAL":
        if len(values) != 1:
            raise ValidationException(f"1 validation error detected: Value at '{where}.values' failed to satisfy "
                                      "constraint: the EQUAL operator takes exactly 1 value")
        wanted = values[0][name]
        if name == "DICOMStudyDateAndTime":
            wanted_dt = _study_datetime(wanted)
            has_time = bool(wanted.get("DICOMStudyTime"))
            return lambda s: (_summary_value(s, name) == wanted_dt if has_time
                              else _summary_value(s, name)[:8] == wanted_dt[:8])
        return lambda s: _summary_value(s, name) == wanted
    # BETWEEN
    if len(values) != 2 or name not in _RANGE_FIELDS:
        raise ValidationException(
            f"1 validation error detected: Value at '{where}' failed to satisfy constraint: the BETWEEN operator "
            "takes exactly 2 values of createdAt, updatedAt or DICOMStudyDateAndTime")
    low, high = values[0][name], values[1][name]
    if name == "DICOMStudyDateAndTime":
        low_s, high_s = _study_datetime(low), _study_datetime(high)
        if not high.get("DICOMStudyTime"):
            high_s = high_s[:8] + "235959"
        return lambda s: bool(_summary_value(s, name)) and low_s <= _summary_value(s, name) <= high_s
    return lambda s: low <= (_summary_value(s, name) or 0) <= high
