"""Event-driven ingestion end to end: moto S3 → SQS → `SqsListener` → `IngestWorkflow` → child migrations.

Real Temporal dev server, real moto S3/SQS, the HealthImaging emulator; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pydantic
import pytest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError
from temporalio.worker import Worker

from activities.ingest import IngestActivities
from contracts import layout, search
from contracts.common import FileState
from contracts.ingest import Arrival, IngestInput, flush_migration_id, ingest_workflow_id
from contracts.migration import MigrationResult
from tests.conftest import emulator_admin, make_medical_imaging
from tests.support.dicom import make_instance, uid
from tests.support.eventually import assert_eventually
from worker.aws import AwsClients
from worker.listener import SqsListener, configure_bucket_notifications, parse_event_body
from worker.registry import WORKFLOWS, build_activities
from worker.runner import build_worker
from worker.settings import IngestSettings, Settings
from workflows.ingest import FLUSHES_PER_RUN, IngestWorkflow

WAIT_LIMIT = 90.0  # seconds; every wait in this file is bounded (generous: CI machines are 2 busy cores)


@pytest.fixture
def sqs(moto_url: str) -> Any:
    return boto3.client("sqs", endpoint_url=moto_url, region_name="us-east-1")


@pytest.fixture
async def ingest_worker(client: Client, settings: Settings) -> AsyncIterator[Worker]:
    clients = AwsClients.from_settings(settings)
    activities = build_activities(clients, settings)
    # Works before and after worker.registry registers the ingest pieces itself (no duplicate registrations).
    names = {getattr(getattr(a, "__temporal_activity_definition", None), "name", None) for a in activities}
    if "write_ingest_manifest" not in names:
        activities.append(IngestActivities(clients.s3).write_ingest_manifest)
    with ThreadPoolExecutor(max_workers=settings.max_concurrent_activities) as executor:
        worker = Worker(
            client, task_queue=settings.task_queue, workflows=list(dict.fromkeys([*WORKFLOWS, IngestWorkflow])),
            activities=activities,
            activity_executor=executor, max_concurrent_activities=settings.max_concurrent_activities,
            workflow_failure_exception_types=[pydantic.ValidationError],
            graceful_shutdown_timeout=timedelta(seconds=1))
        async with worker:
            yield worker


@asynccontextmanager
async def running_listener(client: Client, sqs: Any, s3: Any, ingest: IngestSettings,
                           task_queue: str) -> AsyncIterator[tuple[SqsListener, asyncio.Task[None]]]:
    listener = SqsListener(client, sqs, s3, ingest, task_queue)
    stop = asyncio.Event()
    task = asyncio.create_task(listener.run(stop))
    try:
        yield listener, task
    finally:
        stop.set()
        # That `run` abandons an in-flight long poll (rather than waiting it out) is proved by ordering in
        # tests/worker/test_sqs_poller.py; here the bound only keeps a hung stop from hanging the test.
        await asyncio.wait_for(task, timeout=60)


def _ingest_settings(queue_url: str, datastore_id: str, src: str, work: str, prefix: str) -> IngestSettings:
    return IngestSettings(queue_url=queue_url, datastore_id=datastore_id, source_s3_uri=f"s3://{src}/{prefix}",
                          work_s3_uri=f"s3://{work}/ingest/", quiet_seconds=1.0, max_files=100, wait_seconds=1)


async def _status(client: Client, wid: str) -> WorkflowExecutionStatus | None:
    try:
        return (await client.get_workflow_handle(wid).describe()).status
    except RPCError:
        return None  # not started yet


async def _wait_completed(client: Client, ids: set[str], listener: SqsListener, signals: int) -> None:
    async def finished() -> None:
        statuses = {wid: await _status(client, wid) for wid in ids}
        completed = all(s == WorkflowExecutionStatus.COMPLETED for s in statuses.values())
        assert listener.signalled >= signals and completed, \
            f"ingest did not finish: {statuses}, signalled={listener.signalled}"

    await assert_eventually(finished, timeout=WAIT_LIMIT, interval=0.3)


async def _flushes(client: Client, s3: Any, work: str, ingest_id: str) -> list[tuple[str, MigrationResult]]:
    """Every flush of one ingest id (found through its manifests) with its migration's result."""
    prefix = layout.ingest_manifests_prefix(f"s3://{work}/ingest/", ingest_id)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=prefix.bucket, Prefix=prefix.key).get("Contents", [])]
    out = []
    for key in sorted(keys):
        flush = int(key.rsplit("flush-", 1)[1].split(".")[0])
        mid = flush_migration_id(ingest_id, flush)
        result = await asyncio.wait_for(client.get_workflow_handle(mid, result_type=MigrationResult).result(),
                                        timeout=WAIT_LIMIT)
        out.append((mid, result))
    return out


