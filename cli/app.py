"""The ``himig`` command line: start and watch migrations, read reports, decide reconciliations.

Local tooling (``himig stack``, ``himig demo``, ``himig corpus``) is not part of this distribution: it lives in
``devstack`` and joins the command through the ``himig.commands`` entry-point group when that is installed
(``make demo`` / ``make test`` install it; a production image does not).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import uuid
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from cli import identity
from cli.calls import Calls, CommandError, rpc_failure
from cli.decisions import update_first
from cli.progress import print_progress, watch_migration
from cli.report_export import ReportExportError, export
from cli.reporting import load_report, print_report
from cli.sources import SourceFlagError, connector_from_flags
from cli.start_flags import FLAGS, field_help, migration_input
from cli.targets import Kind, Target, expect, find, wrong_kind
from contracts import search
from contracts.batch import ManifestApproval
from contracts.common import ValidationLevel
from contracts.migration import (
    DATASTORE_ID_PATTERN,
    OperatorCommand,
    check_migration_id,
)
from contracts.reconciliation import OPEN_STATES, ReconciliationAction, ReconciliationState
from worker.process_exit import exit_code, exit_now
from worker.settings import InvalidSettings, Settings, load_settings
from workflows.migration import MigrationWorkflow

PLUGIN_GROUP = "himig.commands"

app = typer.Typer(help="Durable DICOM → AWS HealthImaging migration.", no_args_is_help=True, add_completion=False)
console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def settings() -> Settings:
    try:
        return load_settings(for_worker=False)
    except InvalidSettings as err:
        raise fail(str(err)) from None


def _calls(s: Settings) -> Calls:
    return Calls(s.temporal().address, s.cli_timeout_seconds)


async def _client(s: Settings) -> Client:
    from worker.client import TemporalSetupError, connect

    calls = _calls(s)
    try:
        # Bounded: a server that accepts the connection and never answers must not hold the command forever.
        return await asyncio.wait_for(connect(s), calls.timeout_seconds)
    except TimeoutError:
        # The transport in words (plaintext, TLS, mTLS): a plaintext client to a TLS port hangs rather than fails.
        raise fail(f"cannot reach Temporal at {calls.address} ({s.temporal().mode()}): no answer within "
                   f"{calls.timeout_seconds:g}s (HIMIG_CLI_TIMEOUT_SECONDS); check HIMIG_TEMPORAL_ADDRESS (or "
                   "TEMPORAL_ADDRESS), that the server is up and that it expects this transport", 1) from None
    except TemporalSetupError as err:
        raise fail(str(err), 2) from None
    except ConnectionError as err:
        raise fail(str(err), 1) from None


def _run(coro: Any) -> Any:
    """Run a command's coroutine; whatever Temporal did wrong ends it with one line and an exit code."""
    try:
        return asyncio.run(coro)
    except CommandError as err:
        raise fail(err.message, err.code) from None
    except RPCError as err:  # a call not wrapped in Calls.bounded: still one line, never a traceback
        raise fail(rpc_failure(err, settings().temporal().address), 1) from None


