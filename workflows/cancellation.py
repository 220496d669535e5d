"""The standard Temporal cancel (Temporal UI, `temporal workflow cancel`, an SDK handle's `cancel()`), handled the way
the operator's own `cancel` signal is: the work drains and accounts for everything, then the run ends.

A cancel request cancels the task that awaits; the workflow's body runs shielded in a task of its own, so the
request reaches only `shielded`, which hands it to the workflow (``on_cancel``) and waits for the body to finish its
drain. A wait that was pending inside the body when the request came is cancelled too: `wait_condition` re-raises
nothing once the run drains. Same awaits in the same order as a hand-written shield, so histories replay unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow

T = TypeVar("T")


async def shielded(body: Coroutine[Any, Any, T], on_cancel: Callable[[], None], end_cancelled: bool = True) -> T:
    """``body``'s result; on a standard cancel, ``on_cancel()`` then ``body`` to its end, and then (``end_cancelled``)
    the run ends cancelled, as the one who cancelled it asked, or completes with the result."""
    task = asyncio.ensure_future(body)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if workflow.cancellation_reason() is None:
            raise  # not a cancel request: nothing of ours cancels this task
        on_cancel()
    result = await task
    if end_cancelled:
        raise asyncio.CancelledError()
    return result


async def wait_condition(condition: Callable[[], bool], draining: Callable[[], bool],
                         timeout: timedelta | None = None) -> None:
    """``workflow.wait_condition``, except that a standard cancel that came while it waited is no reason to stop
    once the run drains on it (``draining()``): the body goes on, and re-checks its own state."""
    try:
        await workflow.wait_condition(condition, timeout=timeout)
    except asyncio.CancelledError:
        if not draining():
            raise