def _rows(s3: Any, result: MigrationResult) -> list[dict[str, Any]]:
    bucket, key = result.files_uri[5:].split("/", 1)
    return [json.loads(line) for line in s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines()]


def _jobs_for(medical_imaging: Any, datastore_id: str, migration_id: str) -> int:
    """Import jobs the emulator ran for one migration (its output prefix carries the migration id)."""
    summaries = medical_imaging.list_dicom_import_jobs(datastoreId=datastore_id, maxResults=50)["jobSummaries"]
    count = 0
    for job in summaries:
        props = medical_imaging.get_dicom_import_job(datastoreId=datastore_id, jobId=job["jobId"])["jobProperties"]
        count += f"/{migration_id}/" in props["outputS3Uri"]
    return count


def _record(bucket: str, key: str, size: int, etag: str, when: datetime, sequencer: str | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"key": key.replace("/", "%2F"), "size": size, "eTag": etag}
    if sequencer:
        obj["sequencer"] = sequencer
    return {"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
            "eventTime": when.isoformat().replace("+00:00", "Z"), "s3": {"bucket": {"name": bucket}, "object": obj}}


class TestIngestEndToEnd:
    async def test_bucket_events_flow_into_one_migration_per_study(
            self, client: Client, ingest_worker: Worker, buckets: dict[str, Any], sqs: Any, datastore_id: str,
            emulator_url: str) -> None:
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        queue_url = configure_bucket_notifications(s3, sqs, src, "incoming/", f"ingest-{uuid.uuid4().hex[:8]}")
        ingest = _ingest_settings(queue_url, datastore_id, src, work, "incoming/")
        study_a, study_b = uid(), uid()
        files = {f"incoming/a/{i}.dcm": make_instance(study_a, uid()) for i in range(3)}
        files |= {f"incoming/b/{i}.dcm": make_instance(study_b, uid(), patient_id="SYNTH-0002") for i in range(2)}
        files["incoming/misc/read me.txt"] = b"this is not DICOM"  # a space: URL-encoded as '+' in the event

        async with running_listener(client, sqs, s3, ingest, ingest_worker.task_queue) as (listener, task):
            for key, body in files.items():
                s3.put_object(Bucket=src, Key=key, Body=body)
            s3.put_object(Bucket=src, Key="elsewhere/x.dcm", Body=make_instance(study_a, uid()))  # not watched
            ids = {ingest_workflow_id(datastore_id, study_a, src, "incoming/a/0.dcm"),
                   ingest_workflow_id(datastore_id, study_b, src, "incoming/b/0.dcm"),
                   ingest_workflow_id(datastore_id, None, src, "incoming/misc/read me.txt")}
            assert len(ids) == 3  # two studies -> two ingest ids, plus the non-DICOM file's folder
            await _wait_completed(client, ids, listener, signals=len(files))
            assert not task.done()

        rows: list[dict[str, Any]] = []
        mi = make_medical_imaging(emulator_url)
        for wid in ids:
            assert study_a not in wid and study_b not in wid  # no UIDs in ids
            for mid, result in await _flushes(client, s3, work, wid):
                flush_rows = _rows(s3, result)
                rows += flush_rows
                imported = [r for r in flush_rows if r["state"] == FileState.IMPORTED]
                assert _jobs_for(mi, datastore_id, mid) == (1 if imported else 0)
        keys = [r["key"] for r in rows]
        assert sorted(keys) == sorted(files)  # every uploaded file exactly once, nothing outside the prefix
        by_key = {r["key"]: r for r in rows}
        assert all(by_key[k]["state"] == FileState.IMPORTED for k in files if k.endswith(".dcm"))
        assert by_key["incoming/misc/read me.txt"]["state"] == FileState.REJECTED

        study_a_id = ingest_workflow_id(datastore_id, study_a, src, "incoming/a/0.dcm")
        progress = await client.get_workflow_handle(study_a_id).query(IngestWorkflow.progress)
        assert progress.phase == "completed" and progress.buffered == 0
        assert progress.last_flush is not None and progress.last_flush.status == "completed"
        assert progress.files_flushed == 3

    async def test_duplicates_out_of_order_and_hostile_messages(
            self, client: Client, ingest_worker: Worker, buckets: dict[str, Any], sqs: Any, datastore_id: str,
            emulator_url: str) -> None:
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        # A queue we write to by hand: no bucket notification, so every event here is one we crafted.
        queue_url = sqs.create_queue(QueueName=f"ingest-{uuid.uuid4().hex[:8]}")["QueueUrl"]
        study, series = uid(), uid()
        etags = {}
        for key in ("in/c/0.dcm", "in/c/1.dcm", "in/c/eb.dcm"):
            etags[key] = s3.put_object(Bucket=src, Key=key, Body=make_instance(study, series))["ETag"].strip('"')
        old = s3.put_object(Bucket=src, Key="in/c/x.dcm", Body=make_instance(study, series))["ETag"].strip('"')
        new = s3.put_object(Bucket=src, Key="in/c/x.dcm", Body=make_instance(study, series))["ETag"].strip('"')
        assert old != new
        size = s3.head_object(Bucket=src, Key="in/c/x.dcm")["ContentLength"]
        t0 = datetime.now(UTC)
        pair = json.dumps({"Records": [_record(src, k, size, etags[k], t0) for k in ("in/c/0.dcm", "in/c/1.dcm")]})
        newer = json.dumps({"Records": [_record(src, "in/c/x.dcm", size, new, t0 + timedelta(seconds=1), "0002")]})
        older = json.dumps({"Records": [_record(src, "in/c/x.dcm", size, old, t0, "0001")]})
        eventbridge = json.dumps({
            "version": "0", "detail-type": "Object Created", "source": "aws.s3", "time": t0.isoformat(),
            "detail": {"bucket": {"name": src}, "object": {"key": "in/c/eb.dcm", "size": size, "etag": etags["in/c/eb.dcm"]}}})
        hostile = [
            "not json at all",
            json.dumps({"no": "records"}),
            json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "eventTime": t0.isoformat(),
                                     "s3": {"bucket": {"name": src}, "object": {"size": 1}}}]}),
            json.dumps({"Records": [_record(src, "outside/y.dcm", 1, "e", t0)]}),
            json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": src}),
        ]
        for body in [pair, pair, newer, *hostile, older, eventbridge]:
            sqs.send_message(QueueUrl=queue_url, MessageBody=body)

        ingest = _ingest_settings(queue_url, datastore_id, src, work, "in/")
        wid = ingest_workflow_id(datastore_id, study, src, "in/c/0.dcm")
        async with running_listener(client, sqs, s3, ingest, ingest_worker.task_queue) as (listener, task):
            # 2 + 2 (the pair, twice) + newer + older + EventBridge = 7 signals.
            await _wait_completed(client, {wid}, listener, signals=7)
            assert not task.done()  # hostile bodies did not crash the listener
            attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
            assert int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"]) == 0

        flushes = await _flushes(client, s3, work, wid)
        rows = [row for _, result in flushes for row in _rows(s3, result)]
        keys = [r["key"] for r in rows]
        assert sorted(keys) == ["in/c/0.dcm", "in/c/1.dcm", "in/c/eb.dcm", "in/c/x.dcm"]  # unique, none outside
        assert all(r["state"] == FileState.IMPORTED for r in rows)
        mi = make_medical_imaging(emulator_url)
        for mid, _ in flushes:
            assert _jobs_for(mi, datastore_id, mid) == 1
        # The older event arrived last but did not replace the newer version of in/c/x.dcm.
        manifests = layout.ingest_manifests_prefix(f"s3://{work}/ingest/", wid)
        listed = [o["Key"] for o in s3.list_objects_v2(Bucket=manifests.bucket, Prefix=manifests.key)["Contents"]]
        entries = [json.loads(line) for k in listed
                   for line in s3.get_object(Bucket=work, Key=k)["Body"].read().decode().splitlines()]
        assert [e["etag"] for e in entries if e["key"] == "in/c/x.dcm"] == [new]
        result = await client.get_workflow_handle(wid).query(IngestWorkflow.progress)
            # The repeated pair is always ignored. The older version of in/c/x.dcm is counted too when it is handled
        # after the newer one; the listener handles one receive's messages concurrently (and SQS keeps no order),
        # so it may come first and be replaced in the buffer instead: either way only the newer was flushed (above).
        assert result.duplicates_ignored >= 2