def validation_message(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "input"
        lines.append(f"  {field}: {e['msg']}")
    return "invalid migration input:\n" + "\n".join(lines)


def _flag(field: str, extra: str = "") -> Any:
    """The `himig start` option of a MigrationInput field: named by cli.start_flags, helped by the model."""
    return typer.Option(None, FLAGS[field], help=field_help(field, extra), show_default=False)


@app.command()
def start(
    source: str | None = typer.Option(None, "--source", help=field_help("source_s3_uri", "(required unless "
                                                                       "--from-plan)"), show_default=False),
    datastore_id: str | None = typer.Option(None, "--datastore-id", help=field_help("datastore_id", "(required "
                                            "unless --from-plan)"), show_default=False),
    work: str | None = typer.Option(None, "--work", help=field_help("work_s3_uri", "(required unless "
                                                                   "--from-plan)"), show_default=False),
    validation_level: ValidationLevel | None = _flag("validation_level"),
    max_files_per_batch: int | None = _flag("max_files_per_batch"),
    max_bytes_per_batch: int | None = _flag("max_bytes_per_batch"),
    inventory_page_size: int | None = _flag("inventory_page_size"),
    max_concurrent_jobs: int | None = _flag("max_concurrent_jobs"),
    max_parallel_pages: int | None = _flag("max_parallel_pages"),
    import_start_interval: float | None = _flag("import_start_interval_seconds", "(seconds)"),
    data_access_role_arn: str | None = _flag("data_access_role_arn"),
    source_owner_account: str | None = _flag("source_owner_account_id"),
    source_manifest_uri: str | None = _flag("source_manifest_uri"),
    manual_review: bool | None = typer.Option(
        None, "--manual-review/--no-manual-review", help=field_help("manual_review", "(decide with "
                                                                    "`himig approve-manifest`)"), show_default=False),
    healthlake_datastore_id: str | None = _flag("healthlake_datastore_id"),
    fhir_validation_level: ValidationLevel | None = _flag("fhir_validation_level"),
    fhir_validate_first: bool | None = typer.Option(
        None, "--fhir-validate-first/--no-fhir-validate-first", help=field_help("fhir_validate_first"),
        show_default=False),
    dicomweb_spot_check: int | None = _flag("dicomweb_spot_check"),
    migration_id: str | None = typer.Option(None, "--id", help="workflow id (default: migration-<random>)"),
    wait: bool = typer.Option(False, "--wait", help="watch progress until the migration ends"),
    dry_run: bool = typer.Option(False, "--dry-run", help="check the flags and print the workflow input JSON; "
                                                          "start nothing"),
    source_dir: str | None = typer.Option(None, "--source-dir", help="pull this directory into --source first (it must be under the worker's HIMIG_SOURCE_DIR_ROOTS)"),
    source_dicomweb: str | None = typer.Option(None, "--source-dicomweb", help="pull this DICOMweb PACS (URL) first"),
    source_dimse: str | None = typer.Option(None, "--source-dimse", help="pull this DIMSE PACS (HOST:PORT) first"),
    called_ae: str | None = typer.Option(None, "--called-ae", help="the DIMSE PACS's AE title"),
    calling_ae: str | None = typer.Option(None, "--calling-ae", help="our AE title as the PACS knows it (HIMIG)"),
    study_uid: list[str] | None = typer.Option(None, "--study-uid", help="pull only this study (repeatable)"),
    study_date_from: str | None = typer.Option(None, "--study-date-from", help="PACS: first study date, YYYY-MM-DD"),
    study_date_to: str | None = typer.Option(None, "--study-date-to", help="PACS: last study date, YYYY-MM-DD"),
    modality: list[str] | None = typer.Option(None, "--modality", help="PACS: only studies with this modality "
                                              "(repeatable)"),
    result_cap: int | None = typer.Option(None, "--result-cap", help="PACS: its maximum matches per search "
                                          "(an answer this long is split by date)"),
    retrieve: str | None = typer.Option(None, "--retrieve", help="DIMSE: get (C-GET, default) or move (C-MOVE to "
                                        "the worker's HIMIG_DIMSE_MOVE_AE_TITLE)"),
    parallel: int | None = typer.Option(None, "--parallel", help="DIMSE: studies retrieved at once (1)"),
    from_plan: str | None = _flag("from_plan", "(the plan's settings apply unless a flag is given)"),
) -> None:
    """Start a MigrationWorkflow; prints its workflow id. Every field of the JSON input has a flag (cli.start_flags);
    a flag left out leaves the field at the workflow's default (with --from-plan: at the plan's)."""
    params = dict(locals())
    flags = _input_flags(params)
    wid = migration_id or f"migration-{uuid.uuid4().hex[:12]}"
    try:
        check_migration_id(wid)
    except ValueError as err:
        raise fail(f"--id: {err}") from None
    if from_plan is not None:
        if _connector(params) is not None:
            raise fail("--from-plan: the plan already pulled its source; leave out --source-dir, --source-dicomweb "
                       "and --source-dimse")
        payload = None
        if dry_run and all(flags[f] is not None for f in REQUIRED_FIELDS):
            payload = _payload(flags | {"from_plan": from_plan}, None)  # nothing to look up: the flags say it all
    else:
        if missing := [FLAGS[f] for f in REQUIRED_FIELDS if flags[f] is None]:
            raise fail(f"{', '.join(missing)}: required (or --from-plan PLAN_ID: a finished plan's settings)")
        payload = _payload(flags, _connector(params))
    if dry_run and payload is not None:
        console.print_json(payload.model_dump_json(exclude_none=True))
        return
    s = settings()

    async def go() -> None:
        client = await _client(s)
        calls = _calls(s)
        nonlocal payload
        if payload is None:
            from cli.plan import from_plan_input
            from worker.aws import make_client

            assert from_plan is not None
            payload = await from_plan_input(client, calls, make_client("s3", s, s.s3_endpoint_url), from_plan, flags)
            if dry_run:
                console.print_json(payload.model_dump_json(exclude_none=True))
                return
        try:
            # A migration id names its work prefix and its import jobs' client tokens: never reuse one.
            await calls.bounded(client.start_workflow(
                MigrationWorkflow.run, payload, id=wid, task_queue=s.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE), "the start of the migration")
        except WorkflowAlreadyStartedError:
            raise fail(f"a migration with id {wid!r} already exists (running or finished); choose another --id") from None
        console.print(wid)
        if wait:
            await watch_migration(client, wid, console, calls=calls)

    _run(go())


REQUIRED_FIELDS = ("source_s3_uri", "datastore_id", "work_s3_uri")


def _input_flags(p: dict[str, Any]) -> dict[str, Any]:
    """`MigrationInput` field → the value of its flag in a `start` or `plan` command's parameters (None: not given)."""
    return dict(
        source_s3_uri=p["source"], datastore_id=p["datastore_id"], work_s3_uri=p["work"],
        validation_level=p["validation_level"], max_files_per_batch=p["max_files_per_batch"],
        max_bytes_per_batch=p["max_bytes_per_batch"], inventory_page_size=p["inventory_page_size"],
        max_concurrent_jobs=p["max_concurrent_jobs"], max_parallel_pages=p["max_parallel_pages"],
        import_start_interval_seconds=p["import_start_interval"], data_access_role_arn=p["data_access_role_arn"],
        source_manifest_uri=p["source_manifest_uri"], manual_review=p["manual_review"],
        source_owner_account_id=p["source_owner_account"], healthlake_datastore_id=p["healthlake_datastore_id"],
        fhir_validation_level=p["fhir_validation_level"], fhir_validate_first=p["fhir_validate_first"],
        dicomweb_spot_check=p["dicomweb_spot_check"])


def _connector(p: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return connector_from_flags(p["source_dir"], p["source_dicomweb"], p["source_dimse"], p["called_ae"],
                                    p["calling_ae"], p["study_uid"],
                                    {"study_date_from": p["study_date_from"], "study_date_to": p["study_date_to"],
                                     "modalities": p["modality"], "result_cap": p["result_cap"],
                                     "retrieve": p["retrieve"], "parallel": p["parallel"]})
    except SourceFlagError as err:
        raise fail(str(err)) from None


def _payload(flags: dict[str, Any], connector: dict[str, Any] | None) -> Any:
    try:
        return migration_input(flags, connector)
    except CommandError as err:
        raise fail(err.message, err.code) from None


# `himig plan` takes exactly `himig start`'s flags for the migration it plans (so the two cannot drift), plus its own.
_NOT_FOR_PLAN = {"migration_id", "wait", "dry_run", "from_plan"}


def plan_cmd(**params: Any) -> None:
    """Dry run of a migration: what it would reject (per code), skip as duplicate, import in how many jobs, which
    series would land non-primary, the S3 requests and the wall time; moves nothing, starts no import job. Takes
    the flags of `himig start`; `--show ID` prints a finished plan again."""
    from cli.plan import run_plan, show_plan
    from worker.aws import make_client

    show, plan_id, no_wait, as_json = (params.pop(k) for k in ("show", "plan_id", "no_wait", "as_json"))
    payload = None
    if show is None:
        flags = _input_flags(params)
        if missing := [FLAGS[f] for f in REQUIRED_FIELDS if flags[f] is None]:
            raise fail(f"{', '.join(missing)}: required (or --show PLAN_ID)")
        payload = _payload(flags, _connector(params))
    s = settings()

    async def go() -> None:
        client = await _client(s)
        calls = _calls(s)
        target = show
        if payload is not None:
            target = await run_plan(client, calls, payload, plan_id, s.task_queue, not no_wait, console)
            if no_wait:
                return
        assert target is not None
        await show_plan(client, calls, make_client("s3", s, s.s3_endpoint_url), target, console, as_json)

    _run(go())


def _plan_signature() -> None:
    import inspect

    own = {
        "show": typer.Option(None, "--show", help="print this finished plan again (its id)"),
        "plan_id": typer.Option(None, "--id", help="workflow id (default: plan-<random>)"),
        "no_wait": typer.Option(False, "--no-wait", help="print the plan's id and return; `--show ID` later"),
        "as_json": typer.Option(False, "--json", help="print plan.json instead of the summary"),
    }
    kinds = {"show": "str | None", "plan_id": "str | None", "no_wait": "bool", "as_json": "bool"}
    base = inspect.signature(start)
    params = [p for name, p in base.parameters.items() if name not in _NOT_FOR_PLAN]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt) for name, opt in own.items()]
    plan_cmd.__signature__ = base.replace(parameters=params)  # type: ignore[attr-defined]
    plan_cmd.__annotations__ = {k: v for k, v in start.__annotations__.items() if k not in _NOT_FOR_PLAN} | kinds


