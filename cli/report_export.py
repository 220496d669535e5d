"""`himig report ID --html FILE` and `--csv FILE`: the report page and the per-file CSV, written locally.

The page is rendered again from ``report.json`` (not copied from S3) so that it shows where each non-primary
image set's reconciliation stands now: the worker wrote the S3 copy when the reconciliations had just started.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities.report import optional_sections
from activities.report_html import csv_lines, render_html
from contracts.records import LedgerEntry
from contracts.report import ReportDocument
from contracts.s3uri import parse_s3_uri
from worker.aws import make_client
from worker.settings import Settings
from workflows.reconciliation import ReconciliationWorkflow


class ReportExportError(Exception):
    """The report cannot be exported; the message says why (never with patient values)."""


def document_of(summary: dict[str, Any]) -> ReportDocument:
    """``report.json`` as the page reads it; a report that does not fit names the field at fault."""
    try:
        return ReportDocument.model_validate_json(json.dumps(summary, default=str))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ReportExportError(f"report.json cannot be shown: {where}: {first['msg']}") from None


def with_sections(s3: Any, doc: ReportDocument) -> ReportDocument:
    """``doc`` with the plan and verification documents as they are now (a verification runs after the report);
    a report written before there were any is left as it is."""
    if not (doc.plan_uri and doc.verify_uri):
        return doc
    found = optional_sections(s3, parse_s3_uri(doc.plan_uri, field="plan_uri"),
                              parse_s3_uri(doc.verify_uri, field="verify_uri"))
    return doc.model_copy(update={"details": doc.details.model_copy(update=found)})


async def _state(client: Client, workflow_id: str) -> str:
    try:
        status = await client.get_workflow_handle(workflow_id).query(ReconciliationWorkflow.conflict)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return "no reconciliation workflow"
        return f"unknown ({err.status.name if err.status else 'error'})"
    return status.state.value


async def with_reconciliation_states(client: Client, doc: ReportDocument) -> ReportDocument:
    """``doc`` with the current state of each listed non-primary image set's reconciliation workflow."""
    listed = doc.details.non_primary
    if not listed:
        return doc
    states = await asyncio.gather(*(_state(client, s.reconciliation_id) for s in listed))
    sets = [s.model_copy(update={"reconciliation_state": state}) for s, state in zip(listed, states, strict=True)]
    return doc.model_copy(update={"details": doc.details.model_copy(update={"non_primary": sets})})


def write_html(doc: ReportDocument, path: Path) -> None:
    path.write_text(render_html(doc), encoding="utf-8")


def _ndjson_lines(s3: Any, files_uri: str) -> Iterator[LedgerEntry]:
    loc = parse_s3_uri(files_uri, field="files_uri")
    body = s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"]
    for line in body.iter_lines():
        if line.strip():
            yield LedgerEntry.model_validate_json(line)


def write_csv(s3: Any, summary: dict[str, Any], path: Path) -> None:
    """The per-file CSV into ``path``, streamed: the report's own CSV when it has one (reports written before
    there was one: made from its NDJSON lines)."""
    if summary.get("csv_uri"):
        loc = parse_s3_uri(str(summary["csv_uri"]), field="csv_uri")
        with path.open("wb") as out:
            for chunk in s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].iter_chunks(1 << 20):
                out.write(chunk)
        return
    with path.open("w", encoding="utf-8", newline="") as text:
        text.writelines(csv_lines(_ndjson_lines(s3, str(summary["files_uri"]))))


async def export(settings: Settings, client: Client, summary: dict[str, Any], html: Path | None,
                 csv: Path | None) -> list[str]:
    """Write the files asked for; returns a line per file written, for the operator."""
    written = []
    s3 = make_client("s3", settings, settings.s3_endpoint_url)
    if html is not None:
        doc = await with_reconciliation_states(client, with_sections(s3, document_of(summary)))
        _writing("--html", html, lambda: write_html(doc, html))
        written.append(f"HTML report: {html}")
    if csv is not None:
        _writing("--csv", csv, lambda: write_csv(s3, summary, csv))
        written.append(f"per-file CSV ({summary.get('files_total', '?')} files): {csv}")
    return written


def _writing(flag: str, path: Path, write: Callable[[], None]) -> None:
    try:
        write()
    except OSError as err:
        raise ReportExportError(f"{flag} {path}: {err.strerror or err}") from None