def _put_arrivals(s3: Any, bucket: str, prefix: str, study: str, n: int) -> list[Arrival]:
    """Upload ``n`` instances of one study under ``prefix/`` and return them as the listener would signal them."""
    arrivals = []
    for i in range(n):
        key, body = f"{prefix}/{i}.dcm", make_instance(study, uid())
        etag = s3.put_object(Bucket=bucket, Key=key, Body=body)["ETag"].strip('"')
        arrivals.append(Arrival(key=key, size=len(body), etag=etag, event_time=datetime.now(UTC)))
    return arrivals


async def _signal_arrival(client: Client, payload: IngestInput, wid: str, task_queue: str, arrival: Arrival,
                          timeout_seconds: float) -> Any:
    """Signal-with-start, as the listener does."""
    return await client.start_workflow(
        IngestWorkflow.run, payload, id=wid, task_queue=task_queue, start_signal="arrived",
        start_signal_args=[arrival], id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        execution_timeout=timedelta(seconds=timeout_seconds))


class TestIngestWorkflowDirectly:
    async def test_size_flush_and_a_later_run_continue_the_flush_numbers(
            self, client: Client, ingest_worker: Worker, buckets: dict[str, Any], datastore_id: str) -> None:
        """Signals as the listener sends them, without SQS: max_files triggers a flush, and a run started after
        the previous one completed picks the next flush number instead of reusing a finished migration's id."""
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        study = uid()
        arrivals = _put_arrivals(s3, src, "s", study, 4)
        payload = IngestInput(datastore_id=datastore_id, source_s3_uri=f"s3://{src}/s/",
                              work_s3_uri=f"s3://{work}/ingest/", quiet_seconds=1, max_files=2)
        wid = ingest_workflow_id(datastore_id, study, src, "s/0.dcm")

        async def send(arrival: Arrival) -> Any:
            return await _signal_arrival(client, payload, wid, ingest_worker.task_queue, arrival, 60)

        for arrival in arrivals[:3]:
            handle = await send(arrival)
        first = await asyncio.wait_for(handle.result(), timeout=WAIT_LIMIT)
        assert (first.flushes, first.files_flushed) == (2, 3)  # 2 by size, then 1 after the quiet period
        second = await asyncio.wait_for((await send(arrivals[3])).result(), timeout=WAIT_LIMIT)
        assert second.last_flush is not None and second.last_flush.flush == 3
        flushes = await _flushes(client, s3, work, wid)
        assert [mid.rsplit(".", 1)[1] for mid, _ in flushes] == ["flush-00001", "flush-00002", "flush-00003"]
        rows = [row for _, result in flushes for row in _rows(s3, result)]
        assert sorted(r["key"] for r in rows) == [f"s/{i}.dcm" for i in range(4)]


    async def test_continue_as_new_carries_the_buffer_and_counts(
            self, client: Client, ingest_worker: Worker, buckets: dict[str, Any], datastore_id: str) -> None:
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        study = uid()
        n = FLUSHES_PER_RUN + 1
        payload = IngestInput(datastore_id=datastore_id, source_s3_uri=f"s3://{src}/r/",
                              work_s3_uri=f"s3://{work}/ingest/", quiet_seconds=1, max_files=1)
        wid = ingest_workflow_id(datastore_id, study, src, "r/0.dcm")
        for i in range(n):
            key = f"r/{i}.dcm"
            etag = s3.put_object(Bucket=src, Key=key, Body=make_instance(study, uid()))["ETag"].strip('"')
            handle = await client.start_workflow(
                IngestWorkflow.run, payload, id=wid, task_queue=ingest_worker.task_queue, start_signal="arrived",
                start_signal_args=[Arrival(key=key, size=1, etag=etag, event_time=datetime.now(UTC))],
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING, execution_timeout=timedelta(seconds=80))
        result = await asyncio.wait_for(handle.result(), timeout=WAIT_LIMIT)  # follows the continue-as-new chain
        assert (result.flushes, result.files_flushed) == (n, n)
        progress = await client.get_workflow_handle(wid).query(IngestWorkflow.progress)
        assert progress.runs == 2