_plan_signature()
app.command("plan")(plan_cmd)


@app.command()
def status(
    workflow_id: str = typer.Argument(..., help="id of a migration (or of a batch, a reconciliation, an ingest)"),
    as_json: bool = typer.Option(False, "--json", help="print the progress query as JSON"),
    watch: bool = typer.Option(False, "--watch", help="show a live progress bar until the migration ends"),
) -> None:
    """Show a migration's progress (files per terminal state, batches per stage, throughput, ETA); given a batch,
    a reconciliation or an ingest id, that workflow's own progress."""
    s = settings()

    async def go() -> None:
        client = await _client(s)
        calls = _calls(s)
        target = await find(client, calls, workflow_id, Kind.MIGRATION)
        if watch:
            expect(target, Kind.MIGRATION, "status --watch")
            await watch_migration(client, workflow_id, console, calls=calls)
            return
        await show_status(client, calls, target, as_json)

    _run(go())


async def show_status(client: Client, calls: Calls, target: Target, as_json: bool) -> None:
    """Print what ``target``'s own progress query answers (saying first what kind of id it is, if not a
    migration)."""
    from cli.views import query_status

    if target.kind is None:
        raise wrong_kind(target, Kind.MIGRATION, "status")
    answer = await query_status(client, calls, target)
    if as_json:
        console.print_json(answer.model_dump_json())
        return
    if target.kind is not Kind.MIGRATION:
        err_console.print(f"{target.what()} ({target.status_name}); its progress:")
    print_status(target, answer)


