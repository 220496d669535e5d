"""Chaos: the migration meets what production does to it (a worker SIGKILLed at seeded random points, a worker of
two lost for good, the emulator crashing mid-job, throttling and 5xx on every operation, a FAILED job, a late
manifest, duplicated and reordered job events) and must end with every source file accounted for exactly once
(`check_exactly_once`). Real Temporal dev server, moto, emulator and `python -m worker` child processes."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from activities.importjob import job_name
from bench.lib.histories import activity_identities
from contracts.batch import BatchInput
from contracts.migration import MigrationProgress, batch_workflow_id
from tests.chaos.conftest import (
    CHAOS_FILES,
    CHAOS_SEED,
    Corpus,
    chaos_input,
    check_exactly_once,
    delete_faults,
    restart_emulator,
    upload_corpus,
    worker_env,
)
from tests.conftest import emulator_admin
from tests.support.worker_process import WorkerProcess, progress_until
from tests.workflows.conftest import active_datastore
from workflows.migration import MigrationWorkflow

pytestmark = pytest.mark.chaos
LIMIT = timedelta(minutes=10)  # every migration here is bounded: a stuck one fails instead of hanging the suite


@dataclass
class Scenario:
    datastore: str
    corpus: Corpus
    queue: str
    worker: WorkerProcess


def scenario(client: Client, moto_url: str, emulator_url: str, buckets: dict[str, Any], workers: list[WorkerProcess],
             tmp_path: Path, files: int, seed: int, **worker_env_extra: str) -> Scenario:
    """A fresh data store on ``emulator_url``, a corpus of ``files``, and one worker process on a queue of its own."""
    datastore = active_datastore(emulator_url, f"chaos-{uuid.uuid4().hex[:8]}")
    corpus = upload_corpus(buckets["s3"], buckets["source"], tmp_path / "corpus", files, seed=seed)
    queue = f"chaos-{uuid.uuid4().hex[:8]}"
    worker = WorkerProcess(worker_env(client, queue, moto_url, emulator_url, **worker_env_extra),
                           tmp_path / "worker.log")
    workers.append(worker)
    worker.start()
    return Scenario(datastore, corpus, queue, worker)


def fraction_done(p: MigrationProgress) -> float:
    """How far a migration is, 0..1: parsing pages is the first 30 %, files reaching a terminal state the rest."""
    pages = p.pages_done / p.inventory_pages if p.inventory_pages else 0.0
    files = p.files_done / p.files_total if p.files_total else 0.0
    return 0.3 * pages + 0.7 * files


async def test_seeded_sigkills_lose_and_duplicate_nothing(
        client: Client, moto_url: str, emulator_url: str, buckets: dict[str, Any], fresh_datastore: str,
        workers: list[WorkerProcess], tmp_path: Path) -> None:
    s3 = buckets["s3"]
    corpus = upload_corpus(s3, buckets["source"], tmp_path / "corpus", CHAOS_FILES, seed=CHAOS_SEED)
    queue = f"chaos-{uuid.uuid4().hex[:8]}"
    worker = WorkerProcess(worker_env(client, queue, moto_url, emulator_url), tmp_path / "worker.log")
    workers.append(worker)
    worker.start()
    rng = random.Random(CHAOS_SEED)
    # Five kill points, seeded, anywhere from the first parsed page to the last batches' reviews.
    points = sorted(rng.uniform(0.02, 0.9) for _ in range(5))
    handle = await client.start_workflow(
        MigrationWorkflow.run, chaos_input(corpus, fresh_datastore, buckets["work"], batch=max(50, CHAOS_FILES // 8)),
        id=f"chaos-kill-{uuid.uuid4().hex[:8]}", task_queue=queue, execution_timeout=LIMIT)
    killed_at = []
    for point in points:
        p = await progress_until(handle, lambda p, point=point: fraction_done(p) >= point or p.phase == "done",
                                 timeout=180)
        if p.phase == "done":
            break
        await asyncio.sleep(rng.uniform(0, 0.5))  # and a random moment within that stretch
        worker.kill()
        killed_at.append(f"{p.phase}@{fraction_done(p):.2f}")
        worker.start()
    result = await handle.result()
    assert len(killed_at) == 5, f"the migration ended after {len(killed_at)} kills ({killed_at}): {worker.log_tail()}"
    check_exactly_once(s3, emulator_url, fresh_datastore, corpus, result)


async def test_migration_over_two_workers_survives_losing_one(
        client: Client, moto_url: str, emulator_url: str, buckets: dict[str, Any], fresh_datastore: str,
        workers: list[WorkerProcess], tmp_path: Path) -> None:
    s3 = buckets["s3"]
    corpus = upload_corpus(s3, buckets["source"], tmp_path / "corpus", 400, seed=CHAOS_SEED + 1)
    queue = f"chaos-{uuid.uuid4().hex[:8]}"
    env = worker_env(client, queue, moto_url, emulator_url)
    a, b = WorkerProcess(env, tmp_path / "a.log"), WorkerProcess(env, tmp_path / "b.log")
    workers += [a, b]
    a.start()
    b.start()
    wid = f"chaos-two-{uuid.uuid4().hex[:8]}"
    handle = await client.start_workflow(MigrationWorkflow.run, chaos_input(corpus, fresh_datastore, buckets["work"], 50),
                                         id=wid, task_queue=queue, execution_timeout=LIMIT)
    await progress_until(handle, lambda p: p.phase == "importing" and p.batches_done >= 2, timeout=180)
    # Both workers took part before one is lost for good (identities of the activities' starts so far).
    batch_ids = [batch_workflow_id(wid, n) for n in range(2)]
    seen: set[str] = set()
    for workflow_id in [wid, *batch_ids]:
        seen |= activity_identities(await client.get_workflow_handle(workflow_id).fetch_history())
    assert len(seen) >= 2, f"only {seen} ran activities before the kill"
    a.kill()
    result = await handle.result()
    check_exactly_once(s3, emulator_url, fresh_datastore, corpus, result)


async def test_emulator_crashing_mid_job_and_restarting(
        client: Client, moto_url: str, events_emulator: dict[str, Any], buckets: dict[str, Any],
        workers: list[WorkerProcess], tmp_path: Path) -> None:
    url = events_emulator["url"]
    sc = scenario(client, moto_url, url, buckets, workers, tmp_path, 200, CHAOS_SEED + 2)
    s3, datastore, corpus, queue = buckets["s3"], sc.datastore, sc.corpus, sc.queue
    # The emulator's process dies after reading 20 files of the second batch's job (in-memory faults die with it).
    wid = f"chaos-emu-{uuid.uuid4().hex[:8]}"
    name = job_name(BatchInput(migration_id=wid, batch=1, source_s3_uri="s3://x-b/", work_s3_uri="s3://y-b/",
                               datastore_id=datastore))
    emulator_admin(url, "faults", {"kind": "crash", "jobName": f"{name}*", "afterFiles": 20, "count": 1})
    handle = await client.start_workflow(MigrationWorkflow.run, chaos_input(corpus, datastore, buckets["work"], 50),
                                         id=wid, task_queue=queue, execution_timeout=LIMIT)
    server = events_emulator["server"]
    deadline = time.monotonic() + 120
    while server.proc.poll() is None:
        assert time.monotonic() < deadline, "the emulator never crashed"
        await asyncio.sleep(0.1)
    await asyncio.sleep(1)  # the worker meets a dead endpoint for a while
    restart_emulator(events_emulator)
    result = await handle.result()
    check_exactly_once(s3, url, datastore, corpus, result)


async def test_throttling_and_server_errors_on_every_operation(
        client: Client, moto_url: str, events_emulator: dict[str, Any], buckets: dict[str, Any],
        workers: list[WorkerProcess], tmp_path: Path) -> None:
    url = events_emulator["url"]
    sc = scenario(client, moto_url, url, buckets, workers, tmp_path, 200, CHAOS_SEED + 3)
    s3, datastore, corpus, queue = buckets["s3"], sc.datastore, sc.corpus, sc.queue
    # 20 % throttled, 5 % server errors: half before the operation runs, half after it ran (the client never
    # learns that its start or update happened).
    faults = emulator_admin(url, "faults", [
        {"kind": "throttle", "operation": "*", "rate": 0.2, "seed": CHAOS_SEED},
        {"kind": "server_error", "operation": "*", "rate": 0.025, "seed": CHAOS_SEED + 1},
        {"kind": "server_error", "operation": "*", "rate": 0.025, "seed": CHAOS_SEED + 2, "phase": "after"}])
    try:
        result = await client.execute_workflow(
            MigrationWorkflow.run, chaos_input(corpus, datastore, buckets["work"], 40),
            id=f"chaos-5xx-{uuid.uuid4().hex[:8]}", task_queue=queue, execution_timeout=LIMIT)
        fired = {f["id"]: f["fired"] for f in emulator_admin(url, "faults")["faults"]}
    finally:
        delete_faults(url)
    assert all(fired[f["id"]] > 0 for f in faults["faults"]), fired  # every kind of trouble really happened
    check_exactly_once(s3, url, datastore, corpus, result)


async def test_failed_job_late_manifest_and_duplicated_reordered_events(
        client: Client, moto_url: str, events_emulator: dict[str, Any], buckets: dict[str, Any],
        workers: list[WorkerProcess], tmp_path: Path) -> None:
    url = events_emulator["url"]
    # This worker also listens to the job events (EventBridge → rule → SQS) and lets them wake its batches.
    sc = scenario(client, moto_url, url, buckets, workers, tmp_path, 200, CHAOS_SEED + 4,
                  HIMIG_JOB_EVENTS_QUEUE_URL=events_emulator["queue_url"])
    s3, datastore, corpus, queue = buckets["s3"], sc.datastore, sc.corpus, sc.queue
    wid = f"chaos-ev-{uuid.uuid4().hex[:8]}"

    def name(batch: int) -> str:
        return job_name(BatchInput(migration_id=wid, batch=batch, source_s3_uri="s3://x-b/", work_s3_uri="s3://y-b/",
                                   datastore_id=datastore))

    faults = emulator_admin(url, "faults", [
        {"kind": "job_failed", "jobName": f"{name(0)}", "count": 1, "message": "Internal error (injected)"},
        {"kind": "manifest_delay", "jobName": f"{name(1)}*", "delaySeconds": 3, "count": 1},
        {"kind": "event_duplicate", "detailType": "*", "copies": 2, "rate": 0.5, "seed": CHAOS_SEED},
        {"kind": "event_reorder", "detailType": "*", "holdSeconds": 2, "rate": 0.5, "seed": CHAOS_SEED + 1}])
    try:
        result = await client.execute_workflow(
            MigrationWorkflow.run, chaos_input(corpus, datastore, buckets["work"], 50),
            id=wid, task_queue=queue, execution_timeout=LIMIT)
        fired = {f["id"]: f["fired"] for f in emulator_admin(url, "faults")["faults"]}
    finally:
        delete_faults(url)
    assert all(fired[f["id"]] > 0 for f in faults["faults"]), fired
    # The failed job's batch imported in two halves: one job more than batches, plus the failed one.
    rows = check_exactly_once(s3, url, datastore, corpus, result, failed_jobs=1)
    assert len({r["job_id"] for r in rows.values()}) == len({r["batch"] for r in rows.values()}) + 1
