"""`ImportBatchWorkflow`: one planned batch → one import job → its reviewed manifest → routing."""

from __future__ import annotations

import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from contracts.pipeline import (
        BatchInput,
        BatchProgress,
        BatchResult,
        BatchStage,
        ImportJobRef,
        JobOutcome,
        ManifestApproval,
        ReviewInput,
        ReviewResult,
        RouteInput,
        RouteResult,
        StageTransition,
    )
    from contracts.reconciliation import ReconciliationInput, reconciliation_workflow_id
    from workflows import policies
    from workflows.reconciliation import ReconciliationWorkflow


@workflow.defn
class ImportBatchWorkflow:
    """Stages of one batch. "Job COMPLETED" and "manifest reviewed" are separate steps and separate states."""

    def __init__(self) -> None:
        self._progress = BatchProgress(batch=-1, stage=BatchStage.PENDING)

    def _stage(self, stage: BatchStage) -> None:
        self._progress.stage = stage
        self._progress.transitions.append(StageTransition(stage=stage, at=workflow.now()))

    @workflow.query
    def progress(self) -> BatchProgress:
        return self._progress

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

    @workflow.run
    async def run(self, input: BatchInput) -> BatchResult:
        self._progress.batch = input.batch
        self._stage(BatchStage.IMPORTING)
        job = await workflow.execute_activity(
            "start_import_job", input, result_type=ImportJobRef,
            start_to_close_timeout=policies.PAGE_TIMEOUT, heartbeat_timeout=policies.HEARTBEAT,
            retry_policy=policies.START_JOB_RETRY)
        self._progress.job_id = job.job_id
        self._progress.staged_files = job.staged_files

        self._stage(BatchStage.AWAITING_JOB)
        outcome = await workflow.execute_activity(
            "await_import_job", job, result_type=JobOutcome,
            start_to_close_timeout=policies.POLL_TIMEOUT, schedule_to_close_timeout=policies.JOB_WAIT_LIMIT,
            retry_policy=policies.POLL_RETRY)
        self._progress.job_status = outcome.status
        self._stage(BatchStage.JOB_COMPLETED if outcome.status == "COMPLETED" else BatchStage.JOB_FAILED)

        self._stage(BatchStage.REVIEWING_MANIFEST)
        review = await workflow.execute_activity(
            "review_manifest", ReviewInput(batch=input, job=job, outcome=outcome), result_type=ReviewResult,
            start_to_close_timeout=policies.PAGE_TIMEOUT, schedule_to_close_timeout=timedelta(hours=2),
            heartbeat_timeout=policies.HEARTBEAT,
            retry_policy=policies.STAGE_RETRY)
        self._progress.files_by_state = review.files_by_state
        self._progress.counters_consistent = review.counters_consistent
        self._progress.problems = review.problems
        self._progress.non_primary_image_sets = review.non_primary_image_sets
        self._stage(BatchStage.MANIFEST_REVIEWED)

        if input.manual_review:
            self._stage(BatchStage.AWAITING_APPROVAL)
            await workflow.wait_condition(lambda: self._progress.approval is not None)
        if self._progress.approval is None or self._progress.approval.approve:
            self._stage(BatchStage.ROUTING)
            await workflow.execute_activity(
                "route_batch", RouteInput(batch=input, review=review), result_type=RouteResult,
                start_to_close_timeout=policies.PAGE_TIMEOUT, heartbeat_timeout=policies.HEARTBEAT,
                retry_policy=policies.STAGE_RETRY)
            if review.non_primary_image_sets and workflow.patched("start-reconciliation"):
                await self._start_reconciliations(input, review.non_primary_image_sets)
        else:
            # The files stay imported (and in the report); only events and reconciliation are held back.
            self._stage(BatchStage.NOT_ROUTED)
        self._stage(BatchStage.DONE)
        return BatchResult(batch=input.batch, job_id=job.job_id, job_status=outcome.status,
                           files_by_state=review.files_by_state, image_sets=review.image_sets,
                           non_primary_image_sets=review.non_primary_image_sets, stage=BatchStage.DONE)
