"""`himig plan` measured: how long a plan takes, whether its per-file predictions hold, and how far its wall-time
estimate is from the migration's.

On a local stack of its own (temporary directory, free ports; the stack's real worker), for each size in
``BENCH_PLAN_SIZES`` (default ``2000,10000``): a synthetic corpus of that many valid instances plus the bundled
sample corpus (hostile files, duplicates, identity cases, a non-primary pair) under one prefix. Then

1. a `PlanWorkflow` over it (timed: ``plan seconds``);
2. with ``BENCH_PLAN_MIGRATE`` (default on for sizes up to 2,000): a migration reading the source itself into the
   data store the plan was made for (timed), and each file's actual terminal state checked against the plan's
   prediction (`contracts.plan.agrees`): ``agree x of y``; the plan's estimate (``estimate.total_seconds``)
   beside the measured wall time;
3. a second plan on a fresh data store and a migration started from it (``--from-plan``; timed), against the
   plan's ``total_from_plan_seconds``.

Appends its lines to bench/RESULTS.md (``--no-results``: print only).

    .venv/bin/python bench/plan.py                     (BENCH_PLAN_SIZES=2000,10000  BENCH_PLAN_MIGRATE=2000)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

# Without bench/ itself on the path: bench/emulator.py would shadow the `emulator` package the stack checks for
# (bench/end_to_end.py removes it again when imported, so it is put back for it).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.end_to_end import (
    SOURCE_BUCKET,
    WORK_BUCKET,
    clients,
    fresh_datastore,
    machine,
    prepare_corpus,
    start_stack,
    versions,
)
from bench.lib.localstack import ensure_payload_keys, upload
from worker.process_exit import run_then_exit

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TIMEOUT = float(os.environ.get("BENCH_TIMEOUT", "3600"))


def add_sample_corpus(s3: Any, tmp: Path, prefix: str) -> int:
    from corpus.sample import build_sample_corpus

    dest = tmp / "sample"
    manifest = build_sample_corpus(dest)
    upload(s3, SOURCE_BUCKET, dest, f"{prefix}sample/", [e.path for e in manifest.entries])
    return len(manifest.entries)


async def plan_once(settings: Any, payload: Any) -> tuple[str, float, Any]:
    from contracts.plan import PlanRequest
    from worker.client import connect
    from workflows.plan import PlanWorkflow

    client = await connect(settings)
    pid = f"bench-plan-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    handle = await client.start_workflow(PlanWorkflow.run, PlanRequest(migration=payload), id=pid,
                                         task_queue=settings.task_queue)
    result = await asyncio.wait_for(handle.result(), TIMEOUT)
    return pid, time.monotonic() - started, result


async def migrate_once(settings: Any, payload: Any) -> tuple[str, float, Any]:
    from worker.client import connect
    from workflows.migration import MigrationWorkflow

    client = await connect(settings)
    mid = f"bench-mig-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    handle = await client.start_workflow(MigrationWorkflow.run, payload, id=mid, task_queue=settings.task_queue)
    result = await asyncio.wait_for(handle.result(), TIMEOUT)
    return mid, time.monotonic() - started, result


def agreement(s3: Any, work: str, pid: str, files_uri: str) -> tuple[int, int, list[str]]:
    from activities.storage import iter_ndjson
    from contracts import layout
    from contracts.common import FileState
    from contracts.plan import PredictedFile, agrees
    from contracts.s3uri import parse_s3_uri

    predicted = {p.key: p for p in (PredictedFile.model_validate(r)
                                    for r in iter_ndjson(s3, layout.plan_files(work, pid)))}
    rows = {r["key"]: r for r in iter_ndjson(s3, parse_s3_uri(files_uri))}
    good = {k for k, p in predicted.items()
            if k in rows and agrees(p, FileState(rows[k]["state"]), rows[k].get("code"))}
    wrong = [f"{k}: predicted {p.outcome.value} {p.code}, got "
             f"{rows[k]['state'] + ' ' + str(rows[k].get('code')) if k in rows else 'nothing'}"
             for k, p in sorted(predicted.items()) if k not in good]
    wrong += [f"{k}: not predicted" for k in sorted(rows) if k not in predicted]
    return len(good), len(rows), wrong


def read_doc(s3: Any, uri: str) -> Any:
    from activities.storage import get_bytes
    from contracts.plan import PlanDocument
    from contracts.s3uri import parse_s3_uri

    return PlanDocument.model_validate_json(get_bytes(s3, parse_s3_uri(uri)))


def run_size(env: dict[str, str], tmp: Path, files: int, migrate: bool) -> list[str]:
    from contracts.migration import MigrationInput

    settings, s3, mi = clients(env)
    prefix, _ = prepare_corpus(s3, tmp, files)
    extra = add_sample_corpus(s3, tmp, prefix)
    total = files + extra
    lines = []

    def payload(ds: str, **more: Any) -> MigrationInput:
        return MigrationInput(source_s3_uri=f"s3://{SOURCE_BUCKET}/{prefix}", datastore_id=ds,
                              work_s3_uri=f"s3://{WORK_BUCKET}/plan-bench/", **more)

    ds = fresh_datastore(mi, f"plan-{files}-{uuid.uuid4().hex[:8]}")
    pid, plan_s, planned = asyncio.run(plan_once(settings, payload(ds)))
    doc = read_doc(s3, planned.plan_uri)
    lines.append(f"{total} files ({files} synthetic + {extra} sample corpus): himig plan {plan_s:.1f}s "
                 f"({total / plan_s:.0f} files/s; receive {doc.estimate.receive_seconds:.1f}s, parse "
                 f"{doc.estimate.parse_seconds:.1f}s, plan {doc.estimate.plan_seconds:.1f}s), {doc.batches.import_jobs} "
                 f"jobs predicted, predicted outcomes {dict((k.value, v) for k, v in doc.predicted_by_outcome.items())}")
    print(lines[-1], flush=True)
    if not migrate:
        return lines
    _, mig_s, result = asyncio.run(migrate_once(settings, payload(ds)))
    agree, of, wrong = agreement(s3, payload(ds).work_s3_uri, pid, result.files_uri)
    lines.append(f"{total} files: migration reading the source {mig_s:.1f}s, plan estimated "
                 f"{doc.estimate.total_seconds:.1f}s (ratio actual/estimate {mig_s / doc.estimate.total_seconds:.2f}); "
                 f"per-file outcome as predicted: {agree} of {of}")
    lines += [f"  disagreement: {w}" for w in wrong[:10]]
    print("\n".join(lines[-1 - len(wrong[:10]):]), flush=True)
    ds2 = fresh_datastore(mi, f"plan2-{files}-{uuid.uuid4().hex[:8]}")
    pid2, _, planned2 = asyncio.run(plan_once(settings, payload(ds2)))
    doc2 = read_doc(s3, planned2.plan_uri)
    _, from_s, result2 = asyncio.run(migrate_once(settings, payload(ds2, from_plan=pid2)))
    agree2, of2, _ = agreement(s3, payload(ds2).work_s3_uri, pid2, result2.files_uri)
    lines.append(f"{total} files: migration --from-plan {from_s:.1f}s, plan estimated "
                 f"{doc2.estimate.total_from_plan_seconds:.1f}s (ratio {from_s / doc2.estimate.total_from_plan_seconds:.2f}); "
                 f"per-file outcome as predicted: {agree2} of {of2}")
    print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-results", action="store_true", help="do not append to bench/RESULTS.md")
    args = parser.parse_args()
    sizes = [int(x) for x in os.environ.get("BENCH_PLAN_SIZES", "2000,10000").split(",") if x.strip()]
    migrate_up_to = int(os.environ.get("BENCH_PLAN_MIGRATE", "2000"))
    ensure_payload_keys()
    tmp = Path(tempfile.mkdtemp(prefix="himig-plan-"))
    stack = start_stack(tmp, None)
    out: list[str] = []
    try:
        env = {**os.environ, **stack.env()}
        for files in sizes:
            out += run_size(env, tmp, files, files <= migrate_up_to)
    finally:
        with contextlib.suppress(Exception):
            stack.down()
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n" + "\n".join(out))
    if not args.no_results:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        with RESULTS.open("a") as f:
            f.write(f"\n## plan.py — {stamp}\n- machine: {machine()}\n- versions: {versions()}\n\n```\n"
                    + "\n".join(out) + "\n```\n")


if __name__ == "__main__":
    run_then_exit(main)
