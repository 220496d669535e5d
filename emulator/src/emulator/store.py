"""Persistence: one SQLite database (WAL) plus a content-addressed blob directory, both under ``--data-dir``.

Readers get a per-thread connection and run concurrently (WAL); writers additionally hold one process-wide lock
and run inside ``BEGIN IMMEDIATE`` so a multi-row change (an import job's image sets) is atomic: after a crash a
job is either fully applied or not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS datastores (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, name TEXT NOT NULL, status TEXT NOT NULL,
    kms_key_arn TEXT, lambda_authorizer_arn TEXT, lossless_storage_format TEXT,
    client_token TEXT, request_hash TEXT, tags TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL, updated_at REAL NOT NULL, created_clock REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS datastores_token ON datastores(client_token);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, datastore_id TEXT NOT NULL, name TEXT NOT NULL,
    status TEXT NOT NULL, role_arn TEXT NOT NULL, input_uri TEXT NOT NULL, output_uri TEXT NOT NULL,
    resolved_output_uri TEXT NOT NULL, input_owner TEXT, import_config TEXT,
    client_token TEXT NOT NULL, request_hash TEXT NOT NULL,
    submitted_at REAL NOT NULL, started_at REAL, ended_at REAL, message TEXT,
    phase_clock REAL NOT NULL, release_to TEXT, applied INTEGER NOT NULL DEFAULT 0,
    outputs TEXT, stats TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_token ON jobs(datastore_id, client_token);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE TABLE IF NOT EXISTS image_sets (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, datastore_id TEXT NOT NULL,
    study_uid TEXT NOT NULL, series_uid TEXT NOT NULL, is_primary INTEGER NOT NULL,
    conflict_key TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL, workflow_status TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, dicom_tags TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS image_sets_series ON image_sets(datastore_id, study_uid, series_uid);
CREATE TABLE IF NOT EXISTS image_set_versions (
    image_set_id TEXT NOT NULL, version INTEGER NOT NULL, job_id TEXT,
    state TEXT NOT NULL, workflow_status TEXT NOT NULL, is_primary INTEGER NOT NULL, message TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL,
    patient TEXT NOT NULL, study TEXT NOT NULL, series TEXT NOT NULL,
    PRIMARY KEY (image_set_id, version)
);
-- One row per instance version: visible in image-set versions [first_version, until_version).
CREATE TABLE IF NOT EXISTS instances (
    image_set_id TEXT NOT NULL, sop_uid TEXT NOT NULL, first_version INTEGER NOT NULL,
    until_version INTEGER, doc TEXT NOT NULL, blob_sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    PRIMARY KEY (image_set_id, sop_uid, first_version)
);
CREATE INDEX IF NOT EXISTS instances_current ON instances(image_set_id, until_version);
"""

TABLES = ("datastores", "jobs", "image_sets", "image_set_versions", "instances", "meta")


class Store:
    """SQLite database + blob directory under ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.blob_dir = self.data_dir / "blobs"
        self.blob_dir.mkdir(exist_ok=True)
        # GetImageFrame's lossless-J2K codestreams, by frame id (medicalimaging/frames.py); created on demand.
        self.frame_dir = self.data_dir / "frames"
        self.db_path = self.data_dir / "emulator.sqlite3"
        self._local = threading.local()
        self._write_lock = threading.RLock()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        # Tables added by other service families (add_schema), wiped together with TABLES.
        self._extra_tables: list[str] = []
        with self._write_lock:
            self._conn().executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, timeout=60, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL is crash-safe with WAL (a power cut may lose the last commits, a process crash loses none).
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=60000")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        yield self._conn()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A serialized write transaction; commits on success, rolls back on any exception."""
        with self._write_lock:
            conn = self._conn()
            if conn.in_transaction:  # nested use from the same thread joins the outer transaction
                yield conn
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def next_seq(self, conn: sqlite3.Connection, name: str) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key=?", (f"seq:{name}",)).fetchone()
        value = int(row["value"]) + 1 if row else 1
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (f"seq:{name}", str(value)))
        return value

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self.read() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row["value"] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self.write() as conn:
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def wipe(self) -> None:
        """Delete every row, every blob and every cached frame (``POST /_emulator/reset``)."""
        with self.write() as conn:
            for table in (*TABLES, *self._extra_tables):
                conn.execute(f"DELETE FROM {table}")
            shutil.rmtree(self.blob_dir, ignore_errors=True)
            self.blob_dir.mkdir(exist_ok=True)
            shutil.rmtree(self.frame_dir, ignore_errors=True)

    def add_schema(self, schema: str, tables: Sequence[str]) -> None:
        """Create another family's tables (``CREATE ... IF NOT EXISTS`` script) and include them in :meth:`wipe`."""
        with self._write_lock:
            self._conn().executescript(schema)
            self._extra_tables.extend(t for t in tables if t not in self._extra_tables)

    # ---- content-addressed blobs -------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        return self.blob_dir / sha256[:2] / sha256

    def put_blob(self, data: bytes, sha256: str | None = None) -> str:
        """Store ``data`` under its SHA-256 (once; identical content is written only the first time)."""
        digest = sha256 or hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if path.exists():
            return digest
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)  # atomic: a reader never sees a half-written blob
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return digest

    def get_blob(self, sha256: str) -> bytes:
        return self.blob_path(sha256).read_bytes()

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()
