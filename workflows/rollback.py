"""`RollbackWorkflow`: delete the image sets one finished migration created, after an operator confirms the count.

plan (`plan_rollback`) → wait for the `confirm` update naming the number of image sets to delete (the validator
refuses any other number, so nobody deletes more, or other, sets than they were shown) → delete in chunks
(`delete_image_sets`, idempotent) → record next to the migration's report (`record_rollback`). Not confirmed within
``confirm_timeout_seconds``: it ends `expired` and deletes nothing. A standard cancel while deleting records what
was deleted so far. Its id is `rollback-<migration id>`: one rollback per migration.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from contracts.activities import delete_image_sets, plan_rollback, record_rollback
    from contracts.errors import ErrorType
    from contracts.rollback import (
        DELETE_CHUNK,
        DeleteChunk,
        RecordInput,
        RollbackConfirmation,
        RollbackInput,
        RollbackPhase,
        RollbackProgress,
    )
    from workflows import policies


@workflow.defn
class RollbackWorkflow:
    def __init__(self) -> None:
        self._progress: RollbackProgress | None = None
        self._confirmation: RollbackConfirmation | None = None

    @workflow.query
    def progress(self) -> RollbackProgress:
        if self._progress is None:
            raise ApplicationError("the rollback has not started yet")
        return self._progress

    @workflow.update
    def confirm(self, confirmation: RollbackConfirmation) -> RollbackProgress:
        self._confirmation = confirmation
        assert self._progress is not None
        self._progress.confirmed_by = confirmation.by
        return self._progress

    @confirm.validator
    def _check_confirmation(self, confirmation: RollbackConfirmation) -> None:
        p = self._progress
        if p is None or p.phase is not RollbackPhase.AWAITING_CONFIRMATION or p.plan is None:
            phase = p.phase.value if p else "starting"
            raise ApplicationError(f"nothing to confirm: the rollback is {phase}", type=ErrorType.DECISION_REJECTED)
        if self._confirmation is not None:
            raise ApplicationError("already confirmed", type=ErrorType.DECISION_REJECTED)
        if confirmation.count != p.plan.to_delete:
            raise ApplicationError(f"count: the plan deletes {p.plan.to_delete} image sets, not {confirmation.count}",
                                   type=ErrorType.DECISION_REJECTED)

    @workflow.run
    async def run(self, input: RollbackInput) -> RollbackProgress:
        self._progress = progress = RollbackProgress(migration_id=input.migration_id, phase=RollbackPhase.PLANNING)
        progress.plan = await workflow.execute_activity(
            plan_rollback, input, start_to_close_timeout=timedelta(hours=2), heartbeat_timeout=policies.HEARTBEAT,
            retry_policy=policies.STAGE_RETRY)
        progress.phase = RollbackPhase.AWAITING_CONFIRMATION
        try:
            await workflow.wait_condition(lambda: self._confirmation is not None,
                                          timeout=timedelta(seconds=input.confirm_timeout_seconds))
        except TimeoutError:
            progress.phase = RollbackPhase.EXPIRED
            return await self._record(input)
        progress.phase = RollbackPhase.DELETING
        try:
            for start in range(0, progress.plan.to_delete, DELETE_CHUNK):
                done = await workflow.execute_activity(
                    delete_image_sets,
                    DeleteChunk(plan_uri=progress.plan.plan_uri, datastore_id=input.datastore_id, start=start,
                                count=min(DELETE_CHUNK, progress.plan.to_delete - start)),
                    start_to_close_timeout=timedelta(minutes=30), heartbeat_timeout=policies.HEARTBEAT,
                    retry_policy=policies.PATIENT_RETRY)
                progress.deleted += done.deleted
                progress.already_deleted += done.already_deleted
        except asyncio.CancelledError:
            progress.phase = RollbackPhase.CANCELLED
            # The record of a cancelled rollback must still be written: shielded from the cancellation.
            await asyncio.shield(asyncio.ensure_future(self._record(input)))
            raise
        progress.phase = RollbackPhase.DONE
        return await self._record(input)

    async def _record(self, input: RollbackInput) -> RollbackProgress:
        assert self._progress is not None
        self._progress.record_uri = await workflow.execute_activity(
            record_rollback, RecordInput(input=input, progress=self._progress),
            start_to_close_timeout=timedelta(minutes=5), retry_policy=policies.STAGE_RETRY)
        return self._progress
