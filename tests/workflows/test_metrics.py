"""The worker's Prometheus endpoint during a real migration (Temporal dev server, moto, the emulator): the service's
counters equal what the migration itself recorded (its report, its history, the emulator's own counts), the SDK's
metrics are served next to them, and no label carries an id, a key or a path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.report import ReportActivities
from contracts import metrics
from contracts.common import FileState
from contracts.ingest import Arrival, IngestInput, ingest_workflow_id
from contracts.migration import MigrationInput
from contracts.stages import ParseResult, ReportInput, ReportResult
from tests.conftest import emulator_admin, make_medical_imaging, make_s3
from tests.support.dicom import make_instance, uid
from tests.support.eventually import assert_eventually, assert_eventually_sync
from tests.support.installation import converter
from tests.support.migrations import migrate, report_summary
from tests.support.prometheus import Sample, by_label, listening_ports, scrape, total
from tests.support.servers import free_port
from tests.support.worker_process import wait_for_health
from worker.aws import AwsClients
from worker.metrics import (
    MetricsEndpointError,
    MetricsInterceptor,
    build_runtime,
    instrument,
    meter_of,
)
from worker.registry import WORKFLOWS, build_activities
from worker.runner import build_worker
from worker.settings import Settings
from workflows.ingest import IngestWorkflow
from workflows.migration import MigrationWorkflow


@pytest.fixture
async def metered(temporal_env: WorkflowEnvironment, settings: Settings) -> AsyncIterator[tuple[Client, Settings, str]]:
    """A client on a runtime of its own serving Prometheus on a free port, and the settings that asked for it."""
    port = free_port()
    metered_settings = settings.model_copy(update={"metrics_port": port})
    runtime = build_runtime(metered_settings)
    assert runtime is not None
    target = temporal_env.client.service_client.config.target_host
    client = await Client.connect(target, namespace=temporal_env.client.namespace, runtime=runtime,
                                  data_converter=converter())
    yield client, metered_settings, f"http://127.0.0.1:{port}/metrics"


async def _parse_results(client: Client, wid: str) -> list[ParseResult]:
    """Every parse_headers result the migration recorded, read back from its history (through the converter)."""
    scheduled: dict[int, str] = {}
    results = []
    async for event in client.get_workflow_handle(wid).fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[event.event_id] = event.activity_task_scheduled_event_attributes.activity_type.name
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            attrs = event.activity_task_completed_event_attributes
            if scheduled[attrs.scheduled_event_id] == "parse_headers":
                results += await client.data_converter.decode(attrs.result.payloads, [ParseResult])
    return results


def _throttled(emulator_url: str) -> dict[str, int]:
    """Throttling answers the emulator gave so far, per operation: its token buckets plus its throttle faults."""
    counts = {op: int(o["throttled"]) for op, o in emulator_admin(emulator_url, "throttling")["operations"].items()}
    for fault in emulator_admin(emulator_url, "faults")["faults"]:
        if fault["kind"] == "throttle":
            counts[fault["operation"]] = counts.get(fault["operation"], 0) + int(fault["fired"])
    return counts


class TestMetricsDuringAMigration:
    async def test_counters_equal_the_report_history_and_emulator(
            self, metered: tuple[Client, Settings, str], buckets: dict[str, Any], datastore_id: str,
            emulator_url: str) -> None:
        client, settings, url = metered
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        study_a, study_b = uid(), uid()
        series_a, series_b = uid(), uid()
        files = {f"in/a/{i}.dcm": make_instance(study_a, series_a) for i in range(4)}
        files |= {f"in/b/{i}.dcm": make_instance(study_b, series_b, patient_id="SYNTH-0002") for i in range(2)}
        files["in/bad/zero.dcm"] = b""
        files["in/bad/readme.txt"] = b"this is not DICOM"
        files["in/bad/no-series.dcm"] = make_instance(study_a, series_a, drop=("SeriesInstanceUID",))
        files["in/dup/copy-of-a0.dcm"] = files["in/a/0.dcm"]
        files["in/dup/copy-of-b1.dcm"] = files["in/b/1.dcm"]
        for key, body in files.items():
            s3.put_object(Bucket=src, Key=key, Body=body)
        # The first job start (one at a time) is throttled on all three of botocore's attempts (max_attempts=2
        # retries), so the activity itself meets the throttle and is retried by Temporal.
        throttled_before = _throttled(emulator_url)
        emulator_admin(emulator_url, "faults", {"kind": "throttle", "operation": "StartDICOMImportJob", "count": 3})

        with ThreadPoolExecutor(max_workers=settings.max_concurrent_activities) as executor:
            worker = build_worker(client, settings, executor)
            async with worker:
                payload = MigrationInput(source_s3_uri=f"s3://{src}/in/", datastore_id=datastore_id,
                                         work_s3_uri=f"s3://{work}/runs/", max_files_per_batch=3,
                                         import_start_interval_seconds=0, inventory_page_size=4,
                                         max_concurrent_jobs=1)
                wid, result = await migrate(client, worker, payload, prefix="metrics")
                summary = report_summary(s3, result)

                async def settled() -> list[Sample]:
                    samples = scrape(url)  # the worker is still running: this is its live endpoint
                    states = by_label(samples, metrics.FILES.name, "state")
                    assert states == {s.value: float(n) for s, n in result.files_by_state.items() if n}, states
                    return samples

                samples = await assert_eventually(settled, timeout=60)
        throttled_after = _throttled(emulator_url)

        # files by terminal state: exactly the report's totals (every state of this corpus is present)
        assert {FileState.IMPORTED, FileState.REJECTED, FileState.SKIPPED_DUPLICATE} <= {
            s for s, n in result.files_by_state.items() if n}
        assert total(samples, metrics.FILES.name) == result.files_total == len(files)

        # bytes read and S3 requests: what the parse activities reported, page by page, in history
        parsed = await _parse_results(client, wid)
        assert len(parsed) == 3  # 11 files in pages of 4
        assert total(samples, metrics.BYTES_READ.name) == sum(p.bytes_read for p in parsed) > 0
        gets = total(samples, metrics.S3_REQUESTS.name, operation="GetObject")
        # each page's source GETs, plus the reads of the work prefix (inventory and parsed pages, ledgers, ...)
        assert gets > sum(p.s3_requests for p in parsed) > 0
        operations = by_label(samples, metrics.S3_REQUESTS.name, "operation")
        assert {"PutObject", "ListObjectsV2", "CopyObject"} <= set(operations), operations

        # import jobs by status: one SUBMITTED per job of the report, each ended as the emulator says
        jobs = summary["jobs"]
        assert len(jobs) >= 2
        imaging = make_medical_imaging(emulator_url)
        statuses: dict[str, float] = {"SUBMITTED": float(len(jobs))}
        for job in jobs:
            status = imaging.get_dicom_import_job(datastoreId=datastore_id, jobId=job)["jobProperties"]["jobStatus"]
            statuses[status] = statuses.get(status, 0) + 1
        assert by_label(samples, metrics.IMPORT_JOBS.name, "status") == statuses

        # throttles: every throttling answer the emulator gave (buckets and the fault), per operation
        gave = {op: n - throttled_before.get(op, 0) for op, n in throttled_after.items() if n > throttled_before.get(op, 0)}
        assert gave["StartDICOMImportJob"] >= 3, gave
        assert by_label(samples, metrics.THROTTLES.name, "operation", service="medical-imaging") == gave

        # activity latency by stage: one sample per attempt; the throttled start was a benign retry
        latency = metrics.ACTIVITY_LATENCY.name + "_count"
        assert total(samples, latency, activity_type="parse_headers", outcome="completed") == len(parsed)
        assert total(samples, latency, activity_type="start_import_job", outcome="retry") >= 1
        assert total(samples, latency, activity_type="write_report", outcome="completed") == 1

        # the SDK's own metrics, on the same endpoint
        assert total(samples, "temporal_workflow_completed", workflow_type="MigrationWorkflow") == 1
        assert total(samples, "temporal_activity_execution_latency_count", activity_type="parse_headers") >= 3

        # no label value is an id, a key, a bucket or a path
        forbidden = [wid, src, work, datastore_id, *jobs, *files, *(k.rsplit("/", 1)[-1] for k in files)]
        for sample in samples:
            for value in sample.labels.values():
                assert not any(f in value for f in forbidden if f), (sample.name, sample.labels)
                assert "/" not in value and "s3:" not in value, (sample.name, sample.labels)
        # and each of ours has exactly the labels declared for it (the SDK adds service_name; buckets have le)
        declared = {m.name: set(m.all_labels()) | {"service_name"} for m in metrics.ALL}
        for sample in samples:
            base = sample.name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
            if base in declared:
                assert set(sample.labels) - {"le"} == declared[base], (sample.name, sample.labels)
        ours = {s.name for s in samples if s.name.startswith("himig_")}
        assert ours <= {m.name for m in metrics.ALL} | {metrics.ACTIVITY_LATENCY.name + suffix
                                                          for suffix in ("_bucket", "_sum", "_count")}, ours


class TestFilesCountedOncePerFile:
    async def test_a_retried_report_and_replay_on_every_task_count_nothing_twice(
            self, metered: tuple[Client, Settings, str], buckets: dict[str, Any], datastore_id: str) -> None:
        """write_report's first attempt writes the report and then fails (a completion lost with its worker), and
        the worker caches no workflow, so every workflow task replays the whole history: still one count per file."""
        client, settings, url = metered
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        study, series = uid(), uid()
        for i in range(3):
            s3.put_object(Bucket=src, Key=f"in/{i}.dcm", Body=make_instance(study, series))
        s3.put_object(Bucket=src, Key="in/bad.txt", Body=b"not DICOM")
        report = ReportActivities(make_s3(str(settings.s3_endpoint_url)))
        attempts: list[int] = []

        @activity.defn(name="write_report")
        def write_report_losing_its_first_completion(input: ReportInput) -> ReportResult:
            result = report.write_report(input)
            attempts.append(activity.info().attempt)
            if activity.info().attempt == 1:
                raise ApplicationError("the report was written, but this attempt's completion is lost")
            return result

        activities = [a for a in build_activities(instrument(meter_of(client), AwsClients.from_settings(settings)),
                                                  settings)
                      if getattr(a, "__temporal_activity_definition").name != "write_report"]
        with ThreadPoolExecutor(max_workers=settings.max_concurrent_activities) as executor:
            worker = Worker(client, task_queue=settings.task_queue, workflows=WORKFLOWS,
                            activities=[*activities, write_report_losing_its_first_completion],
                            activity_executor=executor, interceptors=[MetricsInterceptor()],
                            max_cached_workflows=0)
            async with worker:
                payload = MigrationInput(source_s3_uri=f"s3://{src}/in/", datastore_id=datastore_id,
                                         work_s3_uri=f"s3://{work}/runs/", import_start_interval_seconds=0,
                                         inventory_page_size=2)
                _, result = await migrate(client, worker, payload, prefix="metrics-once")
                samples = scrape(url)
        assert attempts == [1, 2]
        assert result.files_by_state[FileState.IMPORTED] == 3
        assert by_label(samples, metrics.FILES.name, "state") == {
            s.value: float(n) for s, n in result.files_by_state.items() if n}
        assert total(samples, metrics.IMPORT_JOBS.name, status="SUBMITTED") == 1
        assert total(samples, metrics.IMPORT_JOBS.name, status="COMPLETED") == 1
        latency = metrics.ACTIVITY_LATENCY.name + "_count"
        assert total(samples, latency, activity_type="write_report", outcome="failed") == 1
        assert total(samples, latency, activity_type="write_report", outcome="completed") == 1


class TestIngestBuffer:
    async def test_the_gauge_follows_the_buffer_and_empties_on_a_flush(
            self, metered: tuple[Client, Settings, str], buckets: dict[str, Any], datastore_id: str) -> None:
        client, settings, url = metered
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        study = uid()
        arrivals = []
        for i in range(4):
            key, body = f"land/{i}.dcm", make_instance(study, uid())
            etag = s3.put_object(Bucket=src, Key=key, Body=body)["ETag"].strip('"')
            arrivals.append(Arrival(key=key, size=len(body), etag=etag, event_time=datetime.now(UTC)))
        # Only a full buffer (4) flushes: the quiet period is longer than the test.
        payload = IngestInput(datastore_id=datastore_id, source_s3_uri=f"s3://{src}/land/",
                              work_s3_uri=f"s3://{work}/ingest/", quiet_seconds=600, max_files=4)
        wid = ingest_workflow_id(datastore_id, study, src, "land/0.dcm")

        async def depth(n: int) -> None:
            progress = await client.get_workflow_handle(wid).query(IngestWorkflow.progress)
            gauge = total(scrape(url), metrics.INGEST_BUFFER.name, workflow_type="IngestWorkflow")
            assert (progress.buffered, gauge) == (n, n), (progress.buffered, gauge)

        with ThreadPoolExecutor(max_workers=settings.max_concurrent_activities) as executor:
            worker = build_worker(client, settings, executor)
            async with worker:
                for arrival in arrivals[:3]:
                    handle = await client.start_workflow(
                        IngestWorkflow.run, payload, id=wid, task_queue=worker.task_queue, start_signal="arrived",
                        start_signal_args=[arrival], id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                        execution_timeout=timedelta(seconds=120))
                await assert_eventually(lambda: depth(3), timeout=20)
                await handle.signal("arrived", arrivals[3])
                await assert_eventually(lambda: depth(0), timeout=20)
                await handle.terminate("the test has seen the flush")


class TestWorkerProcess:
    async def test_python_m_worker_serves_the_endpoint(self, client: Client, moto_url: str, emulator_url: str,
                                                      buckets: dict[str, Any], datastore_id: str,
                                                      tmp_path: Path) -> None:
        queue, port = f"proc-metrics-{uuid.uuid4().hex[:8]}", free_port()
        health = tmp_path / "worker.ready"
        env = {**os.environ, "HIMIG_TEMPORAL_ADDRESS": client.service_client.config.target_host,
               "HIMIG_TASK_QUEUE": queue, "HIMIG_HEALTH_FILE": str(health), "HIMIG_GRACEFUL_SHUTDOWN_SECONDS": "2",
               "HIMIG_METRICS_PORT": str(port), "AWS_ENDPOINT_URL_S3": moto_url,
               "AWS_ENDPOINT_URL_EVENTBRIDGE": moto_url, "AWS_ENDPOINT_URL_MEDICAL_IMAGING": emulator_url}
        log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - owned by the child for its lifetime
        proc = subprocess.Popen([sys.executable, "-m", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/metrics"
        try:
            wait_for_health(health, proc)
            s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
            s3.put_object(Bucket=src, Key="p/1.dcm", Body=make_instance(uid(), uid()))
            s3.put_object(Bucket=src, Key="p/2.txt", Body=b"not DICOM")
            payload = MigrationInput(source_s3_uri=f"s3://{src}/p/", datastore_id=datastore_id,
                                     work_s3_uri=f"s3://{work}/w/", import_start_interval_seconds=0)
            result = await client.execute_workflow(MigrationWorkflow.run, payload, id=f"procm-{uuid.uuid4().hex[:8]}",
                                                   task_queue=queue, execution_timeout=timedelta(seconds=90))

            def scraped() -> list[Sample]:
                samples = scrape(url)
                assert by_label(samples, metrics.FILES.name, "state") == {"imported": 1.0, "rejected": 1.0}
                # The SDK exports the completion a moment after the client has the result.
                assert total(samples, "temporal_workflow_completed", workflow_type="MigrationWorkflow") == 1
                return samples

            samples = assert_eventually_sync(scraped, timeout=10)
            assert listening_ports(proc.pid) == {port}  # the SDK's endpoint is the only one
            assert result.files_total == 2
            assert total(samples, metrics.S3_REQUESTS.name) > 0
            # the run loop's watcher counted this queue's waiting reconciliations at start (none)
            assert by_label(samples, metrics.RECONCILIATIONS_PENDING.name, "state") == {
                "awaiting_decision": 0.0, "escalated": 0.0}
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


class TestMetricsEndpoint:
    async def test_absent_when_disabled(self, settings: Settings) -> None:
        assert settings.metrics_port is None
        assert build_runtime(settings) is None

    async def test_port_taken_fails_at_start(self, settings: Settings) -> None:
        import socket

        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            with pytest.raises(MetricsEndpointError, match=r"HIMIG_METRICS_PORT.*in use"):
                build_runtime(settings.model_copy(update={"metrics_port": taken.getsockname()[1]}))

    async def test_pending_reconciliations_counted_from_visibility(self, client: Client) -> None:
        from worker.metrics import count_pending_reconciliations

        # A task queue no reconciliation ever ran on: zero of each waiting state, and the query is well formed
        # even for a queue name with quotes in it.
        counts = await count_pending_reconciliations(client, f"none-{uuid.uuid4().hex[:6]}'\"")
        assert counts == {"awaiting_decision": 0, "escalated": 0}
