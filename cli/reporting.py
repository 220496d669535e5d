"""Reading and printing a migration's final report from S3."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from activities.report import fhir_line, warnings_line
from contracts.migration import MigrationResult
from contracts.s3uri import parse_s3_uri
from worker.aws import make_client
from worker.settings import Settings


def load_report(settings: Settings, result: MigrationResult, with_files: bool = False) -> tuple[dict[str, Any], list[str]]:
    s3 = make_client("s3", settings, settings.s3_endpoint_url)
    loc = parse_s3_uri(result.report_uri)
    summary = json.loads(s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read())
    rows: list[str] = []
    if with_files:
        floc = parse_s3_uri(result.files_uri)
        rows = s3.get_object(Bucket=floc.bucket, Key=floc.key)["Body"].read().decode().splitlines()
    return summary, rows


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
    if summary.get("unaccounted") or summary.get("accounted_twice"):
        console.print(f"[red]accounting problem: {summary['unaccounted']} files unaccounted, "
                      f"{summary['accounted_twice']} accounted twice[/red]")
    else:
        console.print(f"every one of the {summary['files_total']} source files is accounted for exactly once")
    console.print(f"per-file report: {summary.get('files_uri', '')}")
    for label, key in (("as CSV", "csv_uri"), ("as a page", "html_uri")):
        if summary.get(key):
            console.print(f"  {label}: {summary[key]}")
