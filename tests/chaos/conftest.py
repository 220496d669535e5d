"""The chaos suite's shared parts: a synthetic corpus on moto, workers as child processes, and the one check every
scenario ends with: every source file has exactly one terminal state, one import job per batch, one primary
image set per series, and the report's totals equal the inventory.

Small by default (it runs in `make test`); ``HIMIG_CHAOS_FILES`` scales the SIGKILL scenario's corpus (the issue's
figure is 2,000) and ``HIMIG_CHAOS_SEED`` picks other kill points."""

from __future__ import annotations

import os
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from contracts.common import FileState
from contracts.migration import MigrationInput, MigrationResult
from corpus.models import CorpusEntry
from corpus.synthetic import generate_studies
from tests.conftest import emulator_admin
from tests.support.migrations import report_rows, report_summary
from tests.support.servers import ServerProcess, start_emulator
from tests.support.worker_process import WorkerProcess
from tests.workflows.conftest import (
    active_datastore,
    buckets,  # noqa: F401 - the fixture, shared with the workflow tests
)

CHAOS_FILES = int(os.environ.get("HIMIG_CHAOS_FILES", "300"))
CHAOS_SEED = int(os.environ.get("HIMIG_CHAOS_SEED", "20261203"))
TERMINAL = {s.value for s in FileState}

pytestmark = pytest.mark.chaos


@dataclass
class Corpus:
    bucket: str
    prefix: str
    entries: dict[str, CorpusEntry]  # by S3 key

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def upload_corpus(s3: Any, bucket: str, root: Path, files: int, seed: int) -> Corpus:
    """``files`` synthetic instances (10 patients x 1 study x 2 series when it divides), uploaded under a prefix."""
    patients = 10 if files % 20 == 0 else 1
    entries = generate_studies(root, patients=patients, studies_per_patient=1, series_per_study=2,
                               instances_per_series=files // (2 * patients), seed=seed)
    assert len(entries) == files
    prefix = f"chaos-{uuid.uuid4().hex[:6]}/"

    def put(entry: CorpusEntry) -> None:
        s3.put_object(Bucket=bucket, Key=prefix + entry.path, Body=(root / entry.path).read_bytes())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, entries))
    return Corpus(bucket, prefix, {prefix + e.path: e for e in entries})


def worker_env(client: Client, queue: str, moto_url: str, emulator_url: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "HIMIG_TEMPORAL_ADDRESS": client.service_client.config.target_host,
            "HIMIG_TASK_QUEUE": queue, "AWS_ENDPOINT_URL_S3": moto_url, "AWS_ENDPOINT_URL_EVENTBRIDGE": moto_url,
            "AWS_ENDPOINT_URL_SQS": moto_url, "AWS_ENDPOINT_URL_MEDICAL_IMAGING": emulator_url,
            "HIMIG_GRACEFUL_SHUTDOWN_SECONDS": "1", **extra}


def chaos_input(corpus: Corpus, datastore_id: str, work_bucket: str, batch: int = 100) -> MigrationInput:
    return MigrationInput(source_s3_uri=corpus.uri, datastore_id=datastore_id, work_s3_uri=f"s3://{work_bucket}/w/",
                          inventory_page_size=batch, max_files_per_batch=batch, max_concurrent_jobs=4,
                          max_parallel_pages=2, import_start_interval_seconds=0.2)


