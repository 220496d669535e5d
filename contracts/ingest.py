"""Inputs, messages and progress of event-driven ingestion (`IngestWorkflow`).

S3 ObjectCreated events reach a listener in the worker, which signals each object as an `Arrival` into one
`IngestWorkflow` per (data store, study). The workflow buffers arrivals and flushes them as a source manifest
into a child `MigrationWorkflow`.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_validator

from contracts.common import Bool, Closed, FileState, Float, Int, ValidationLevel
from contracts.migration import HEALTHLAKE_DATASTORE_ID_PATTERN, Count, SourceAndTarget
from contracts.records import InventoryEntry
from contracts.s3uri import parse_s3_uri

# Arrivals ride in workflow payloads (signals, continue-as-new input, the manifest activity's input): this bound
# keeps those payloads far below Temporal's 2 MiB limit even with long keys.
MAX_FILES_PER_FLUSH = 2_000
# How many already-flushed (key, etag) marks a workflow chain remembers to drop late duplicate events.
RECENT_FLUSHED_LIMIT = 5_000


class Arrival(Closed):
    """One object that appeared under the watched prefix (from an S3 event notification).

    ``sequencer`` is S3's per-key ordering token (hex, compare after left-padding); when either side lacks it,
    ``event_time`` orders events for the same key.
    """

    key: str = Field(min_length=1, max_length=1024)
    size: Int = Field(ge=0)
    etag: str = Field("", max_length=1024)
    event_time: datetime
    sequencer: str | None = Field(None, max_length=64)

    def is_newer_than(self, other: Arrival) -> bool:
        if self.sequencer and other.sequencer and self.sequencer != other.sequencer:
            return self.sequencer.rjust(32, "0") > other.sequencer.rjust(32, "0")
        return self.event_time > other.event_time

    def entry(self) -> InventoryEntry:
        return InventoryEntry(key=self.key, size=self.size, etag=self.etag)


class FlushedMark(Closed):
    """What a chain remembers of a flushed object: enough to drop a duplicate or older event for it."""

    etag: str
    event_time: datetime
    sequencer: str | None = None


class FlushSummary(Closed):
    """Outcome of one flush (one child `MigrationWorkflow`)."""

    flush: Count
    migration_id: str
    manifest_uri: str
    files: Count
    status: Literal["completed", "failed"]
    files_by_state: dict[FileState, Count] = Field(default_factory=dict)
    report_uri: str | None = None
    files_uri: str | None = None
    error: str | None = None


class PendingFlush(Closed):
    """A manifest already written (spilled while another flush ran) and not yet migrated: only a pointer."""

    flush: Count
    manifest_uri: str
    files: Count


class IngestState(Closed):
    """State carried across continue-as-new: unflushed arrivals and counts, nothing unbounded. Written by the
    workflow alone: a run that was not continued from one of its own runs refuses it (`workflows.carried`)."""

    buffer: list[Arrival] = Field(default_factory=list)
    # Arrivals spilled to S3 while a flush ran, oldest first; migrated in this order before the buffer.
    pending: list[PendingFlush] = Field(default_factory=list)
    first_buffered_at: datetime | None = None
    last_arrival_at: datetime | None = None
    flushes: Count = 0
    files_flushed: Count = 0
    duplicates_ignored: Count = 0
    # `arrived` signals whose input was not an `Arrival`: counted and logged (naming the fields), never dropped.
    arrivals_rejected: Count = 0
    last_flush: FlushSummary | None = None
    # sha256(key)[:24] -> mark; keys are hashed so the carried state stays small.
    recent: dict[str, FlushedMark] = Field(default_factory=dict)
    runs: Annotated[Int, Field(ge=1)] = 1


class IngestInput(SourceAndTarget):
    """Input of `IngestWorkflow` (plain JSON; the listener builds it from `IngestSettings`).

    ``source_s3_uri`` is the watched prefix (every flush migrates keys under it); ``work_s3_uri`` holds the
    ingest manifests and the flushes' migration data.
    """

    quiet_seconds: Float = Field(30.0, gt=0, le=86_400, description="flush after this long without an arrival")
    max_files: Int = Field(1_000, ge=1, le=MAX_FILES_PER_FLUSH, description="flush as soon as this many are buffered")
    max_wait_seconds: Float = Field(600.0, gt=0, le=7 * 86_400,
                                    description="flush this long after the first buffered arrival, even while files keep coming")
    continued: IngestState | None = Field(
        None, description="internal: set by the workflow itself when it continues as new; a start with it fails")
    # Each flush's migration routes its study to HealthLake as a migration does (the batches' FHIR stage), so a
    # study gets its ImagingStudy with its first flush and an updated one (same id) with every flush that grows it.
    healthlake_datastore_id: Annotated[str | None, Field(
        pattern=HEALTHLAKE_DATASTORE_ID_PATTERN,
        description="HealthLake data store receiving one ImagingStudy per arrived study; unset = no FHIR routing")] = None
    fhir_validation_level: ValidationLevel = Field(
        ValidationLevel.STRUCTURE_ONLY, description="ValidationLevel of the flushes' HealthLake import jobs")
    fhir_validate_first: Bool = Field(
        False, description="call $validate on each resource first; failures are reported instead of imported")

    @model_validator(mode="after")
    def _checks(self) -> IngestInput:
        if self.max_wait_seconds < self.quiet_seconds:
            raise ValueError("max_wait_seconds must be at least quiet_seconds")
        if self.healthlake_datastore_id is None and self.fhir_validate_first:
            raise ValueError("fhir_validate_first needs healthlake_datastore_id (FHIR routing is off without it)")
        return self


class IngestManifestInput(BaseModel):
    """Input of the `write_ingest_manifest` activity."""

    ingest_id: str
    work_s3_uri: str
    source_s3_uri: str
    flush_hint: int = Field(ge=1, description="the flush number this chain expects; the activity may pick a later one")
    arrivals: list[Arrival]


class IngestManifest(BaseModel):
    flush: int
    manifest_uri: str
    files: int
    bytes: int


class IngestProgress(BaseModel):
    """Answer of the `progress` query on `IngestWorkflow`."""

    ingest_id: str
    phase: str
    buffered: int
    pending_flushes: int = 0
    flushes: int
    files_flushed: int
    duplicates_ignored: int
    arrivals_rejected: int = 0
    runs: int
    last_flush: FlushSummary | None = None


class IngestResult(BaseModel):
    ingest_id: str
    flushes: int
    files_flushed: int
    duplicates_ignored: int
    last_flush: FlushSummary | None = None


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def ingest_workflow_id(datastore_id: str, study_instance_uid: str | None, bucket: str, key: str) -> str:
    """``ingest-<datastore>-<sha256(study uid)[:16]>``: no PHI in the id.

    An object without a readable StudyInstanceUID is keyed by its folder instead, so it still flows through the
    pipeline (and gets its `rejected` verdict) next to its neighbours.
    """
    basis = study_instance_uid if study_instance_uid else f"folder:{bucket}/{key.rpartition('/')[0]}/"
    return f"ingest-{datastore_id}-{hashlib.sha256(basis.encode()).hexdigest()[:16]}"


def flush_migration_id(ingest_id: str, flush: int) -> str:
    return f"{ingest_id}.flush-{flush:05d}"


def in_prefix(source_s3_uri: str, bucket: str, key: str) -> bool:
    src = parse_s3_uri(source_s3_uri, field="source_s3_uri").as_prefix()
    return bucket == src.bucket and key.startswith(src.key) and not key.endswith("/")
