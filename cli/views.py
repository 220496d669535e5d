"""`himig status` of an id that is not a migration: a batch's stage, a reconciliation's conflict and decisions, an
ingest's buffer. Each reads its workflow's own query; none prints a DICOM value (the queries carry none)."""

from __future__ import annotations

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from temporalio.client import Client

from cli.calls import Calls, CommandError
from cli.targets import Kind, Target
from contracts.batch import BatchProgress
from contracts.ingest import IngestProgress
from contracts.reconciliation import ReconciliationStatus
from workflows.batch import ImportBatchWorkflow
from workflows.ingest import IngestWorkflow
from workflows.migration import MigrationWorkflow
from workflows.plan import PlanWorkflow
from workflows.reconciliation import ReconciliationWorkflow
from workflows.rollback import RollbackWorkflow


async def query_status(client: Client, calls: Calls, target: Target) -> BaseModel:
    """The answer of ``target``'s own progress query (a closed workflow answers too, while a worker polls)."""
    handle = client.get_workflow_handle(target.id)
    what = f"the progress query of {target.id!r}"
    if target.kind is Kind.MIGRATION:
        return await calls.bounded(handle.query(MigrationWorkflow.progress), what)
    if target.kind is Kind.BATCH:
        return await calls.bounded(handle.query(ImportBatchWorkflow.progress), what)
    if target.kind is Kind.RECONCILIATION:
        return await calls.bounded(handle.query(ReconciliationWorkflow.conflict), f"the conflict query of {target.id!r}")
    if target.kind is Kind.ROLLBACK:
        return await calls.bounded(handle.query(RollbackWorkflow.progress), what)
    if target.kind is Kind.PLAN:
        return await calls.bounded(handle.query(PlanWorkflow.progress), what)
    if target.kind in (Kind.VERIFICATION, Kind.SWEEP):
        raise CommandError(f"{target.what()} ({target.status_name}): it answers no progress query; see "
                           f"`temporal workflow show -w {target.id}`")
    return await calls.bounded(handle.query(IngestWorkflow.progress), what)


def print_batch(p: BatchProgress, workflow_id: str, console: Console) -> None:
    table = Table(title=f"batch {workflow_id} — {p.stage.value}", show_header=False)
    table.add_row("import job", f"{p.job_id or '-'} ({p.job_status or 'not started'})")
    table.add_row("staged files", str(p.staged_files))
    for state, n in sorted(p.files_by_state.items()):
        table.add_row(f"  {state.value}", str(n))
    if p.counters_consistent is not None:
        table.add_row("job counters", "consistent" if p.counters_consistent else "inconsistent")
    for problem in p.problems[:5]:
        table.add_row("  problem", problem)
    if p.non_primary_image_sets:
        table.add_row("non-primary image sets", str(len(p.non_primary_image_sets)))
    if p.approval is not None:
        table.add_row("manifest", f"{'approved' if p.approval.approve else 'held back'} by {p.approval.reviewer}")
    for step in p.transitions[-6:]:
        table.add_row(f"  {step.stage.value}", f"{step.at:%Y-%m-%d %H:%M:%S}")
    console.print(table)


def print_reconciliation(s: ReconciliationStatus, workflow_id: str, console: Console) -> None:
    table = Table(title=f"reconciliation {workflow_id} — {s.state.value}", show_header=False)
    table.add_row("image set", f"{s.image_set_id} (non-primary) in data store {s.datastore_id}")
    if s.conflict is not None:
        table.add_row("primary", s.conflict.primary_image_set_id or "-")
        differing = ", ".join(f"{d.level}.{d.attribute}{' *' if d.normalized else ''}"
                              for d in s.conflict.differences)
        table.add_row("differs in", differing or "-")
    if s.decision_deadline:
        table.add_row("decide by", f"{s.decision_deadline:%Y-%m-%d %H:%M:%S} (then escalated)")
    for record in s.decisions[-5:]:
        verdict = "accepted" if record.accepted else f"refused: {record.error}"
        table.add_row(f"  {record.action.value if record.action else '?'}",
                      f"{record.at:%Y-%m-%d %H:%M:%S} by {record.reviewer or '?'} via {record.via}: {verdict}")
    if s.promoted_image_set_id:
        table.add_row("promoted copy", s.promoted_image_set_id)
    if s.error:
        table.add_row("error", s.error)
    console.print(table)
    if s.conflict is not None and any(d.normalized for d in s.conflict.differences):
        console.print("* normalized attribute: its difference is why the image set is non-primary")


def print_ingest(p: IngestProgress, console: Console) -> None:
    table = Table(title=f"ingest {p.ingest_id} — {p.phase}", show_header=False)
    table.add_row("buffered arrivals", str(p.buffered))
    table.add_row("pending flushes", str(p.pending_flushes))
    table.add_row("flushes", f"{p.flushes} ({p.files_flushed} files)")
    table.add_row("duplicates ignored", str(p.duplicates_ignored))
    if p.last_flush is not None:
        f = p.last_flush
        table.add_row("last flush", f"#{f.flush}: {f.files} files, migration {f.migration_id} ({f.status})")
    console.print(table)
