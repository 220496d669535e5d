"""The canary test: patient data never leaves the files and the data store, wherever the service writes.

A migration and a dry run (`himig plan`) over files whose patient attributes are distinctive canary strings (with
files that fail validation, a non-primary conflict decided with a metadata correction of the PatientID, and an
ingest arrival), served by a real ``python -m worker`` process on a private Temporal dev server that keeps its
database in a file. Afterwards none of these contain a canary:
- the raw bytes of the Temporal server's database (every history, search attribute and memo it stored);
- ``temporal workflow show`` / ``list`` without the codec, for every workflow the run made (payload data
  base64-decoded, so a value cannot hide in the JSON's base64);
- the worker's log file;
- every object the service wrote under its work prefix (a dry run's plan too), but the staged DICOM copies and
  HealthImaging's own import-job output (those are the images themselves).
The source folder's name is a canary too (PACS exports name folders after patients): it may appear in the
operator's own report in the work prefix, which lists source keys, but nowhere in Temporal or the logs.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from contracts.common import FileState
from contracts.migration import MigrationInput
from contracts.plan import PlanRequest
from contracts.reconciliation import (
    ReconciliationAction,
    ReconciliationDecision,
    ReconciliationState,
    reconciliation_workflow_id,
)
from tests.support.dicom import make_instance, uid
from tests.support.eventually import assert_eventually, assert_eventually_sync
from tests.support.reviewers import decide
from tests.support.temporal_cli import shown, start_dev_server, temporal_cli
from workflows.migration import MigrationWorkflow
from workflows.plan import PlanWorkflow
from workflows.reconciliation import ReconciliationWorkflow

# Distinctive values for every patient-identifying attribute the service reads.
CANARIES = {
    "PatientName": "CANARYNAME^ZEPHYRINE",
    "PatientID": "CANARYMRN4417",
    "PatientBirthDate": "19020304",
    "AccessionNumber": "CANARYACC8812",
    "InstitutionName": "CANARY INSTITUTE OF QUUX",
    "ReferringPhysicianName": "CANARYDOC^REFERRER",
    "PerformingPhysicianName": "CANARYDOC^PERFORMER",
    "StudyDescription": "CANARY STUDY DESCRIPTION XQ",
    "SeriesDescription": "CANARY SERIES DESCRIPTION XQ",
}
CONFLICTING_ID = "CANARYMRN4418"  # the second file of the series disagrees: a non-primary image set
CORRECTED_ID = "CANARYMRN4419"  # what the reviewer corrects it to
FOLDER = "CANARYMRN4417-ZEPHYRINE"  # the PACS export's folder, named after the patient
ALL_CANARIES = [*CANARIES.values(), CONFLICTING_ID, CORRECTED_ID, "ZEPHYRINE", FOLDER]


def _canary_file(study: str, series: str, **overrides: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(make_instance(study, series)))
    for keyword, value in {**CANARIES, **overrides}.items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _found(data: bytes) -> list[str]:
    """The canaries in ``data``, also as a person name is often rewritten (``^`` as a space) and in any case."""
    lowered = data.lower()
    found = []
    for canary in ALL_CANARIES:
        variants = {canary, canary.replace("^", " ")}
        if any(v.lower().encode() in lowered for v in variants):
            found.append(canary)
    return found


@pytest.fixture
async def private_temporal(tmp_path: Path) -> AsyncIterator[tuple[WorkflowEnvironment, Path]]:
    """A dev server of this test's own, whose database is a file we can read byte by byte afterwards."""
    db = tmp_path / "temporal.db"
    env = await start_dev_server("--db-filename", str(db))
    yield env, db
    await env.shutdown()


