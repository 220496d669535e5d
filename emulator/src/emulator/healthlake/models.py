"""HealthLake state: FHIR data stores, import jobs and the imported resources, all in the shared SQLite store.

No HTTP and no S3 here (``jobs.py`` reads and writes S3). Every method is thread-safe: reads use the calling
thread's connection, writes are single ``Store.write()`` transactions, so an import's resources and its output
documents are committed together (a crash re-runs the job from scratch or only redoes the S3 PUTs).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from emulator.config import Settings
from emulator.errors import ConflictException, ResourceNotFoundException, ValidationException
from emulator.healthlake.fhir import identifiers
from emulator.medicalimaging.clock import JobClock
from emulator.persistence import canonical, canonical_digest, new_id, offset_page, replayed_request
from emulator.store import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS hl_datastores (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, name TEXT, status TEXT NOT NULL, type_version TEXT NOT NULL,
    config TEXT NOT NULL, client_token TEXT, request_hash TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, created_clock REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS hl_datastores_token ON hl_datastores(client_token);
CREATE TABLE IF NOT EXISTS hl_jobs (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, datastore_id TEXT NOT NULL, name TEXT, status TEXT NOT NULL,
    role_arn TEXT NOT NULL, input_uri TEXT NOT NULL, output_uri TEXT NOT NULL, kms_key_id TEXT NOT NULL,
    validation_level TEXT NOT NULL, client_token TEXT, request_hash TEXT NOT NULL,
    submitted_at REAL NOT NULL, ended_at REAL, message TEXT, phase_clock REAL NOT NULL,
    applied INTEGER NOT NULL DEFAULT 0, final_status TEXT, outputs TEXT, progress TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS hl_jobs_token ON hl_jobs(datastore_id, client_token);
CREATE INDEX IF NOT EXISTS hl_jobs_status ON hl_jobs(status);
CREATE TABLE IF NOT EXISTS hl_resources (
    datastore_id TEXT NOT NULL, resource_type TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
    last_updated TEXT NOT NULL, doc TEXT NOT NULL, job_id TEXT,
    PRIMARY KEY (datastore_id, resource_type, id)
);
CREATE TABLE IF NOT EXISTS hl_identifiers (
    datastore_id TEXT NOT NULL, resource_type TEXT NOT NULL, id TEXT NOT NULL, system TEXT, value TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS hl_identifiers_value ON hl_identifiers(datastore_id, resource_type, value);
CREATE INDEX IF NOT EXISTS hl_identifiers_resource ON hl_identifiers(datastore_id, resource_type, id);
"""
TABLES = ("hl_datastores", "hl_jobs", "hl_resources", "hl_identifiers")

UNFINISHED = ("SUBMITTED", "IN_PROGRESS")
PHASE_ORDER = {"SUBMITTED": 0, "IN_PROGRESS": 1}
TOKEN_REUSED = "ClientToken was already used with different parameters"


def _request_hash(params: dict[str, Any], skip: Sequence[str] = ("ClientToken",)) -> str:
    return canonical_digest({k: v for k, v in params.items() if k not in skip})


