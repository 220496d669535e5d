"""Rendering a migration's `progress` query: a one-shot table and a live progress bar."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from cli.calls import Calls, CommandError
from contracts.batch import BatchProgress
from contracts.migration import MigrationProgress, batch_workflow_id
from workflows.batch import ImportBatchWorkflow
from workflows.migration import MigrationWorkflow


def print_progress(p: MigrationProgress, console: Console) -> None:
    table = Table(title=f"migration {p.migration_id} — {p.phase}", show_header=False)
    table.add_row("files", f"{p.files_done}/{p.files_total} done ({p.bytes_total:,} bytes)")
    for state, n in sorted(p.files_by_state.items()):
        table.add_row(f"  {state.value}", str(n))
    table.add_row("inventory pages", f"{p.pages_done}/{p.inventory_pages} parsed")
    table.add_row("batches", ", ".join(f"{k} {v}" for k, v in p.batches_by_stage.items()) + f" of {p.batches_planned}")
    table.add_row("image sets", f"{p.image_sets} ({p.non_primary_image_sets} non-primary)")
    if p.fhir_imported or p.fhir_refused:
        table.add_row("FHIR ImagingStudy", f"{p.fhir_imported} imported, {p.fhir_refused} refused")
    table.add_row("throughput", f"{p.files_per_second:.1f} files/s" + (f", ETA {p.eta_seconds:.0f}s" if p.eta_seconds else ""))
    if p.paused or p.cancel_requested:
        table.add_row("operator", ("paused " if p.paused else "") + ("cancel requested" if p.cancel_requested else ""))
    for action in p.operator_log[-3:]:
        table.add_row(f"  {action.action}", f"{action.at:%Y-%m-%d %H:%M:%S} by {action.by or '?'}: {action.reason or ''}")
    if p.report_uri:
        table.add_row("report", p.report_uri)
    console.print(table)


async def batch_stages(client: Client, migration_id: str, batches: list[int],
                       calls: Calls | None = None) -> dict[int, BatchProgress]:
    """Ask each running batch workflow for its stage (queries add nothing to history); a batch that does not
    answer (finished meanwhile, or slow) is left out of this round."""
    out: dict[int, BatchProgress] = {}
    for batch in batches:
        handle = client.get_workflow_handle(batch_workflow_id(migration_id, batch))
        try:
            if calls is None:
                out[batch] = await handle.query(ImportBatchWorkflow.progress)
            else:
                out[batch] = await calls.bounded(handle.query(ImportBatchWorkflow.progress), "a batch's query")
        except (RPCError, CommandError):
            continue
    return out


def _eta(p: MigrationProgress) -> str:
    if p.eta_seconds is None:
        return "ETA -" if p.phase != "completed" else ""
    return f"ETA {timedelta(seconds=round(p.eta_seconds))}"


# A query may fail while the run continues as new, or once when the worker restarts: so many misses in a row,
# and the watch gives up with the last one's message.
QUERY_MISSES = 5


async def watch_migration(client: Client, migration_id: str, console: Console, interval: float = 0.5,
                          calls: Calls | None = None) -> MigrationProgress:
    """Live progress bar (with the workflow's ETA) until the migration leaves RUNNING; returns the last progress.

    With ``calls``, every call is bounded in time: a Temporal that hangs or goes away ends the watch with a
    `CommandError` (one line) instead of freezing it or printing a traceback.
    """
    bounded = calls or Calls("Temporal", 3600.0)
    handle = client.get_workflow_handle(migration_id)
    last: MigrationProgress | None = None
    misses = 0
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[eta]}"), TextColumn("{task.fields[detail]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("starting", total=None, detail="", eta="")
        while True:
            try:
                last = await bounded.bounded(handle.query(MigrationWorkflow.progress), "the progress query")
                misses = 0
            except CommandError:
                misses += 1
                if misses >= QUERY_MISSES:
                    raise
            desc = await bounded.bounded(handle.describe(), "a describe of the migration")
            if last:
                stages = await batch_stages(client, migration_id, last.running_batches, calls)
                detail = " ".join(f"b{b}:{p.stage.value}" for b, p in sorted(stages.items()))
                bar.update(task, description=last.phase, total=last.files_total or None, completed=last.files_done,
                           eta=_eta(last), detail=f"batches {last.batches_done}/{last.batches_planned} {detail}")
            if desc.status != WorkflowExecutionStatus.RUNNING:
                break
            await asyncio.sleep(interval)
    if last is None:
        raise CommandError(f"migration {migration_id!r} answered no progress query (is a worker polling its task "
                           "queue?)")
    if desc.status != WorkflowExecutionStatus.COMPLETED:
        console.print(f"migration {migration_id} ended {desc.status.name if desc.status else 'unknown'}")
    return last
