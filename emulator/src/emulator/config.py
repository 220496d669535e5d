"""Emulator settings: one dataclass, filled from command-line flags or ``HIMIG_EMULATOR_*`` environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulator.sigv4 import DEFAULT_CREDENTIALS as DEFAULT_SIGV4_CREDENTIALS

GB = 1024**3


@dataclass
class Settings:
    """Everything configurable. Defaults are AWS's published quotas (research/healthimaging.md §3).

    Attributes:
        data_dir: SQLite database and content-addressed instance store live here.
        clock: ``auto`` (jobs progress on their own) or ``manual`` (jobs only progress when a test advances the
            clock or a job through ``/_emulator/``).
        submitted_seconds / in_progress_seconds: minimum time a job stays in each phase, on the job clock.
            ``None`` means 0 with the auto clock and 1 with the manual clock, so that with a manual clock a job
            waits for an explicit advance before each transition.
        datastore_create_seconds: how long a new data store stays CREATING.
        threads: S3 GET + parse workers shared by all jobs.
        max_running_jobs: jobs whose files are being read at the same time; others wait in SUBMITTED.
        max_body_bytes: larger request bodies are refused with 413 before being read.
        store_instances: keep each imported P10 file (content-addressed by SHA-256) under ``data_dir/blobs`` so
            GetImageFrame / DICOMweb retrieval can be served later.
        throttling / throttle_rates: per-operation token buckets (AWS rates) answering 429; overrides
            ``{"Op": (rate, burst)}``.
        events: ``auto`` (PutEvents when an EventBridge endpoint is configured), ``on`` or ``off``; the bus,
            an optional webhook, delivery attempts and the image-set id key (``imageSetId``, ``imagesetId``,
            ``both``) of event details.
        faults: fault specs active from start-up (see emulator/faults.py).
    """

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8789
    clock: str = "auto"
    submitted_seconds: float | None = None
    in_progress_seconds: float | None = None
    datastore_create_seconds: float = 0.0
    threads: int = 8
    max_running_jobs: int = 4
    max_files_per_job: int = 5000
    max_bytes_per_job: int = 10 * GB
    max_file_bytes: int = 10 * GB
    max_nested_folders: int = 10000
    max_concurrent_jobs: int = 100
    max_body_bytes: int = 16 * 1024 * 1024
    # HTTP connections: one closes after this long without a request (or with a request's headers or body
    # stalled), and beyond this many open connections a new one is answered 503 and closed (emulator/server.py).
    idle_timeout_seconds: float = 60.0
    max_connections: int = 256
    region: str = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    account_id: str = "123456789012"
    store_instances: bool = True
    # How long (on the job clock) an UpdateImageSetMetadata / CopyImageSet / DeleteImageSet keeps its image sets
    # LOCKED (UPDATING, COPYING, DELETING...) before they become ACTIVE/UPDATED, ACTIVE/COPIED or DELETED.
    mutation_seconds: float = 0.2
    # Storage tiers (medicalimaging/tiers.py): days without a touch before a set moves to Archive Instant Access.
    archive_after_days: float = 30.0
    # Throttling, events and faults (emulator/throttling.py, events.py, faults.py; README "Throttling...").
    throttling: bool = True
    throttle_rates: dict[str, tuple[float, float]] = field(default_factory=dict)
    events: str = "auto"
    event_bus_name: str = "default"
    events_webhook_url: str | None = None
    events_max_attempts: int = 4
    events_image_set_id_key: str = "imageSetId"
    faults: list[dict[str, Any]] = field(default_factory=list)
    # HealthLake subset (emulator/healthlake/, README "HealthLake"): how long a new FHIR data store stays
    # CREATING (on the job clock), and the largest single FHIR resource accepted by import and $validate.
    healthlake_datastore_create_seconds: float = 0.0
    healthlake_max_resource_bytes: int = 5 * 1024 * 1024
    # DICOMweb (emulator/dicomweb/, README "DICOMweb"): auth ``required`` (SigV4 or a bearer token of the OIDC
    # issuer) or ``off``; the issuer, audience and optional JWKS URL; the STOW-RS body limit (AWS: 1 GB).
    dicomweb_auth: str = "required"
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None
    # How far a token's exp/nbf/iat may be off the emulator's clock (AWS does not say; 60 s is common practice).
    oidc_leeway_seconds: float = 60.0
    # SigV4 on DICOMweb: ``verify`` (the signature is recomputed with the secret key from ``sigv4_credentials``:
    # access key id -> secret access key) or ``presence`` (shape and service scope only).
    sigv4: str = "verify"
    sigv4_credentials: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SIGV4_CREDENTIALS))
    dicomweb_max_body_bytes: int = GB

    def phase_seconds(self, phase: str) -> float:
        """Minimum seconds on the job clock that a job spends in ``phase`` (SUBMITTED or IN_PROGRESS)."""
        value = self.submitted_seconds if phase == "SUBMITTED" else self.in_progress_seconds
        if value is None:
            return 1.0 if self.clock == "manual" else 0.0
        return value