def print_status(target: Target, answer: Any) -> None:
    from cli.views import print_batch, print_ingest, print_reconciliation

    if target.kind is Kind.MIGRATION:
        print_progress(answer, console)
    elif target.kind is Kind.BATCH:
        print_batch(answer, target.id, console)
    elif target.kind is Kind.RECONCILIATION:
        print_reconciliation(answer, target.id, console)
    elif target.kind in (Kind.ROLLBACK, Kind.PLAN):
        console.print_json(answer.model_dump_json())
    else:
        print_ingest(answer, console)


@app.command()
def report(
    migration_id: str = typer.Argument(..., help="workflow id of a finished migration"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON summary"),
    files: bool = typer.Option(False, "--files", help="print the per-file NDJSON report"),
    html: Path | None = typer.Option(None, "--html", dir_okay=False, help="also write the report as one "
                                     "self-contained HTML page (charts, tables, reconciliation states) to this file"),
    csv: Path | None = typer.Option(None, "--csv", dir_okay=False, help="also write the per-file lines as CSV to "
                                    "this file"),
) -> None:
    """Print the final report of a finished migration (completed, or drained after a cancel)."""
    from cli.reporting import report_location

    s = settings()

    async def go() -> None:
        client = await _client(s)
        calls = _calls(s)
        target = await find(client, calls, migration_id, Kind.MIGRATION)
        if target.kind is not Kind.MIGRATION:
            err_console.print(f"[red]error:[/red] {wrong_kind(target, Kind.MIGRATION, 'report').message}")
            if target.kind is not None:
                with contextlib.suppress(CommandError):  # the progress is a courtesy; the error stands
                    await show_status(client, calls, target, as_json=False)
            raise typer.Exit(1)
        if target.running:
            raise fail(f"migration {migration_id!r} is still running; see `himig status {migration_id} --watch`", 1)
        location = await report_location(client, calls, target)
        summary, rows = load_report(s, location, with_files=files)
        try:
            written = await export(s, client, summary, html, csv)
        except ReportExportError as err:
            raise fail(str(err), 1) from None
        for line in written:
            err_console.print(line, markup=False)
        if files:
            for row in rows:
                sys.stdout.write(row + "\n")
        elif as_json:
            console.print_json(json.dumps(summary))
        else:
            print_report(summary, console)

    _run(go())


def _signal(migration_id: str, name: str, reason: str | None, by: str | None) -> None:
    s = settings()
    try:
        command = OperatorCommand(by=identity.operator(by), reason=reason)
    except ValidationError as err:
        raise fail(validation_message(err).replace("migration input", "operator command")) from None
    except ValueError as err:
        raise fail(str(err)) from None

    async def go() -> None:
        client = await _client(s)
        calls = _calls(s)
        target = expect(await find(client, calls, migration_id, Kind.MIGRATION), Kind.MIGRATION, name)
        if not target.running:
            raise fail(f"migration {migration_id!r} is not running (it is {target.status_name}); "
                       f"see `himig report {migration_id}`", 1)
        await calls.bounded(client.get_workflow_handle(migration_id).signal(name, command), f"the {name} signal")
        console.print(f"{name} sent to {migration_id} (by {command.by})")

    _run(go())


# Reconciliations that wait for an operator (HimigState, see contracts.search).
PENDING_RECONCILIATION_STATES = (ReconciliationState.AWAITING_DECISION, ReconciliationState.ESCALATED)


def list_query(all_states: bool, datastore_id: str | None = None, migration_id: str | None = None) -> str:
    """The visibility query of `himig list` (values are checked by the caller: they are quoted, not escaped)."""
    if all_states:
        query = "WorkflowType IN ('MigrationWorkflow', 'ReconciliationWorkflow')"
    else:
        pending = ", ".join(f"'{s}'" for s in PENDING_RECONCILIATION_STATES)
        query = ("ExecutionStatus = 'Running' AND (WorkflowType = 'MigrationWorkflow' OR "
                 f"(WorkflowType = 'ReconciliationWorkflow' AND {search.STATE.name} IN ({pending})))")
    if datastore_id:
        query += f" AND {search.DATASTORE_ID.name} = '{datastore_id}'"
    if migration_id:
        query += f" AND {search.MIGRATION_ID.name} = '{migration_id}'"
    return query


@app.command("list")
def list_cmd(
    all_states: bool = typer.Option(False, "--all", help="include finished executions and every state"),
    limit: int = typer.Option(50, "--limit", min=1, max=1000),
    datastore_id: str | None = typer.Option(None, "--datastore-id", help="only this data store"),
    migration_id: str | None = typer.Option(None, "--migration-id", help="only this migration (and its reconciliations)"),
) -> None:
    """List running migrations and reconciliations awaiting a decision (search attributes HimigState, ...)."""
    if datastore_id is not None and not re.match(DATASTORE_ID_PATTERN, datastore_id):
        raise fail("--datastore-id: must be 32 lowercase letters and digits")
    if migration_id is not None:
        try:
            check_migration_id(migration_id)
        except ValueError as err:
            raise fail(f"--migration-id: {err}") from None
    s = settings()

    async def go() -> None:
        client = await _client(s)
        table = Table(title="migrations and reconciliations")
        for col in ("type", "workflow id", "status", "state", "started"):
            # Ids are copied into `himig approve`: never wrapped or truncated; the other columns give way.
            table.add_column(col, overflow="fold", no_wrap=col == "workflow id")
        query = list_query(all_states, datastore_id, migration_id)

        async def listed() -> list[Any]:
            return [wf async for wf in client.list_workflows(query, limit=limit)]

        for wf in await _calls(s).bounded(listed(), "the listing"):
            table.add_row(wf.workflow_type, wf.id, wf.status.name if wf.status else "?",
                          wf.typed_search_attributes.get(search.STATE) or "-", f"{wf.start_time:%Y-%m-%d %H:%M:%S}")
        console.print(table)

    _run(go())


REASON = typer.Option(None, "--reason", help="why (recorded in the workflow; no patient data)")
BY = typer.Option(None, "--by", help="who (default: the OS user running himig; never recorded empty)")


@app.command()
def pause(migration_id: str = typer.Argument(...), reason: str | None = REASON, by: str | None = BY) -> None:
    """Stop launching new work; what is in flight finishes."""
    _signal(migration_id, "pause", reason, by)


@app.command()
def resume(migration_id: str = typer.Argument(...), reason: str | None = REASON, by: str | None = BY) -> None:
    """Resume a paused migration."""
    _signal(migration_id, "resume", reason, by)


@app.command()
def cancel(migration_id: str = typer.Argument(...), reason: str | None = REASON, by: str | None = BY) -> None:
    """Drain and finish: submitted import jobs are still reviewed; files never reached are reported Cancelled."""
    _signal(migration_id, "cancel", reason, by)


@app.command()
def approve(
    reconciliation_id: str = typer.Argument(..., help="ReconciliationWorkflow id (recon-<datastore>-<image set>)"),
    action: ReconciliationAction = typer.Option(..., "--action", help="what to do with the non-primary image set"),
    reason: str | None = typer.Option(None, "--reason", help="why (recorded; no patient data)"),
    update: list[str] | None = typer.Option(
        None, "--update", metavar="LEVEL.KEYWORD=VALUE",
        help="promote only: correct this Patient or Study attribute (UpdateImageSetMetadata) before the copy, "
             "e.g. Patient.PatientID=<value>; repeatable. The value is sealed in history and never printed"),
) -> None:
    """Decide a non-primary image set's reconciliation (validated update `decide`; prints the outcome).

    Only on a host holding HIMIG_REVIEWER_ATTESTATION_KEY (an admin host, the local stack): the decision is
    attested as the OS user's, who must be in the workers' HIMIG_RECONCILIATION_REVIEWERS. Elsewhere, decide
    through the codec server (Temporal UI, or `temporal workflow update execute --codec-endpoint`)."""
    from temporalio.common import RawValue

    from contracts.attestation import KEY_VARIABLE, attest
    from contracts.reconciliation import ReconciliationDecision, ReconciliationOutcome
    from workflows.reconciliation import ReconciliationWorkflow

    try:
        corrections = update_first(update)
    except CommandError as err:
        raise fail(err.message, err.code) from None
    s = settings()
    key = s.reviewer_attestation_secret()
    if key is None:
        raise fail(
            f"this host has no {KEY_VARIABLE}, so it cannot vouch for who decides. Decide through the codec server: "
            "in the Temporal UI, or with `temporal workflow update execute --workflow-id "
            f"{reconciliation_id} --name decide --input '{{\"action\": \"{action.value}\", \"reviewer\": \"<you>\", "
            f"\"reason\": \"...\", \"reconciliation_id\": \"{reconciliation_id}\"}}' --codec-endpoint <codec server> "
            "--codec-auth \"Bearer $TOKEN\"`")
    user = identity.os_user()
    try:
        decision = ReconciliationDecision.model_validate({"action": action, "reviewer": user, "reason": reason,
                                                          "reconciliation_id": reconciliation_id,
                                                          "update_first": corrections})
    except ValidationError as err:
        raise fail(validation_message(err).replace("migration input", "decision")) from None

    async def go() -> None:
        client = await _client(s)
        calls = _calls(s)
        target = expect(await find(client, calls, reconciliation_id, Kind.RECONCILIATION), Kind.RECONCILIATION,
                        "approve")
        if not target.running:
            raise fail(f"reconciliation {reconciliation_id!r} has finished (it is {target.status_name}, state "
                       f"{target.state or 'unknown'}): there is nothing left to decide; `himig status "
                       f"{reconciliation_id}` shows its decisions", 1)
        if target.state is not None and target.state not in OPEN_STATES:
            raise fail(f"reconciliation {reconciliation_id!r} is not awaiting a decision (state {target.state})", 1)
        [payload] = client.data_converter.payload_converter.to_payloads([decision])
        attest(payload, key, client.namespace, user)
        handle = client.get_workflow_handle_for(ReconciliationWorkflow.run, reconciliation_id)
        try:
            # Not bounded by HIMIG_CLI_TIMEOUT_SECONDS: the update returns once the decision has been applied (a
            # promote copies the image set); the describe above has shown that Temporal answers.
            outcome: ReconciliationOutcome = await handle.execute_update(ReconciliationWorkflow.decide,
                                                                         RawValue(payload))
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:  # it finished between the describe and the update
                raise fail(f"reconciliation {reconciliation_id!r} has finished: nothing left to decide", 1) from None
            raise
        except WorkflowUpdateFailedError as err:
            raise fail(f"decision rejected: {err.cause}", 1) from None
        console.print_json(outcome.model_dump_json())

    _run(go())


@app.command("approve-manifest")
def approve_manifest(
    batch_id: str = typer.Argument(..., help="ImportBatchWorkflow id (<migration>.batch-NNNNN)"),
    approve: bool = typer.Option(..., "--approve/--hold", help="route the batch, or hold it back"),
    reason: str | None = REASON,
    by: str | None = BY,
) -> None:
    """Manual review gate: decide a batch whose manifest has been reviewed (migrations started with manual review)."""
    from workflows.batch import ImportBatchWorkflow

    s = settings()
    try:
        decision = ManifestApproval(approve=approve, reviewer=identity.operator(by), reason=reason)
    except ValidationError as err:
        raise fail(validation_message(err).replace("migration input", "approval")) from None
    except ValueError as err:
        raise fail(str(err)) from None

    async def go() -> None:
        client = await _client(s)
        calls = _calls(s)
        target = expect(await find(client, calls, batch_id, Kind.BATCH), Kind.BATCH, "approve-manifest")
        if not target.running:
            raise fail(f"batch {batch_id!r} is not awaiting approval (it has finished: {target.status_name})", 1)
        handle = client.get_workflow_handle_for(ImportBatchWorkflow.run, batch_id)
        try:
            progress = await calls.bounded(handle.execute_update(ImportBatchWorkflow.approve_manifest, decision),
                                           "the approval")
        except CommandError as err:
            if err.rpc_status == RPCStatusCode.NOT_FOUND:  # it finished between the describe and the update
                raise fail(f"batch {batch_id!r} is not awaiting approval (it has finished)", 1) from None
            raise
        except WorkflowUpdateFailedError as err:
            raise fail(f"approval rejected: {err.cause}", 1) from None
        console.print(f"batch {progress.batch}: {'approved' if approve else 'held back'} by {decision.reviewer}")

    _run(go())


@app.command("worker")
def worker_cmd() -> None:
    """Run a worker in the foreground (same as ``python -m worker``)."""
    from worker.__main__ import main

    raise typer.Exit(main())


@app.command("codec-server")
def codec_server_cmd(
    host: str | None = typer.Option(None, help="listen address (default HIMIG_CODEC_SERVER_HOST)"),
    port: int | None = typer.Option(None, min=1, max=65535, help="port (default HIMIG_CODEC_SERVER_PORT)"),
) -> None:
    """Serve Temporal's codec-server contract (/encode, /decode) so authorised people see decoded payloads in the
    Temporal UI and in ``temporal workflow show --codec-endpoint``."""
    from worker.client import payload_codec
    from worker.codec_server import CodecServer
    from worker.logs import configure_logging

    s = settings()
    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    server_settings = s.codec_server.model_copy(update=overrides)
    configure_logging(s.log_level, s.log_format)
    try:
        server = CodecServer(server_settings, payload_codec(s), s.temporal().namespace,
                             s.reviewer_attestation_secret())
    except InvalidSettings as err:
        raise fail(str(err)) from None
    except OSError as err:
        raise fail(f"cannot listen on {server_settings.host}:{server_settings.port}: {err.strerror or err}", 1) from None
    server.serve_until_signalled()


@app.command("receive")
def receive_cmd(
    port: int | None = typer.Option(None, min=1, max=65535, help="DICOM port (default HIMIG_RECEIVER_PORT)"),
    host: str | None = typer.Option(None, help="listen address (default HIMIG_RECEIVER_HOST, 127.0.0.1)"),
    ae_title: str | None = typer.Option(None, "--ae-title", help="our AE title (default HIMIG_RECEIVER_AE_TITLE)"),
) -> None:
    """Run the DICOM C-STORE receiver in the foreground: instances pushed to it go to S3 under
    HIMIG_INGEST_SOURCE_S3_URI and into their study's IngestWorkflow (a worker runs the workflows)."""
    from worker.aws import make_client
    from worker.logs import configure_logging
    from worker.receiver import ReceiverStartError, StoreReceiver
    from worker.settings import ReceiverSettings, describe_error

    s = settings()
    overrides = {k: v for k, v in (("port", port), ("host", host), ("ae_title", ae_title)) if v is not None}
    try:
        # Validated again with the flags (init values win over the environment), so a bad flag is named too.
        receiver_settings = ReceiverSettings(**{**s.receiver.model_dump(), **overrides})
    except ValidationError as err:
        raise fail("\n".join(describe_error(err))) from None
    if receiver_settings.port is None:
        raise fail("HIMIG_RECEIVER_PORT (or --port): the DICOM port to listen on is required")
    problems = receiver_settings.problems(s.ingest)
    if problems:
        raise fail("invalid settings for the receiver:\n" + "\n".join(f"  {p}" for p in problems))
    configure_logging(s.log_level, s.log_format)

    async def go() -> None:
        import signal as signals

        client = await _client(s)
        receiver = StoreReceiver(receiver_settings, s.ingest.ingest_input(),
                                 make_client("s3", s, s.s3_endpoint_url), client, s.task_queue)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signals.SIGTERM, signals.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await receiver.run(stop)

    try:
        _run(go())
    except ReceiverStartError as err:
        raise fail(str(err)) from None


@app.command("codec-key")
def codec_key_cmd(key_id: str = typer.Argument(..., help="a name for the new key, e.g. 2026-12")) -> None:
    """Print a new payload-key entry ``KEY-ID:base64``. Rotation: put it first in HIMIG_PAYLOAD_KEYS and keep the
    old entries after it (they still open history sealed with them)."""
    from worker.codec import KeyRing, PayloadKeyError

    try:
        print(KeyRing.generate_entry(key_id))
    except PayloadKeyError as err:
        raise fail(f"KEY_ID: {err}") from None


def add_plugin_commands(target: typer.Typer, plugins: Iterable[EntryPoint] | None = None) -> None:
    """Attach the commands other installed distributions offer (``himig.commands``: a Typer app or a function).

    An entry point named ``demo`` that loads a function becomes ``himig demo``; one that loads a Typer app
    becomes a command group (``himig stack ...``). A plugin that cannot be loaded is skipped with a warning on
    stderr: a broken local tool must not take the operator's own commands down with it.
    """
    found = entry_points(group=PLUGIN_GROUP) if plugins is None else plugins
    for ep in sorted(found, key=lambda e: e.name):
        try:
            loaded = ep.load()
        except Exception as err:  # any import-time failure of someone else's package
            err_console.print(f"[yellow]warning:[/yellow] skipping the `{ep.name}` command ({ep.value}): "
                              f"{type(err).__name__}: {err}")
            continue
        if isinstance(loaded, typer.Typer):
            target.add_typer(loaded, name=ep.name)
        elif callable(loaded):
            target.command(ep.name)(loaded)
        else:
            err_console.print(f"[yellow]warning:[/yellow] skipping the `{ep.name}` command ({ep.value}): "
                              "neither a Typer app nor a function")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            console.print(f"himig {version('himig')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            console.print("himig (not installed: no version)")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                      help="print himig's version and exit"),
) -> None:
    """Durable DICOM → AWS HealthImaging migration."""


add_plugin_commands(app)

def main() -> None:
    """The ``himig`` console script: the Typer app, then an exit that skips interpreter finalization."""
    try:
        app()
    except SystemExit as exit_:
        exit_now(exit_code(exit_))
    exit_now(0)


if __name__ == "__main__":
    main()


@app.command("rollback")
def rollback_cmd(
    migration_id: str = typer.Argument(..., help="workflow id of a finished migration"),
    confirm: int | None = typer.Option(None, "--confirm", help="the number of image sets to delete, as the plan "
                                       "states it (without it: asked, or the rollback waits)"),
    by: str | None = BY,
) -> None:
    """Delete the image sets a finished migration created (never others), after confirming their count."""
    from cli.finished import CommandError
    from cli.rollback import rollback

    s = settings()
    who = identity.operator(by)

    def ask(count: int) -> int | None:
        if not sys.stdin.isatty():
            return None
        answer = typer.prompt(f"type {count} to delete {count} image set(s), anything else to stop", default="")
        return int(answer) if answer.strip().isdigit() else None

    async def go() -> None:
        client = await _client(s)
        try:
            await rollback(client, migration_id, s.task_queue, confirm, who, console, ask)
        except CommandError as err:
            raise fail(str(err), err.code) from None

    _run(go())


def verify_cmd(
    migration_id: str | None = typer.Argument(None, help="workflow id of a finished migration (or --source, or a "
                                              "connector: --source-dir, --source-dicomweb, --source-dimse)"),
    source: str | None = typer.Option(None, "--source", help="verify a bare source instead, s3://bucket/prefix/: "
                                      "every object under it, headers only, no migration needed"),
    datastore_id: str | None = typer.Option(None, "--datastore-id", help="with --source or a connector: the data "
                                            "store to check against"),
    work: str | None = typer.Option(None, "--work", help="with --source or a connector: where the result is "
                                    "written, s3://bucket/prefix/ (under verify-source/<run>/; a connector's "
                                    "source is pulled to verify-source/<run>/landing/)"),
    deep: bool = typer.Option(False, "--deep", help="read each image set's metadata: every SOP instance checked, "
                              "one touch per image set (moves archived sets back to Frequent Access)"),
    attribute: list[str] | None = typer.Option(None, "--attribute", help="with --deep: compare this DICOM keyword "
                                               "with the source header (repeatable; names reported, never values)"),
    pixels: int = typer.Option(0, "--pixels", min=0, max=1000, help="with --deep: compare the frames of this many "
                               "instances (a seeded sample) with the source through GetImageFrame; one touch per "
                               "frame, the source file read whole"),
    seed: int = typer.Option(0, "--seed", min=0, max=2**31 - 1, help="with --pixels: the sample's seed"),
    every: str | None = typer.Option(None, "--every", help="run as a Temporal Schedule every 30m / 6h / 7d, each "
                                     "run publishing its outcome as an event; `off` deletes the schedule"),
    pull: bool = typer.Option(False, "--pull", help="a PACS: pull every file under --work and check what lands, "
                              "instead of what its QIDO-RS / C-FIND listing names (--attribute and --pixels pull)"),
    **connector_flags: Any,
) -> None:
    """Check that a finished migration's instances (or a source's) are in HealthImaging. A source is an S3 prefix
    (--source) or, with `himig start`'s connector flags, a local directory or a DICOMweb / DIMSE PACS: it is pulled
    under --work first, as a migration would pull it, and what was pulled is checked."""
    from cli.finished import CommandError
    from cli.verify import source_input, verify, verify_source

    connector = _connector(connector_flags)
    if migration_id is not None and (source is not None or connector is not None):
        raise fail("give a migration id or a source (--source, or a connector), not both", 2)
    if migration_id is None and source is None and connector is None:
        raise fail("give a migration id, --source s3://bucket/prefix/, or a connector (--source-dir, "
                   "--source-dicomweb, --source-dimse)", 2)
    payload = None
    if migration_id is None:
        try:
            payload = source_input(source, connector, datastore_id, work, deep, list(attribute or []), pixels, seed,
                                   every is not None, pull)
        except CommandError as err:
            raise fail(str(err), err.code) from None
        except ValidationError as err:
            raise fail(validation_message(err).replace("migration input", "verify input")) from None
    elif datastore_id or work or pull:
        raise fail("--datastore-id, --work and --pull go with --source or a connector (a migration names its own)", 2)
    s = settings()

    async def go() -> None:
        client = await _client(s)
        try:
            if payload is not None:
                result = await verify_source(client, payload, s.task_queue, every, console)
            else:
                result = await verify(client, migration_id or "", s.task_queue, deep, list(attribute or []), every,
                                      console, pixels, seed)
        except CommandError as err:
            raise fail(str(err), err.code) from None
        except ValidationError as err:
            raise fail(validation_message(err)) from None
        if result is not None and not result.clean:
            raise typer.Exit(3)

    _run(go())


# `himig verify` takes exactly `himig start`'s source connector flags (cli/sources.py reads them for both).
_CONNECTOR_FLAGS = ("source_dir", "source_dicomweb", "source_dimse", "called_ae", "calling_ae", "study_uid",
                    "study_date_from", "study_date_to", "modality", "result_cap", "retrieve", "parallel")


# Where `himig start`'s help speaks of migrating, `himig verify`'s speaks of verifying.
_VERIFY_HELP = {
    "source_dir": typer.Option(None, "--source-dir", help="verify this directory (under the worker's "
                               "HIMIG_SOURCE_DIR_ROOTS): pulled under --work, then checked"),
    "source_dicomweb": typer.Option(None, "--source-dicomweb", help="verify this DICOMweb PACS (URL) by its "
                                    "QIDO-RS listing (--pull: by pulling it)"),
    "source_dimse": typer.Option(None, "--source-dimse", help="verify this DIMSE PACS (HOST:PORT) by its C-FIND "
                                 "listing (--pull: by pulling it)"),
}


def _verify_signature() -> None:
    import inspect

    own = inspect.signature(verify_cmd)
    start_params = inspect.signature(start).parameters
    params = [p for p in own.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
    params += [start_params[name].replace(kind=inspect.Parameter.KEYWORD_ONLY, default=_VERIFY_HELP.get(
        name, start_params[name].default)) for name in _CONNECTOR_FLAGS]
    verify_cmd.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
    verify_cmd.__annotations__ = ({k: v for k, v in verify_cmd.__annotations__.items() if k != "connector_flags"}
                                  | {k: start.__annotations__[k] for k in _CONNECTOR_FLAGS})


_verify_signature()
app.command("verify")(verify_cmd)


@app.command("retry")
def retry_cmd(
    migration_id: str = typer.Argument(..., help="workflow id of a finished migration"),
    include_rejected: bool = typer.Option(False, "--include-rejected", help="also the files rejected by validation "
                                          "(after fixing them, or with a relaxed --validation-level)"),
    validation_level: ValidationLevel | None = typer.Option(None, "--validation-level",
                                                            help="default: the earlier migration's"),
    new_id: str | None = typer.Option(None, "--id", help="workflow id (default: <id>-retry-<n>)"),
    wait: bool = typer.Option(False, "--wait", help="watch progress until the retry ends"),
) -> None:
    """Start a new migration over exactly the files an earlier one did not import."""
    from cli.finished import CommandError
    from cli.retry import retry
    from worker.aws import make_client

    if new_id is not None:
        try:
            check_migration_id(new_id)
        except ValueError as err:
            raise fail(f"--id: {err}") from None
    s = settings()

    async def go() -> None:
        client = await _client(s)
        s3 = make_client("s3", s, s.s3_endpoint_url)
        try:
            handle = await retry(client, s3, migration_id, s.task_queue, include_rejected, validation_level, new_id,
                                 console)
        except CommandError as err:
            raise fail(str(err), err.code) from None
        if handle is not None and wait:
            await watch_migration(client, handle.id, console)

    _run(go())
