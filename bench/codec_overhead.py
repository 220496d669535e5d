"""What sealing every Temporal payload costs a real migration: the codec against the plain pydantic converter.

Starts the embedded local stack's servers (Temporal dev server, moto with its buckets and the import-job events
queue, the HealthImaging emulator) in a fresh state directory under a temporary directory, on free 127.0.0.1
ports, and uploads one synthetic corpus (``himig corpus generate --kind synthetic``'s generator, 500 files by
default). The stack's own worker is not started: its job-events listener signals batches with a sealing client,
which a plain-converter worker could not read. Instead each run builds the production worker in this process
(`worker.runner.build_worker`, on a task queue of its own) plus the job-events listener, both on a client
connected with either

- ``codec``: the project's converter, `worker.codec.data_converter` (AES-256-GCM over every payload, failures
  encoded too), with a key generated for the bench, or
- ``plain``: ``temporalio.contrib.pydantic.pydantic_data_converter`` (what the project ran before the codec),

and runs the same real `MigrationWorkflow` over the same corpus into a fresh data store. Runs alternate codec,
plain, codec, plain, ... for ``BENCH_ROUNDS`` rounds, after one unmeasured warm-up run (module imports, the
workflow sandbox, the emulator's first import). Measured per run:

- wall seconds from start to result;
- CPU seconds of this process (`time.process_time`: every thread, so the worker's activities, its workflow
  tasks, the SDK's core threads and the codec) over the run: this process does nothing else meanwhile;
- CPU seconds of the Temporal dev server over the run (it stores and serves the larger sealed payloads);
- bytes of the histories of the migration (every run of its continue-as-new chain) and of every child workflow
  (its batches), as stored (protobuf ``ByteSize`` of each event), and of their payloads alone (search
  attributes aside).

Every run's report must account for every file (all imported) or the bench fails. The bench also fails unless
every payload in every codec run's histories is sealed (metadata ``encoding`` ``binary/encrypted``) and none in
the plain runs' is, search attributes aside (Temporal indexes them, so no codec ever touches them): the
comparison cannot silently compare plain with plain.

    .venv/bin/python bench/codec_overhead.py     (BENCH_CODEC_FILES=500  BENCH_ROUNDS=3  BENCH_WARMUP=1
                                                   BENCH_TIMEOUT=900 seconds per migration)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Without bench/ itself on the path: bench/emulator.py would shadow the `emulator` package the stack checks for.
sys.path.remove(str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter

from corpus.synthetic import generate_studies
from devstack.demo import check_against_manifest, ensure_datastore
from devstack.stack import PidRecord, Stack, StackConfig
from tests.support.servers import free_port
from worker.process_exit import run_then_exit

FILES = int(os.environ.get("BENCH_CODEC_FILES", "500"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
WARMUP = int(os.environ.get("BENCH_WARMUP", "1"))
TIMEOUT = float(os.environ.get("BENCH_TIMEOUT", "900"))
SOURCE_BUCKET, WORK_BUCKET = "himig-source", "himig-work"
PREFIX = "bench/codec/"
# Short long-polls: a stopped run's abandoned poll must not hold the next run's import-job events hidden.
JOB_EVENTS_WAIT_SECONDS = 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
SEARCH_ATTRIBUTES = "temporal.api.common.v1.SearchAttributes"
PAYLOAD = Payload.DESCRIPTOR.full_name
KINDS = ("codec", "plain")
# Payloads the SDK's core writes itself, past any codec (no application data): the marker of each
# `workflow.patched` (its patch id) and the reason an activity was cancelled before it started.
PATCH_MARKER = "core_patch"
SDK_WRITTEN: dict[str, Callable[[HistoryEvent, Payload], bool]] = {
    "marker_recorded_event_attributes.details.payloads":
        lambda e, p: e.marker_recorded_event_attributes.marker_name == PATCH_MARKER,
    "activity_task_canceled_event_attributes.details.payloads":
        lambda e, p: p.data == b'"ACTIVITY_ID_NOT_STARTED"',
}


# ---------------------------------------------------------------------------------------------------------
# History: bytes and the sealing check


@dataclass
class HistoryStats:
    executions: int = 0
    events: int = 0
    history_bytes: int = 0
    payload_bytes: int = 0
    payloads: int = 0
    sealed: int = 0
    search_attribute_payloads: int = 0  # never sealed: Temporal must index them
    sdk_written: int = 0  # never sealed: see SDK_WRITTEN
    sealed_at: set[str] = field(default_factory=set)  # where sealed / plain payloads were found (event field paths)
    plain_at: set[str] = field(default_factory=set)

    def add_event(self, event: HistoryEvent) -> None:
        self.events += 1
        self.history_bytes += event.ByteSize()
        self._walk(event, "", event)

    def _walk(self, message: Message, path: str, event: HistoryEvent) -> None:
        if message.DESCRIPTOR.full_name == SEARCH_ATTRIBUTES:
            self.search_attribute_payloads += len(message.indexed_fields)  # type: ignore[attr-defined]
            return
        if message.DESCRIPTOR.full_name == PAYLOAD:
            self.payload_bytes += message.ByteSize()
            exempt = SDK_WRITTEN.get(path)
            if exempt is not None and exempt(event, message) and not is_sealed(message):
                self.sdk_written += 1
                return
            self.payloads += 1
            if is_sealed(message):
                self.sealed += 1
                self.sealed_at.add(path)
            else:
                self.plain_at.add(path)
            return
        for fd, value in message.ListFields():
            if fd.message_type is None:
                continue
            if fd.message_type.GetOptions().map_entry:
                values = value.values()
                if fd.message_type.fields_by_name["value"].message_type is None:
                    continue
            else:
                values = value if fd.is_repeated else [value]
            for item in values:
                self._walk(item, f"{path}.{fd.name}" if path else fd.name, event)


def is_sealed(payload: Message) -> bool:
    return bool(payload.metadata.get("encoding") == b"binary/encrypted")  # type: ignore[attr-defined]


async def history_stats(client: Client, workflow_id: str, run_id: str) -> HistoryStats:
    """Every run of the migration's continue-as-new chain and every child workflow it (or a child) started,
    followed through the histories themselves (no eventually consistent visibility query)."""
    stats = HistoryStats()
    todo = [(workflow_id, run_id)]
    seen: set[tuple[str, str]] = set()
    while todo:
        wid, rid = todo.pop()
        if (wid, rid) in seen:
            continue
        seen.add((wid, rid))
        stats.executions += 1
        history = await client.get_workflow_handle(wid, run_id=rid).fetch_history()
        for event in history.events:
            stats.add_event(event)
            if event.HasField("child_workflow_execution_started_event_attributes"):
                child = event.child_workflow_execution_started_event_attributes.workflow_execution
                todo.append((child.workflow_id, child.run_id))
            elif event.HasField("workflow_execution_continued_as_new_event_attributes"):
                todo.append((wid, event.workflow_execution_continued_as_new_event_attributes.new_execution_run_id))
    return stats


# ---------------------------------------------------------------------------------------------------------
# One run


@dataclass
class Run:
    kind: str
    wall: float
    cpu: float
    temporal_cpu: float
    history: HistoryStats


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def drain(sqs: Any, queue_url: str) -> None:
    """Delete whatever import-job events are left (PurgeQueue allows one call a minute)."""
    while True:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0).get("Messages")
        if not messages:
            return
        for m in messages:
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])


def corpus_shape(files: int) -> dict[str, int]:
    """patients x 1 study x 2 series x instances == files exactly (as bench/worker_footprint.py)."""
    for patients in (10, 5, 2, 1):
        if files % (2 * patients) == 0:
            return {"patients": patients, "studies_per_patient": 1, "series_per_study": 2,
                    "instances_per_series": files // (2 * patients)}
    return {"patients": 1, "studies_per_patient": 1, "series_per_study": 1, "instances_per_series": files}


async def migrate(kind: str, label: str, converter: DataConverter, mi: Any, sqs: Any, temporal_pid: int,
                  corpus: set[str]) -> Run:
    from cli.reporting import load_report
    from contracts.migration import MigrationInput
    from worker.aws import make_client
    from worker.jobevents import JobEventListener
    from worker.runner import build_worker
    from worker.settings import Settings
    from workflows.migration import MigrationWorkflow

    settings = Settings()
    conn = settings.temporal()
    client = await Client.connect(conn.address, namespace=conn.namespace, data_converter=converter)
    tag = f"{label}-{uuid.uuid4().hex[:6]}"
    datastore_id = ensure_datastore(mi, f"himig-codec-{tag}")  # a fresh data store per run
    payload = MigrationInput(source_s3_uri=f"s3://{SOURCE_BUCKET}/{PREFIX}", datastore_id=datastore_id,
                             work_s3_uri=f"s3://{WORK_BUCKET}/codec-bench/{tag}/")
    queue = f"bench-codec-{tag}"
    stop = asyncio.Event()
    with ThreadPoolExecutor(max_workers=settings.max_concurrent_activities) as executor:
        async with build_worker(client, settings, executor, task_queue=queue):
            listener = JobEventListener(client, make_client("sqs", settings, settings.sqs_endpoint_url),
                                        settings.job_events)
            listening = asyncio.create_task(listener.run(stop))
            temporal_before = proc_cpu_seconds(temporal_pid)
            cpu_before, started = time.process_time(), time.monotonic()
            try:
                handle = await client.start_workflow(MigrationWorkflow.run, payload, id=f"codec-bench-{tag}",
                                                     task_queue=queue)
                result = await asyncio.wait_for(handle.result(), TIMEOUT)
                wall = time.monotonic() - started
                cpu = time.process_time() - cpu_before
                temporal_cpu = proc_cpu_seconds(temporal_pid) - temporal_before
            finally:
                stop.set()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(listening, timeout=5)
    # The abandoned long poll ends within its wait; then nothing of this run is left on the queue.
    await asyncio.sleep(JOB_EVENTS_WAIT_SECONDS + 0.5)
    drain(sqs, settings.job_events.queue_url or "")

    history = await history_stats(client, handle.id, handle.result_run_id or handle.first_execution_run_id or "")
    states = {str(getattr(k, "value", k)): n for k, n in result.files_by_state.items()}
    summary, rows = load_report(settings, result, with_files=True)
    problems = check_against_manifest(rows, PREFIX, corpus)
    if result.files_total != FILES or states.get("imported", 0) + states.get("imported_with_warnings", 0) != FILES:
        problems.append(f"not all {FILES} files imported: {result.files_total} counted, {states}; "
                        f"reasons {summary.get('reasons')}")
    if summary.get("unaccounted") or summary.get("accounted_twice"):
        problems.append(f"report: {summary.get('unaccounted')} unaccounted, {summary.get('accounted_twice')} "
                        "accounted twice")
    if history.payloads == 0:
        problems.append("no payload found in the histories")
    elif kind == "codec" and history.sealed != history.payloads:
        problems.append(f"codec run: {history.payloads - history.sealed} of {history.payloads} payloads in its "
                        f"histories are not sealed, at {sorted(history.plain_at)}")
    elif kind == "plain" and history.sealed:
        problems.append(f"plain run: {history.sealed} of {history.payloads} payloads in its histories are sealed, "
                        f"at {sorted(history.sealed_at)}")
    if problems:
        raise SystemExit(f"{label} ({kind}) failed its checks:\n  " + "\n  ".join(problems[:20]))
    return Run(kind, wall, cpu, temporal_cpu, history)


# ---------------------------------------------------------------------------------------------------------
# Report


def report(runs: list[Run]) -> None:
    print(f"\n{'run':<8} {'wall s':>7} {'CPU s':>7} {'temporal CPU s':>15} {'executions':>10} {'events':>7} "
          f"{'history bytes':>14} {'payload bytes':>14} {'payloads':>9} {'sealed':>7}")
    for r in runs:
        h = r.history
        print(f"{r.kind:<8} {r.wall:>7.2f} {r.cpu:>7.2f} {r.temporal_cpu:>15.2f} {h.executions:>10} {h.events:>7} "
              f"{h.history_bytes:>14,} {h.payload_bytes:>14,} {h.payloads:>9} {h.sealed:>7}")

    def median(kind: str, metric: str) -> float:
        values = [getattr(r, metric) if hasattr(r, metric) else getattr(r.history, metric)
                  for r in runs if r.kind == kind]
        return float(statistics.median(values))

    rounds = sum(1 for r in runs if r.kind == "codec")
    print(f"medians over {rounds} round(s) of {FILES} files (codec / plain):")
    for metric, label, fmt in (("wall", "wall s", ".2f"), ("cpu", "worker CPU s", ".2f"),
                               ("temporal_cpu", "temporal CPU s", ".2f"), ("history_bytes", "history bytes", ",.0f"),
                               ("payload_bytes", "payload bytes", ",.0f")):
        print(f"  {label}: {median('codec', metric):{fmt}} / {median('plain', metric):{fmt}}")
    for metric, label in (("wall", "wall"), ("cpu", "worker CPU"), ("temporal_cpu", "Temporal CPU"),
                          ("history_bytes", "history bytes"), ("payload_bytes", "payload bytes")):
        plain = median("plain", metric)
        ratio = median("codec", metric) / plain if plain else float("nan")
        print(f"codec: {label} ratio vs plain = {ratio:.3f}")
    sealed = sum(r.history.sealed for r in runs if r.kind == "codec")
    search_values = sum(r.history.search_attribute_payloads for r in runs)
    sdk_written = sum(r.history.sdk_written for r in runs)
    print(f"all {sealed} payloads in the codec runs' histories sealed (binary/encrypted), none in the plain runs'; "
          f"left plain by design in all runs: {search_values} search-attribute values and {sdk_written} payloads "
          "the SDK's core writes (patch markers, not-started cancellations). Worker CPU "
          f"is this process's (the in-process worker, its SDK threads and the codec); the machine's "
          f"{os.cpu_count()} cores are shared with Temporal, moto and the emulator, so wall and CPU ratios are noisy.")


# ---------------------------------------------------------------------------------------------------------


def upload(s3: Any, root: Path, paths: list[str]) -> None:
    def put(rel: str) -> None:
        s3.put_object(Bucket=SOURCE_BUCKET, Key=PREFIX + rel, Body=(root / rel).read_bytes())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, paths))


def main() -> None:
    from worker.codec import KeyRing, data_converter

    tmp = Path(tempfile.mkdtemp(prefix="himig-codec-bench-"))
    ports = {"temporal_port": free_port(), "temporal_ui_port": free_port(), "moto_port": free_port(),
             "emulator_port": free_port()}
    assert len(set(ports.values())) == 4, ports
    config = StackConfig(dir=tmp / "stack", **ports)
    stack = Stack(config, on_event=lambda msg: print(f"  stack: {msg}", flush=True), cwd=tmp)
    converters = {"codec": data_converter(KeyRing.parse(KeyRing.generate_entry("bench"))),
                  "plain": pydantic_data_converter}
    runs: list[Run] = []
    try:
        # A fresh data store per run: lift CreateDatastore's AWS rate (one per ~12 s); every other operation keeps
        # its AWS throttling.
        os.environ["HIMIG_EMULATOR_THROTTLE_RATES"] = "CreateDatastore=10:10"
        stack.up(["temporal", "moto", "emulator"])  # not the stack's worker: each run brings its own
        os.environ.update(stack.env())
        os.environ["HIMIG_JOB_EVENTS_QUEUE_URL"] = config.job_events_queue_url
        os.environ["HIMIG_JOB_EVENTS_WAIT_SECONDS"] = str(JOB_EVENTS_WAIT_SECONDS)
        from worker.aws import make_client
        from worker.logs import configure_logging
        from worker.settings import Settings

        configure_logging("warning")
        settings = Settings()
        s3 = make_client("s3", settings, settings.s3_endpoint_url)
        sqs = make_client("sqs", settings, settings.sqs_endpoint_url)
        mi = make_client("medical-imaging", settings, settings.medical_imaging_endpoint_url)
        temporal = PidRecord.load(stack.pid_file("temporal"))
        assert temporal is not None, "no temporal pid file"

        corpus_dir = tmp / "corpus"
        entries = generate_studies(corpus_dir, **corpus_shape(FILES), seed=FILES)
        assert len(entries) == FILES and len({e.sop_instance_uid for e in entries}) == FILES, "bad corpus"
        upload(s3, corpus_dir, [e.path for e in entries])
        corpus = {e.path for e in entries}
        print(f"stack in {config.dir}; {FILES} files uploaded; {WARMUP} warm-up run(s), then {ROUNDS} round(s) of "
              f"{' / '.join(KINDS)}", flush=True)
        for i in range(WARMUP):
            run = asyncio.run(migrate("plain", f"warmup{i}", converters["plain"], mi, sqs, temporal.pid, corpus))
            print(f"  warm-up: {run.wall:.1f}s wall, {run.cpu:.1f} CPU s (not counted)", flush=True)
        for round_ in range(1, ROUNDS + 1):
            for kind in KINDS:
                run = asyncio.run(migrate(kind, f"{kind}{round_}", converters[kind], mi, sqs, temporal.pid, corpus))
                print(f"  round {round_} {kind}: {run.wall:.1f}s wall, {run.cpu:.1f} CPU s, "
                      f"{run.history.history_bytes:,} history bytes ({run.history.sealed}/{run.history.payloads} "
                      "payloads sealed)", flush=True)
                runs.append(run)
        report(runs)
    finally:
        with contextlib.suppress(Exception):
            stack.down()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    # Without interpreter finalization, which the SDK's native threads can abort (see bench/process_exits.py).
    run_then_exit(main)
