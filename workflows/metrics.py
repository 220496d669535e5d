"""Metrics emitted by workflows, through ``workflow.metric_meter()``: the SDK suppresses them while a workflow is
replayed, so each is emitted once per event of history, whatever the caching, eviction or worker restarts
(see `contracts.metrics` for what each means)."""

from __future__ import annotations

from collections.abc import Mapping

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from contracts import metrics
    from contracts.common import FileState


def files_final(counts: Mapping[FileState, int]) -> None:
    """Files that reached their terminal state (the report's totals), once per migration."""
    counter = workflow.metric_meter().create_counter(metrics.FILES.name, metrics.FILES.description, metrics.FILES.unit)
    for state, n in counts.items():
        if n:
            counter.add(n, {"state": FileState(state).value})


def import_job(status: str) -> None:
    """One import job started (``SUBMITTED``) or ended (its terminal status)."""
    workflow.metric_meter().create_counter(
        metrics.IMPORT_JOBS.name, metrics.IMPORT_JOBS.description, metrics.IMPORT_JOBS.unit).add(1, {"status": status})


def ingest_buffer(depth: int) -> None:
    """An ingest workflow's buffer now holds ``depth`` objects."""
    workflow.metric_meter().create_gauge(
        metrics.INGEST_BUFFER.name, metrics.INGEST_BUFFER.description, metrics.INGEST_BUFFER.unit).set(depth)
