"""Run a worker SQS listener (`worker.sqs_poller.SqsPoller`) in the test's event loop for the length of a block."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

from worker.sqs_poller import SqsPoller

L = TypeVar("L", bound=SqsPoller)


@asynccontextmanager
async def running(listener: L, stop_timeout: float = 10.0) -> AsyncIterator[L]:
    """``listener.run`` as a task; stopped (and awaited, so its errors surface) when the block ends."""
    stop = asyncio.Event()
    task = asyncio.create_task(listener.run(stop))
    try:
        yield listener
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=stop_timeout)