def fhir_instant(ts: float) -> str:
    """FHIR ``instant`` (UTC, milliseconds)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ts * 1000) % 1000:03d}Z"


# ------------------------------------------------------------------------------------------ pagination tokens


def paginate(items: list[Any], token: str | None, max_results: int | None, scope: str,
             default_max: int = 100) -> tuple[list[Any], str | None]:
    return offset_page(items, token, max_results, scope, default_max, "Invalid NextToken")


# ------------------------------------------------------------------------------------------ records


@dataclass
class FhirDatastore:
    id: str
    name: str | None
    status: str
    type_version: str
    config: dict[str, Any]
    created_at: float
    arn: str


@dataclass
class FhirImportJob:
    id: str
    datastore_id: str
    name: str | None
    status: str
    role_arn: str
    input_uri: str
    output_uri: str
    kms_key_id: str
    validation_level: str
    submitted_at: float
    ended_at: float | None
    message: str | None
    phase_clock: float
    applied: bool
    final_status: str | None
    outputs: dict[str, str] | None
    progress: dict[str, Any]

    @property
    def output_folder(self) -> str:
        """``<S3Uri>/<datastoreId>-FHIR_IMPORT-<jobId>/`` (S3Uri normalised with one trailing slash)."""
        base = self.output_uri if self.output_uri.endswith("/") else self.output_uri + "/"
        return f"{base}{self.datastore_id}-FHIR_IMPORT-{self.id}/"


@dataclass
class Accepted:
    """A resource that passed validation in a job, with where it came from."""

    file: str
    line: int
    resource_type: str
    id: str
    doc: dict[str, Any]


def _job(row: sqlite3.Row) -> FhirImportJob:
    return FhirImportJob(
        id=row["id"], datastore_id=row["datastore_id"], name=row["name"], status=row["status"],
        role_arn=row["role_arn"], input_uri=row["input_uri"], output_uri=row["output_uri"],
        kms_key_id=row["kms_key_id"], validation_level=row["validation_level"],
        submitted_at=row["submitted_at"], ended_at=row["ended_at"], message=row["message"],
        phase_clock=row["phase_clock"], applied=bool(row["applied"]), final_status=row["final_status"],
        outputs=json.loads(row["outputs"]) if row["outputs"] else None,
        progress=json.loads(row["progress"]) if row["progress"] else {},
    )


# ------------------------------------------------------------------------------------------ backend


class HealthLakeBackend:
    """All HealthLake state transitions."""

    def __init__(self, settings: Settings, store: Store, clock: JobClock) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        store.add_schema(SCHEMA, TABLES)

    def datastore_arn(self, datastore_id: str) -> str:
        s = self.settings
        return f"arn:aws:healthlake:{s.region}:{s.account_id}:datastore/fhir/{datastore_id}"

    # ---- data stores

    def _datastore(self, row: sqlite3.Row) -> FhirDatastore:
        status = row["status"]
        ready_at = row["created_clock"] + self.settings.healthlake_datastore_create_seconds
        if status == "CREATING" and self.clock.now() >= ready_at:
            status = "ACTIVE"
            with self.store.write() as conn:
                conn.execute("UPDATE hl_datastores SET status='ACTIVE', updated_at=? WHERE id=? AND status='CREATING'",
                             (time.time(), row["id"]))
        return FhirDatastore(id=row["id"], name=row["name"], status=status, type_version=row["type_version"],
                             config=json.loads(row["config"]), created_at=row["created_at"],
                             arn=self.datastore_arn(row["id"]))

    def create_datastore(self, params: dict[str, Any]) -> FhirDatastore:
        token = params.get("ClientToken")
        digest = _request_hash(params)
        config = {k: params[k] for k in ("SseConfiguration", "PreloadDataConfig", "IdentityProviderConfiguration",
                                         "Tags", "AnalyticsConfiguration", "NlpConfiguration",
                                         "ProfileConfiguration", "BackupConfiguration") if k in params}
        config.setdefault("SseConfiguration", {"KmsEncryptionConfig": {"CmkType": "AWS_OWNED_KMS_KEY"}})
        config.setdefault("IdentityProviderConfiguration",
                          {"AuthorizationStrategy": "AWS_AUTH", "FineGrainedAuthorizationEnabled": False})
        with self.store.write() as conn:
            if token:
                row = replayed_request(conn, "SELECT * FROM hl_datastores WHERE client_token=?", (token,), digest,
                                       ValidationException, TOKEN_REUSED)
                if row is not None:
                    return self._datastore(row)
            ds_id = new_id()
            now = time.time()
            conn.execute(
                "INSERT INTO hl_datastores(id, seq, name, status, type_version, config, client_token, request_hash, "
                "created_at, updated_at, created_clock) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (ds_id, self.store.next_seq(conn, "hl_datastores"), params.get("DatastoreName"), "CREATING",
                 params["DatastoreTypeVersion"], json.dumps(config), token, digest, now, now, self.clock.now()))
            row = conn.execute("SELECT * FROM hl_datastores WHERE id=?", (ds_id,)).fetchone()
        ds = self._datastore(row)
        ds.status = "CREATING"  # the create call always answers CREATING, even with a 0 s create phase
        return ds

    def get_datastore(self, datastore_id: str) -> FhirDatastore:
        with self.store.read() as conn:
            row = conn.execute("SELECT * FROM hl_datastores WHERE id=?", (datastore_id,)).fetchone()
        if row is None:
            raise ResourceNotFoundException(f"Datastore {_safe_id(datastore_id)} does not exist")
        return self._datastore(row)

    def active_datastore(self, datastore_id: str) -> FhirDatastore:
        ds = self.get_datastore(datastore_id)
        if ds.status in ("DELETING", "DELETED"):
            raise ResourceNotFoundException(f"Datastore {ds.id} does not exist")
        if ds.status != "ACTIVE":
            raise ValidationException(f"Datastore {ds.id} is not ACTIVE")
        return ds

    def list_datastores(self, flt: dict[str, Any] | None, token: str | None,
                        max_results: int | None) -> tuple[list[FhirDatastore], str | None]:
        flt = flt or {}
        with self.store.read() as conn:
            rows = conn.execute("SELECT * FROM hl_datastores ORDER BY seq").fetchall()
        items = [self._datastore(r) for r in rows]
        if "DatastoreName" in flt:
            items = [d for d in items if d.name == flt["DatastoreName"]]
        if "DatastoreStatus" in flt:
            items = [d for d in items if d.status == flt["DatastoreStatus"]]
        if "CreatedBefore" in flt:
            items = [d for d in items if d.created_at < flt["CreatedBefore"]]
        if "CreatedAfter" in flt:
            items = [d for d in items if d.created_at > flt["CreatedAfter"]]
        return paginate(items, token, max_results, "datastores:" + canonical(flt))

    def delete_datastore(self, datastore_id: str) -> FhirDatastore:
        ds = self.get_datastore(datastore_id)
        if ds.status == "DELETED":
            raise ResourceNotFoundException(f"Datastore {ds.id} does not exist")
        with self.store.write() as conn:
            busy = conn.execute("SELECT COUNT(*) FROM hl_jobs WHERE datastore_id=? AND status IN (?, ?)",
                                (ds.id, *UNFINISHED)).fetchone()[0]
            if busy:
                raise ConflictException(f"Datastore {ds.id} has import jobs in progress")
            # Deletion is immediate here (AWS: DELETING for a while); the resources go with it.
            conn.execute("UPDATE hl_datastores SET status='DELETED', updated_at=? WHERE id=?", (time.time(), ds.id))
            conn.execute("DELETE FROM hl_resources WHERE datastore_id=?", (ds.id,))
            conn.execute("DELETE FROM hl_identifiers WHERE datastore_id=?", (ds.id,))
        ds.status = "DELETING"
        return ds

    # ---- import jobs

    def start_import(self, params: dict[str, Any]) -> FhirImportJob:
        """Create a SUBMITTED job, or return the job an identical earlier request with this ClientToken made."""
        ds = self.active_datastore(params["DatastoreId"])
        token = params.get("ClientToken")
        digest = _request_hash(params)
        s3conf = params["JobOutputDataConfig"]["S3Configuration"]
        with self.store.write() as conn:
            if token:
                row = replayed_request(conn, "SELECT * FROM hl_jobs WHERE datastore_id=? AND client_token=?",
                                       (ds.id, token), digest, ValidationException, TOKEN_REUSED)
                if row is not None:
                    return _job(row)
            job_id = new_id()
            conn.execute(
                "INSERT INTO hl_jobs(id, seq, datastore_id, name, status, role_arn, input_uri, output_uri, "
                "kms_key_id, validation_level, client_token, request_hash, submitted_at, phase_clock) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (job_id, self.store.next_seq(conn, "hl_jobs"), ds.id, params.get("JobName"), "SUBMITTED",
                 params["DataAccessRoleArn"], params["InputDataConfig"]["S3Uri"], s3conf["S3Uri"],
                 s3conf["KmsKeyId"], params.get("ValidationLevel") or "strict", token, digest, time.time(),
                 self.clock.now()))
            row = conn.execute("SELECT * FROM hl_jobs WHERE id=?", (job_id,)).fetchone()
        return _job(row)

    def job(self, job_id: str) -> FhirImportJob | None:
        with self.store.read() as conn:
            row = conn.execute("SELECT * FROM hl_jobs WHERE id=?", (job_id,)).fetchone()
        return _job(row) if row else None

    def get_job(self, datastore_id: str, job_id: str) -> FhirImportJob:
        self.get_datastore(datastore_id)
        job = self.job(job_id)
        if job is None or job.datastore_id != datastore_id:
            raise ResourceNotFoundException(f"Import job {_safe_id(job_id)} does not exist")
        return job

    def list_jobs(self, datastore_id: str, params: dict[str, Any]) -> tuple[list[FhirImportJob], str | None]:
        self.get_datastore(datastore_id)
        with self.store.read() as conn:
            rows = conn.execute("SELECT * FROM hl_jobs WHERE datastore_id=? ORDER BY seq", (datastore_id,)).fetchall()
        jobs = [_job(r) for r in rows]
        if "JobName" in params:
            jobs = [j for j in jobs if j.name == params["JobName"]]
        if "JobStatus" in params:
            jobs = [j for j in jobs if j.status == params["JobStatus"]]
        if "SubmittedBefore" in params:
            jobs = [j for j in jobs if j.submitted_at < params["SubmittedBefore"]]
        if "SubmittedAfter" in params:
            jobs = [j for j in jobs if j.submitted_at > params["SubmittedAfter"]]
        scope = canonical({k: params.get(k) for k in ("DatastoreId", "JobName", "JobStatus", "SubmittedBefore",
                                                         "SubmittedAfter")})
        return paginate(jobs, params.get("NextToken"), params.get("MaxResults"), "jobs:" + scope)

    def unfinished_jobs(self) -> list[FhirImportJob]:
        with self.store.read() as conn:
            rows = conn.execute("SELECT * FROM hl_jobs WHERE status IN (?, ?) ORDER BY seq", UNFINISHED).fetchall()
        return [_job(r) for r in rows]

    def gate_open(self, job: FhirImportJob) -> bool:
        """Has ``job`` spent its minimum time (on the shared job clock) in its current phase?"""
        return self.clock.now() >= job.phase_clock + self.settings.phase_seconds(job.status)

    def mark_in_progress(self, job_id: str) -> bool:
        with self.store.write() as conn:
            cur = conn.execute("UPDATE hl_jobs SET status='IN_PROGRESS', phase_clock=? WHERE id=? AND status='SUBMITTED'",
                               (self.clock.now(), job_id))
        return cur.rowcount == 1

    def update_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        with self.store.write() as conn:
            conn.execute("UPDATE hl_jobs SET progress=? WHERE id=? AND applied=0", (json.dumps(progress), job_id))

    def apply_import(self, job_id: str, accepted: list[Accepted],
                     build: Callable[[list[int]], tuple[dict[str, str], dict[str, Any], str]]) -> bool:
        """Store the accepted resources and the job's output documents in one transaction.

        ``build`` gets the new version number of each accepted resource and returns ``(outputs, progress,
        final_status)``. Returns False if the job vanished (reset) or was already applied.
        """
        now = time.time()
        stamp = fhir_instant(now)
        with self.store.write() as conn:
            row = conn.execute("SELECT datastore_id, applied FROM hl_jobs WHERE id=?", (job_id,)).fetchone()
            if row is None or row["applied"]:
                return False
            ds_id = row["datastore_id"]
            versions: list[int] = []
            for res in accepted:
                old = conn.execute("SELECT version FROM hl_resources WHERE datastore_id=? AND resource_type=? AND id=?",
                                   (ds_id, res.resource_type, res.id)).fetchone()
                version = (old["version"] + 1) if old else 1
                doc = dict(res.doc)
                meta = dict(doc["meta"]) if isinstance(doc.get("meta"), dict) else {}
                meta.update(versionId=str(version), lastUpdated=stamp)
                doc["meta"] = meta
                conn.execute("INSERT OR REPLACE INTO hl_resources(datastore_id, resource_type, id, version, "
                             "last_updated, doc, job_id) VALUES (?,?,?,?,?,?,?)",
                             (ds_id, res.resource_type, res.id, version, stamp, json.dumps(doc), job_id))
                conn.execute("DELETE FROM hl_identifiers WHERE datastore_id=? AND resource_type=? AND id=?",
                             (ds_id, res.resource_type, res.id))
                conn.executemany("INSERT INTO hl_identifiers(datastore_id, resource_type, id, system, value) "
                                 "VALUES (?,?,?,?,?)",
                                 [(ds_id, res.resource_type, res.id, system, value)
                                  for system, value in identifiers(doc)])
                versions.append(version)
            outputs, progress, final = build(versions)
            conn.execute("UPDATE hl_jobs SET applied=1, outputs=?, progress=?, final_status=? WHERE id=?",
                         (json.dumps(outputs), json.dumps(progress), final, job_id))
        return True

    def finish_job(self, job_id: str, status: str, message: str | None,
                   progress: dict[str, Any] | None = None) -> None:
        with self.store.write() as conn:
            if progress is not None:
                conn.execute("UPDATE hl_jobs SET progress=? WHERE id=?", (json.dumps(progress), job_id))
            conn.execute("UPDATE hl_jobs SET status=?, message=?, ended_at=? WHERE id=?",
                         (status, message, time.time(), job_id))

    # ---- FHIR resources

    def read_resource(self, datastore_id: str, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        with self.store.read() as conn:
            row = conn.execute("SELECT doc FROM hl_resources WHERE datastore_id=? AND resource_type=? AND id=?",
                               (datastore_id, resource_type, resource_id)).fetchone()
        return json.loads(row["doc"]) if row else None

    def search(self, datastore_id: str, resource_type: str, ids: list[str] | None,
               identifier_terms: list[list[tuple[str | None, str | None]]]) -> list[dict[str, Any]]:
        """Resources of one type matching every parameter (AND); values within a parameter are OR-ed.

        ``identifier_terms``: one list per ``identifier`` parameter, each term ``(system, value)`` where None
        means "any" (``value`` alone → any system; ``system|`` → any value; ``|value`` is passed as ``("", v)``
        and matches identifiers without a system).
        """
        sql = "SELECT r.id, r.doc FROM hl_resources r WHERE r.datastore_id=? AND r.resource_type=?"
        args: list[Any] = [datastore_id, resource_type]
        if ids is not None:
            sql += f" AND r.id IN ({','.join('?' * len(ids))})" if ids else " AND 0"
            args.extend(ids)
        for terms in identifier_terms:
            ors = []
            for system, value in terms:
                cond = ["i.datastore_id=r.datastore_id", "i.resource_type=r.resource_type", "i.id=r.id"]
                if value is not None:
                    cond.append("i.value=?")
                    args.append(value)
                if system == "":
                    cond.append("i.system IS NULL")
                elif system is not None:
                    cond.append("i.system=?")
                    args.append(system)
                ors.append("EXISTS (SELECT 1 FROM hl_identifiers i WHERE " + " AND ".join(cond) + ")")
            sql += " AND (" + " OR ".join(ors) + ")" if ors else " AND 0"
        sql += " ORDER BY r.id"
        with self.store.read() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [json.loads(r["doc"]) for r in rows]


def _safe_id(value: str) -> str:
    """Echo an id in a message only if it looks like one (ids are client input)."""
    return value if value.isascii() and value.replace("-", "").isalnum() and len(value) <= 64 else "<invalid>"
