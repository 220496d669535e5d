"""`ReconciliationWorkflow`: one non-primary image set awaiting an operator's decision.

describe the conflict → wait for a decision (signal `approve` or update `decide`) → apply it → done. When no
decision arrives within ``timeout_seconds`` the workflow escalates (state `escalated`, one EventBridge event)
and keeps waiting: a timeout never decides on its own.

Decisions, accepted or rejected, are recorded with who, when and why and shown by the `conflict` query:
- the `approve` signal takes its input raw and validates it here, because a signal the SDK cannot decode is
  dropped with only a worker log line; a malformed or unauthorised signal is recorded as rejected;
- the `decide` update is validated before it is accepted: a rejected update is returned to its caller as an
  error and, by Temporal's design, leaves no trace in history or in the decision log.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.common import RawValue
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    import pydantic

    from contracts import search
    from contracts.activities import (
        await_image_set,
        delete_image_set,
        describe_conflict,
        promote_image_set,
        publish_escalation,
        update_before_promote,
    )
    from contracts.errors import ErrorType, describe_validation_error
    from contracts.reconciliation import (
        OPEN_STATES,
        REVIEWER_PATTERN,
        ConflictDescription,
        DecisionRecord,
        EscalationInput,
        ImageSetTarget,
        PromoteInput,
        ReconciliationAction,
        ReconciliationDecision,
        ReconciliationInput,
        ReconciliationOutcome,
        ReconciliationState,
        ReconciliationStatus,
        UpdateFirstInput,
    )
    from workflows import policies
    from workflows.search import upsert

In = TypeVar("In")
Out = TypeVar("Out")

# The decision log rides in workflow state; a flood of bad signals must not grow it without bound.
MAX_RECORDS = 100
_NO_INPUT = RawValue(Payload())  # a signal sent without --input



def _reviewer_of(value: Any) -> str | None:
    reviewer = value.get("reviewer") if isinstance(value, dict) else None
    return reviewer if isinstance(reviewer, str) and re.match(REVIEWER_PATTERN, reviewer) else None


def _cause(err: ActivityError) -> str:
    cause = err.cause if err.cause is not None else err
    return str(cause)[:300]


@workflow.defn
class ReconciliationWorkflow:
    @workflow.init
    def __init__(self, input: ReconciliationInput) -> None:
        # @workflow.init: the input is known before any signal or update handler runs.
        self._input = input
        self._state = ReconciliationState.DESCRIBING
        self._conflict: ConflictDescription | None = None
        self._records: list[DecisionRecord] = []
        self._pending: tuple[ReconciliationDecision, DecisionRecord] | None = None
        self._outcome: ReconciliationOutcome | None = None
        self._promoted_id: str | None = None
        self._escalated_at: datetime | None = None
        self._deadline: datetime | None = None
        self._error: str | None = None

    # ---- messages

    @workflow.query
    def conflict(self) -> ReconciliationStatus:
        return ReconciliationStatus(
            datastore_id=self._input.datastore_id, image_set_id=self._input.image_set_id,
            migration_id=self._input.migration_id, batch=self._input.batch, state=self._state,
            conflict=self._conflict, decisions=list(self._records), escalated_at=self._escalated_at,
            decision_deadline=self._deadline, promoted_image_set_id=self._promoted_id, error=self._error)

    @workflow.signal
    def approve(self, raw: RawValue = _NO_INPUT) -> None:
        """A decision from the UI or `temporal workflow signal --name approve --input '{...}'`.

        Takes the payload raw so that bad input is recorded as a rejected decision instead of being dropped.
        """
        if raw is _NO_INPUT:
            self._reject("signal", None, "no input: expected a JSON object with action, reviewer and reason")
            return
        try:
            value = workflow.payload_converter().from_payload(raw.payload)
        except Exception:
            self._reject("signal", None, "input is not JSON")
            return
        if not isinstance(value, dict):
            self._reject("signal", None, "expected a JSON object with action, reviewer and reason")
            return
        try:
            decision = ReconciliationDecision.model_validate(value)
        except pydantic.ValidationError as err:
            self._reject("signal", _reviewer_of(value), describe_validation_error(err))
            return
        problem = self._problem(decision)
        if problem:
            self._reject("signal", decision.reviewer, problem, decision)
            return
        self._accept(decision, "signal")

    @workflow.update
    async def decide(self, decision: ReconciliationDecision) -> ReconciliationOutcome:
        """A validated decision (what `himig approve` sends); returns the outcome once it has been applied."""
        problem = self._problem(decision)
        if problem:
            # Only reachable when two updates passed validation in the same workflow task.
            self._reject("update", decision.reviewer, problem, decision)
            raise ApplicationError(problem, type=ErrorType.DECISION_REJECTED)
        self._accept(decision, "update")
        await workflow.wait_condition(lambda: self._outcome is not None)
        assert self._outcome is not None
        return self._outcome

    @decide.validator
    def _validate_decide(self, decision: ReconciliationDecision) -> None:
        problem = self._problem(decision)
        if problem:
            raise ValueError(problem)

    def _problem(self, decision: ReconciliationDecision) -> str | None:
        allowed = self._input.authorized_reviewers
        if allowed is not None and decision.reviewer not in allowed:
            return f"reviewer {decision.reviewer!r} is not authorised to decide this reconciliation"
        if self._pending is not None or self._state not in OPEN_STATES:
            return f"a decision was already taken (state {self._state.value})"
        return None

    def _record(self, record: DecisionRecord) -> None:
        self._records.append(record)
        if len(self._records) > MAX_RECORDS:
            # Drop the oldest rejection; the accepted decision is always kept.
            oldest = next((i for i, r in enumerate(self._records) if not r.accepted), 0)
            del self._records[oldest]

    def _reject(self, via: str, reviewer: str | None, error: str,
                decision: ReconciliationDecision | None = None) -> None:
        # One line naming the fields and rules at fault (``error`` never quotes the input's values).
        workflow.logger.warning("reconciliation decision rejected",
                                extra={"via": via, "reviewer": reviewer, "error": error})
        self._record(DecisionRecord(
            at=workflow.now(), via=via, accepted=False, reviewer=reviewer, error=error,  # type: ignore[arg-type]
            action=decision.action if decision else None, reason=decision.reason if decision else None))

    def _accept(self, decision: ReconciliationDecision, via: str) -> None:
        names = sorted(f"{level}.{name}" for level, attrs in (decision.update_first or {}).items() for name in attrs)
        record = DecisionRecord(at=workflow.now(), via=via, accepted=True, action=decision.action,  # type: ignore[arg-type]
                                reviewer=decision.reviewer, reason=decision.reason, updated_attributes=names)
        self._record(record)
        self._pending = (decision, record)
        workflow.logger.info("reconciliation decision accepted",
                             extra={"via": via, "reviewer": decision.reviewer, "action": decision.action.value})

    def _publish(self) -> None:
        """Search attributes: `himig list` shows reconciliations awaiting a decision (or escalated)."""
        upsert({search.STATE: self._state.value, search.DATASTORE_ID: self._input.datastore_id,
                search.MIGRATION_ID: self._input.migration_id})

    # ---- main

    @workflow.run
    async def run(self, input: ReconciliationInput) -> ReconciliationOutcome:
        target = ImageSetTarget(datastore_id=input.datastore_id, image_set_id=input.image_set_id)
        try:
            self._conflict = await workflow.execute_activity(
                describe_conflict, target, start_to_close_timeout=policies.STEP_TIMEOUT,
                schedule_to_close_timeout=policies.STEP_LIMIT, retry_policy=policies.READ_RETRY)
        except ActivityError as err:
            return await self._finish(ReconciliationState.FAILED, f"describing the conflict failed: {_cause(err)}")
        if not self._conflict.reconcilable:
            return await self._finish(
                ReconciliationState.FAILED,
                f"nothing to reconcile: the image set is {self._conflict.image_set_state} with "
                f"isPrimary={self._conflict.is_primary}")

        self._state = ReconciliationState.AWAITING_DECISION
        self._publish()
        timeout = timedelta(seconds=input.timeout_seconds)
        self._deadline = workflow.now() + timeout
        try:
            await workflow.wait_condition(lambda: self._pending is not None, timeout=timeout)
        except TimeoutError:
            await self._escalate(input)
            await workflow.wait_condition(lambda: self._pending is not None)

        assert self._pending is not None
        decision, record = self._pending
        self._state = ReconciliationState.APPLYING
        self._publish()
        try:
            final = await self._apply(target, decision, record.at)
        except ActivityError as err:
            return await self._finish(ReconciliationState.FAILED, f"applying {decision.action.value} failed: "
                                      f"{_cause(err)}")
        except ApplicationError as err:
            return await self._finish(ReconciliationState.FAILED, str(err))
        return await self._finish(final)

    async def _escalate(self, input: ReconciliationInput) -> None:
        self._state = ReconciliationState.ESCALATED
        self._publish()
        self._escalated_at = workflow.now()
        workflow.logger.warning("reconciliation escalated: no decision in time")
        try:
            await workflow.execute_activity(
                publish_escalation,
                EscalationInput(datastore_id=input.datastore_id, image_set_id=input.image_set_id,
                                workflow_id=workflow.info().workflow_id, migration_id=input.migration_id,
                                batch=input.batch, waiting_seconds=input.timeout_seconds),
                start_to_close_timeout=policies.STEP_TIMEOUT, schedule_to_close_timeout=policies.STEP_LIMIT,
                retry_policy=policies.READ_RETRY)
        except ActivityError as err:
            # The event is a notification; failing to send it must not stop the wait for a decision.
            self._error = f"escalation event not published: {_cause(err)}"

    async def _apply(self, target: ImageSetTarget, decision: ReconciliationDecision,
                     decided_at: datetime) -> ReconciliationState:
        if decision.action is ReconciliationAction.KEEP:
            return ReconciliationState.KEPT
        if decision.action is ReconciliationAction.DISCARD:
            await self._mutate(delete_image_set, target)
            return ReconciliationState.DISCARDED

        if decision.update_first:
            await self._mutate(update_before_promote,
                               UpdateFirstInput(datastore_id=target.datastore_id, image_set_id=target.image_set_id,
                                                attributes={k: v for k, v in decision.update_first.items()}))
        assert self._conflict is not None
        promoted = await self._mutate(
            promote_image_set,
            PromoteInput(datastore_id=target.datastore_id, image_set_id=target.image_set_id,
                         primary_image_set_id=self._conflict.primary_image_set_id, not_before=decided_at))
        self._promoted_id = promoted.image_set_id  # kept even if a later step fails: the operator needs it
        status = await workflow.execute_activity(
            await_image_set, ImageSetTarget(datastore_id=target.datastore_id, image_set_id=promoted.image_set_id),
            start_to_close_timeout=policies.STEP_TIMEOUT, schedule_to_close_timeout=policies.COPY_WAIT_LIMIT,
            retry_policy=policies.MUTATION_RETRY)
        if not status.is_primary:
            # Never delete the source unless its promoted copy is really primary.
            raise ApplicationError(f"the copy {promoted.image_set_id} is not primary; the non-primary set is kept",
                                   type=ErrorType.PROMOTION_NOT_PRIMARY)
        await self._mutate(delete_image_set, target)
        return ReconciliationState.PROMOTED

    async def _mutate(self, activity: Callable[[In], Out], arg: In) -> Out:
        return await workflow.execute_activity(
            activity, arg, start_to_close_timeout=policies.STEP_TIMEOUT,
            schedule_to_close_timeout=policies.STEP_LIMIT, retry_policy=policies.MUTATION_RETRY)

    async def _finish(self, state: ReconciliationState, error: str | None = None) -> ReconciliationOutcome:
        self._state = state
        self._publish()
        if error:
            self._error = error
        decision, record = self._pending if self._pending else (None, None)
        self._outcome = ReconciliationOutcome(
            datastore_id=self._input.datastore_id, image_set_id=self._input.image_set_id, state=state,
            action=decision.action if decision else None, decided_by=decision.reviewer if decision else None,
            decided_at=record.at if record else None, reason=decision.reason if decision else None,
            promoted_image_set_id=self._promoted_id, error=error)
        # Let a waiting `decide` update return its outcome before the workflow completes.
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._outcome
