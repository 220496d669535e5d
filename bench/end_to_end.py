"""The end-to-end claim, measured: the service against what a team would otherwise use, on the same stack and corpus.

Methods (bench/baselines/): **raw** (the fewest import jobs the quota allows over the source in place, no
orchestration: the local ceiling), **naive** (a sequential boto3 script: list, copy to a prefix, start, poll every
second, read the manifest), **sample** (the AWS ingestion sample's design: one job per series as series complete, no
clientToken, a timer-driven poller) and **ours** (a real `MigrationWorkflow` with `MigrationInput`'s defaults,
on the stack's real worker). Each run gets a fresh data store and its own work prefix and must import every
instance of the corpus (counted from the import jobs' SUCCESS output, or our report), or the bench fails.

The comparison runs twice, each on a local stack of its own started under a temporary directory on free ports:

- **as is**: moto, the emulator, Temporal and the worker on localhost, where an S3 request costs the same whatever
  the client and nothing waits on the network;
- **latency**: the same with ``bench/lib/latency_proxy.py`` in moto's port, adding ``BENCH_LATENCY_MS`` (15) before
  every S3 request of every client (the worker, the emulator's reads, the baselines): a region's S3 latency. The
  proxy also counts the S3 requests of each run (the service's own reads included).

Rounds are interleaved (the method order rotates each round) and the median instances/s of each method is taken. For
each size and stack it prints ``ratio vs raw = X``, ``ratio vs naive = Y``, ``ratio vs sample = Z`` (ours ÷ theirs;
the latency stack's lines prefixed ``latency:``), then per method: S3 requests per file, StartDICOMImportJob calls,
the share of the emulator's allowed StartDICOMImportJob rate used and the throttles caused, CPU seconds per 1k files
(ours: the worker process; a baseline: this process while it ran) and, for ours, the worker's peak RSS and the
Temporal history events per file. The table is appended to bench/RESULTS.md with the machine, versions and date.

    .venv/bin/python bench/end_to_end.py            (BENCH_SIZES=1000,10000  BENCH_ROUNDS=3  BENCH_LATENCY_MS=15)
    .venv/bin/python bench/end_to_end.py --quick    (1,000 instances, one round: `make bench-quick`)
    .venv/bin/python bench/end_to_end.py --large    (adds 100,000 instances)
    BENCH_SIZES=100000 BENCH_ROUNDS=1 .venv/bin/python bench/end_to_end.py --methods ours,raw --stacks as-is
                                                    (a subset: the ratio lines name only the methods run)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

# Without bench/ itself on the path: bench/emulator.py would shadow the `emulator` package the stack checks for.
with contextlib.suppress(ValueError):  # absent when another bench script imports this one
    sys.path.remove(str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.baselines import naive, raw, sample
from bench.baselines.common import Target
from bench.lib.histories import migration_histories
from bench.lib.localstack import check_worker_keys, corpus_shape, ensure_payload_keys, upload, worker_pid
from bench.lib.procfs import Sampler, cpu_seconds, mib, reset_peak_rss, status_kib
from corpus.synthetic import generate_studies
from devstack.demo import ensure_datastore
from devstack.stack import Stack, StackConfig
from tests.support.servers import free_port
from worker.process_exit import run_then_exit

SOURCE_BUCKET, WORK_BUCKET = "himig-source", "himig-work"
METHODS = ["ours", "raw", "naive", "sample"]
BASELINES: dict[str, Callable[[Target], int]] = {"raw": raw.run, "naive": naive.run, "sample": sample.run}
TIMEOUT = float(os.environ.get("BENCH_TIMEOUT", "3600"))
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


@dataclass
class Run:
    method: str
    files: int
    seconds: float
    s3_requests: int | None = None
    starts: int = 0
    start_throttles: int = 0
    start_rate: float = 0.0  # the emulator's StartDICOMImportJob rate (per second)
    cpu: float = 0.0
    peak_rss_kib: int | None = None
    history_events: int | None = None

    @property
    def rate(self) -> float:
        return self.files / self.seconds


@dataclass
class Bench:
    """One local stack (as is, or behind the latency proxy) and what ran on it."""

    label: str  # "" or "latency"
    stack: Stack
    env: dict[str, str]
    runs: dict[int, list[Run]] = field(default_factory=lambda: defaultdict(list))


# ---------------------------------------------------------------------------------------------------------
# The stack


def start_stack(tmp: Path, latency_ms: float | None) -> Stack:
    ports = {"temporal_port": free_port(), "temporal_ui_port": free_port(), "moto_port": free_port(),
             "emulator_port": free_port()}
    config = StackConfig(dir=tmp / "stack", **ports)
    commands = {}
    if latency_ms is not None:
        commands["moto"] = [sys.executable, str(Path(__file__).resolve().parent / "lib" / "latency_proxy.py"),
                            "--port", str(config.moto_port), "--latency-ms", str(latency_ms)]
    stack = Stack(config, on_event=lambda msg: print(f"  stack: {msg}", flush=True), cwd=tmp, commands=commands)
    stack.up()
    return stack


def http_json(url: str, method: str = "GET") -> dict[str, Any]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return dict(json.loads(resp.read()))


def proxy_stats(stack: Stack, reset: bool = False) -> dict[str, Any] | None:
    if "moto" not in stack._commands:
        return None
    path = "reset" if reset else "stats"
    return http_json(f"{stack.config.moto_url}/_latency_proxy/{path}", "POST" if reset else "GET")


def start_job_counters(stack: Stack) -> tuple[int, int, float]:
    """(allowed, throttled, rate) of the emulator's StartDICOMImportJob bucket."""
    doc = http_json(f"{stack.config.emulator_url}/_emulator/throttling")
    op = doc.get("operations", {}).get("StartDICOMImportJob", {})
    return int(op.get("allowed", 0)), int(op.get("throttled", 0)), float(op.get("rate", 0.0))


