"""The ``himig`` command line: start and watch migrations, read reports, decide reconciliations.

Local tooling (``himig stack``, ``himig demo``, ``himig corpus``) is not part of this distribution: it lives in
``devstack`` and joins the command through the ``himig.commands`` entry-point group when that is installed
(``make demo`` / ``make test`` install it; a production image does not).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import uuid
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from cli.progress import print_progress, watch_migration
from cli.reporting import load_report, print_report
from cli.sources import SourceFlagError, connector_from_flags
from contracts import search
from contracts.batch import ManifestApproval
from contracts.common import ValidationLevel
from contracts.migration import (
    DATASTORE_ID_PATTERN,
    MAX_BYTES_PER_JOB,
    MAX_FILES_PER_JOB,
    MigrationInput,
    MigrationResult,
    OperatorCommand,
    check_migration_id,
)
from contracts.reconciliation import ReconciliationState
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


async def _client(s: Settings) -> Client:
    from worker.client import TemporalSetupError, connect

    try:
        return await connect(s)
    except TemporalSetupError as err:
        raise fail(str(err), 2) from None
    except ConnectionError as err:
        raise fail(str(err), 1) from None


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def validation_message(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "input"
        lines.append(f"  {field}: {e['msg']}")
    return "invalid migration input:\n" + "\n".join(lines)


@app.command()
def start(
    source: str = typer.Option(..., "--source", help="S3 prefix with the DICOM files (source_s3_uri)"),
    datastore_id: str = typer.Option(..., "--datastore-id", help="HealthImaging data store id"),
    work: str = typer.Option(..., "--work", help="S3 prefix for inventory, staging, output and report (work_s3_uri)"),
    validation_level: ValidationLevel = typer.Option(ValidationLevel.STRUCTURE_ONLY, "--validation-level"),
    max_files_per_batch: int = typer.Option(1000, "--max-files-per-batch", help=f"at most {MAX_FILES_PER_JOB}"),
    max_bytes_per_batch: int = typer.Option(MAX_BYTES_PER_JOB, "--max-bytes-per-batch"),
    max_concurrent_jobs: int = typer.Option(4, "--max-concurrent-jobs"),
    import_start_interval: float = typer.Option(1.0, "--import-start-interval", help="seconds between job starts"),
    data_access_role_arn: str | None = typer.Option(None, "--data-access-role-arn"),
    healthlake_datastore_id: str | None = typer.Option(
        None, "--healthlake-datastore-id", help="route one FHIR ImagingStudy per study into this HealthLake data store"),
    fhir_validation_level: ValidationLevel = typer.Option(ValidationLevel.STRUCTURE_ONLY, "--fhir-validation-level"),
    fhir_validate_first: bool = typer.Option(False, "--fhir-validate-first", help="$validate each resource first"),
    dicomweb_spot_check: int = typer.Option(2, "--dicomweb-spot-check", help="instances per batch read via DICOMweb"),
    migration_id: str | None = typer.Option(None, "--id", help="workflow id (default: migration-<random>)"),
    wait: bool = typer.Option(False, "--wait", help="watch progress until the migration ends"),
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
) -> None:
    """Start a MigrationWorkflow; prints its workflow id."""
    try:
        connector = connector_from_flags(source_dir, source_dicomweb, source_dimse, called_ae, calling_ae, study_uid,
                                         {"study_date_from": study_date_from, "study_date_to": study_date_to,
                                          "modalities": modality, "result_cap": result_cap, "retrieve": retrieve,
                                          "parallel": parallel})
    except SourceFlagError as err:
        raise fail(str(err)) from None
    try:
        payload = MigrationInput.model_validate(dict(
            source_s3_uri=source, datastore_id=datastore_id, work_s3_uri=work, validation_level=validation_level,
            max_files_per_batch=max_files_per_batch, max_bytes_per_batch=max_bytes_per_batch,
            max_concurrent_jobs=max_concurrent_jobs, import_start_interval_seconds=import_start_interval,
            data_access_role_arn=data_access_role_arn, source_connector=connector,
            healthlake_datastore_id=healthlake_datastore_id,
            fhir_validation_level=fhir_validation_level, fhir_validate_first=fhir_validate_first,
            dicomweb_spot_check=dicomweb_spot_check))
    except ValidationError as err:
        raise fail(validation_message(err)) from None
    wid = migration_id or f"migration-{uuid.uuid4().hex[:12]}"
    try:
        check_migration_id(wid)
    except ValueError as err:
        raise fail(f"--id: {err}") from None
    s = settings()

    async def go() -> None:
        client = await _client(s)
        try:
            # A migration id names its work prefix and its import jobs' client tokens: never reuse one.
            await client.start_workflow(MigrationWorkflow.run, payload, id=wid, task_queue=s.task_queue,
                                        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE)
        except WorkflowAlreadyStartedError:
            raise fail(f"a migration with id {wid!r} already exists (running or finished); choose another --id") from None
        console.print(wid)
        if wait:
            await watch_migration(client, wid, console)

    _run(go())


@app.command()
def status(
    migration_id: str = typer.Argument(..., help="workflow id of the migration"),
    as_json: bool = typer.Option(False, "--json", help="print the progress query as JSON"),
    watch: bool = typer.Option(False, "--watch", help="show a live progress bar until it ends"),
) -> None:
    """Show a migration's progress (files per terminal state, batches per stage, throughput, ETA)."""
    s = settings()

    async def go() -> None:
        client = await _client(s)
        if watch:
            await watch_migration(client, migration_id, console)
            return
        handle = client.get_workflow_handle(migration_id)
        try:
            progress = await handle.query(MigrationWorkflow.progress)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise fail(f"no migration with id {migration_id!r}", 1) from None
            raise
        if as_json:
            console.print_json(progress.model_dump_json())
        else:
            print_progress(progress, console)

    _run(go())


