"""Where one migration's wall time goes: a real `MigrationWorkflow` on a fresh local stack, read back from its histories.

Runs ours only (no baselines), ``BENCH_N`` instances (default 1,000) of the end-to-end corpus, optionally behind
the latency proxy (``--latency-ms``), then reads every history of the migration (its runs and its batch workflows)
and prints, in seconds from the migration's start:

- per activity type: how many ran, the first schedule, the first start, the last completion, the summed time
  from schedule to start (queueing behind the worker's slots) and from start to completion (work);
- per batch: when its workflow started and each stage transition (from the batch's progress as history records
  it: the activity events of its own history);
- the share of the wall time before the first StartDICOMImportJob and between the last job's completion and the
  migration's end;
- the HealthImaging calls of the run, per operation (the emulator's throttling counters: allowed and throttled).

It measures one run: a profile, not a benchmark (bench/end_to_end.py compares methods).

    .venv/bin/python bench/timeline.py                 (BENCH_N=1000)
    BENCH_N=5000 .venv/bin/python bench/timeline.py --latency-ms 15
    BENCH_N=5000 .venv/bin/python bench/timeline.py --series-size 2500   (folders larger than a batch)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.remove(str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.end_to_end import (
    SOURCE_BUCKET,
    WORK_BUCKET,
    clients,
    fresh_datastore,
    http_json,
    prepare_corpus,
    start_stack,
)
from bench.lib.histories import migration_histories
from bench.lib.localstack import ensure_payload_keys
from worker.process_exit import run_then_exit


@dataclass
class Span:
    workflow: str
    name: str
    scheduled: float
    started: float | None = None
    closed: float | None = None


def spans(histories: list[Any]) -> tuple[list[Span], float, float]:
    """Every activity of the histories as (scheduled, started, closed) seconds, and the migration's first/last event."""
    out: list[Span] = []
    first, last = float("inf"), 0.0
    for h in histories:
        wf = h.workflow_id
        by_id: dict[int, Span] = {}
        for e in h.events:
            t = e.event_time.ToDatetime().timestamp()
            if ".batch-" not in wf:
                first, last = min(first, t), max(last, t)
            if e.HasField("activity_task_scheduled_event_attributes"):
                span = Span(wf, e.activity_task_scheduled_event_attributes.activity_type.name, t)
                by_id[e.event_id] = span
                out.append(span)
            elif e.HasField("activity_task_started_event_attributes"):
                by_id[e.activity_task_started_event_attributes.scheduled_event_id].started = t
            else:
                for field in ("activity_task_completed_event_attributes", "activity_task_failed_event_attributes",
                              "activity_task_timed_out_event_attributes", "activity_task_canceled_event_attributes"):
                    if e.HasField(field):
                        by_id[getattr(e, field).scheduled_event_id].closed = t
    return out, first, last


def report(histories: list[Any], wall: float) -> list[str]:
    acts, t0, t_end = spans(histories)
    lines = [f"migration wall {wall:.1f}s (history {t_end - t0:.1f}s), {len(histories)} workflow histories"]
    by_name: dict[str, list[Span]] = defaultdict(list)
    for a in acts:
        by_name[a.name].append(a)
    lines.append(f"{'activity':<22}{'n':>5}{'1st sched':>11}{'1st start':>11}{'last end':>10}{'queued Σ':>10}"
                 f"{'work Σ':>9}{'work max':>10}")
    for name, items in sorted(by_name.items(), key=lambda kv: min(s.scheduled for s in kv[1])):
        queued = sum((s.started or s.scheduled) - s.scheduled for s in items)
        work = [(s.closed or s.scheduled) - (s.started or s.scheduled) for s in items]
        ends = [s.closed for s in items if s.closed]
        lines.append(f"{name:<22}{len(items):>5}{min(s.scheduled for s in items) - t0:>11.1f}"
                     f"{min((s.started for s in items if s.started), default=t0) - t0:>11.1f}"
                     f"{(max(ends) - t0) if ends else 0:>10.1f}{queued:>10.1f}{sum(work):>9.1f}{max(work):>10.1f}")
    starts = sorted(s.scheduled for s in by_name.get("start_import_job", []))
    if starts:
        lines.append(f"before the first start_import_job: {starts[0] - t0:.1f}s ({(starts[0] - t0) / (t_end - t0):.0%})")
    awaits = [s.closed for s in by_name.get("await_import_job", []) if s.closed]
    if awaits:
        lines.append(f"after the last job ended: {t_end - max(awaits):.1f}s ({(t_end - max(awaits)) / (t_end - t0):.0%})")
    per_batch: dict[str, list[Span]] = defaultdict(list)
    for a in acts:
        if ".batch-" in a.workflow:
            per_batch[a.workflow.rsplit(".", 1)[1]].append(a)
    for batch, items in sorted(per_batch.items()):
        steps = "  ".join(f"{s.name} {s.scheduled - t0:.1f}→{(s.closed or 0) - t0:.1f}"
                          for s in sorted(items, key=lambda s: s.scheduled))
        lines.append(f"  {batch}: {steps}")
    return lines