@pytest.fixture
def worker_process(private_temporal: tuple[WorkflowEnvironment, Path], moto_url: str, emulator_url: str,
                   buckets: dict[str, Any], sqs_queue: str, datastore_id: str,
                   tmp_path: Path) -> Iterator[dict[str, Any]]:
    env, _ = private_temporal
    queue = f"canary-{uuid.uuid4().hex[:8]}"
    health, log_path = tmp_path / "worker.ready", tmp_path / "worker.log"
    src, work = buckets["source"], buckets["work"]
    environ = {**os.environ, "HIMIG_TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
               "HIMIG_TASK_QUEUE": queue, "HIMIG_HEALTH_FILE": str(health), "HIMIG_GRACEFUL_SHUTDOWN_SECONDS": "5",
               "HIMIG_LOG_LEVEL": "debug", "AWS_ENDPOINT_URL_S3": moto_url, "AWS_ENDPOINT_URL_SQS": moto_url,
               "AWS_ENDPOINT_URL_EVENTBRIDGE": moto_url, "AWS_ENDPOINT_URL_MEDICAL_IMAGING": emulator_url,
               "HIMIG_INGEST_QUEUE_URL": sqs_queue, "HIMIG_INGEST_DATASTORE_ID": datastore_id,
               "HIMIG_INGEST_SOURCE_S3_URI": f"s3://{src}/landing/", "HIMIG_INGEST_WORK_S3_URI": f"s3://{work}/w/",
               "HIMIG_INGEST_QUIET_SECONDS": "1", "HIMIG_INGEST_WAIT_SECONDS": "1"}
    log = open(log_path, "wb")  # noqa: SIM115 - owned by the child for its lifetime
    proc = subprocess.Popen([sys.executable, "-m", "worker"], env=environ, stdout=log, stderr=subprocess.STDOUT)

    def ready() -> None:
        assert proc.poll() is None, f"worker exited with {proc.returncode}: {log_path.read_text()[-2000:]}"
        assert health.exists()

    try:
        assert_eventually_sync(ready, timeout=60)
        yield {"queue": queue, "proc": proc, "log": log_path}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()


@pytest.fixture
def sqs_queue(moto_url: str) -> str:
    import boto3

    sqs = boto3.client("sqs", endpoint_url=moto_url, region_name="us-east-1")
    return str(sqs.create_queue(QueueName=f"canary-{uuid.uuid4().hex[:8]}")["QueueUrl"])


def _s3_event(bucket: str, key: str, size: int, etag: str) -> str:
    return json.dumps({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
        "eventTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": size, "eTag": etag}}}]})


def _cli_json(client: Client, *args: str) -> bytes:
    done = temporal_cli(client, *args, "--output", "json")
    assert done.returncode == 0, done.stderr
    return shown(done.stdout).encode()


