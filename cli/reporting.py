"""Finding, reading and printing a migration's final report from S3."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console
from rich.table import Table
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError

from activities.errors import error_code
from activities.report import fhir_line, warnings_line
from cli.calls import Calls, CommandError
from cli.targets import Target
from contracts import layout
from contracts.migration import MigrationInput, MigrationResult
from contracts.s3uri import parse_s3_uri
from worker.aws import make_client
from worker.settings import Settings
from workflows.migration import MigrationWorkflow


class ReportUris(Protocol):
    @property
    def report_uri(self) -> str: ...

    @property
    def files_uri(self) -> str: ...


@dataclass(frozen=True)
class ReportLocation:
    report_uri: str
    files_uri: str


async def report_location(client: Client, calls: Calls, target: Target) -> ReportUris:
    """Where a closed migration's report is: its result says so when it completed; a migration ended by a standard
    cancel has no result, so its report is found where every report is, under the work prefix of its input."""
    handle = client.get_workflow_handle_for(MigrationWorkflow.run, target.id)
    if target.status == WorkflowExecutionStatus.COMPLETED:
        result: MigrationResult = await calls.bounded(handle.result(), "the migration's result")
        return result
    if target.status == WorkflowExecutionStatus.CANCELED:
        work = await calls.bounded(_work_prefix(client, target.id), "the migration's history")
        return ReportLocation(report_uri=layout.report_document(work, target.id).uri,
                              files_uri=layout.report_files(work, target.id).uri)
    cause = ""
    if target.status == WorkflowExecutionStatus.FAILED:
        try:
            await calls.bounded(handle.result(), "the migration's result")
        except WorkflowFailureError as err:
            cause = f": {' '.join(str(err.cause).split())[:300]}"
    raise CommandError(f"migration {target.id!r} did not complete (it is {target.status_name}){cause}; "
                       "it wrote no report")


async def _work_prefix(client: Client, workflow_id: str) -> str:
    """``work_s3_uri`` from the input of the migration's last run (the first event of its history)."""
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        payloads = event.workflow_execution_started_event_attributes.input.payloads
        [given] = await client.data_converter.decode(payloads, [MigrationInput])
        return str(given.work_s3_uri)
    raise CommandError(f"migration {workflow_id!r} has no history")


def load_report(settings: Settings, result: ReportUris, with_files: bool = False) -> tuple[dict[str, Any], list[str]]:
    s3 = make_client("s3", settings, settings.s3_endpoint_url)
    try:
        loc = parse_s3_uri(result.report_uri)
        summary = json.loads(s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read())
        rows: list[str] = []
        if with_files:
            floc = parse_s3_uri(result.files_uri)
            rows = s3.get_object(Bucket=floc.bucket, Key=floc.key)["Body"].read().decode().splitlines()
    except ClientError as err:
        code = error_code(err)
        if code in ("NoSuchKey", "404"):
            raise CommandError(f"no report at {result.report_uri}: the migration ended before writing it") from None
        raise CommandError(f"cannot read the report at {result.report_uri} ({code}); check the S3 endpoint and "
                           "credentials") from None
    except BotoCoreError as err:
        raise CommandError(f"cannot read the report at {result.report_uri}: {' '.join(str(err).split())[:200]}") \
            from None
    return summary, rows


def plan_line(summary: dict[str, Any]) -> str:
    """For a migration started from a plan: how many files had the predicted outcome ('' otherwise)."""
    plan = (summary.get("details") or {}).get("plan") or {}
    rows = {r.get("label"): r for r in plan.get("rows") or []}
    agreed = rows.get("files with the predicted outcome") or {}
    if agreed.get("planned") is None or agreed.get("actual") is None:
        return ""
    return (f"plan against actual: {agreed['actual']:,.0f} of {agreed['planned']:,.0f} files had the predicted "
            "outcome (the page's Plan against actual section has the rest)")


def print_report(summary: dict[str, Any], console: Console) -> None:
    table = Table(title=f"Migration report — {summary.get('migration_id', '')}")
    table.add_column("outcome")
    table.add_column("files", justify="right")
    for state, n in summary["files_by_state"].items():
        table.add_row(state, str(n))
    table.add_row("[bold]total", f"[bold]{summary['files_total']}")
    console.print(table)
    console.print(f"image sets: {summary['image_sets']} ({summary['primary_image_sets']} primary, "
                  f"{len(summary['non_primary_image_sets'])} non-primary)")
    for image_set in summary["non_primary_image_sets"]:
        console.print(f"  non-primary image set awaiting reconciliation: {image_set}")
    if summary.get("reasons"):
        reasons = Table(title="reasons (rejected / failed / warnings)")
        reasons.add_column("files", justify="right")
        reasons.add_column("reason")
        for reason, n in summary["reasons"].items():
            reasons.add_row(str(n), reason)
        console.print(reasons)
    if warned := warnings_line(summary):
        console.print(f"warnings of imported files (files per code): {warned}", markup=False)
    fhir = summary.get("fhir")
    if fhir:
        console.print(f"FHIR ImagingStudy in HealthLake: {fhir_line(fhir)}")
    if line := plan_line(summary):
        console.print(line)
    if summary.get("unaccounted") or summary.get("accounted_twice"):
        console.print(f"[red]accounting problem: {summary['unaccounted']} files unaccounted, "
                      f"{summary['accounted_twice']} accounted twice[/red]")
    else:
        console.print(f"every one of the {summary['files_total']} source files is accounted for exactly once")
    console.print(f"per-file report: {summary.get('files_uri', '')}")
    for label, key in (("as CSV", "csv_uri"), ("as a page", "html_uri")):
        if summary.get(key):
            console.print(f"  {label}: {summary[key]}")
