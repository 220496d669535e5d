"""The long-poll loop shared by the worker's SQS listeners (S3 arrivals, import-job events).

Delivery rules common to both: a message is deleted only once its handler has dealt with it (a handler that
returns without deleting leaves it for SQS to re-deliver after the visibility timeout), a stop abandons an
in-flight long poll at once, and a failing receive is retried after a short pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from botocore.exceptions import BotoCoreError, ClientError

log = structlog.get_logger("himig.sqs")

T = TypeVar("T")


def in_daemon_thread(fn: Callable[[], T]) -> asyncio.Future[T]:
    """Run a blocking call (an SQS long poll) in a daemon thread.

    Unlike ``asyncio.to_thread``, an abandoned call does not hold up the process's exit: the default executor's
    threads are joined at shutdown, which would add up to one long-poll wait to every worker stop.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return  # abandoned by a stop
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = fn(), None
        except BaseException as exc:  # handed to the awaiting coroutine
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits for this any more
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="sqs-long-poll", daemon=True).start()
    return future


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


class SqsPoller:
    """Long-polls one queue and hands each message to ``handle``; subclasses decide what a message means."""

    #: Named in log lines ("ingest", "job-events").
    kind = "sqs"

    def __init__(self, sqs: Any, queue_url: str, wait_seconds: int, visibility_timeout: int) -> None:
        self._sqs = sqs
        self._queue_url = queue_url
        self._wait_seconds = wait_seconds
        self._visibility_timeout = visibility_timeout
        self.messages_deleted = 0

    async def handle(self, message: dict[str, Any]) -> None:
        raise NotImplementedError

    def counters(self) -> dict[str, int]:
        """What the stop log line reports."""
        return {"messages_deleted": self.messages_deleted}

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set. Returns promptly: an in-flight long poll is abandoned (its messages, if any,
        become visible again after the visibility timeout)."""
        log.info(f"{self.kind} listener started")
        stopper: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                poll: asyncio.Future[Any] = in_daemon_thread(self._receive)
                await asyncio.wait({poll, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if not poll.done():
                    poll.cancel()  # the thread's late answer is dropped; SQS re-delivers its messages
                    break
                try:
                    messages = poll.result()
                except (ClientError, BotoCoreError) as err:  # throttled, endpoint down, read timeout: transient
                    log.warning("sqs receive failed; retrying", listener=self.kind, error=_code(err))
                    await sleep_or_stop(stop, 2.0)
                    continue
                results = await asyncio.gather(*(self.handle(m) for m in messages), return_exceptions=True)
                for result in results:
                    if isinstance(result, Exception):
                        # Not deleted, so SQS re-delivers the message; one bad message never stops the listener.
                        log.warning("message handling failed; left for re-delivery", listener=self.kind,
                                    error=type(result).__name__)
        finally:
            stopper.cancel()
            log.info(f"{self.kind} listener stopped", **self.counters())

    def _receive(self) -> list[dict[str, Any]]:
        resp = self._sqs.receive_message(QueueUrl=self._queue_url, MaxNumberOfMessages=10,
                                         WaitTimeSeconds=self._wait_seconds,
                                         VisibilityTimeout=self._visibility_timeout)
        return list(resp.get("Messages", []))

    async def _delete(self, message: dict[str, Any]) -> None:
        try:
            await asyncio.to_thread(self._sqs.delete_message, QueueUrl=self._queue_url,
                                    ReceiptHandle=message["ReceiptHandle"])
            self.messages_deleted += 1
        except (ClientError, BotoCoreError) as err:  # re-delivery is harmless
            log.warning("could not delete a message", listener=self.kind, error=_code(err))


def _code(err: Exception) -> str:
    """The AWS error code, or the exception type for connection-level errors (never a message: no keys)."""
    if isinstance(err, ClientError):
        return str(err.response.get("Error", {}).get("Code", "ClientError"))
    return type(err).__name__
