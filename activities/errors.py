"""Turning AWS errors into Temporal retry decisions, with the code sets of `contracts.errors`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from botocore.exceptions import ClientError
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from contracts.errors import BACKOFF, FATAL, ErrorType


def error_code(err: BaseException) -> str:
    """The AWS error code of ``err``; for an error without one (connection trouble), its type's name. Never its
    message, which could carry a key id or a value."""
    if isinstance(err, ClientError):
        return str(err.response.get("Error", {}).get("Code", "Unknown"))
    return type(err).__name__


def backoff_delay(attempt: int, base: float = 1.0, cap: float = 60.0) -> timedelta:
    return timedelta(seconds=min(cap, base * (2 ** max(0, attempt - 1))))


def poll_delay(attempt: int, initial: float = 1.0, maximum: float = 30.0) -> timedelta:
    """``initial`` (1 s), then growing by half each poll up to ``maximum`` (30 s): quick for small jobs, cheap
    for hour-long ones. With import-job events wiring a wake-up, ``maximum`` can be minutes."""
    return timedelta(seconds=min(maximum, initial * 1.5 ** max(0, attempt - 1)))


def benign_retry(message: str, kind: ErrorType,
                 delay: Callable[[int], timedelta] = backoff_delay) -> ApplicationError:
    """A BENIGN error (no warning logged) that Temporal retries after ``delay(attempt)``: a wait, not a failure."""
    attempt = activity.info().attempt if activity.in_activity() else 1
    return ApplicationError(message, type=kind, next_retry_delay=delay(attempt),
                            category=ApplicationErrorCategory.BENIGN)


def classify(err: ClientError, what: str) -> ApplicationError:
    """An `ApplicationError` for ``err`` whose type is the AWS code and whose retryability matches it."""
    code = error_code(err)
    message = str(err.response.get("Error", {}).get("Message", ""))[:500]
    if code in BACKOFF:
        return benign_retry(f"{what}: {code} (backing off): {message}", ErrorType(code))
    return ApplicationError(f"{what}: {code}: {message}", type=code, non_retryable=code in FATAL)
