"""OpenTelemetry tracing of a real migration, exported over OTLP/HTTP to a collector on 127.0.0.1 run by the test:
spans for the workflows and the activities arrive under Temporal's names, and nothing in them is a file key, a
bucket, a path or patient data."""

from __future__ import annotations

import gzip
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from contracts.common import FileState
from contracts.migration import MigrationInput
from tests.support.dicom import make_instance, uid
from tests.support.installation import converter
from tests.support.migrations import migrate
from worker import tracing
from worker.runner import build_worker
from worker.settings import Settings

PATIENT = "CANARY^TRACED"
PATIENT_ID = "CANARY-TRACE-0042"


class Collector(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver: every export request's raw body, and the spans decoded from it."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.bodies: list[bytes] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def spans(self) -> list[Any]:
        found = []
        with self.lock:
            bodies = list(self.bodies)
        for body in bodies:
            request = ExportTraceServiceRequest.FromString(body)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    found += list(scope.spans)
        return found


class _Handler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        with self.server.lock:
            self.server.paths.append(self.path)
            self.server.bodies.append(body)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class TestTracing:
    async def test_a_migration_is_traced_without_keys_or_patient_data(
            self, temporal_env: WorkflowEnvironment, settings: Settings, collector: Collector,
            buckets: dict[str, Any], datastore_id: str) -> None:
        traced = settings.model_copy(update={"otlp_endpoint": collector.url})
        interceptors = tracing.interceptors(traced)
        assert interceptors, "an OTLP endpoint switches tracing on"
        client = await Client.connect(temporal_env.client.service_client.config.target_host,
                                      namespace=temporal_env.client.namespace, data_converter=converter(),
                                      interceptors=interceptors)
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        study, series = uid(), uid()
        keys = [f"patients/{PATIENT_ID}/scan-{i}.dcm" for i in range(3)]
        for key in keys:
            s3.put_object(Bucket=src, Key=key, Body=make_instance(study, series, patient_id=PATIENT_ID,
                                                                 patient_name=PATIENT))
        with ThreadPoolExecutor(max_workers=traced.max_concurrent_activities) as executor:
            worker = build_worker(client, traced, executor)
            async with worker:
                payload = MigrationInput(source_s3_uri=f"s3://{src}/patients/", datastore_id=datastore_id,
                                         work_s3_uri=f"s3://{work}/runs/", import_start_interval_seconds=0)
                wid, result = await migrate(client, worker, payload, prefix="traced")
        assert result.files_by_state[FileState.IMPORTED] == 3
        tracing.flush()

        assert set(collector.paths) == {"/v1/traces"}
        names = {span.name for span in collector.spans()}
        for expected in ("StartWorkflow:MigrationWorkflow", "RunWorkflow:MigrationWorkflow",
                         "StartChildWorkflow:ImportBatchWorkflow", "RunWorkflow:ImportBatchWorkflow",
                         "StartActivity:parse_headers", "RunActivity:parse_headers",
                         "RunActivity:start_import_job", "RunActivity:review_manifest", "RunActivity:write_report"):
            assert expected in names, sorted(names)
        # One trace: the worker's spans are children of the client's start.
        spans = collector.spans()
        assert len({span.trace_id for span in spans if wid in str(span.attributes)}) == 1
        raw = b"".join(collector.bodies)
        for secret in (PATIENT, PATIENT_ID, "patients/", src, work, "s3://", study, series):
            assert secret.encode() not in raw, secret

    def test_off_without_an_endpoint(self, settings: Settings) -> None:
        assert settings.otlp_endpoint is None
        assert tracing.interceptors(settings) == []

    def test_opentelemetry_is_not_imported_when_off(self) -> None:
        code = ("import sys, cli.app, worker.__main__, worker.runner, worker.client, worker.tracing; "
                "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
        assert done.stdout.strip() == "[]"
