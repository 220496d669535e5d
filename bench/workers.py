"""Throughput with 1, 2 and 4 worker processes on one task queue (what scaling out an ECS service buys).

Starts the embedded local stack in a temporary directory on free ports (its own worker is worker 1) and adds
``python -m worker`` processes with the same environment (same task queue) for the 2- and 4-worker runs. Each
run migrates the same synthetic corpus (``BENCH_FILES``, default 2,000) into a fresh data store with
``MigrationInput``'s defaults except ``max_concurrent_jobs`` / ``max_parallel_pages`` raised so that more workers
have work to share (``BENCH_JOBS``=8, ``BENCH_PAGES``=4). Runs are interleaved over ``BENCH_ROUNDS`` (2) and the
median wall time is taken; it prints instances/s per worker count, the speed-up against one worker, and which
workers ran activities (from the histories' ActivityTaskStarted identities), and fails unless every file of
every run is imported exactly once.

On the project machine (2 cores shared with Temporal, moto and the emulator) the workers compete for the same
cores as the servers they call; the figures show the orchestration's scaling, not a fleet's.

    .venv/bin/python bench/workers.py
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

# Without bench/ itself on the path: bench/emulator.py would shadow the `emulator` package the stack checks for.
sys.path.remove(str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lib.histories import activity_identities, migration_histories
from bench.lib.localstack import corpus_shape, ensure_payload_keys, upload
from corpus.synthetic import generate_studies
from devstack.demo import ensure_datastore
from devstack.stack import Stack, StackConfig
from tests.support.servers import free_port
from worker.process_exit import run_then_exit

FILES = int(os.environ.get("BENCH_FILES", "2000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
JOBS = int(os.environ.get("BENCH_JOBS", "8"))
PAGES = int(os.environ.get("BENCH_PAGES", "4"))
COUNTS = [1, 2, 4]
SOURCE_BUCKET, WORK_BUCKET = "himig-source", "himig-work"


def extra_worker(stack: Stack, n: int) -> subprocess.Popen[bytes]:
    """One more worker like the stack's own, with a health file of its own, ready when that file appears."""
    spec = stack.spec("worker")
    health = stack.run_dir / f"bench-worker-{n}.ready"
    health.unlink(missing_ok=True)
    log = open(stack.log_dir / f"bench-worker-{n}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(spec.argv, env={**os.environ, **spec.env, "HIMIG_HEALTH_FILE": str(health)},
                            stdout=log, stderr=subprocess.STDOUT, cwd=stack.cwd)
    log.close()
    deadline = time.monotonic() + 60
    while not health.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"extra worker {n} did not become ready (see {stack.log_dir})")
        time.sleep(0.1)
    return proc


async def migrate(mi: Any, prefix: str, tag: str) -> tuple[float, set[str]]:
    from contracts.common import FileState
    from contracts.migration import MigrationInput
    from worker.client import connect
    from worker.settings import Settings
    from workflows.migration import MigrationWorkflow

    settings = Settings()
    client = await connect(settings)
    datastore_id = None
    for _ in range(120):  # CreateDatastore's own rate is low: wait it out (outside the timed part)
        try:
            datastore_id = ensure_datastore(mi, f"workers-{tag}-{uuid.uuid4().hex[:8]}")
            break
        except mi.exceptions.ThrottlingException:
            await asyncio.sleep(2)
    assert datastore_id, "CreateDatastore stayed throttled"
    wid = f"workers-{tag}-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    result = await client.execute_workflow(
        MigrationWorkflow.run,
        MigrationInput(source_s3_uri=f"s3://{SOURCE_BUCKET}/{prefix}", datastore_id=datastore_id,
                       work_s3_uri=f"s3://{WORK_BUCKET}/workers/", max_concurrent_jobs=JOBS,
                       max_parallel_pages=PAGES),
        id=wid, task_queue=settings.task_queue)
    seconds = time.monotonic() - started
    if result.files_by_state.get(FileState.IMPORTED, 0) != FILES or result.files_total != FILES:
        raise SystemExit(f"{tag}: imported {result.files_by_state} of {FILES}")
    identities: set[str] = set()
    for history in await migration_histories(client, wid):
        identities |= activity_identities(history)
    return seconds, identities


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="himig-workers-"))
    config = StackConfig(dir=tmp / "stack", temporal_port=free_port(), temporal_ui_port=free_port(),
                         moto_port=free_port(), emulator_port=free_port())
    stack = Stack(config, on_event=lambda msg: print(f"  stack: {msg}", flush=True), cwd=tmp)
    extras: list[subprocess.Popen[bytes]] = []
    try:
        ensure_payload_keys()
        stack.up()
        os.environ.update(stack.env())
        from worker.aws import make_client
        from worker.settings import Settings

        settings = Settings()
        s3 = make_client("s3", settings, settings.s3_endpoint_url)
        mi = make_client("medical-imaging", settings, settings.medical_imaging_endpoint_url)
        entries = generate_studies(tmp / "corpus", **corpus_shape(FILES), seed=FILES)
        prefix = f"workers/{FILES}/"
        upload(s3, SOURCE_BUCKET, tmp / "corpus", prefix, [e.path for e in entries])
        seconds: dict[int, list[float]] = {n: [] for n in COUNTS}
        seen: dict[int, set[str]] = {n: set() for n in COUNTS}
        for r in range(ROUNDS):
            for count in (COUNTS if r % 2 == 0 else COUNTS[::-1]):
                while len(extras) < count - 1:
                    extras.append(extra_worker(stack, len(extras) + 2))
                while len(extras) > count - 1:
                    proc = extras.pop()
                    proc.terminate()
                    proc.wait(60)
                wall, identities = asyncio.run(migrate(mi, prefix, f"{count}w"))
                seconds[count].append(wall)
                seen[count] |= identities
                print(f"  round {r + 1}: {count} worker(s) {wall:6.1f}s {FILES / wall:6.1f} inst/s, "
                      f"{len(identities)} worker identities ran activities", flush=True)
        base = FILES / statistics.median(seconds[1])
        print(f"\n{FILES} instances, max_concurrent_jobs {JOBS}, max_parallel_pages {PAGES}, {ROUNDS} round(s):")
        for count in COUNTS:
            rate = FILES / statistics.median(seconds[count])
            print(f"  {count} worker(s): {rate:6.1f} inst/s  speed-up {rate / base:.2f}x  "
                  f"(activities ran on {len(seen[count])} distinct worker identities)")
    finally:
        for proc in extras:
            with contextlib.suppress(Exception):
                proc.terminate()
                proc.wait(60)
        with contextlib.suppress(Exception):
            stack.down()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    run_then_exit(main)
