"""A worker interceptor that gives every activity's log lines their ids, and keeps patient values out of failures.

Around each activity execution it binds, as structlog context variables, ``workflow_id``, ``run_id``,
``activity``, ``attempt`` and, when the input names them, ``migration_id``, ``batch`` (and its ``part``) and ``page``. A sync
activity runs in the worker's thread pool in a copy of this context (the SDK copies it into the executor), so
its log lines, the SDK's ``activity.logger`` lines, and third-party lines (pydicom, botocore, ``warnings``)
emitted on that thread all carry the ids; threads the activity itself starts keep them through
``activities.phi.in_context``.

It also starts the activity's scrub set (``activities.phi``): the patient values the activity reads are
registered there, and an exception leaving the activity whose text holds one of them is replaced by an
``ApplicationError`` with the values scrubbed (same type name and retry behaviour), because a failure's message
is stored in workflow history and shown by the UI and CLI.
"""

from __future__ import annotations

from typing import Any

import pydantic
import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from activities import phi
from contracts.errors import describe_validation_error

_log = structlog.get_logger("himig.activity")


def input_ids(args: Any) -> dict[str, Any]:
    """``migration_id``, ``batch`` and ``page`` from an activity's input, where it has them."""
    ids: dict[str, Any] = {}
    arg = args[0] if args else None
    if arg is None:
        return ids
    migration_id = getattr(arg, "migration_id", None)
    batch, half = getattr(arg, "batch", None), getattr(arg, "part", None)
    if batch is not None and not isinstance(batch, int):  # an input holding a BatchInput
        migration_id = migration_id or getattr(batch, "migration_id", None)
        batch, half = getattr(batch, "batch", None), getattr(batch, "part", None)
    if isinstance(half, int) and not isinstance(half, bool):
        ids["part"] = half
    page = getattr(arg, "page", None)
    if isinstance(migration_id, str):
        ids["migration_id"] = migration_id
    if isinstance(batch, int) and not isinstance(batch, bool):
        ids["batch"] = batch
    if isinstance(page, int) and not isinstance(page, bool):
        ids["page"] = page
    return ids


def _chain(err: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    seen: BaseException | None = err
    while seen is not None and len(out) < 10:
        out.append(seen)
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return out


def _texts(err: BaseException) -> list[str]:
    out: list[str] = []
    for seen in _chain(err):
        out.append(str(seen))
        if isinstance(seen, ApplicationError):
            out.extend(repr(d) for d in seen.details)
    return out


def scrubbed_failure(err: Exception, values: frozenset[str]) -> Exception | None:
    """An ``ApplicationError`` to raise instead of ``err`` when its text (or its causes') holds a patient value,
    or when it is a pydantic ``ValidationError`` (whose text quotes the input)."""
    if isinstance(err, pydantic.ValidationError):
        return ApplicationError(f"{err.title}: {describe_validation_error(err)}", type=type(err).__name__)
    # A validation error as a cause would reach history as the failure's cause, with its text.
    invalid_cause = any(isinstance(e, pydantic.ValidationError) for e in _chain(err)[1:])
    if not invalid_cause and (not values or all(phi.scrub(t, values) == t for t in _texts(err))):
        return None
    if isinstance(err, ApplicationError):
        return ApplicationError(phi.scrub(err.message, values), type=err.type, non_retryable=err.non_retryable,
                                next_retry_delay=err.next_retry_delay)
    # The SDK would report type(err).__name__ as the failure type; keep it, so retry policies still match.
    message = phi.scrub(str(err), values)
    return ApplicationError(message or type(err).__name__, type=type(err).__name__)


class _LogContextInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        ids = {"workflow_id": info.workflow_id, "run_id": info.workflow_run_id, "activity": info.activity_type,
               "attempt": info.attempt, **input_ids(input.args)}
        with structlog.contextvars.bound_contextvars(**ids), phi.collecting():
            try:
                result = await super().execute_activity(input)
            except Exception as err:
                replacement = scrubbed_failure(err, phi.current())
                _log.debug("activity failed", error_type=type(err).__name__)
                if replacement is None:
                    raise
                _log.warning("activity failure replaced: its text held patient values or validated input",
                             error_type=type(err).__name__)
                raise replacement from None
            _log.debug("activity completed")
            return result


class LogContextInterceptor(Interceptor):
    """Register with ``Worker(interceptors=[LogContextInterceptor(), ...])``."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _LogContextInbound(next)