class TestEventParsing:
    def test_notification_keys_are_unquoted_and_other_events_skipped(self) -> None:
        body = json.dumps({"Records": [
            {"eventName": "ObjectCreated:Put", "eventTime": "2026-01-01T00:00:00.000Z",
             "s3": {"bucket": {"name": "b-1"}, "object": {"key": "in%2Fa+b.dcm", "size": 5, "eTag": "abc"}}},
            {"eventName": "ObjectRemoved:Delete", "s3": {}},
        ]})
        parsed = parse_event_body(body)
        assert [e.arrival.key for e in parsed.events] == ["in/a b.dcm"]
        assert parsed.skipped == 1 and parsed.malformed == 0

    @pytest.mark.parametrize("body", ["", "[]", "null", '{"Records": "x"}', '{"foo": 1}'])
    def test_bodies_that_are_not_events_are_malformed(self, body: str) -> None:
        with pytest.raises(ValueError):
            parse_event_body(body)


class TestIngestInput:
    BASE: dict[str, Any] = {"datastore_id": "a" * 32, "source_s3_uri": "s3://src-b/in/", "work_s3_uri": "s3://work-b/w/"}

    @pytest.mark.parametrize("field,value", [
        ("datastore_id", "short"), ("source_s3_uri", "s3://UPPER/x/"), ("work_s3_uri", "http://x/"),
        ("quiet_seconds", 0), ("max_files", 0), ("max_files", 1_000_000), ("max_wait_seconds", -1),
        ("validation_level", "lenient"), ("data_access_role_arn", "not-an-arn"), ("unknown_field", 1),
    ])
    def test_bad_values_name_the_field(self, field: str, value: Any) -> None:
        with pytest.raises(ValueError, match=field):
            IngestInput.model_validate({**self.BASE, field: value})

    def test_work_prefix_may_not_overlap_the_watched_prefix(self) -> None:
        with pytest.raises(ValueError, match="must not overlap"):
            IngestInput.model_validate({**self.BASE, "work_s3_uri": "s3://src-b/in/work/"})

    def test_listener_settings_name_a_missing_field(self) -> None:
        # Checked when the settings are read, before the worker connects (not when the listener starts).
        with pytest.raises(ValueError, match="HIMIG_INGEST_DATASTORE_ID: required when HIMIG_INGEST_QUEUE_URL is set"):
            IngestSettings(queue_url="http://q", source_s3_uri="s3://src-b/in/", work_s3_uri="s3://w-b/w/")