def clients(env: dict[str, str]) -> tuple[Any, Any, Any]:
    os.environ.update(env)
    from worker.aws import make_client
    from worker.settings import Settings

    settings = Settings()
    return (settings, make_client("s3", settings, settings.s3_endpoint_url),
            make_client("medical-imaging", settings, settings.medical_imaging_endpoint_url))


# ---------------------------------------------------------------------------------------------------------
# The corpus


def prepare_corpus(s3: Any, tmp: Path, files: int, series_size: int | None = None) -> tuple[str, dict[str, int]]:
    """``files`` instances uploaded under ``e2e/<files>/`` (`corpus_shape`, or one study of series of
    ``series_size`` instances, each series a folder); returns the prefix and the files per folder."""
    corpus_dir = tmp / f"corpus-{files}"
    shape = corpus_shape(files) if series_size is None else {
        "patients": 1, "studies_per_patient": 1, "series_per_study": files // series_size,
        "instances_per_series": series_size}
    entries = generate_studies(corpus_dir, **shape, seed=files)
    if len(entries) != files or len({e.sop_instance_uid for e in entries}) != files:
        raise SystemExit(f"the generated corpus of {files} is not {files} distinct instances")
    prefix = f"e2e/{files}/"
    paths = [e.path for e in entries]
    upload(s3, SOURCE_BUCKET, corpus_dir, prefix, paths)
    layout: dict[str, int] = defaultdict(int)
    for path in paths:
        layout[prefix + path.rsplit("/", 1)[0] + "/"] += 1
    shutil.rmtree(corpus_dir, ignore_errors=True)
    return prefix, dict(layout)


# ---------------------------------------------------------------------------------------------------------
# One run of one method


async def run_ours(bench: Bench, settings: Any, datastore_id: str, prefix: str, work_prefix: str,
                   files: int) -> tuple[float, float, int, int]:
    from contracts.common import FileState
    from contracts.migration import MigrationInput
    from worker.client import connect
    from workflows.migration import MigrationWorkflow

    pid = worker_pid(bench.stack)
    check_worker_keys(pid)
    client = await connect(settings)
    reset_peak_rss(pid)
    sampler = Sampler(pid)
    sampler.start()
    cpu0, started = cpu_seconds(pid), time.monotonic()
    workflow_id = f"e2e-{files}-{uuid.uuid4().hex[:8]}"
    try:
        handle = await client.start_workflow(
            MigrationWorkflow.run,
            MigrationInput(source_s3_uri=f"s3://{SOURCE_BUCKET}/{prefix}", datastore_id=datastore_id,
                           work_s3_uri=f"s3://{WORK_BUCKET}/{work_prefix}"),
            id=workflow_id, task_queue=settings.task_queue)
        result = await asyncio.wait_for(handle.result(), TIMEOUT)
        seconds = time.monotonic() - started
        cpu = cpu_seconds(pid) - cpu0
        peak = max(status_kib(pid, "VmHWM"), sampler.max_rss_kib)
    finally:
        sampler.stop()
    states = {getattr(k, "value", k): n for k, n in result.files_by_state.items()}
    imported = states.get(FileState.IMPORTED.value, 0) + states.get("imported_with_warnings", 0)
    if result.files_total != files or imported != files:
        raise SystemExit(f"ours imported {imported} of {files} ({states})")
    events = sum(len(h.events) for h in await migration_histories(client, workflow_id))
    return seconds, cpu, peak, events


