"""History cost of the orchestration: events per file and the largest history of any execution.

Runs the real `MigrationWorkflow` and `ImportBatchWorkflow` code on a real Temporal dev server, with every
activity replaced by an instant stand-in registered under the same name that returns a result of the right
shape (no S3, no emulator): the measurement is of the workflows' own history, which is what Temporal's limits
apply to. Payloads are sealed as in production (`worker.codec.data_converter`, with a key generated per run).
For 10k and 100k synthetic files it prints total history events per file (target <= 0.05) and the largest
history of any single execution (Temporal warns at 10,240 and stops at 51,200 events), for the default
batch/page sizes and for 5,000-file pages and batches.

    .venv/bin/python bench/orchestration.py          (BENCH_SIZES=10000,100000)
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from temporalio import activity
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from bench.lib.histories import migration_histories
from contracts import search
from contracts.batch import BatchInput, ImportJobRef, JobOutcome
from contracts.common import FileState
from contracts.migration import MigrationInput
from contracts.stages import (
    FailedBatchInput,
    NormalizeResult,
    PageInput,
    ParseResult,
    PlanInput,
    PlanResult,
    ReceiveInput,
    ReceiveResult,
    ReportInput,
    ReportResult,
    ReviewInput,
    ReviewResult,
    RouteInput,
    RouteResult,
    ValidateResult,
)
from worker.codec import KeyRing, data_converter
from worker.registry import WORKFLOWS
from workflows.migration import MigrationWorkflow

SIZES = [int(x) for x in os.environ.get("BENCH_SIZES", "10000,100000").split(",")]


class Fake:
    """Instant activities with the production names; sizes come from the migration input."""

    def __init__(self, files: int, page_size: int, batch_size: int) -> None:
        self.files, self.page_size, self.batch_size = files, page_size, batch_size

    @activity.defn(name="receive_inventory")
    async def receive(self, i: ReceiveInput) -> ReceiveResult:
        return ReceiveResult(files=self.files, bytes=self.files * 500_000, pages=math.ceil(self.files / i.page_size),
                             inventory_prefix_uri="s3://bench-work/x/")

    @activity.defn(name="parse_headers")
    async def parse(self, i: PageInput) -> ParseResult:
        return ParseResult(files=self.page_size, parsed=self.page_size, unreadable=0, bytes_read=0, s3_requests=0)

    @activity.defn(name="validate_page")
    async def validate(self, i: PageInput) -> ValidateResult:
        return ValidateResult(valid=self.page_size, rejected=0)

    @activity.defn(name="normalize_page")
    async def normalize(self, i: PageInput) -> NormalizeResult:
        return NormalizeResult(instances=self.page_size)

    @activity.defn(name="plan_batches")
    async def plan(self, i: PlanInput) -> PlanResult:
        return PlanResult(batches=math.ceil(self.files / i.max_files_per_batch), direct_batches=0, files=self.files,
                          duplicates=0, conflicting_duplicates=0, predicted_non_primary=0)

    @activity.defn(name="start_import_job")
    async def start(self, i: BatchInput) -> ImportJobRef:
        return ImportJobRef(datastore_id=i.datastore_id, job_id=uuid.uuid4().hex, input_s3_uri="s3://b/x/",
                            input_key_prefix="", staged_files=self.batch_size, output_s3_uri="s3://b/o/")

    @activity.defn(name="await_import_job")
    async def wait(self, i: ImportJobRef) -> JobOutcome:
        return JobOutcome(job_id=i.job_id, status="COMPLETED", output_s3_uri="s3://b/o/")

    @activity.defn(name="review_manifest")
    async def review(self, i: ReviewInput) -> ReviewResult:
        return ReviewResult(files_by_state={FileState.IMPORTED: self.batch_size}, image_sets=10,
                            non_primary_image_sets=[], ledger_uri="s3://b/l", counters_consistent=True)

    @activity.defn(name="route_batch")
    async def route(self, i: RouteInput) -> RouteResult:
        return RouteResult(events_published=10, non_primary_for_reconciliation=0)

    @activity.defn(name="record_failed_batch")
    async def failed(self, i: FailedBatchInput) -> int:
        return 0

    @activity.defn(name="write_report")
    async def report(self, i: ReportInput) -> ReportResult:
        return ReportResult(report_uri="s3://b/r", summary_uri="s3://b/s", files_uri="s3://b/f", files_total=self.files,
                            files_by_state={FileState.IMPORTED: self.files}, unaccounted=0, accounted_twice=0)

    def all(self) -> list[Any]:
        return [self.receive, self.parse, self.validate, self.normalize, self.plan, self.start, self.wait,
                self.review, self.route, self.failed, self.report]


async def history_sizes(client: Client, workflow_id: str) -> list[int]:
    """Event counts of every run of the migration (continue-as-new chain) and of every batch workflow."""
    return [len(h.events) for h in await migration_histories(client, workflow_id, attempts=50)]


async def measure(client: Client, files: int, page: int, batch: int) -> tuple[float, int, int, float]:
    queue = f"bench-{uuid.uuid4().hex[:6]}"
    fake = Fake(files, page, batch)
    async with Worker(client, task_queue=queue, workflows=WORKFLOWS, activities=fake.all(),
                      max_concurrent_workflow_tasks=50):
        wid = f"bench-{files}-{page}-{uuid.uuid4().hex[:6]}"
        started = time.perf_counter()
        await client.execute_workflow(
            MigrationWorkflow.run,
            MigrationInput(source_s3_uri="s3://bench-src/x/", datastore_id="a" * 32, work_s3_uri="s3://bench-work/",
                           inventory_page_size=page, max_files_per_batch=batch, max_concurrent_jobs=100,
                           max_parallel_pages=50, import_start_interval_seconds=0),
            id=wid, task_queue=queue)
        seconds = time.perf_counter() - started
        sizes = await history_sizes(client, wid)
    return sum(sizes) / files, max(sizes), len(sizes), seconds


async def main() -> None:
    path = shutil.which("temporal", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=path, ui=False,
        # The production converter (every payload sealed), with a key made for this run.
        data_converter=data_converter(KeyRing.parse(KeyRing.generate_entry("bench"))),
        dev_server_extra_args=["--sqlite-pragma", "journal_mode=wal", "--log-level", "error",
                               *search.dev_server_args()])
    try:
        print(f"{'files':>8} {'page':>6} {'batch':>6} {'events/file':>12} {'largest history':>16} {'executions':>11}"
              f" {'seconds':>8}")
        for files in SIZES:
            for page, batch in ((1000, 1000), (5000, 5000)):
                per_file, largest, runs, seconds = await measure(env.client, files, page, batch)
                print(f"{files:>8} {page:>6} {batch:>6} {per_file:>12.4f} {largest:>16} {runs:>11} {seconds:>8.1f}")
        print("targets: events/file <= 0.05; largest history well below 10,240 (warning) and 51,200 (limit)")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
    # The SDK's native runtime threads can still call into Python while the interpreter finalizes, which aborts
    # the process (SIGABRT, "PyGILState_Release") after all the work is done: end without finalizing instead.
    sys.stdout.flush()
    os._exit(0)