async def test_no_canary_anywhere_the_service_writes(
        private_temporal: tuple[WorkflowEnvironment, Path], worker_process: dict[str, Any], buckets: dict[str, Any],
        datastore_id: str, sqs_queue: str, moto_url: str) -> None:
    import boto3

    env, db = private_temporal
    client = env.client
    s3, src, work = buckets["s3"], buckets["source"], buckets["work"]

    # The migration's source: a clean study, a non-primary conflict and files that fail validation.
    study, series = uid(), uid()
    for i in range(3):
        s3.put_object(Bucket=src, Key=f"{FOLDER}/clean/{i}.dcm", Body=_canary_file(study, series))
    conflict_study, conflict_series = uid(), uid()
    s3.put_object(Bucket=src, Key=f"{FOLDER}/np/a.dcm", Body=_canary_file(conflict_study, conflict_series))
    s3.put_object(Bucket=src, Key=f"{FOLDER}/np/b.dcm",
                  Body=_canary_file(conflict_study, conflict_series, PatientID=CONFLICTING_ID))
    broken = _canary_file(uid(), uid())
    s3.put_object(Bucket=src, Key=f"{FOLDER}/bad/truncated.dcm", Body=broken[: len(broken) // 2])
    s3.put_object(Bucket=src, Key=f"{FOLDER}/bad/no-series.dcm",
                  Body=make_instance(uid(), uid(), patient_id=CANARIES["PatientID"],
                                     patient_name=CANARIES["PatientName"], drop=("SeriesInstanceUID",)))
    s3.put_object(Bucket=src, Key=f"{FOLDER}/bad/not-dicom.dcm",
                  Body=f"PatientName={CANARIES['PatientName']}\n".encode() * 20)

    migration_id = f"canary-{uuid.uuid4().hex[:8]}"
    result = await client.execute_workflow(
        MigrationWorkflow.run, MigrationInput(source_s3_uri=f"s3://{src}/{FOLDER}/", datastore_id=datastore_id,
                                              work_s3_uri=f"s3://{work}/w/", import_start_interval_seconds=0),
        id=migration_id, task_queue=worker_process["queue"], execution_timeout=timedelta(minutes=5))
    assert result.files_by_state.get(FileState.IMPORTED, 0) >= 4, result

    # A dry run over the same source (`himig plan`): its plan.json and per-file predictions are checked below too.
    planned = await client.execute_workflow(
        PlanWorkflow.run, PlanRequest(migration=MigrationInput(
            source_s3_uri=f"s3://{src}/{FOLDER}/", datastore_id=datastore_id, work_s3_uri=f"s3://{work}/w/")),
        id=f"canary-plan-{uuid.uuid4().hex[:8]}", task_queue=worker_process["queue"],
        execution_timeout=timedelta(minutes=5))
    assert planned.files == 8, planned

    # The non-primary set is decided by a promote that first corrects the PatientID.
    report_bucket, report_key = result.report_uri[5:].split("/", 1)
    summary = json.loads(s3.get_object(Bucket=report_bucket, Key=report_key)["Body"].read())
    [non_primary] = summary["non_primary_image_sets"]
    recon = client.get_workflow_handle_for(ReconciliationWorkflow.run,
                                           reconciliation_workflow_id(datastore_id, non_primary))
    outcome = await decide(recon, ReconciliationDecision(
        action=ReconciliationAction.PROMOTE, reviewer="canary-reviewer", reason="demographics corrected",
        update_first={"Patient": {"PatientID": CORRECTED_ID}}), "canary-reviewer")
    assert outcome.state == ReconciliationState.PROMOTED and outcome.promoted_image_set_id, outcome

    # An ingest arrival with the same patient.
    sqs = boto3.client("sqs", endpoint_url=moto_url, region_name="us-east-1")
    arrival = _canary_file(uid(), uid())
    etag = s3.put_object(Bucket=src, Key=f"landing/{FOLDER}/new.dcm", Body=arrival)["ETag"].strip('"')
    sqs.send_message(QueueUrl=sqs_queue, MessageBody=_s3_event(src, f"landing/{FOLDER}/new.dcm", len(arrival), etag))

    async def ingest_flushed() -> None:
        flushes = [w async for w in client.list_workflows("WorkflowType = 'MigrationWorkflow'")
                   if w.id.startswith("ingest-") and w.status == WorkflowExecutionStatus.COMPLETED]
        assert flushes, "the arrival's ingest flush has not completed yet"

    await assert_eventually(ingest_flushed, timeout=120)

    # Stop the worker so that everything it logs is on disk.
    worker_process["proc"].send_signal(signal.SIGTERM)
    assert worker_process["proc"].wait(30) == 0

    # Controls: the search below finds what is there (the images hold every canary, the database holds the run).
    staged = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=src, Prefix=f"{FOLDER}/clean/")["Contents"])
    assert set(_found(s3.get_object(Bucket=src, Key=staged[0])["Body"].read())) >= set(CANARIES.values())
    assert any(migration_id.encode() in p.read_bytes() for p in db.parent.glob(db.name + "*"))

    leaks: dict[str, list[str]] = {}

    # 1. Temporal's database, byte for byte (the WAL too).
    for path in sorted(db.parent.glob(db.name + "*")):
        if found := _found(path.read_bytes()):
            leaks[f"temporal database {path.name}"] = found

    # 2. What `temporal` shows without the codec, for every workflow of the run.
    listed = await asyncio.to_thread(_cli_json, client, "workflow", "list")
    if found := _found(listed):
        leaks["temporal workflow list"] = found
    ids = {w.id async for w in client.list_workflows()}
    assert len(ids) >= 6, ids  # migration, batch(es), plan, reconciliation, ingest and its flush
    for wid in sorted(ids):
        history = await asyncio.to_thread(_cli_json, client, "workflow", "show", "-w", wid)
        if found := _found(history):
            leaks[f"temporal workflow show {wid}"] = found

    # 3. The worker's log.
    log_bytes = worker_process["log"].read_bytes()
    assert b'"event"' in log_bytes  # it did log, as JSON
    if found := _found(log_bytes):
        leaks["worker log"] = found

    # 4. The work prefix, but the images themselves.
    written = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=work, Prefix="w/")
               for o in page.get("Contents", [])]
    assert written
    for key in written:
        if "/staging/" in key or "/import-output/" in key:
            continue
        # The report lists source keys, the operator's own: the folder may appear there, as a whole key part.
        body = s3.get_object(Bucket=work, Key=key)["Body"].read().replace(FOLDER.encode(), b"<folder>")
        if found := _found(body):
            leaks[f"s3://{work}/{key}"] = found

    assert not leaks, "patient data found:\n" + "\n".join(f"  {where}: {what}" for where, what in leaks.items())
