"""`PlanWorkflow`: the dry run of a migration (`himig plan`), by the migration's own stages.

It runs exactly the activities a `MigrationWorkflow` runs up to and including batch planning (receive_inventory,
parse_headers / validate_page / normalize_page per page, plan_batches) under its own id, so every prediction is the
migration's own logic; then ``write_plan`` turns the ledgers and batch manifests into the plan document and the
per-file predictions. No import job is started and no file is staged. Like a migration, pages run under a
concurrency cap and the workflow continues as new with counts only, so history stays bounded at any source size.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from contracts.activities import (
        normalize_page,
        parse_headers,
        plan_batches,
        receive_inventory,
        validate_page,
        write_plan,
    )
    from contracts.errors import ErrorType
    from contracts.migration import check_migration_id
    from contracts.plan import (
        PlanProgress,
        PlanRequest,
        PlanState,
        StageTimings,
        WritePlanInput,
        WritePlanResult,
    )
    from contracts.stages import PageInput, PlanInput, PlanResult, ReceiveInput
    from workflows import carried, patches, policies
    from workflows.history import should_roll_over
    from workflows.waves import plan_parsed

Out = TypeVar("Out")

# The migration's own limits for the same stages (workflows/migration.py).
RECEIVE_TIMEOUT = timedelta(hours=6)
PLAN_TIMEOUT = timedelta(hours=2)


def plan_workflow_id(name: str) -> str:
    """``plan-<name>``: the default id `himig plan` gives a plan."""
    return f"plan-{name}"


@workflow.defn
class PlanWorkflow:
    @workflow.init
    def __init__(self, input: PlanRequest) -> None:
        self._state = carried.resume(input.continued, PlanState)
        self._id = workflow.info().workflow_id

    @workflow.query
    def progress(self) -> PlanProgress:
        s = self._state
        return PlanProgress(plan_id=self._id, phase=s.phase, files_total=s.files_total,
                            inventory_pages=s.inventory_pages, pages_done=s.pages_done, rejected=s.rejected,
                            plan_uri=s.plan_uri)

    def _since(self, start: datetime) -> float:
        return (workflow.now() - start).total_seconds()

    @workflow.run
    async def run(self, input: PlanRequest) -> WritePlanResult:
        if carried.written_by_caller(input.continued):
            carried.refuse()
        try:
            check_migration_id(self._id)
        except ValueError as err:
            raise ApplicationError(str(err), type=ErrorType.INVALID_MIGRATION_ID, non_retryable=True) from None
        m, s = input.migration, self._state
        if s.started_at is None:
            s.started_at = workflow.now()

        if s.phase == "receiving":
            began = workflow.now()
            received = await workflow.execute_activity(
                receive_inventory,
                ReceiveInput(migration_id=self._id, source_s3_uri=m.source_s3_uri, work_s3_uri=m.work_s3_uri,
                             page_size=m.inventory_page_size, source_manifest_uri=m.source_manifest_uri,
                             source_connector=m.source_connector),
                start_to_close_timeout=RECEIVE_TIMEOUT, heartbeat_timeout=policies.HEARTBEAT,
                retry_policy=policies.STAGE_RETRY)
            s.inventory_pages, s.files_total, s.bytes_total = received.pages, received.files, received.bytes
            s.source_failures = received.source_failures
            s.receive_seconds = self._since(began)
            s.phase = "parsing"

        if s.phase == "parsing":
            began = workflow.now()
            reached = await self._pages(input, s.pages_done, s.inventory_pages, m.max_parallel_pages)
            s.parse_seconds += self._since(began)
            if reached < s.inventory_pages:
                workflow.continue_as_new(input.model_copy(update={"continued": s}))
            s.phase = "planning"

        began = workflow.now()
        args = PlanInput(migration_id=self._id, source_s3_uri=m.source_s3_uri, work_s3_uri=m.work_s3_uri,
                         pages=s.pages_done, allow_direct=m.source_manifest_uri is None,
                         max_files_per_batch=m.max_files_per_batch, max_bytes_per_batch=m.max_bytes_per_batch,
                         datastore_id=m.datastore_id)

        async def plan(wave: PlanInput) -> PlanResult:
            return await workflow.execute_activity(
                plan_batches, wave, start_to_close_timeout=PLAN_TIMEOUT, heartbeat_timeout=policies.HEARTBEAT,
                retry_policy=policies.STAGE_RETRY)

        if workflow.patched(patches.PLANNING_WAVES):
            # The waves a migration of this source plans in (workflows/waves.py): its batches, its import jobs.
            # As a migration fixes it before its first wave (one rule for every wave).
            by_page = workflow.patched(patches.LARGE_FOLDERS_BY_PAGE)
            planned = await plan_parsed(s.pages_done, lambda first, end, first_batch: plan(args.model_copy(update={
                "pages": end, "first_page": first, "first_batch": first_batch, "inventory_pages": s.pages_done,
                "large_folders_by_page": by_page})))
        else:
            planned = await plan(args)
        s.plan_seconds = self._since(began)
        s.phase = "writing"
        written = await workflow.execute_activity(
            write_plan,
            WritePlanInput(plan_id=self._id, migration=m, pages=s.pages_done, source_failures=s.source_failures,
                           header_bytes_read=s.header_bytes_read, header_requests=s.header_requests,
                           planned=planned, started_at=s.started_at,
                           timings=StageTimings(receive_seconds=s.receive_seconds, parse_seconds=s.parse_seconds,
                                                plan_seconds=s.plan_seconds)),
            start_to_close_timeout=PLAN_TIMEOUT, heartbeat_timeout=policies.HEARTBEAT,
            retry_policy=policies.STAGE_RETRY)
        s.plan_uri = written.plan_uri
        s.phase = "completed"
        return written

    async def _pages(self, input: PlanRequest, start: int, stop: int, limit: int) -> int:
        """Pages [start, stop) with at most ``limit`` in flight; stops launching when history should roll over and
        returns the first page not run (everything launched has finished by then)."""
        running: set[asyncio.Task[None]] = set()
        nxt = start
        while nxt < stop or running:
            while nxt < stop and len(running) < limit and not should_roll_over():
                running.add(asyncio.ensure_future(self._page(input, nxt)))
                nxt += 1
            if not running:
                break
            done, pending = await workflow.wait(running, return_when=asyncio.FIRST_COMPLETED)
            running = set(pending)
            for task in done:
                task.result()
        return nxt

    async def _page(self, input: PlanRequest, page: int) -> None:
        m = input.migration
        args = PageInput(migration_id=self._id, work_s3_uri=m.work_s3_uri, page=page,
                         source_s3_uri=m.source_s3_uri, validation_level=m.validation_level)
        parsed = await self._stage(parse_headers, args)
        validated = await self._stage(validate_page, args)
        await self._stage(normalize_page, args)
        s = self._state
        s.rejected += validated.rejected
        s.header_bytes_read += parsed.bytes_read
        s.header_requests += parsed.s3_requests
        s.pages_done += 1

    async def _stage(self, activity: Callable[[PageInput], Out], args: PageInput) -> Out:
        return await workflow.execute_activity(
            activity, args, start_to_close_timeout=policies.PAGE_TIMEOUT,
            heartbeat_timeout=policies.HEARTBEAT, retry_policy=policies.STAGE_RETRY)