def fresh_datastore(mi: Any, name: str) -> str:
    """A new ACTIVE data store (outside the timed part); CreateDatastore's own rate is low, so wait it out."""
    for _ in range(120):
        try:
            return ensure_datastore(mi, name)
        except mi.exceptions.ThrottlingException:
            time.sleep(2)
    raise SystemExit("CreateDatastore stayed throttled for 4 minutes")


def run_one(bench: Bench, method: str, files: int, prefix: str, layout: dict[str, int]) -> Run:
    settings, s3, mi = clients(bench.env)
    datastore_id = fresh_datastore(mi, f"e2e-{method}-{uuid.uuid4().hex[:10]}")
    work_prefix = f"e2e-work/{method}-{uuid.uuid4().hex[:10]}/"
    proxy_stats(bench.stack, reset=True)
    allowed0, throttled0, rate = start_job_counters(bench.stack)
    run = Run(method, files, 0.0, start_rate=rate)
    if method == "ours":
        run.seconds, run.cpu, peak, run.history_events = asyncio.run(
            run_ours(bench, settings, datastore_id, prefix, work_prefix, files))
        run.peak_rss_kib = peak
    else:
        target = Target(s3=s3, mi=mi, datastore_id=datastore_id, role_arn=str(settings.data_access_role_arn),
                        source_bucket=SOURCE_BUCKET, source_prefix=prefix, work_bucket=WORK_BUCKET,
                        work_prefix=work_prefix, layout=layout)
        cpu0, started = time.process_time(), time.monotonic()
        imported = BASELINES[method](target)
        run.seconds, run.cpu = time.monotonic() - started, time.process_time() - cpu0
        if imported != files:
            raise SystemExit(f"{method} imported {imported} of {files}")
    allowed1, throttled1, _ = start_job_counters(bench.stack)
    run.starts, run.start_throttles = allowed1 - allowed0, throttled1 - throttled0
    stats = proxy_stats(bench.stack)
    run.s3_requests = int(stats["s3_requests"]) if stats else None
    return run


# ---------------------------------------------------------------------------------------------------------
# Output


def median_rate(runs: list[Run], method: str) -> float:
    return statistics.median(r.rate for r in runs if r.method == method)


def summary_lines(bench: Bench, files: int, methods: list[str]) -> list[str]:
    runs = bench.runs[files]
    tag = f"{bench.label}: " if bench.label else ""
    ours = median_rate(runs, "ours")
    lines = [f"{tag}{files} instances: ours {ours:.1f} instances/s (median of "
             f"{sum(r.method == 'ours' for r in runs)})"]
    lines += [f"{tag}ratio vs {m} = {ours / median_rate(runs, m):.2f}" for m in ("raw", "naive", "sample")
              if m in methods]
    for m in methods:
        mine = [r for r in runs if r.method == m]
        last = mine[-1]
        s3 = (f"{statistics.median(r.s3_requests for r in mine if r.s3_requests is not None) / files:.2f}"
              if last.s3_requests is not None else "n/a (counted behind the latency proxy)")
        used = statistics.median(r.starts / r.seconds / r.start_rate for r in mine) if last.start_rate else 0
        line = (f"{tag}  {m:<6} {median_rate(runs, m):8.1f} inst/s  wall {statistics.median(r.seconds for r in mine):7.1f}s"
                f"  S3 req/file {s3}  starts {last.starts} (throttled {sum(r.start_throttles for r in mine)};"
                f" {used:.1%} of the allowed start rate)  CPU {statistics.median(r.cpu for r in mine) / files * 1000:.2f}"
                " s/1k files")
        if m == "ours":
            line += (f"  worker peak RSS {mib(max(r.peak_rss_kib or 0 for r in mine)):.0f} MiB"
                     f"  history {statistics.median((r.history_events or 0) / files for r in mine):.3f} events/file")
        lines.append(line)
    return lines


