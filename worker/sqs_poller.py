"""The long-poll loop shared by the worker's SQS listeners (S3 arrivals, import-job events).

Delivery rules common to both: a message is deleted only once its handler has dealt with it (a handler that
returns without deleting leaves it for SQS to re-deliver after the visibility timeout), a stop abandons an
in-flight long poll at once, and a failing receive is retried after a short pause when the failure can pass
(throttling, a 5xx, an endpoint briefly unreachable).

A failure that cannot pass by waiting (no credentials, credentials refused, a queue that does not exist) ends the
listener with `ListenerFailed` after one log line naming the queue's variable and what to check: the worker then
stops and exits non-zero, so ECS shows a failed task (and its deployment circuit breaker counts it) instead of a
task that looks healthy while it logs the same error every two seconds forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

from activities.errors import error_code

log = structlog.get_logger("himig.sqs")

T = TypeVar("T")

# Receive errors that waiting cannot fix, by AWS error code -> what the operator should check.
_CREDENTIALS_REFUSED = "the AWS credentials were refused; check the task role (or AWS_ACCESS_KEY_ID / AWS_PROFILE)"
_NOT_ALLOWED = ("the credentials may not receive from this queue; check that the task role allows sqs:ReceiveMessage "
                "and sqs:DeleteMessage on it (and kms:Decrypt on the queue's KMS key, if any)")
_NO_QUEUE = "no such queue; check the queue URL and that its region and account are the worker's"
FATAL_CODES = {
    "InvalidClientTokenId": _CREDENTIALS_REFUSED, "UnrecognizedClientException": _CREDENTIALS_REFUSED,
    "SignatureDoesNotMatch": _CREDENTIALS_REFUSED, "InvalidSecurity": _CREDENTIALS_REFUSED,
    "AccessDenied": _NOT_ALLOWED, "AccessDeniedException": _NOT_ALLOWED, "KMS.AccessDeniedException": _NOT_ALLOWED,
    "AWS.SimpleQueueService.NonExistentQueue": _NO_QUEUE, "QueueDoesNotExist": _NO_QUEUE,
}


class ListenerFailed(RuntimeError):
    """A listener met a receive error that waiting cannot fix; the message names the variable and what to check."""


def fatal_reason(err: Exception) -> str | None:
    """What to check when ``err`` (from a receive) cannot pass by retrying; None when it may (throttling, 5xx,
    connection trouble). Never the exception's own text: it could carry a key id."""
    if isinstance(err, NoCredentialsError | PartialCredentialsError):
        return ("no AWS credentials found; check the task role (ECS) or AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY / AWS_PROFILE")
    if isinstance(err, ClientError):
        if (reason := FATAL_CODES.get(error_code(err))) is not None:
            return reason
        if err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (401, 403):
            # Whatever the body says (some endpoints answer a refusal without a parsable code), SQS refuses with
            # 401/403 only for credentials or permissions; throttling is 400/503 with codes of its own.
            return ("the request was refused (HTTP 403): the credentials are invalid, expired or not allowed to "
                    "receive from this queue; check the task role (sqs:ReceiveMessage, sqs:DeleteMessage) or "
                    "AWS_ACCESS_KEY_ID / AWS_PROFILE")
    return None


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
    #: The variable holding the queue URL, named when the queue cannot be read at all.
    queue_setting = "the queue URL"

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
                except (ClientError, BotoCoreError) as err:
                    if (reason := fatal_reason(err)) is not None:
                        message = (f"{self.kind} listener cannot read {self.queue_setting} ({self._queue_url}): "
                                   f"{reason} [{error_code(err)}]")
                        log.error(message, listener=self.kind, error=error_code(err))
                        raise ListenerFailed(message) from None
                    # throttled, a 5xx, endpoint down, read timeout: transient
                    log.warning("sqs receive failed; retrying", listener=self.kind, error=error_code(err))
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
            log.warning("could not delete a message", listener=self.kind, error=error_code(err))