class TestIngestBufferBound:
    async def test_arrivals_during_a_slow_flush_are_spilled_and_each_reported_once(
            self, client: Client, held_settings: Settings, buckets: dict[str, Any], held_emulator: str,
            held_datastore_id: str) -> None:
        """The first flush's import job is held by the emulator's manual job clock, so its child migration runs
        while more arrivals come in: every ``max_files`` of them are spilled to S3 as the next flush's manifest
        (the workflow keeps a pointer), and they are migrated in order once the job clock moves."""
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        study = uid()
        arrivals = _put_arrivals(s3, src, "sp", study, 7)
        payload = IngestInput(datastore_id=held_datastore_id, source_s3_uri=f"s3://{src}/sp/",
                              work_s3_uri=f"s3://{work}/ingest/", quiet_seconds=1, max_files=2)
        wid = ingest_workflow_id(held_datastore_id, study, src, "sp/0.dcm")
        settings = held_settings.model_copy(update={"job_poll_initial_seconds": 0.5, "job_poll_max_seconds": 1.0})
        with ThreadPoolExecutor(max_workers=settings.max_concurrent_activities) as executor:
            async with build_worker(client, settings, executor) as worker:
                async def send(arrival: Arrival) -> Any:
                    return await _signal_arrival(client, payload, wid, worker.task_queue, arrival, 150)

                async def progress() -> Any:
                    return await client.get_workflow_handle(wid).query(IngestWorkflow.progress)

                async def first_flush_started() -> None:
                    p = await progress()
                    assert p.phase == "flushing" and p.flushes == 1 and p.buffered == 0, \
                        f"first flush did not start: {p}"

                async def arrivals_spilled() -> Any:
                    p = await progress()
                    assert p.pending_flushes == 2 and p.buffered == 1, f"arrivals were not spilled: {p}"
                    return p

                for arrival in arrivals[:2]:
                    handle = await send(arrival)
                deadline = time.monotonic() + WAIT_LIMIT  # one budget for both waits
                await assert_eventually(first_flush_started, timeout=WAIT_LIMIT, interval=0.2)
                for arrival in arrivals[2:]:  # while flush 1's job is held
                    await send(arrival)
                # Signals that land in one workflow task are buffered together; then every full max_files goes
                # to S3 and only its pointer stays, while flush 1 is still running.
                p = await assert_eventually(arrivals_spilled, timeout=deadline - time.monotonic(), interval=0.2)
                assert p.phase == "flushing" and p.flushes == 3 and p.files_flushed == 6 and p.last_flush is None

                async def tick() -> None:  # let the held jobs run
                    while True:
                        await asyncio.to_thread(emulator_admin, held_emulator, "clock/advance", {"seconds": 5})
                        # Not a wait for a condition: the pace of the job clock while handle.result() is awaited.
                        await asyncio.sleep(0.3)

                ticker = asyncio.create_task(tick())
                try:
                    result = await asyncio.wait_for(handle.result(), timeout=WAIT_LIMIT)
                finally:
                    ticker.cancel()
        assert (result.flushes, result.files_flushed) == (4, 7)
        assert (await client.get_workflow_handle(wid).describe()).typed_search_attributes.get(search.STATE) == "completed"
        flushes = await _flushes(client, s3, work, wid)
        assert [mid.rsplit(".", 1)[1] for mid, _ in flushes] == [f"flush-{n:05d}" for n in (1, 2, 3, 4)]
        per_flush = [sorted(row["key"] for row in _rows(s3, res)) for _, res in flushes]
        # In arrival order: the spilled manifests before what was still buffered.
        assert per_flush == [["sp/0.dcm", "sp/1.dcm"], ["sp/2.dcm", "sp/3.dcm"], ["sp/4.dcm", "sp/5.dcm"], ["sp/6.dcm"]]
        rows = [row for _, res in flushes for row in _rows(s3, res)]
        assert all(r["state"] == FileState.IMPORTED for r in rows)
