"""``himig plan`` (a dry run: `PlanWorkflow`) and ``himig start --from-plan`` (a migration that reuses a plan).

``himig plan`` takes the flags of ``himig start``, starts `PlanWorkflow` (id ``plan-<random>`` or ``--id``), waits
for it and prints what it predicts; ``--show ID`` prints a finished plan again. ``--from-plan`` finds the plan in
Temporal (it must be a finished `PlanWorkflow`), takes the migration settings the plan was made with (flags given
override the batch and concurrency settings; the source, data store, work prefix and validation level must be the
plan's), and checks before anything starts that the plan's ``plan.json`` exists and that the source is unchanged
since the plan listed it. The migration's own ``adopt_plan`` step checks the same again when it runs.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCStatusCode

from activities.plan_adopt import PlanUnusable, mismatch, read_plan, source_changes
from cli.calls import Calls, CommandError
from cli.start_flags import FLAGS, validation_message
from contracts.migration import MigrationInput, check_migration_id
from contracts.plan import PlanDocument, PlanRequest
from contracts.s3uri import parse_s3_uri
from workflows.plan import PlanWorkflow, plan_workflow_id

# Fields a migration from a plan must share with the plan (its prediction is for exactly these).
FIXED = ("source_s3_uri", "datastore_id", "work_s3_uri", "validation_level", "source_manifest_uri")


def print_plan(doc: PlanDocument, console: Console) -> None:
    b, est = doc.batches, doc.estimate
    console.print(f"plan {doc.plan_id}: {doc.files:,} files, {doc.bytes:,} bytes in {doc.migration.source_s3_uri} "
                  f"(validation level {doc.migration.validation_level.value}, data store {doc.migration.datastore_id})")
    for outcome, n in sorted(doc.predicted_by_outcome.items()):
        console.print(f"  {outcome.value:<20}{n:>10,}")
    if doc.rejected_by_code:
        console.print("  rejected by validation, per code: "
                      + ", ".join(f"{code} {n}" for code, n in doc.rejected_by_code.items()))
    console.print(f"  duplicates within the source: {doc.duplicates_in_source} skipped, "
                  f"{doc.conflicting_duplicates_in_source} conflicting (rejected); already in the data store: "
                  f"{doc.already_imported} skipped, {doc.conflicting_already_imported} conflicting (rejected)")
    console.print(f"  predicted non-primary: {doc.predicted_non_primary_files} files in "
                  f"{doc.predicted_non_primary_series_total} series")
    for s in doc.predicted_non_primary_series[:10]:
        names = ", ".join(s.attributes) or "attributes the data store holds"
        console.print(f"    series {s.series_instance_uid}: {s.files} file(s) against {s.against}: {names}")
    console.print(f"  {b.batches} batches = {b.import_jobs} import jobs ({b.direct_batches} read in place, "
                  f"{b.staged_files:,} files staged), {b.files_to_import:,} files / {b.bytes_to_import:,} bytes; "
                  f"largest {b.largest_batch_files:,} files")
    console.print("  S3 requests: " + ", ".join(f"{k} {v:,}" for k, v in doc.s3_requests.items()))
    console.print(f"  estimated wall time: {_duration(est.total_seconds)} (from this plan: "
                  f"{_duration(est.total_from_plan_seconds)}); receive {est.receive_seconds:.0f}s, parse "
                  f"{est.parse_seconds:.0f}s, plan {est.plan_seconds:.0f}s as measured, import "
                  f"{est.import_seconds:.0f}s over {est.job_slots} job slot(s) at {est.import_files_per_second:g} "
                  f"files/s per job")
    console.print(f"  per-file predictions: {doc.files_uri}")
    console.print(f"  start it: himig start --from-plan {doc.plan_id}")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


async def _describe(client: Client, calls: Calls, plan_id: str) -> Any:
    try:
        return await calls.bounded(client.get_workflow_handle(plan_id).describe(), f"looking up {plan_id!r}")
    except CommandError as err:
        if err.rpc_status == RPCStatusCode.NOT_FOUND:
            raise CommandError(f"no plan with id {plan_id!r} (`himig plan` makes one)") from None
        raise


async def planned_input(client: Client, calls: Calls, plan_id: str) -> MigrationInput:
    """The migration a finished plan was made for (its start input); a CommandError for anything else."""
    desc = await _describe(client, calls, plan_id)
    if desc.workflow_type != PlanWorkflow.__name__:
        raise CommandError(f"{plan_id!r} is a {desc.workflow_type}, not a plan (`himig plan` makes one)")
    if desc.status == WorkflowExecutionStatus.RUNNING:
        raise CommandError(f"plan {plan_id!r} is still running (`himig status {plan_id}` shows its phase): use it "
                           "once it has finished")
    if desc.status != WorkflowExecutionStatus.COMPLETED:
        state = desc.status.name if desc.status else "unknown"
        raise CommandError(f"plan {plan_id!r} ended {state} and predicts nothing: run `himig plan` again")
    history = await calls.bounded(client.get_workflow_handle(plan_id).fetch_history(), f"reading plan {plan_id!r}")
    # The first run's input: what the plan was asked to plan (a continued run carries the same migration).
    started = history.events[0].workflow_execution_started_event_attributes
    (request,) = await client.data_converter.decode(started.input.payloads, [PlanRequest])
    assert isinstance(request, PlanRequest)
    return request.migration


def _same_form(field: str, value: Any) -> str:
    """``value`` as compared: an enum by its value, a prefix with its trailing ``/`` (``s3://b/p`` is ``s3://b/p/``)."""
    text = str(getattr(value, "value", value))
    if field in ("source_s3_uri", "work_s3_uri"):
        try:
            return parse_s3_uri(text, field=field).as_prefix().uri
        except ValueError:
            return text  # (refused below, by the input's own validation, naming the field)
    return text


async def from_plan_input(client: Client, calls: Calls, s3: Any, plan_id: str, given: dict[str, Any]) -> MigrationInput:
    """The migration input for ``--from-plan``: the plan's settings, overridden by the flags ``given`` (None: not
    given), checked against the plan and the source as it is now."""
    planned = await planned_input(client, calls, plan_id)
    for field in FIXED:
        ours, theirs = given.get(field), getattr(planned, field)
        if ours is not None and _same_form(field, ours) != _same_form(field, theirs):
            raise CommandError(f"{FLAGS[field]}: plan {plan_id!r} was made for {theirs}, not {ours}: a plan "
                               f"predicts for one {field.replace('_', ' ')}; plan again for this one", 2)
    data = planned.model_dump(exclude_none=True, exclude={"source_connector", "continued"})
    data |= {k: v for k, v in given.items() if v is not None} | {"from_plan": plan_id}
    try:
        payload = MigrationInput.model_validate(data)
    except ValidationError as err:
        raise CommandError(validation_message(err), 2) from None
    try:
        doc = read_plan(s3, payload.work_s3_uri, plan_id)
        if why := mismatch(doc, payload.source_s3_uri, payload.datastore_id, payload.validation_level.value,
                           payload.source_manifest_uri):
            raise PlanUnusable(why)
        if changes := source_changes(s3, doc, payload.work_s3_uri):
            raise PlanUnusable(f"plan {plan_id!r} is stale: since it listed the source, {changes.describe()}; plan "
                               "again (`himig plan`)")
    except PlanUnusable as err:
        raise CommandError(str(err)) from None
    return payload


async def run_plan(client: Client, calls: Calls, payload: MigrationInput, plan_id: str | None, task_queue: str,
                   wait: bool, console: Console) -> str:
    """Start a plan and print its id; with ``wait``, wait until it has finished. Returns the id."""
    wid = plan_id or plan_workflow_id(uuid.uuid4().hex[:12])
    try:
        check_migration_id(wid)
    except ValueError as err:
        raise CommandError(f"--id: {err}", 2) from None
    request = PlanRequest(migration=payload)
    try:
        handle = await calls.bounded(client.start_workflow(
            PlanWorkflow.run, request, id=wid, task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE), "the start of the plan")
    except WorkflowAlreadyStartedError:
        raise CommandError(f"a workflow with id {wid!r} already exists; choose another --id", 2) from None
    console.print(wid)
    if wait:
        try:
            await handle.result()
        except WorkflowFailureError as err:
            cause = getattr(err.cause, "cause", None) or err.cause
            raise CommandError(f"plan {wid} failed: {cause}") from None
    return wid


async def show_plan(client: Client, calls: Calls, s3: Any, plan_id: str, console: Console,
                    as_json: bool = False) -> PlanDocument:
    planned = await planned_input(client, calls, plan_id)
    try:
        doc = read_plan(s3, planned.work_s3_uri, plan_id)
    except PlanUnusable as err:
        raise CommandError(str(err)) from None
    if as_json:
        console.print_json(doc.model_dump_json())
    else:
        print_plan(doc, console)
    return doc

