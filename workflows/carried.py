"""State a workflow carries across continue-as-new belongs to the workflow: no caller can set it.

Temporal decodes a workflow's arguments by type only when their count matches, so the carried state rides in
the one input object (``continued``) that callers also send, from the CLI, `temporal workflow start --input`
or the Temporal UI. The server, not the payload, says whether a run was continued from an earlier run of the
same workflow (the started event's ``continuedExecutionRunId``; no client can set it), so a ``continued`` in
a run that nothing continued into was written by a caller. Such a run restores nothing and fails at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn, Protocol, TypeVar

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from contracts.errors import ErrorType

T = TypeVar("T")


class RunCounted(Protocol):
    runs: int

    def model_copy(self: C, *, deep: bool = ...) -> C: ...


C = TypeVar("C", bound=RunCounted)


def written_by_caller(continued: object | None) -> bool:
    """True when ``continued`` is set in a run that no earlier run continued into."""
    return continued is not None and workflow.info().continued_run_id is None


def restore(continued: T | None) -> T | None:
    """``continued`` when this run was continued from an earlier one, else None (what a caller wrote is ignored;
    `refuse` fails the run)."""
    return None if written_by_caller(continued) else continued


def resume(continued: C | None, blank: Callable[[], C]) -> C:
    """The state this run starts from: a copy of the carried one, its ``runs`` counting this run, or ``blank()``
    in a first run (and in a run a caller wrote ``continued`` into, which `refuse` fails)."""
    restored = restore(continued)
    if restored is None:
        return blank()
    state = restored.model_copy(deep=True)
    state.runs += 1
    return state


def refuse(field: str = "continued") -> NoReturn:
    raise ApplicationError(
        f"{field}: internal state that the workflow itself writes when it continues as new; a caller cannot "
        "set it (leave it out)", type=ErrorType.CALLER_SET_INTERNAL_STATE, non_retryable=True)
