"""Rendering a migration's `progress` query: a one-shot table and a live progress bar."""

from __future__ import annotations

import asyncio

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

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


async def batch_stages(client: Client, migration_id: str, batches: list[int]) -> dict[int, BatchProgress]:
    """Ask each running batch workflow for its stage (queries add nothing to history)."""
    out: dict[int, BatchProgress] = {}
    for batch in batches:
        try:
            handle = client.get_workflow_handle(batch_workflow_id(migration_id, batch))
            out[batch] = await handle.query(ImportBatchWorkflow.progress)
        except RPCError:
            continue
    return out


async def watch_migration(client: Client, migration_id: str, console: Console, interval: float = 0.5) -> MigrationProgress:
    """Live progress bar until the migration leaves RUNNING; returns the last progress."""
    handle = client.get_workflow_handle(migration_id)
    last: MigrationProgress | None = None
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[detail]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("starting", total=None, detail="")
        while True:
            try:
                last = await handle.query(MigrationWorkflow.progress)
            except RPCError:
                last = last  # the run may be between continue-as-new runs; ask again
            desc = await handle.describe()
            if last:
                stages = await batch_stages(client, migration_id, last.running_batches)
                detail = " ".join(f"b{b}:{p.stage.value}" for b, p in sorted(stages.items()))
                bar.update(task, description=last.phase, total=last.files_total or None, completed=last.files_done,
                           detail=f"batches {last.batches_done}/{last.batches_planned} {detail}")
            if desc.status != WorkflowExecutionStatus.RUNNING:
                break
            await asyncio.sleep(interval)
    if last is None:
        raise RuntimeError(f"migration {migration_id} answered no progress query")
    return last
