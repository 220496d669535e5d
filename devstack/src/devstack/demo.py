"""``himig demo`` / ``make demo``: the whole product on one machine, end to end.

Starts the local stack, generates the bundled sample corpus (real pydicom test files, a synthetic multi-study
set, malformed files and a pair that makes a non-primary image set), uploads it to the local S3, runs a real
`MigrationWorkflow` with a live progress bar and prints the report, checked against the corpus manifest.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from cli.progress import watch_migration
from cli.report_export import export
from cli.reporting import load_report, print_report
from contracts.common import ValidationLevel
from contracts.migration import MigrationInput, MigrationResult
from contracts.reconciliation import reconciliation_workflow_id
from devstack.stack import Stack, StackConfig, StackError
from worker.aws import make_client
from worker.client import connect
from worker.settings import Settings
from workflows.migration import MigrationWorkflow

SOURCE_BUCKET, WORK_BUCKET = "himig-source", "himig-work"
SOURCE_PREFIX = "demo/sample/"
DATASTORE_NAME = "himig-demo"


def upload_corpus(s3: Any, root: Path, bucket: str, prefix: str, skip: set[str]) -> int:
    """Upload every file under ``root`` (except the manifest), skipping objects already there with the same size."""
    existing = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        existing.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    uploaded = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in skip:
            continue
        key = prefix + rel
        if existing.get(key) == path.stat().st_size:
            continue
        s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
        uploaded += 1
    return uploaded


def ensure_datastore(mi: Any, name: str, timeout: float = 60.0) -> str:
    """The ACTIVE data store called ``name``, created (idempotently) when there is none."""
    for page in mi.get_paginator("list_datastores").paginate(datastoreStatus="ACTIVE"):
        for summary in page.get("datastoreSummaries", []):
            if summary["datastoreName"] == name:
                return str(summary["datastoreId"])
    ds = mi.create_datastore(datastoreName=name, clientToken=f"himig-{name}")["datastoreId"]
    deadline = time.monotonic() + timeout
    while mi.get_datastore(datastoreId=ds)["datastoreProperties"]["datastoreStatus"] != "ACTIVE":
        if time.monotonic() > deadline:
            raise TimeoutError(f"data store {ds} did not become ACTIVE within {timeout}s")
        time.sleep(0.2)
    return str(ds)


def ensure_fhir_datastore(hl: Any, name: str, timeout: float = 60.0) -> str:
    """The ACTIVE HealthLake (FHIR R4) data store called ``name``, created when there is none."""
    token: str | None = None
    for _ in range(1000):  # botocore has no HealthLake paginators; pages are followed by hand, bounded
        page = hl.list_fhir_datastores(Filter={"DatastoreName": name, "DatastoreStatus": "ACTIVE"},
                                       **({"NextToken": token} if token else {}))
        for props in page.get("DatastorePropertiesList", []):
            if props["DatastoreName"] == name and props["DatastoreStatus"] == "ACTIVE":
                return str(props["DatastoreId"])
        token = page.get("NextToken")
        if not token:
            break
    ds = hl.create_fhir_datastore(DatastoreName=name, DatastoreTypeVersion="R4", ClientToken=f"himig-{name}")["DatastoreId"]
    deadline = time.monotonic() + timeout
    while hl.describe_fhir_datastore(DatastoreId=ds)["DatastoreProperties"]["DatastoreStatus"] != "ACTIVE":
        if time.monotonic() > deadline:
            raise TimeoutError(f"FHIR data store {ds} did not become ACTIVE within {timeout}s")
        time.sleep(0.2)
    return str(ds)


def check_against_manifest(rows: list[str], prefix: str, expected_paths: set[str]) -> list[str]:
    """Problems when the report does not list every corpus file exactly once."""
    import json

    seen: dict[str, int] = {}
    for line in rows:
        key = json.loads(line)["key"]
        seen[key] = seen.get(key, 0) + 1
    problems = [f"{p}: missing from the report" for p in sorted(expected_paths) if prefix + p not in seen]
    problems += [f"{k}: reported {n} times" for k, n in seen.items() if n != 1]
    return problems


def run_demo(console: Console, validation_level: ValidationLevel = ValidationLevel.STRUCTURE_ONLY,
             leave_running: bool = True) -> int:
    from corpus.sample import build_sample_corpus

    started = time.monotonic()
    stack = Stack(StackConfig(), on_event=lambda msg: console.print(f"[dim]{msg}[/dim]"))
    try:
        stack.up()
    except StackError as err:
        console.print(f"[red]local stack failed:[/red] {err}")
        return err.exit_code
    os.environ.update(stack.env())
    settings = Settings()
    corpus_dir = stack.root / "corpus" / "sample"
    manifest = build_sample_corpus(corpus_dir)
    s3 = make_client("s3", settings, settings.s3_endpoint_url)
    uploaded = upload_corpus(s3, corpus_dir, SOURCE_BUCKET, SOURCE_PREFIX, {"corpus-manifest.json"})
    console.print(f"sample corpus: {len(manifest.entries)} files ({uploaded} uploaded now) "
                  f"at s3://{SOURCE_BUCKET}/{SOURCE_PREFIX}")
    mi = make_client("medical-imaging", settings, settings.medical_imaging_endpoint_url)
    datastore_id = ensure_datastore(mi, DATASTORE_NAME)
    console.print(f"data store {DATASTORE_NAME}: {datastore_id}")
    fhir_datastore_id = ensure_fhir_datastore(make_client("healthlake", settings, settings.healthlake_endpoint_url),
                                              DATASTORE_NAME)
    console.print(f"HealthLake data store {DATASTORE_NAME}: {fhir_datastore_id} (one ImagingStudy per study)")
    migration_id = "demo-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    payload = MigrationInput(source_s3_uri=f"s3://{SOURCE_BUCKET}/{SOURCE_PREFIX}", datastore_id=datastore_id,
                             work_s3_uri=f"s3://{WORK_BUCKET}/migrations/", validation_level=validation_level,
                             max_files_per_batch=25, inventory_page_size=50, max_concurrent_jobs=4,
                             healthlake_datastore_id=fhir_datastore_id)

    page = stack.root / "reports" / f"{migration_id}.html"

    async def go() -> tuple[MigrationResult, dict[str, Any], list[str]]:
        client = await connect(settings)
        handle = await client.start_workflow(MigrationWorkflow.run, payload, id=migration_id,
                                             task_queue=settings.task_queue)
        console.print(f"started MigrationWorkflow {migration_id}")
        await watch_migration(client, migration_id, console)
        result = await handle.result()
        summary, rows = load_report(settings, result, with_files=True)
        # The HTML report with each reconciliation's state as it stands now (as `himig report --html` writes it).
        page.parent.mkdir(parents=True, exist_ok=True)
        await export(settings, client, summary, page, None)
        return result, summary, rows

    result, summary, rows = asyncio.run(go())
    print_report(summary, console)
    problems = check_against_manifest(rows, SOURCE_PREFIX, {e.path for e in manifest.entries})
    for problem in problems:
        console.print(f"[red]{problem}[/red]")
    console.print(f"report: {result.report_uri}\nsummary: {result.summary_uri}\nHTML report: {page} "
                  "(open it in a browser; also next to report.json as report.html)")
    for image_set in summary.get("non_primary_image_sets", []):
        console.print(f"reconciliation waiting for a decision: himig approve {reconciliation_workflow_id(datastore_id, image_set)} "
                      "--action promote|keep|discard --reason '...'")
    console.print(f"demo finished in {time.monotonic() - started:.1f}s")
    if leave_running:
        console.print(f"Temporal UI: {stack.config.temporal_ui_url}/namespaces/default/workflows/{migration_id}\n"
                      f"The local stack is still running; `make stop` (himig stack down) ends it. "
                      f"`source {stack.env_file}` sets up the temporal and aws CLIs.")
    else:
        stack.down()
    return 1 if problems or summary.get("unaccounted") else 0
