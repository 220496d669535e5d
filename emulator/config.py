"""Emulator settings: one dataclass, filled from command-line flags or ``HIMIG_EMULATOR_*`` environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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
    region: str = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    account_id: str = "123456789012"
    store_instances: bool = True

    def phase_seconds(self, phase: str) -> float:
        """Minimum seconds on the job clock that a job spends in ``phase`` (SUBMITTED or IN_PROGRESS)."""
        value = self.submitted_seconds if phase == "SUBMITTED" else self.in_progress_seconds
        if value is None:
            return 1.0 if self.clock == "manual" else 0.0
        return value
