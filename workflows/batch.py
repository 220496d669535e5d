"""`ImportBatchWorkflow`: one planned batch → one import job → its reviewed manifest → routing."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import ActivityError, CancelledError, WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from contracts import layout, search
    from contracts.activities import (
        await_fhir_import,
        await_import_job,
        review_fhir_import,
        review_manifest,
        route_batch,
        split_batch,
        start_fhir_import,
        start_import_job,
    )
    from contracts.batch import (
        BatchInput,
        BatchProgress,
        BatchResult,
        BatchStage,
        ImportJobRef,
        JobOutcome,
        ManifestApproval,
        StageTransition,
    )
    from contracts.common import FileState
    from contracts.fhir import MAX_FAILURES, FhirImportRef, FhirJobOutcome, FhirSummary, fhir_round_done
    from contracts.jobevents import TERMINAL_STATUSES, JobEvent
    from contracts.reconciliation import ReconciliationInput, reconciliation_workflow_id
    from contracts.stages import FhirReviewInput, ReviewInput, ReviewResult, RouteInput
    from workflows import cancellation, metrics, patches, policies, signals
    from workflows.counts import add_counts
    from workflows.reconciliation import ReconciliationWorkflow
    from workflows.search import upsert

JOB_EVENT_SIGNAL = "job_event"
# Wake-ups acted on per job: a flood of duplicate events costs a few signals, never a poll each.
MAX_WAKES = 3


@workflow.defn
class ImportBatchWorkflow:
    """Stages of one batch. "Job COMPLETED" and "manifest reviewed" are separate steps and separate states."""

    def __init__(self) -> None:
        self._progress = BatchProgress(batch=-1, stage=BatchStage.PENDING)
        self._wake = False
        self._wakes = 0
        # A standard cancel (patches.BATCH_STANDARD_CANCEL): may this run drain on one, and has one come.
        self._drain_on_cancel = False
        self._cancel_requested = False

    def _stage(self, stage: BatchStage) -> None:
        self._progress.stage = stage
        self._progress.transitions.append(StageTransition(stage=stage, at=workflow.now()))

    @workflow.query
    def progress(self) -> BatchProgress:
        return self._progress

    @workflow.signal
    def job_event(self, raw: RawValue) -> None:
        """An import-job event (`JobEvent`) for the job this batch waits on: wakes the wait early (`_await_job`).

        Never trusted: the status still comes from GetDICOMImportJob. Malformed payloads (taken raw, so they are
        counted instead of dropped by the SDK), events for another job, events arriving when nothing waits,
        non-terminal statuses and duplicates beyond ``MAX_WAKES`` are counted and ignored.
        """
        p = self._progress
        event, error = signals.decode(raw, JobEvent)
        if event is None:
            signals.log_rejected("job_event", error or "no input")  # naming the fields at fault
            p.job_events_ignored += 1
            return
        if (event.job_id != p.job_id or p.stage is not BatchStage.AWAITING_JOB
                or event.status not in TERMINAL_STATUSES or self._wakes >= MAX_WAKES):
            p.job_events_ignored += 1
            return
        p.job_events_received += 1
        self._wakes += 1
        self._wake = True

    @workflow.update
    def approve_manifest(self, approval: ManifestApproval) -> BatchProgress:
        """The manual review gate: approve (route) or hold back a batch whose manifest has been reviewed."""
        self._progress.approval = approval
        return self._progress

    @approve_manifest.validator
    def _check_approval(self, approval: ManifestApproval) -> None:
        # Rejected before it reaches history: only a batch waiting at the gate takes a decision, and only once.
        if self._progress.stage is not BatchStage.AWAITING_APPROVAL:
            raise ValueError(f"batch {self._progress.batch} is not awaiting approval (stage {self._progress.stage.value})")

    async def _start_reconciliations(self, input: BatchInput, image_set_ids: list[str]) -> None:
        """One `ReconciliationWorkflow` per non-primary image set; they outlive this batch (ABANDON)."""
        for image_set_id in image_set_ids:
            # Already running (the same non-primary set met again, e.g. a re-run migration): nothing to add.
            with contextlib.suppress(WorkflowAlreadyStartedError):
                await workflow.start_child_workflow(
                    ReconciliationWorkflow.run,
                    ReconciliationInput(datastore_id=input.datastore_id, image_set_id=image_set_id,
                                        migration_id=input.migration_id, batch=input.batch),
                    id=reconciliation_workflow_id(input.datastore_id, image_set_id),
                    parent_close_policy=ParentClosePolicy.ABANDON)

    async def _import_and_review(self, input: BatchInput) -> tuple[ImportJobRef, JobOutcome, ReviewResult | None]:
        """Stage, import and await one job; review its manifest unless a FAILED job is going to be split."""
        self._stage(BatchStage.IMPORTING)
        job = await workflow.execute_activity(
            start_import_job, input,
            start_to_close_timeout=policies.PAGE_TIMEOUT, heartbeat_timeout=policies.HEARTBEAT,
            retry_policy=policies.START_JOB_RETRY)
        self._progress.job_id = job.job_id
        self._progress.staged_files = job.staged_files
        if job.job_id:
            metrics.import_job("SUBMITTED")
        if not job.job_id and workflow.patched(patches.SOURCE_CHANGED_NO_JOB):
            # Every file's source object changed after validation: no job was started, the staging step's
            # ledger reports each file as failed (SourceChanged), and there is nothing to await or review.
            states = {FileState.FAILED: job.source_changed}
            self._progress.files_by_state = add_counts(self._progress.files_by_state, states)
            outcome = JobOutcome(job_id="", status="NOT_STARTED", output_s3_uri=job.output_s3_uri,
                                 message="every file's source changed after validation")
            return job, outcome, ReviewResult(files_by_state=states, image_sets=0, non_primary_image_sets=[],
                                              ledger_uri=layout.ledger_for_source_changed(
                                                  input.work_s3_uri, input.migration_id, input.batch, input.part).uri,
                                              counters_consistent=True)

        self._stage(BatchStage.AWAITING_JOB)
        outcome = await self._await_job(job)
        metrics.import_job(outcome.status)
        self._progress.job_status = outcome.status
        self._stage(BatchStage.JOB_COMPLETED if outcome.status == "COMPLETED" else BatchStage.JOB_FAILED)
        if outcome.status == "FAILED" and input.part is None and job.staged_files > 1 \
                and workflow.patched(patches.SPLIT_FAILED_BATCH):
            return job, outcome, None  # retried in two halves; the halves' reviews account for the files

        self._stage(BatchStage.REVIEWING_MANIFEST)
        review = await workflow.execute_activity(
            review_manifest, ReviewInput(batch=input, job=job, outcome=outcome),
            start_to_close_timeout=policies.PAGE_TIMEOUT, schedule_to_close_timeout=timedelta(hours=2),
            heartbeat_timeout=policies.HEARTBEAT, retry_policy=policies.PATIENT_RETRY)
        self._progress.files_by_state = add_counts(self._progress.files_by_state, review.files_by_state)
        self._progress.counters_consistent = review.counters_consistent
        self._progress.problems = review.problems
        self._progress.non_primary_image_sets += review.non_primary_image_sets
        self._stage(BatchStage.MANIFEST_REVIEWED)
        return job, outcome, review

    async def _await_job(self, job: ImportJobRef) -> JobOutcome:
        """Poll until the job ends; a `job_event` signal for it cuts the poll's back-off short.

        The poll is one activity whose retries (with a growing delay, no history each) are the polls. A wake-up
        cancels it in its back-off and starts a fresh one, whose first attempt polls at once: O(1) history per
        job (at most ``MAX_WAKES`` restarts), and the job's status only ever comes from GetDICOMImportJob.
        ``workflow.patched`` is asked only when a wake-up is acted on: a history without one has the same
        commands as before the change, and no marker.
        """
        self._wake, self._wakes = False, 0
        while True:
            # The same command as the former execute_activity: histories without wake-ups replay unchanged.
            poll = workflow.start_activity(
                await_import_job, job,
                start_to_close_timeout=policies.POLL_TIMEOUT, schedule_to_close_timeout=policies.JOB_WAIT_LIMIT,
                retry_policy=policies.POLL_RETRY)
            await self._wait(lambda poll=poll: poll.done() or self._wake)  # type: ignore[misc]
            self._wake = False
            if not poll.done() and workflow.patched(patches.JOB_EVENTS):
                poll.cancel()
            try:
                return await poll
            except ActivityError as err:
                if not isinstance(err.cause, CancelledError):
                    raise
            workflow.logger.info("import job event: polling the job now", extra={"job_id": job.job_id})

    async def _route(self, input: BatchInput, review: ReviewResult) -> None:
        if input.manual_review:
            self._progress.approval = None
            self._stage(BatchStage.AWAITING_APPROVAL)
            upsert({search.STATE: BatchStage.AWAITING_APPROVAL.value})  # what `himig list` shows operators
            await self._wait(lambda: self._progress.approval is not None or self._cancel_requested)
            if self._progress.approval is None:  # a standard cancel at the gate: nobody approved, so hold
                self._progress.approval = ManifestApproval(
                    approve=False, reviewer="temporal cancel request",
                    reason="standard Temporal cancel while awaiting approval")
            approved = self._progress.approval is not None and self._progress.approval.approve
            upsert({search.STATE: "approved" if approved else "held"})
        if self._progress.approval is None or self._progress.approval.approve:
            self._stage(BatchStage.ROUTING)
            await workflow.execute_activity(
                route_batch, RouteInput(batch=input, review=review),
                start_to_close_timeout=policies.PAGE_TIMEOUT, heartbeat_timeout=policies.HEARTBEAT,
                retry_policy=policies.STAGE_RETRY)
            if review.non_primary_image_sets and workflow.patched(patches.START_RECONCILIATION):
                await self._start_reconciliations(input, review.non_primary_image_sets)
            if input.fhir is not None and workflow.patched(patches.FHIR_ROUTING):
                await self._route_fhir(input, review)
        else:
            # The files stay imported (and in the report); only events and reconciliation are held back.
            self._stage(BatchStage.NOT_ROUTED)

    async def _route_fhir(self, input: BatchInput, review: ReviewResult) -> None:
        """ImagingStudy resources into HealthLake. Its outcome is reported; it never fails the batch or its files.

        A study split over batches routes from each of them, each resource built from everything HealthImaging
        holds at that moment. If this batch's resource was built before another batch imported more of the study
        and its job ran after that batch's, HealthLake holds the older view: the review sees the study's image
        sets have grown and this batch routes once more (round 2), built after the other import and queued after
        the other job (HealthLake runs a data store's imports in order), so the newest view lands last. If round 2
        does not run to its end, round 1's counts stand, with round 2's problems.
        """
        assert input.fhir is not None
        self._stage(BatchStage.ROUTING_FHIR)
        summary = await self._fhir_round(input, review)
        if summary.stale_studies:
            self._stage(BatchStage.ROUTING_FHIR)
            again = input.model_copy(update={"fhir": input.fhir.model_copy(update={"round": 2})})
            second = await self._fhir_round(again, review)
            if second.stale_studies:
                second.problems.append(f"{second.stale_studies} studies gained image sets again while routing; "
                                       "route them again (re-run) to refresh HealthLake")
            summary = after_round_2(summary, second)
        self._progress.fhir = summary if self._progress.fhir is None else _merge_fhir(self._progress.fhir, summary)

    async def _fhir_round(self, input: BatchInput, review: ReviewResult) -> FhirSummary:
        ref: FhirImportRef | None = None
        outcome: FhirJobOutcome | None = None
        error: str | None = None
        try:
            ref = await workflow.execute_activity(
                start_fhir_import, RouteInput(batch=input, review=review),
                start_to_close_timeout=policies.PAGE_TIMEOUT, heartbeat_timeout=policies.HEARTBEAT,
                retry_policy=policies.STAGE_RETRY)
            if ref.job_id is not None:
                outcome = await workflow.execute_activity(
                    await_fhir_import, ref,
                    start_to_close_timeout=policies.POLL_TIMEOUT, schedule_to_close_timeout=policies.JOB_WAIT_LIMIT,
                    retry_policy=policies.POLL_RETRY)
        except ActivityError as err:
            # e.g. an unknown HealthLake data store: recorded with the AWS error, the batch goes on.
            error = str(err.cause or err)
        try:
            summary: FhirSummary = await workflow.execute_activity(
                review_fhir_import, FhirReviewInput(batch=input, ref=ref, outcome=outcome, error=error),
                start_to_close_timeout=policies.PAGE_TIMEOUT, schedule_to_close_timeout=timedelta(hours=2),
                heartbeat_timeout=policies.HEARTBEAT, retry_policy=policies.PATIENT_RETRY)
        except ActivityError as err:
            summary = FhirSummary(job_id=ref.job_id if ref else None, job_status=outcome.status if outcome else None,
                                  reviewed=False, problems=[f"HealthLake import output not reviewed: {str(err.cause or err)[:500]}"])
        return summary

    @workflow.run
    async def run(self, input: BatchInput) -> BatchResult:
        if not workflow.patched(patches.BATCH_STANDARD_CANCEL):
            return await self._run_batch(input)
        # A standard cancel (Temporal UI, `temporal workflow cancel`) cancels this task only: the batch, shielded
        # in its own task, drains (its job is awaited and reviewed, the approval gate holds) and completes, so its
        # migration reports its files as they are, not as a failed batch.
        self._drain_on_cancel = True

        def on_cancel() -> None:
            self._cancel_requested = True
            workflow.logger.info("standard cancel: draining the batch", extra={"batch": input.batch})

        return await cancellation.shielded(self._run_batch(input), on_cancel, end_cancelled=False)

    async def _wait(self, condition: Callable[[], bool]) -> None:
        await cancellation.wait_condition(condition, lambda: self._drain_on_cancel)

    async def _run_batch(self, input: BatchInput) -> BatchResult:
        self._progress.batch = input.batch
        job, outcome, review = await self._import_and_review(input)
        if review is not None:
            if job.job_id:  # no job (every source changed): nothing was imported, nothing to route
                await self._route(input, review)
            self._stage(BatchStage.DONE)
            return BatchResult(batch=input.batch, job_id=job.job_id, job_status=outcome.status,
                               files_by_state=review.files_by_state, image_sets=review.image_sets,
                               non_primary_image_sets=review.non_primary_image_sets, stage=BatchStage.DONE,
                               fhir=self._progress.fhir)

        # The whole batch's job FAILED: import it once more in two halves (a bad file or a transient service
        # fault then costs half a batch), each with its own job, review and routing. A half that fails again is
        # reviewed and reported as failed.
        self._progress.failed_job = outcome
        await workflow.execute_activity(split_batch, input, start_to_close_timeout=policies.PAGE_TIMEOUT,
                                        heartbeat_timeout=policies.HEARTBEAT, retry_policy=policies.STAGE_RETRY)
        # Files whose source changed before the whole batch's job are in neither half: count them here.
        totals: dict[FileState, int] = {FileState.FAILED: job.source_changed} if job.source_changed else {}
        image_sets, non_primary, last = 0, [], outcome
        for part in (1, 2):
            half = input.model_copy(update={"part": part})
            half_job, last, half_review = await self._import_and_review(half)
            assert half_review is not None  # halves are never split again
            if half_job.job_id:
                await self._route(half, half_review)
            totals = add_counts(totals, half_review.files_by_state)
            image_sets += half_review.image_sets
            non_primary += half_review.non_primary_image_sets
        self._stage(BatchStage.DONE)
        return BatchResult(batch=input.batch, job_id=self._progress.job_id, job_status=last.status, failed_job=outcome,
                           files_by_state=totals, image_sets=image_sets, non_primary_image_sets=non_primary,
                           stage=BatchStage.DONE, fhir=self._progress.fhir)


def after_round_2(first: FhirSummary, second: FhirSummary) -> FhirSummary:
    """A batch's FHIR outcome after two rounds: round 2's counts if its job ran to its end, else round 1's.

    Round 2 re-sends every study, so a completed round 2 describes the batch; one that could not start, imported
    nothing, FAILED or was not reviewed leaves what round 1 imported in HealthLake. Both rounds' problems are kept.
    """
    problems = first.problems + second.problems
    counted = second if fhir_round_done(second.job_status, second.reviewed) else first
    return counted.model_copy(update={"rerouted": True, "problems": problems})


def _merge_fhir(a: FhirSummary, b: FhirSummary) -> FhirSummary:
    """Both halves of a split batch: counts add up, the last job is shown, refusals and problems are kept."""
    return FhirSummary(job_id=b.job_id or a.job_id, job_status=b.job_status or a.job_status,
                       studies=a.studies + b.studies, resources=a.resources + b.resources,
                       imported=a.imported + b.imported, failed=a.failed + b.failed,
                       rejected_by_validate=a.rejected_by_validate + b.rejected_by_validate,
                       stale_studies=a.stale_studies + b.stale_studies, rerouted=a.rerouted or b.rerouted,
                       reviewed=a.reviewed and b.reviewed,
                       failures=(a.failures + b.failures)[:MAX_FAILURES], problems=(a.problems + b.problems)[:50],
                       summary_uri=b.summary_uri or a.summary_uri)
