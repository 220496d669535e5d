"""`MigrationWorkflow`: inventory a source, parse/validate/normalize it page by page, plan batches, run one
`ImportBatchWorkflow` per batch under a concurrency cap, and write the final report.

History stays bounded at any source size: the workflow continues as new at a point where nothing is in flight,
carrying only counts (`MigrationState`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RawValue, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from contracts import search
    from contracts.activities import (
        adopt_plan,
        normalize_page,
        parse_headers,
        plan_batches,
        receive_inventory,
        record_failed_batch,
        validate_page,
        write_report,
    )
    from contracts.batch import BatchInput, BatchResult
    from contracts.common import FileState
    from contracts.errors import ErrorType
    from contracts.fhir import FhirRouting
    from contracts.migration import (
        MigrationInput,
        MigrationProgress,
        MigrationResult,
        MigrationState,
        OperatorAction,
        OperatorCommand,
        batch_workflow_id,
        check_migration_id,
    )
    from contracts.plan import AdoptInput
    from contracts.stages import (
        FailedBatchInput,
        PageInput,
        PlanInput,
        PlanResult,
        ReceiveInput,
        ReportInput,
    )
    from workflows import cancellation, carried, metrics, patches, policies, signals
    from workflows.batch import ImportBatchWorkflow
    from workflows.counts import add_counts
    from workflows.history import should_roll_over
    from workflows.search import upsert
    from workflows.waves import plan_parsed, wave_end

Out = TypeVar("Out")

@workflow.defn
class MigrationWorkflow:
    @workflow.init
    def __init__(self, input: MigrationInput) -> None:
        # Carried state is restored here, not in run(): a pause or cancel signal delivered in a new run's first
        # task is applied before run() starts, and must land on the carried state, not on a blank one.
        self._state = carried.resume(input.continued, MigrationState)
        self._running: set[int] = set()
        self._id = workflow.info().workflow_id
        self._input = input
        # Set when this run drains on a standard cancel (patches.STANDARD_CANCEL) instead of stopping where it is.
        self._drain_on_cancel = False
        # Planning in waves: set once no more batches will be planned in this run (`_pump` may end).
        self._planning_over = False

    @workflow.query
    def progress(self) -> MigrationProgress:
        s = self._state
        done = sum(s.files_by_state.values())
        elapsed = (workflow.now() - s.started_at).total_seconds() if s.started_at else 0.0
        rate = done / elapsed if elapsed > 0 else 0.0
        remaining = max(0, s.files_total - done)
        return MigrationProgress(
            migration_id=self._id, phase=s.phase, files_total=s.files_total, bytes_total=s.bytes_total,
            inventory_pages=s.inventory_pages, pages_done=s.pages_done, batches_planned=s.batches_planned,
            batches_done=s.batches_done,
            batches_by_stage={"pending": max(0, s.batches_planned - s.batches_done - len(self._running)),
                              "running": len(self._running), "done": s.batches_done - s.batches_failed,
                              "failed": s.batches_failed},
            running_batches=sorted(self._running), files_by_state=s.files_by_state, files_done=done,
            rejected=s.rejected, duplicates=s.duplicates, image_sets=s.image_sets,
            non_primary_image_sets=s.non_primary_image_sets, fhir_imported=s.fhir_imported,
            fhir_refused=s.fhir_refused, elapsed_seconds=elapsed, files_per_second=rate,
            predicted_non_primary=s.predicted_non_primary,
            eta_seconds=(remaining / rate) if rate > 0 and s.phase != "completed" else None,
            report_uri=s.report_uri, paused=s.paused, cancel_requested=s.cancel_requested,
            operator_log=s.operator_log[-10:])

    def _publish(self) -> None:
        """Search attributes: `himig list` and visibility queries find migrations by id, state and data store."""
        upsert({search.MIGRATION_ID: self._id, search.DATASTORE_ID: self._input.datastore_id,
                search.STATE: self._state.phase})

    def _add_states(self, counts: dict[FileState, int]) -> None:
        self._state.files_by_state = add_counts(self._state.files_by_state, counts)

    async def _bounded(self, start: int, stop: int, limit: int, step: Callable[[int], Awaitable[None]],
                       pace: timedelta | None = None) -> int:
        """Run ``step(i)`` for i in [start, stop) with at most ``limit`` in flight.

        Stops launching when history should roll over or a cancel arrives, and returns the first index not run;
        everything launched has finished by then, so the caller may continue as new. While paused, nothing new
        is launched but work in flight completes.
        """
        running: set[asyncio.Task[None]] = set()
        nxt = start
        paced = False
        while nxt < stop or running:
            while (nxt < stop and len(running) < limit and not should_roll_over()
                   and not self._state.cancel_requested):
                if self._state.paused:
                    if running:
                        break  # keep draining what is in flight; launch nothing new while paused
                    try:
                        await workflow.wait_condition(lambda: not self._state.paused or self._state.cancel_requested)
                    except asyncio.CancelledError:
                        # The SDK re-raises a standard cancel in a condition that was waiting when it came; this run
                        # drains instead (run() has set cancel_requested), so the loop below stops launching.
                        if not self._drain_on_cancel:
                            raise
                    continue
                if pace and nxt > start and not paced:
                    await workflow.sleep(pace)
                    paced = True
                    continue  # a pause, cancel or rollover may have arrived during the pause between starts
                paced = False
                running.add(asyncio.ensure_future(step(nxt)))
                nxt += 1
            if not running:
                break
            done, pending = await workflow.wait(running, return_when=asyncio.FIRST_COMPLETED)
            running = set(pending)
            for task in done:
                task.result()
        return nxt

    def _record(self, action: str, command: OperatorCommand | None) -> None:
        cmd = command or OperatorCommand()
        self._state.operator_log.append(OperatorAction(action=action, at=workflow.now(), by=cmd.by, reason=cmd.reason))
        del self._state.operator_log[:-50]  # bounded: it rides along through continue-as-new

    def _command(self, action: str, raw: RawValue) -> tuple[bool, OperatorCommand | None]:
        """(accepted, command). The signals take an optional `OperatorCommand` raw, so that a malformed one is
        recorded in the operator log as rejected (and does nothing) instead of being dropped unseen."""
        command, error = signals.decode(raw, OperatorCommand, optional=True)
        if error is None:
            return True, command
        signals.log_rejected(action, error)
        self._state.operator_log.append(OperatorAction(action=f"{action} rejected", at=workflow.now(), reason=error))
        del self._state.operator_log[:-50]
        return False, None

    @workflow.signal
    def pause(self, raw: RawValue = signals.NO_INPUT) -> None:
        """Stop launching new pages and batches; work already in flight finishes. Input: `OperatorCommand`."""
        accepted, command = self._command("pause", raw)
        if accepted:
            self._state.paused = True
            self._record("pause", command)

    @workflow.signal
    def resume(self, raw: RawValue = signals.NO_INPUT) -> None:
        """Input: `OperatorCommand`."""
        accepted, command = self._command("resume", raw)
        if accepted:
            self._state.paused = False
            self._record("resume", command)

    @workflow.signal
    def cancel(self, raw: RawValue = signals.NO_INPUT) -> None:
        """Drain and finish: nothing new starts, import jobs already submitted are still reviewed, and the
        report marks every file that was never imported as failed with code ``Cancelled``. Input:
        `OperatorCommand`."""
        accepted, command = self._command("cancel", raw)
        if accepted:
            self._state.cancel_requested = True
            self._record("cancel", command)

    @workflow.run
    async def run(self, input: MigrationInput) -> MigrationResult:
        if carried.written_by_caller(input.continued):
            carried.refuse()
        if not workflow.patched(patches.STANDARD_CANCEL):
            return await self._migrate(input)
        # A standard cancel (Temporal UI, `temporal workflow cancel`, handle.cancel()) cancels this task only: the
        # migration itself runs shielded in its own task, drains as on the `cancel` signal and writes its report;
        # then the run ends cancelled, as the one who cancelled it asked.
        self._drain_on_cancel = True
        return await cancellation.shielded(
            self._migrate(input), lambda: self._cancel_requested_by_temporal(workflow.cancellation_reason() or ""))

    def _cancel_requested_by_temporal(self, reason: str) -> None:
        if not self._state.cancel_requested:
            self._state.cancel_requested = True
            # The request's identity is in the history event, which the SDK does not expose to the workflow.
            self._record("cancel", OperatorCommand(
                by="temporal cancel request", reason=(reason or "standard Temporal cancel")[:1000]))
        workflow.logger.info("standard cancel: draining and reporting")

    async def _migrate(self, input: MigrationInput) -> MigrationResult:
        try:
            check_migration_id(self._id)
        except ValueError as err:
            raise ApplicationError(str(err), type=ErrorType.INVALID_MIGRATION_ID, non_retryable=True) from None
        if self._state.started_at is None:
            self._state.started_at = workflow.now()
        s = self._state
        self._publish()

        if s.phase == "receiving" and input.from_plan is not None and workflow.patched(patches.FROM_PLAN):
            await self._adopt(input, input.from_plan)

        if s.phase == "receiving":
            received = await workflow.execute_activity(
                receive_inventory,
                ReceiveInput(migration_id=self._id, source_s3_uri=input.source_s3_uri,
                             work_s3_uri=input.work_s3_uri, page_size=input.inventory_page_size,
                             source_manifest_uri=input.source_manifest_uri,
                             source_connector=input.source_connector),
                start_to_close_timeout=timedelta(hours=6),
                heartbeat_timeout=policies.HEARTBEAT, retry_policy=policies.STAGE_RETRY)
            s.inventory_pages, s.files_total, s.bytes_total = received.pages, received.files, received.bytes
            # What a source connector enumerated but could not pull is already final (failed) and in the report.
            s.files_total += received.source_failures
            self._add_states({FileState.FAILED: received.source_failures})
            s.phase = "parsing"
            self._publish()

        if s.phase == "parsing" and workflow.patched(patches.PLANNING_WAVES):
            await self._waves(input)  # ends with the phase at "importing" once every page is planned
            if s.cancel_requested:
                s.phase = "reporting"
                self._publish()
            elif s.pages_planned < s.inventory_pages or s.batches_done < s.batches_planned:
                workflow.continue_as_new(input.model_copy(update={"continued": s}))

        if s.phase == "parsing":
            reached = await self._bounded(s.pages_done, s.inventory_pages, input.max_parallel_pages,
                                          lambda page: self._page(input, page))
            if reached < s.inventory_pages and not s.cancel_requested:
                workflow.continue_as_new(input.model_copy(update={"continued": s}))
            # Planning runs even after a cancel, so files already parsed get their duplicate verdicts.
            s.phase = "planning"
            self._publish()

        if s.phase == "planning" and workflow.patched(patches.PLANNING_WAVES):
            # Every page is parsed (a migration started from a plan): the same waves one after the other, so the
            # batches are the ones the plan predicted.
            self._fix_ready_rule()
            self._planned(await plan_parsed(
                s.pages_done, lambda first, end, first_batch: self._plan_call(input, first, end, first_batch)))
            s.pages_planned = s.pages_done
            s.phase = "importing"
            self._publish()

        if s.phase == "planning":
            plan = await workflow.execute_activity(
                plan_batches,
                PlanInput(migration_id=self._id, source_s3_uri=input.source_s3_uri, work_s3_uri=input.work_s3_uri,
                          pages=s.pages_done, allow_direct=input.source_manifest_uri is None,
                          max_files_per_batch=input.max_files_per_batch, max_bytes_per_batch=input.max_bytes_per_batch,
                          datastore_id=input.datastore_id, resend_failed=input.resend_failed),
                start_to_close_timeout=timedelta(hours=2), heartbeat_timeout=policies.HEARTBEAT,
                retry_policy=policies.STAGE_RETRY)
            self._planned(plan)
            s.pages_planned = s.pages_done
            s.phase = "importing"
            self._publish()

        if s.phase == "importing":
            pace = timedelta(seconds=input.import_start_interval_seconds) if input.import_start_interval_seconds else None
            reached = await self._bounded(s.batches_done, s.batches_planned, input.max_concurrent_jobs,
                                          lambda batch: self._batch(input, batch), pace)
            if reached < s.batches_planned and not s.cancel_requested:
                workflow.continue_as_new(input.model_copy(update={"continued": s}))
            s.phase = "reporting"
            self._publish()

        report = await workflow.execute_activity(
            write_report, ReportInput(migration_id=self._id, work_s3_uri=input.work_s3_uri,
                                        datastore_id=input.datastore_id, cancelled=s.cancel_requested,
                                        inventory_pages=s.inventory_pages),
            start_to_close_timeout=timedelta(hours=1), heartbeat_timeout=policies.HEARTBEAT,
            retry_policy=policies.STAGE_RETRY)
        # The report is the authority: it re-derives every file's state from the ledgers.
        s.files_by_state = dict(report.files_by_state)
        # Counted here, where the states become final: once per migration (write_report runs in its last run
        # only, and its retries return one result), never while replaying.
        metrics.files_final(report.files_by_state)
        s.report_uri = report.report_uri
        s.phase = "completed"
        self._publish()
        return MigrationResult(migration_id=self._id, report_uri=report.report_uri, summary_uri=report.summary_uri,
                               files_uri=report.files_uri, files_by_state=report.files_by_state,
                               files_total=report.files_total)

    def _planned(self, plan: PlanResult) -> None:
        s = self._state
        s.batches_planned += plan.batches
        s.duplicates += plan.duplicates
        s.predicted_non_primary += plan.predicted_non_primary
        s.rejected += plan.conflicting_duplicates
        # Both kinds of duplicate are final here: they never reach an import job.
        self._add_states({FileState.SKIPPED_DUPLICATE: plan.duplicates,
                          FileState.REJECTED: plan.conflicting_duplicates,
                          FileState.FAILED: plan.failed_before})

    async def _waves(self, input: MigrationInput) -> None:
        """Parse, plan and import at once (patch `planning-waves`): pages are parsed a wave at a time (see
        `wave_end`); each parsed wave is planned while the next one parses, and its batches start as soon as it
        is planned (`_pump`), under the same cap, pacing, pause and cancel as the import phase.

        Returns when every page is planned and every batch done, or, on a roll-over or a cancel, once nothing is
        in flight: the caller continues as new (counts only) or reports. On a cancel the pages parsed but not
        planned yet are planned all the same (duplicate verdicts), and nothing more starts."""
        s = self._state
        self._fix_ready_rule()
        self._planning_over = False
        pump = asyncio.ensure_future(self._pump(input))
        planning: asyncio.Task[None] | None = None
        parsed_to = s.pages_planned  # the end of the last wave handed to planning
        try:
            while parsed_to < s.inventory_pages:
                end = wave_end(parsed_to, s.inventory_pages)
                reached = await self._bounded(s.pages_done, end, input.max_parallel_pages,
                                              lambda page: self._page(input, page))
                if reached < end:
                    break  # a roll-over or a cancel; everything launched has finished
                if planning is not None:
                    await planning  # waves are planned in order: batch numbers follow on
                planning = asyncio.ensure_future(self._plan_wave(input, parsed_to, end, complete=False))
                parsed_to = end
            if planning is not None:
                await planning
            if s.cancel_requested and s.pages_planned < s.pages_done:
                await self._plan_wave(input, s.pages_planned, s.pages_done, complete=True)
            elif s.pages_planned == s.inventory_pages and not s.cancel_requested:
                s.phase = "importing"  # parsing and planning are over; what is left imports (as after a plan)
                self._publish()
        finally:
            self._planning_over = True
        await pump

    def _fix_ready_rule(self) -> None:
        """Before the first wave is planned: which files are ready (`PlanInput.large_folders_by_page`). Never
        changed after it, in this run or the next: a rule changed between waves could leave a file unplanned."""
        s = self._state
        if s.pages_planned == 0:
            s.large_folders_by_page = workflow.patched(patches.LARGE_FOLDERS_BY_PAGE)

    async def _plan_wave(self, input: MigrationInput, first_page: int, end: int, complete: bool) -> None:
        s = self._state
        self._planned(await self._plan_call(input, first_page, end, s.batches_planned, complete))
        s.pages_planned = end

    async def _plan_call(self, input: MigrationInput, first_page: int, end: int, first_batch: int,
                         complete: bool = False) -> PlanResult:
        return await workflow.execute_activity(
            plan_batches,
            PlanInput(migration_id=self._id, source_s3_uri=input.source_s3_uri, work_s3_uri=input.work_s3_uri,
                      pages=end, first_page=first_page, inventory_pages=self._state.inventory_pages,
                      first_batch=first_batch, complete=complete, allow_direct=input.source_manifest_uri is None,
                      large_folders_by_page=self._state.large_folders_by_page,
                      max_files_per_batch=input.max_files_per_batch, max_bytes_per_batch=input.max_bytes_per_batch,
                      datastore_id=input.datastore_id, resend_failed=input.resend_failed),
            start_to_close_timeout=timedelta(hours=2), heartbeat_timeout=policies.HEARTBEAT,
            retry_policy=policies.STAGE_RETRY)

    async def _pump(self, input: MigrationInput) -> None:
        """Start planned batches as they appear, at most ``max_concurrent_jobs`` at once, paced by
        ``import_start_interval_seconds``; ends once planning is over and everything started has finished.
        Launches nothing while paused or after a cancel or once history should roll over."""
        s = self._state
        pace = timedelta(seconds=input.import_start_interval_seconds) if input.import_start_interval_seconds else None
        running: set[asyncio.Task[None]] = set()
        nxt = s.batches_done
        started = False

        def may_launch() -> bool:
            return (nxt < s.batches_planned and len(running) < input.max_concurrent_jobs and not s.paused
                    and not s.cancel_requested and not should_roll_over())

        def finished() -> bool:
            # Paused with batches left is not finished: the pump waits for a resume (or a cancel or a roll-over).
            return self._planning_over and not running and (
                nxt >= s.batches_planned or s.cancel_requested or should_roll_over())

        while not finished():
            if may_launch():
                if pace and started:
                    await workflow.sleep(pace)
                    started = False
                    continue  # a pause, cancel or roll-over may have arrived meanwhile
                running.add(asyncio.ensure_future(self._batch(input, nxt)))
                nxt += 1
                started = pace is not None
                continue
            await cancellation.wait_condition(lambda: may_launch() or finished() or any(t.done() for t in running),
                                              lambda: self._drain_on_cancel)
            for task in [t for t in running if t.done()]:
                running.discard(task)
                task.result()

    async def _adopt(self, input: MigrationInput, plan_id: str) -> None:
        """Take the plan's inventory, parse results and rejections instead of reading the source again; the
        activity refuses a plan that is unfinished, of another source, data store or level, or stale."""
        s = self._state
        adopted = await workflow.execute_activity(
            adopt_plan, AdoptInput(migration_id=self._id, plan_id=plan_id, source_s3_uri=input.source_s3_uri,
                                   work_s3_uri=input.work_s3_uri, datastore_id=input.datastore_id,
                                   validation_level=input.validation_level,
                                   source_manifest_uri=input.source_manifest_uri),
            start_to_close_timeout=timedelta(hours=6), heartbeat_timeout=policies.HEARTBEAT,
            retry_policy=policies.STAGE_RETRY)
        s.inventory_pages = s.pages_done = adopted.pages
        s.files_total = adopted.files + adopted.source_failures
        s.bytes_total = adopted.bytes
        s.rejected += adopted.rejected
        self._add_states({FileState.FAILED: adopted.source_failures, FileState.REJECTED: adopted.rejected})
        s.phase = "planning"
        self._publish()

    async def _page(self, input: MigrationInput, page: int) -> None:
        args = PageInput(migration_id=self._id, work_s3_uri=input.work_s3_uri, page=page,
                         source_s3_uri=input.source_s3_uri, validation_level=input.validation_level)
        await self._page_stage(parse_headers, args)
        validated = await self._page_stage(validate_page, args)
        await self._page_stage(normalize_page, args)
        self._state.rejected += validated.rejected
        self._add_states({FileState.REJECTED: validated.rejected})
        self._state.pages_done += 1

    async def _page_stage(self, activity: Callable[[PageInput], Out], args: PageInput) -> Out:
        return await workflow.execute_activity(
            activity, args, start_to_close_timeout=policies.PAGE_TIMEOUT,
            heartbeat_timeout=policies.HEARTBEAT, retry_policy=policies.STAGE_RETRY)

    async def _batch(self, input: MigrationInput, batch: int) -> None:
        args = BatchInput(migration_id=self._id, batch=batch, source_s3_uri=input.source_s3_uri,
                          work_s3_uri=input.work_s3_uri, datastore_id=input.datastore_id,
                          data_access_role_arn=input.data_access_role_arn, manual_review=input.manual_review,
                          source_owner_account_id=input.source_owner_account_id,
                          dicomweb_spot_check=input.dicomweb_spot_check,
                          fhir=None if input.healthlake_datastore_id is None else FhirRouting(
                              datastore_id=input.healthlake_datastore_id,
                              validation_level=input.fhir_validation_level,
                              validate_first=input.fhir_validate_first))
        self._running.add(batch)
        try:
            # Set at the start (no history event in the batch): visibility finds a migration's batches by id and
            # data store. Guarded by the same patch as this workflow's own upserts.
            attrs = (TypedSearchAttributes([SearchAttributePair(search.MIGRATION_ID, self._id),
                                            SearchAttributePair(search.DATASTORE_ID, input.datastore_id)])
                     if workflow.patched(patches.SEARCH_ATTRIBUTES) else None)
            result: BatchResult = await workflow.execute_child_workflow(
                ImportBatchWorkflow.run, args, id=batch_workflow_id(self._id, batch), search_attributes=attrs)
            self._add_states(result.files_by_state)
            self._state.image_sets += result.image_sets
            self._state.non_primary_image_sets += len(result.non_primary_image_sets)
            if result.fhir is not None:
                self._state.fhir_imported += result.fhir.imported
                self._state.fhir_refused += result.fhir.failed + result.fhir.rejected_by_validate
        except (ChildWorkflowError, ActivityError) as err:
            # Never lose the batch's files: record them as failed with the reason, then carry on.
            cause = err.cause if err.cause is not None else err
            written = await workflow.execute_activity(
                record_failed_batch, FailedBatchInput(batch=args, reason=f"batch workflow failed: {cause}"),
                start_to_close_timeout=policies.PAGE_TIMEOUT, heartbeat_timeout=policies.HEARTBEAT,
                retry_policy=policies.STAGE_RETRY)
            self._add_states({FileState.FAILED: written})
            self._state.batches_failed += 1
        finally:
            self._running.discard(batch)
            self._state.batches_done += 1