def versions() -> str:
    names = ["temporalio", "boto3", "moto", "pydicom", "pynetdicom"]
    found = []
    for n in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{n} {metadata.version(n)}")
    return ", ".join([f"Python {platform.python_version()}", *found])


def machine() -> str:
    mem = next((int(line.split()[1]) // 1024 // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal:")), 0)
    return f"{platform.machine()}, {os.cpu_count()} cores, {mem} GiB, {platform.platform()}"


def append_results(lines: list[str], args: argparse.Namespace, sizes: list[int], rounds: int) -> None:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = "" if RESULTS.exists() else "# Benchmark results\n\nAppended by the bench scripts; newest last.\n"
    block = [header, f"\n## end_to_end.py — {now}\n", f"- machine: {machine()}", f"- versions: {versions()}",
             f"- sizes {sizes}, {rounds} round(s), methods {', '.join(args.methods)}, stacks {', '.join(args.stacks)}"
             f" (latency {args.latency_ms} ms on the latency stack)\n", "```",
             *lines, "```", ""]
    with RESULTS.open("a") as f:
        f.write("\n".join(block))


# ---------------------------------------------------------------------------------------------------------


def _methods(text: str) -> list[str]:
    chosen = [m.strip() for m in text.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(METHODS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    return ["ours", *[m for m in METHODS[1:] if m in chosen]]


def _stacks(text: str) -> list[str]:
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(chosen) - {"as-is", "latency"})
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"stacks must be a subset of as-is,latency, not {text!r}")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 instances, one round")
    parser.add_argument("--large", action="store_true", help="also 100,000 instances")
    parser.add_argument("--latency-ms", type=float, default=float(os.environ.get("BENCH_LATENCY_MS", "15")))
    parser.add_argument("--no-results", action="store_true", help="do not append to bench/RESULTS.md")
    parser.add_argument("--methods", type=_methods, default=list(METHODS),
                        help="comma-separated subset of ours,raw,naive,sample (ours is always run)")
    parser.add_argument("--stacks", type=_stacks, default=["as-is", "latency"],
                        help="comma-separated subset of as-is,latency")
    args = parser.parse_args()
    sizes = [int(x) for x in os.environ.get("BENCH_SIZES", "1000,10000").split(",") if x.strip()]
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    if args.quick:
        sizes, rounds = [1000], 1
    if args.large:
        sizes.append(100_000)
    ensure_payload_keys()
    base_env = dict(os.environ)
    out: list[str] = []
    methods: list[str] = args.methods
    stacks = [(label, latency) for name, label, latency in (("as-is", "", None), ("latency", "latency", args.latency_ms))
              if name in args.stacks]
    for label, latency in stacks:
        tmp = Path(tempfile.mkdtemp(prefix="himig-e2e-"))
        stack = start_stack(tmp, latency)
        try:
            bench = Bench(label, stack, {**base_env, **stack.env()})
            _, s3, _ = clients(bench.env)
            print(f"{label or 'as-is'} stack in {tmp} (moto {stack.config.moto_port}"
                  f"{', behind the latency proxy' if latency is not None else ''})", flush=True)
            for files in sizes:
                prefix, layout = prepare_corpus(s3, tmp, files)
                for r in range(rounds):
                    for method in methods[r % len(methods):] + methods[:r % len(methods)]:
                        run = run_one(bench, method, files, prefix, layout)
                        bench.runs[files].append(run)
                        print(f"  {label or 'as-is'} {files} round {r + 1}: {method:<6} {run.seconds:7.1f}s "
                              f"{run.rate:8.1f} inst/s", flush=True)
                lines = summary_lines(bench, files, methods)
                print("\n".join(lines), flush=True)
                out += lines
        finally:
            with contextlib.suppress(Exception):
                stack.down()
            shutil.rmtree(tmp, ignore_errors=True)
    print("\n" + "\n".join(out))
    if not args.no_results:
        append_results(out, args, sizes, rounds)


if __name__ == "__main__":
    # Without interpreter finalization, which the SDK's native threads can abort (see bench/process_exits.py).
    run_then_exit(main)