@app.command()
def report(
    migration_id: str = typer.Argument(..., help="workflow id of a finished migration"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON summary"),
    files: bool = typer.Option(False, "--files", help="print the per-file NDJSON report"),
) -> None:
    """Print the final report of a finished migration."""
    s = settings()

    async def go() -> None:
        client = await _client(s)
        handle = client.get_workflow_handle_for(MigrationWorkflow.run, migration_id)
        try:
            desc = await handle.describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise fail(f"no migration with id {migration_id!r}", 1) from None
            raise
        if desc.status == WorkflowExecutionStatus.RUNNING:
            raise fail(f"migration {migration_id!r} is still running; see `himig status {migration_id} --watch`", 1)
        try:
            result: MigrationResult = await handle.result()
        except WorkflowFailureError as err:
            raise fail(f"migration {migration_id!r} did not complete: {err.cause}", 1) from None
        summary, rows = load_report(s, result, with_files=files)
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
        command = OperatorCommand(by=by or os.environ.get("USER"), reason=reason)
    except ValidationError as err:
        raise fail(validation_message(err)) from None

    async def go() -> None:
        client = await _client(s)
        handle = client.get_workflow_handle(migration_id)
        try:
            desc = await handle.describe()
            if desc.status != WorkflowExecutionStatus.RUNNING:
                state = desc.status.name if desc.status else "unknown"
                raise fail(f"migration {migration_id!r} is not running (it is {state})", 1)
            await handle.signal(name, command)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise fail(f"no migration with id {migration_id!r}", 1) from None
            raise
        console.print(f"{name} sent to {migration_id}")

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
        async for wf in client.list_workflows(list_query(all_states, datastore_id, migration_id), limit=limit):
            table.add_row(wf.workflow_type, wf.id, wf.status.name if wf.status else "?",
                          wf.typed_search_attributes.get(search.STATE) or "-", f"{wf.start_time:%Y-%m-%d %H:%M:%S}")
        console.print(table)

    _run(go())


REASON = typer.Option(None, "--reason", help="why (recorded in the workflow; no patient data)")
BY = typer.Option(None, "--by", help="who (default: $USER)")


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
    action: str = typer.Option(..., "--action", help="promote | keep | discard"),
    reason: str | None = typer.Option(None, "--reason", help="why (recorded; no patient data)"),
) -> None:
    """Decide a non-primary image set's reconciliation (validated update `decide`; prints the outcome).

    Only on a host holding HIMIG_REVIEWER_ATTESTATION_KEY (an admin host, the local stack): the decision is
    attested as the OS user's, who must be in the workers' HIMIG_RECONCILIATION_REVIEWERS. Elsewhere, decide
    through the codec server (Temporal UI, or `temporal workflow update execute --codec-endpoint`)."""
    import getpass

    from temporalio.common import RawValue

    from contracts.attestation import KEY_VARIABLE, attest
    from contracts.reconciliation import ReconciliationDecision, ReconciliationOutcome
    from workflows.reconciliation import ReconciliationWorkflow

    s = settings()
    key = s.reviewer_attestation_secret()
    if key is None:
        raise fail(
            f"this host has no {KEY_VARIABLE}, so it cannot vouch for who decides. Decide through the codec server: "
            "in the Temporal UI, or with `temporal workflow update execute --workflow-id "
            f"{reconciliation_id} --name decide --input '{{\"action\": \"{action}\", \"reviewer\": \"<you>\", "
            f"\"reason\": \"...\", \"reconciliation_id\": \"{reconciliation_id}\"}}' --codec-endpoint <codec server> "
            "--codec-auth \"Bearer $TOKEN\"`")
    user = getpass.getuser()
    try:
        decision = ReconciliationDecision.model_validate({"action": action, "reviewer": user, "reason": reason,
                                                          "reconciliation_id": reconciliation_id})
    except ValidationError as err:
        raise fail(validation_message(err).replace("migration input", "decision")) from None

    async def go() -> None:
        client = await _client(s)
        [payload] = client.data_converter.payload_converter.to_payloads([decision])
        attest(payload, key, client.namespace, user)
        handle = client.get_workflow_handle_for(ReconciliationWorkflow.run, reconciliation_id)
        try:
            outcome: ReconciliationOutcome = await handle.execute_update(ReconciliationWorkflow.decide,
                                                                         RawValue(payload))
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise fail(f"no reconciliation with id {reconciliation_id!r}", 1) from None
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
        decision = ManifestApproval(approve=approve, reviewer=by or os.environ.get("USER") or "operator", reason=reason)
    except ValidationError as err:
        raise fail(validation_message(err).replace("migration input", "approval")) from None

    async def go() -> None:
        client = await _client(s)
        handle = client.get_workflow_handle_for(ImportBatchWorkflow.run, batch_id)
        try:
            progress = await handle.execute_update(ImportBatchWorkflow.approve_manifest, decision)
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            try:  # an update to a finished workflow is also NOT_FOUND: tell the two apart
                await handle.describe()
            except RPCError:
                raise fail(f"no batch with id {batch_id!r}", 1) from None
            raise fail(f"batch {batch_id!r} is not awaiting approval (it has finished)", 1) from None
        except WorkflowUpdateFailedError as err:
            raise fail(f"approval rejected: {err.cause}", 1) from None
        console.print(f"batch {progress.batch}: {'approved' if approve else 'held back'}")

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
