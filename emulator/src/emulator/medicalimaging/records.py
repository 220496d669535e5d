"""The HealthImaging records the backend hands out, and the small helpers its modules share.

Records are plain dataclasses (no HTTP shape): ``Datastore``, ``ImportJob``, ``ImageSetVersion``, and the
``FileOutcome`` of reading one input object. The handlers turn them into AWS's response members.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from emulator.medicalimaging.dicom import ParsedInstance
from emulator.persistence import canonical_digest, offset_page

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
    last_accessed_at: float | None = None
    storage_tier: str = "FREQUENT_ACCESS"


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


def job_from_row(row: sqlite3.Row) -> ImportJob:
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



def canonical_line(obj: dict[str, Any]) -> str:
    """One compact JSON line of an output ndjson document."""
    return json.dumps(obj, separators=(",", ":"))