def delete_faults(emulator_url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{emulator_url}/_emulator/faults", method="DELETE"), timeout=10)


def check_exactly_once(s3: Any, emulator_url: str, datastore_id: str, corpus: Corpus, result: MigrationResult,
                       failed_jobs: int = 0) -> dict[str, dict[str, Any]]:
    """The invariants every chaos scenario must end with. ``failed_jobs``: jobs the scenario made fail on purpose
    (each is replaced by its batch's halves, so it is the one kind of job that imports nothing)."""
    rows = report_rows(s3, result)
    # Every source file exactly once, each in a terminal state; all of these valid files imported.
    assert sorted(rows) == sorted(corpus.entries), "the report's files differ from the source's"
    states = {r["state"] for r in rows.values()}
    assert states <= TERMINAL, states
    assert states == {"imported"}, {s: sum(r["state"] == s for r in rows.values()) for s in states}
    # The report's totals equal the inventory, and the workflow's counts agree.
    assert result.files_total == len(corpus.entries)
    assert sum(result.files_by_state.values()) == len(corpus.entries)
    summary = report_summary(s3, result)
    assert summary.get("unaccounted", 0) == 0 and summary.get("accounted_twice", 0) == 0, summary
    # One import job per batch: the data store (fresh per scenario) holds exactly the jobs the report names, plus
    # the ones made to fail; a start retried after a crash or a lost answer reused its clientToken.
    report_jobs = {r["job_id"] for r in rows.values()}
    batches = {r["batch"] for r in rows.values()}
    jobs = [j for j in emulator_admin(emulator_url, "state")["jobs"] if j["datastoreId"] == datastore_id]
    assert len(jobs) == len({j["jobId"] for j in jobs}) == len(report_jobs) + failed_jobs, (len(jobs), len(report_jobs))
    assert report_jobs <= {j["jobId"] for j in jobs}
    if not failed_jobs:
        assert len(report_jobs) == len(batches)
    # One primary image set per series, and no other set in the data store.
    by_series: dict[str, set[str]] = defaultdict(set)
    for key, row in rows.items():
        by_series[str(corpus.entries[key].series_instance_uid)].add(row["image_set_id"])
    assert all(len(sets) == 1 for sets in by_series.values()), {s: len(v) for s, v in by_series.items() if len(v) > 1}
    sets = [s for s in emulator_admin(emulator_url, "state")["imageSets"] if s["datastoreId"] == datastore_id]
    assert len(sets) == len(by_series) and all(s["isPrimary"] for s in sets), sets
    assert {s["imageSetId"] for s in sets} == set().union(*by_series.values())
    return rows


@pytest.fixture
def fresh_datastore(emulator_url: str) -> str:
    return active_datastore(emulator_url, f"chaos-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Worker processes a test starts; all stopped at the end (by pid: only what the test started)."""
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.stop()


@pytest.fixture(scope="module")
def events_emulator(moto_url: str, log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An emulator of the module's own (its faults and restarts touch no other test), publishing its job events to
    an EventBridge bus on moto whose rule feeds an SQS queue, as a deployment's job-events listener reads them."""
    import boto3

    from worker.jobevents import configure_job_events_rule

    bus = f"chaos-{uuid.uuid4().hex[:8]}"
    events = boto3.client("events", endpoint_url=moto_url, region_name="us-east-1")
    sqs = boto3.client("sqs", endpoint_url=moto_url, region_name="us-east-1")
    events.create_event_bus(Name=bus)
    data_dir = tmp_path_factory.mktemp("chaos-emulator")
    args = ["--event-bus-name", bus]
    env = {"AWS_ENDPOINT_URL_EVENTBRIDGE": moto_url}
    server = start_emulator(data_dir, moto_url, log_dir, extra_args=args, extra_env=env)
    queue = configure_job_events_rule(events, sqs, f"chaos-events-{uuid.uuid4().hex[:8]}", bus=bus,
                                      rule=f"chaos-{uuid.uuid4().hex[:8]}")
    state: dict[str, Any] = {"server": server, "url": server.url, "queue_url": queue, "data_dir": data_dir,
                             "args": args, "env": env, "moto_url": moto_url, "log_dir": log_dir}
    yield state
    current: ServerProcess = state["server"]
    current.stop()


def restart_emulator(state: dict[str, Any]) -> None:
    """Start the module's emulator again on the same port and data directory (after it crashed)."""
    old: ServerProcess = state["server"]
    old.stop()
    state["server"] = start_emulator(state["data_dir"], state["moto_url"], state["log_dir"], port=old.port,
                                     extra_args=state["args"], extra_env=state["env"])
