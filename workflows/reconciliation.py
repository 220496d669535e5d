"""`ReconciliationWorkflow`: one non-primary image set awaiting an operator's decision.

describe the conflict → wait for a decision (signal `approve` or update `decide`) → apply it → done. When no
decision arrives within ``timeout_seconds`` the workflow escalates (state `escalated`, one EventBridge event)
and keeps waiting: a timeout never decides on its own.

Decisions, accepted or rejected, are recorded with who, when and why and shown by the `conflict` query:
- both messages take their input raw: a signal the SDK cannot decode would be dropped with only a worker log
  line, and the payload's metadata carries the reviewer attestation (contracts/attestation.py);
- who decides is the identity the codec server (or `himig approve` on a host holding the attestation key)
  attested, checked by the `verify_reviewer` activity against HIMIG_RECONCILIATION_REVIEWERS and then against
  the input's `authorized_reviewers`; the JSON's `reviewer` is only a claim, kept in the record when it differs.
  A refused decision is recorded and the workflow waits on; a refused `decide` fails with DecisionRejected;
- the `decide` validator checks only shape and state: an update it rejects is returned to its caller as an
  error and, by Temporal's design, leaves no trace in history or in the decision log.
"""

from __future__ import annotations

import hashlib
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

    from contracts import attestation, search
    from contracts.activities import (
        await_image_set,
        delete_image_set,
        describe_conflict,
        promote_image_set,
        publish_escalation,
        update_before_promote,
        verify_reviewer,
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
        ReconciliationCarry,
        ReconciliationDecision,
        ReconciliationInput,
        ReconciliationOutcome,
        ReconciliationState,
        ReconciliationStatus,
        ReviewerClaim,
        ReviewerVerdict,
        UpdateFirstInput,
    )
    from workflows import cancellation, carried, patches, policies, signals
    from workflows.history import should_roll_over
    from workflows.search import upsert

In = TypeVar("In")
Out = TypeVar("Out")

