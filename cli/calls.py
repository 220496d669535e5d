"""Calls from `himig` to Temporal: each bounded in time, and each failure turned into one line and an exit code.

A command never shows a traceback for something Temporal did (refused, timed out, went away): the operator gets
one sentence saying what failed, where, and what to check. Commands raise `CommandError`; `cli.app` prints it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import timedelta
from typing import TypeVar

from temporalio.client import WorkflowQueryFailedError, WorkflowQueryRejectedError
from temporalio.service import RPCError, RPCStatusCode

T = TypeVar("T")

ADDRESS_HINT = "check HIMIG_TEMPORAL_ADDRESS (or TEMPORAL_ADDRESS) and that the server is up"


class CommandError(Exception):
    """What a command reports instead of going on: one line for stderr, and the exit code (1 = the operation
    failed or its target is wrong, 2 = the command line is wrong)."""

    def __init__(self, message: str, code: int = 1, rpc_status: RPCStatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.rpc_status = rpc_status  # the gRPC status, when Temporal answered with an error


class Calls:
    """The time limit and the address of one command's calls (the address goes into every message)."""

    def __init__(self, address: str, timeout_seconds: float) -> None:
        self.address = address
        self.timeout_seconds = timeout_seconds

    @property
    def rpc_timeout(self) -> timedelta:
        return timedelta(seconds=self.timeout_seconds)

    async def bounded(self, call: Awaitable[T], what: str) -> T:
        """``await call`` within the time limit; an RPC failure or a timeout becomes a `CommandError`."""
        try:
            return await asyncio.wait_for(call, self.timeout_seconds)
        except TimeoutError:
            raise self.timed_out(what) from None
        except RPCError as err:
            raise self.failed(err, what) from None
        except (WorkflowQueryFailedError, WorkflowQueryRejectedError) as err:
            raise CommandError(f"{what} failed: {' '.join(str(err).split())[:300]}") from None

    def timed_out(self, what: str) -> CommandError:
        # A query is answered by a worker, not by the server: with no worker polling, it is the one to check.
        worker = " (a query also needs a worker polling the task queue)" if "query" in what else ""
        return CommandError(f"Temporal at {self.address} did not answer {what} within {self.timeout_seconds:g}s "
                            f"(HIMIG_CLI_TIMEOUT_SECONDS); {ADDRESS_HINT}{worker}")

    def failed(self, err: RPCError, what: str) -> CommandError:
        return CommandError(rpc_failure(err, self.address, what), rpc_status=err.status)


def rpc_failure(err: RPCError, address: str, what: str = "a request") -> str:
    """One line for an RPC error: the gRPC status, Temporal's own words (one line), and what to check."""
    status = err.status.name if err.status is not None else "UNKNOWN"
    detail = " ".join(str(err.message or err).split())[:300]
    if err.status == RPCStatusCode.DEADLINE_EXCEEDED:
        hint = (f"no answer in time; {ADDRESS_HINT} (a query also needs a worker polling the task queue; "
                "HIMIG_CLI_TIMEOUT_SECONDS sets the limit)")
    elif err.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.CANCELLED):
        hint = f"the connection failed; {ADDRESS_HINT}"
    elif err.status in (RPCStatusCode.UNAUTHENTICATED, RPCStatusCode.PERMISSION_DENIED):
        hint = "check the API key / mTLS certificate and the namespace"
    else:
        hint = "see Temporal's message"
    return f"Temporal at {address} failed {what} ({status}: {detail}); {hint}"