def api_calls(stack: Any) -> dict[str, tuple[int, int]]:
    """(allowed, throttled) per HealthImaging operation so far, from the emulator's throttling counters."""
    ops = http_json(f"{stack.config.emulator_url}/_emulator/throttling").get("operations", {})
    return {op: (int(v.get("allowed", 0)), int(v.get("throttled", 0))) for op, v in ops.items()}


async def run(settings: Any, datastore_id: str, prefix: str, files: int) -> tuple[float, list[Any]]:
    from contracts.migration import MigrationInput
    from worker.client import connect
    from workflows.migration import MigrationWorkflow

    client = await connect(settings)
    workflow_id = f"timeline-{files}-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    handle = await client.start_workflow(
        MigrationWorkflow.run,
        MigrationInput(source_s3_uri=f"s3://{SOURCE_BUCKET}/{prefix}", datastore_id=datastore_id,
                       work_s3_uri=f"s3://{WORK_BUCKET}/timeline-{uuid.uuid4().hex[:8]}/"),
        id=workflow_id, task_queue=settings.task_queue)
    result = await handle.result()
    wall = time.monotonic() - started
    if result.files_total != files:
        raise SystemExit(f"the migration counted {result.files_total} files of {files}")
    return wall, await migration_histories(client, workflow_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=None, help="run behind the S3 latency proxy")
    parser.add_argument("--series-size", type=int, default=None,
                        help="one study of series of this many instances, each a folder (default: the end-to-end "
                             "corpus's shape); larger than a batch, no folder can be imported in place")
    args = parser.parse_args()
    files = int(os.environ.get("BENCH_N", "1000"))
    if args.series_size is not None and (args.series_size < 1 or files % args.series_size):
        parser.error(f"--series-size must divide BENCH_N ({files}) exactly")
    ensure_payload_keys()
    tmp = Path(tempfile.mkdtemp(prefix="himig-timeline-"))
    stack = start_stack(tmp, args.latency_ms)
    try:
        env = {**os.environ, **stack.env()}
        settings, s3, mi = clients(env)
        prefix, _ = prepare_corpus(s3, tmp, files, args.series_size)
        datastore_id = fresh_datastore(mi, f"timeline-{uuid.uuid4().hex[:10]}")
        before = api_calls(stack)
        wall, histories = asyncio.run(run(settings, datastore_id, prefix, files))
        after = api_calls(stack)
        print("\n".join(report(histories, wall)), flush=True)
        print("HealthImaging calls: " + ", ".join(
            f"{op} {after[op][0] - before.get(op, (0, 0))[0]} (throttled {after[op][1] - before.get(op, (0, 0))[1]})"
            for op in sorted(after) if after[op] != before.get(op, (0, 0))), flush=True)
    finally:
        with contextlib.suppress(Exception):
            stack.down()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    run_then_exit(main)