# The decision log rides in workflow state; a flood of bad signals must not grow it without bound.
MAX_RECORDS = 100
_NO_INPUT = signals.NO_INPUT  # a signal sent without --input
_EXPECTED = "a JSON object with action, reviewer and reason"
# Decisions whose reviewer is being verified at once; more are refused (each costs an activity in history).
MAX_VERIFYING = 5
NOT_ATTESTED = "not attested: decide through the codec server (Temporal UI / temporal CLI with --codec-endpoint)"


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
        self._verifying = 0
        self._runs = 1
        restored = carried.restore(input.continued)
        if restored is not None:
            # Restored here, not in run(): a decision signalled in the new run's first task lands on this state.
            self._state, self._conflict = restored.state, restored.conflict
            self._records = list(restored.decisions)
            self._deadline, self._escalated_at = restored.decision_deadline, restored.escalated_at
            self._error, self._runs = restored.error, restored.runs + 1
        # A standard cancel (patches.RECONCILIATION_STANDARD_CANCEL): may this run handle it, and has it come.
        self._drain_on_cancel = False
        self._cancelled = False

    # ---- messages

    @workflow.query
    def conflict(self) -> ReconciliationStatus:
        return ReconciliationStatus(
            datastore_id=self._input.datastore_id, image_set_id=self._input.image_set_id,
            migration_id=self._input.migration_id, batch=self._input.batch, state=self._state,
            conflict=self._conflict, decisions=list(self._records), escalated_at=self._escalated_at,
            decision_deadline=self._deadline, promoted_image_set_id=self._promoted_id, error=self._error)

    @workflow.signal
    async def approve(self, raw: RawValue = _NO_INPUT) -> None:
        """A decision from the UI or `temporal workflow signal --name approve --input '{...}' --codec-endpoint ...`.

        Takes the payload raw so that bad input is recorded as a rejected decision instead of being dropped, and so
        that its reviewer attestation (payload metadata) can be checked.
        """
        decision = self._read(raw)
        if decision is None:
            return
        await self._consider(decision, "signal", raw.payload)

    @workflow.update
    async def decide(self, raw: RawValue = _NO_INPUT) -> ReconciliationOutcome:
        """A decision (what `himig approve` sends, or `temporal workflow update execute --name decide
        --codec-endpoint ...`); returns the outcome once it has been applied, or fails with DecisionRejected."""
        _, decision = self._decode(raw)
        if isinstance(decision, str):  # only reachable on replay of a history the validator let through
            raise ApplicationError(decision, type=ErrorType.DECISION_REJECTED)
        problem = await self._consider(decision, "update", raw.payload)
        if problem:
            raise ApplicationError(problem, type=ErrorType.DECISION_REJECTED)
        await self._wait(lambda: self._outcome is not None)
        assert self._outcome is not None
        return self._outcome

    @decide.validator
    def _validate_decide(self, raw: RawValue = _NO_INPUT) -> None:
        # The cheap checks only (shape, state): who decides is verified by an activity once accepted.
        _, decision = self._decode(raw)
        if isinstance(decision, str):
            raise ValueError(decision)
        problem = self._state_problem()
        if problem:
            raise ValueError(problem)

    def _decode(self, raw: RawValue) -> tuple[Any, ReconciliationDecision | str]:
        """``(the input's JSON value, the decision)``, or ``(value, why there is no decision)``: field names and
        rules only, never input values."""
        value, error = signals.read_json(raw, _EXPECTED)
        if error is not None:
            return value, error
        if not isinstance(value, dict):
            return value, f"expected {_EXPECTED}"
        try:
            return value, ReconciliationDecision.model_validate(value)
        except pydantic.ValidationError as err:
            return value, describe_validation_error(err)

    def _read(self, raw: RawValue) -> ReconciliationDecision | None:
        """A signal's decision, or None after recording why it is unreadable."""
        value, decision = self._decode(raw)
        if isinstance(decision, str):
            self._reject("signal", _reviewer_of(value), decision)
            return None
        return decision

    async def _consider(self, decision: ReconciliationDecision, via: str, payload: Payload) -> str | None:
        """Accept ``decision`` (None) or record and return why not.

        Since VERIFY_REVIEWER the reviewer is the identity attested in the payload (checked by `verify_reviewer`
        against the key and HIMIG_RECONCILIATION_REVIEWERS, then against ``authorized_reviewers``); before it, the
        JSON's `reviewer` was taken at its word.
        """
        problem = self._state_problem()
        if problem:
            self._reject(via, decision.reviewer, problem, decision)
            return problem
        if not workflow.patched(patches.VERIFY_REVIEWER):
            problem = self._reviewer_problem(decision.reviewer)
            if problem:
                self._reject(via, decision.reviewer, problem, decision)
                return problem
            self._accept(decision, via)
            return None

        identity, mac = attestation.claimed(payload)
        if identity is None or mac is None:
            # No activity for what anyone who can reach Temporal may send in bulk.
            verdict = ReviewerVerdict(accepted=False, error=NOT_ATTESTED)
        elif decision.reconciliation_id != workflow.info().workflow_id:
            # Required: the attestation covers the payload, so naming the target is what stops an attested
            # decision copied out of one history from deciding another reconciliation.
            verdict = ReviewerVerdict(accepted=False, error=(
                "the decision must name this reconciliation (reconciliation_id: its workflow id)"
                if decision.reconciliation_id is None else "the decision names another reconciliation "
                "(reconciliation_id)"))
        elif self._verifying >= MAX_VERIFYING:
            verdict = ReviewerVerdict(accepted=False, error="too many decisions are being verified; try again")
        else:
            self._verifying += 1
            try:
                verdict = await workflow.execute_activity(
                    verify_reviewer, ReviewerClaim(identity=identity, attestation=mac,
                                                   payload_sha256=hashlib.sha256(payload.data).hexdigest()),
                    start_to_close_timeout=policies.STEP_TIMEOUT, schedule_to_close_timeout=policies.STEP_LIMIT,
                    retry_policy=policies.READ_RETRY)
            except ActivityError as err:
                verdict = ReviewerVerdict(accepted=False, error=f"the reviewer could not be verified: {_cause(err)}")
            finally:
                self._verifying -= 1
        problem = (verdict.error or "refused") if not verdict.accepted or not verdict.reviewer else \
            self._reviewer_problem(verdict.reviewer) or self._state_problem()
        if problem:
            # Recorded as the reviewer: only an identity whose attestation verified (a forger's claim is not one).
            self._reject(via, verdict.reviewer, problem, decision,
                         claimed=decision.reviewer if decision.reviewer != verdict.reviewer else None)
            return problem
        assert verdict.reviewer is not None
        claimed = decision.reviewer if decision.reviewer != verdict.reviewer else None
        self._accept(decision.model_copy(update={"reviewer": verdict.reviewer}), via, claimed=claimed)
        return None

    def _reviewer_problem(self, reviewer: str) -> str | None:
        allowed = self._input.authorized_reviewers
        if allowed is not None and reviewer not in allowed:
            return f"reviewer {reviewer!r} is not authorised to decide this reconciliation"
        return None

    def _state_problem(self) -> str | None:
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
                decision: ReconciliationDecision | None = None, claimed: str | None = None) -> None:
        # One line naming the fields and rules at fault (``error`` never quotes the input's values).
        workflow.logger.warning("reconciliation decision rejected",
                                extra={"via": via, "reviewer": reviewer, "error": error})
        self._record(DecisionRecord(
            at=workflow.now(), via=via, accepted=False, reviewer=reviewer, error=error,  # type: ignore[arg-type]
            action=decision.action if decision else None, reason=decision.reason if decision else None,
            claimed_reviewer=claimed))

    def _accept(self, decision: ReconciliationDecision, via: str, claimed: str | None = None) -> None:
        names = sorted(f"{level}.{name}" for level, attrs in (decision.update_first or {}).items() for name in attrs)
        record = DecisionRecord(at=workflow.now(), via=via, accepted=True, action=decision.action,  # type: ignore[arg-type]
                                reviewer=decision.reviewer, reason=decision.reason, updated_attributes=names,
                                claimed_reviewer=claimed)
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
        if carried.written_by_caller(input.continued):
            carried.refuse()
        if not workflow.patched(patches.RECONCILIATION_STANDARD_CANCEL):
            return await self._reconcile(input)
        # A standard cancel (Temporal UI, `temporal workflow cancel`) cancels this task only; the reconciliation,
        # shielded in its own task, ends in state `cancelled` if nothing was decided yet, or applies what was
        # decided to the end. Then the run ends cancelled.
        self._drain_on_cancel = True

        def on_cancel() -> None:
            self._cancelled = True

        return await cancellation.shielded(self._reconcile(input), on_cancel)

    async def _wait(self, condition: Callable[[], bool], timeout: timedelta | None = None) -> None:
        await cancellation.wait_condition(condition, lambda: self._drain_on_cancel, timeout)

    async def _reconcile(self, input: ReconciliationInput) -> ReconciliationOutcome:
        target = ImageSetTarget(datastore_id=input.datastore_id, image_set_id=input.image_set_id)
        if input.continued is None:
            try:
                self._conflict = await workflow.execute_activity(
                    describe_conflict, target, start_to_close_timeout=policies.STEP_TIMEOUT,
                    schedule_to_close_timeout=policies.STEP_LIMIT, retry_policy=policies.READ_RETRY)
            except ActivityError as err:
                return await self._finish(ReconciliationState.FAILED,
                                          f"describing the conflict failed: {_cause(err)}")
            if self._cancelled:
                return await self._finish(ReconciliationState.CANCELLED, "cancelled before a decision")
            if not self._conflict.reconcilable:
                return await self._finish(
                    ReconciliationState.FAILED,
                    f"nothing to reconcile: the image set is {self._conflict.image_set_state} with "
                    f"isPrimary={self._conflict.is_primary}")
            self._state = ReconciliationState.AWAITING_DECISION
            self._deadline = workflow.now() + timedelta(seconds=input.timeout_seconds)
        self._publish()
        # Since ROLL_OVER_RECONCILIATION: a long wait (months, or a flood of signals) continues as new before the
        # history nears Temporal's limits, carrying the conflict, the decision log and the deadline.
        rolls = input.continued is not None or workflow.patched(patches.ROLL_OVER_RECONCILIATION)
        if self._state is ReconciliationState.AWAITING_DECISION:
            assert self._deadline is not None
            remaining = self._deadline - workflow.now()
            try:
                if remaining <= timedelta(0):
                    raise TimeoutError  # the deadline passed while the previous run rolled over
                await self._wait(lambda: self._decided_or_rolling(rolls) or self._cancelled, timeout=remaining)
            except TimeoutError:
                await self._escalate(input)
        await self._wait(lambda: self._decided_or_rolling(rolls) or self._cancelled)
        if self._pending is None and self._cancelled:
            return await self._finish(ReconciliationState.CANCELLED, "cancelled before a decision")
        if self._pending is None:
            self._roll_over(input)

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

    def _decided_or_rolling(self, rolls: bool) -> bool:
        """A decision was accepted, or (``rolls``) the history should roll over and nothing is in flight: no
        reviewer being verified and no message handler (a `decide` update) still running."""
        if self._pending is not None:
            return True
        return rolls and self._verifying == 0 and workflow.all_handlers_finished() and should_roll_over()

    def _roll_over(self, input: ReconciliationInput) -> None:
        assert self._conflict is not None and self._deadline is not None
        carry = ReconciliationCarry(state=self._state, conflict=self._conflict, decisions=self._records,
                                    decision_deadline=self._deadline, escalated_at=self._escalated_at,
                                    error=self._error, runs=self._runs)
        workflow.logger.info("reconciliation continues as new", extra={"runs": self._runs})
        workflow.continue_as_new(input.model_copy(update={"continued": carry}))

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
        await self._wait(workflow.all_handlers_finished)
        return self._outcome
