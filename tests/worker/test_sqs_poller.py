"""The SQS long-poll loop keeps going through transient trouble, stops promptly, and ends once on trouble that
waiting cannot fix (real sockets and moto servers, no mocks)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
import structlog
from botocore.config import Config

from tests.support.eventually import assert_eventually
from tests.support.servers import free_port, running, start_moto
from tests.support.settings import make_settings
from worker.aws import make_client
from worker.jobevents import JobEventListener
from worker.listener import SqsListener
from worker.settings import IngestSettings, JobEventSettings
from worker.sqs_poller import ListenerFailed, SqsPoller


class _Recording(SqsPoller):
    kind = "test"

    def __init__(self, sqs: Any, queue_url: str) -> None:
        super().__init__(sqs, queue_url, wait_seconds=1, visibility_timeout=10)
        self.handled: list[str] = []

    async def handle(self, message: dict[str, Any]) -> None:
        if message["Body"] == "boom":
            raise RuntimeError("a handler bug")
        self.handled.append(message["Body"])
        await self._delete(message)


async def test_an_unreachable_queue_does_not_end_the_listener() -> None:
    # Nothing listens on this port: every receive fails with a connection error (a BotoCoreError).
    url = f"http://127.0.0.1:{free_port()}"
    sqs = boto3.client("sqs", endpoint_url=url, region_name="us-east-1",
                       config=Config(retries={"total_max_attempts": 1}, connect_timeout=1))
    poller = _Recording(sqs, f"{url}/000000000000/nowhere")
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop))
    await asyncio.sleep(1.0)  # a span of failing receives: the loop must still be running after it
    assert not task.done(), task.exception() if task.done() else None
    stop.set()
    await asyncio.wait_for(task, timeout=30)


class _WatchedLongPoll(SqsPoller):
    """Records when its receive (a real 20 s long poll) starts and when it returns."""

    kind = "test"

    def __init__(self, sqs: Any, queue_url: str) -> None:
        super().__init__(sqs, queue_url, wait_seconds=20, visibility_timeout=10)
        self.polling = threading.Event()
        self.returned = threading.Event()

    async def handle(self, message: dict[str, Any]) -> None:
        await self._delete(message)

    def _receive(self) -> list[dict[str, Any]]:
        self.polling.set()
        try:
            return super()._receive()
        finally:
            self.returned.set()


async def test_a_stop_abandons_the_long_poll_in_flight(moto_url: str) -> None:
    sqs = boto3.client("sqs", endpoint_url=moto_url, region_name="us-east-1", config=Config(read_timeout=60))
    # Empty: moto holds the receive for its whole 20 s wait, as SQS does.
    queue = sqs.create_queue(QueueName=f"poller-stop-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    poller = _WatchedLongPoll(sqs, queue)
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop))
    assert await asyncio.to_thread(poller.polling.wait, 60)
    stop.set()
    await asyncio.wait_for(task, timeout=60)  # bounds a hung stop; not the claim
    # The claim, as an ordering: `run` returned while its receive was still waiting on the empty queue. A `run`
    # that waited the poll out would return only after it, with ``returned`` set.
    assert not poller.returned.is_set()


async def test_a_failing_handler_leaves_its_message_and_the_others_are_handled(moto_url: str) -> None:
    sqs = boto3.client("sqs", endpoint_url=moto_url, region_name="us-east-1")
    queue = sqs.create_queue(QueueName="poller-test", Attributes={"VisibilityTimeout": "60"})["QueueUrl"]
    for body in ("a", "boom", "b"):
        sqs.send_message(QueueUrl=queue, MessageBody=body)
    poller = _Recording(sqs, queue)
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop))

    async def both_handled() -> None:
        assert len(poller.handled) == 2, poller.handled

    await assert_eventually(both_handled, timeout=30)
    stop.set()
    await asyncio.wait_for(task, timeout=30)
    assert sorted(poller.handled) == ["a", "b"] and poller.messages_deleted == 2
    attrs = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
    assert attrs["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "1"  # "boom" waits for re-delivery


# ---- a queue the listener can never read: one clear line, then the listener ends (the worker exits non-zero)

NO_CREDENTIALS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                      "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                      "AWS_WEB_IDENTITY_TOKEN_FILE")


def without_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials anywhere boto3 looks: environment, files, container and instance metadata."""
    for name in NO_CREDENTIALS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


async def _fails(listener: SqsPoller) -> tuple[ListenerFailed, list[dict[str, Any]]]:
    with structlog.testing.capture_logs() as logs, pytest.raises(ListenerFailed) as caught:
        await asyncio.wait_for(listener.run(asyncio.Event()), timeout=30)
    return caught.value, logs


def _job_events(sqs: Any, queue_url: str) -> JobEventListener:
    # No Temporal client: the listener ends at its first receive, before it could signal anything.
    return JobEventListener(None, sqs, JobEventSettings(queue_url=queue_url, wait_seconds=1))  # type: ignore[arg-type]


def _error_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["log_level"] in ("warning", "error")]


async def test_no_credentials_end_the_listener_with_one_line(moto_url: str, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    sqs = boto3.client("sqs", endpoint_url=moto_url, region_name="us-east-1")
    queue = sqs.create_queue(QueueName="no-credentials")["QueueUrl"]
    without_credentials(monkeypatch, tmp_path)
    listener = _job_events(make_client("sqs", make_settings(), moto_url), queue)  # the worker's own client factory
    error, logs = await _fails(listener)
    assert "HIMIG_JOB_EVENTS_QUEUE_URL" in str(error) and "no AWS credentials found" in str(error)
    assert "task role" in str(error)
    [line] = _error_lines(logs)  # one line, not one every two seconds
    assert line["event"] == str(error) and line["log_level"] == "error"


async def test_refused_credentials_end_the_listener_naming_the_variable(log_dir: Path) -> None:
    # moto with IAM checks on: an access key it never issued is refused with HTTP 403 (InvalidClientTokenId, in an
    # XML body botocore cannot parse for SQS's JSON protocol, so the code it reports is "403").
    with running(start_moto(log_dir, extra_env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"})) as strict:
        sqs = boto3.client("sqs", endpoint_url=strict.url, region_name="us-east-1",
                           aws_access_key_id="AKIAUNKNOWN000000000", aws_secret_access_key="canary-secret-value")
        queue = f"{strict.url}/123456789012/arrivals"
        listener = SqsListener(None, sqs, None, IngestSettings(  # type: ignore[arg-type]
            queue_url=queue, datastore_id="0" * 32, source_s3_uri="s3://landing/in/", work_s3_uri="s3://work/w/",
            wait_seconds=1), "q")
        error, logs = await _fails(listener)
    assert str(error).startswith(f"ingest listener cannot read HIMIG_INGEST_QUEUE_URL ({queue}): ")
    assert "refused (HTTP 403)" in str(error) and "task role" in str(error)
    assert "canary-secret-value" not in str(error) and "AKIAUNKNOWN" not in str(error)
    assert len(_error_lines(logs)) == 1


async def test_a_queue_that_does_not_exist_ends_the_listener(moto_url: str) -> None:
    sqs = boto3.client("sqs", endpoint_url=moto_url, region_name="us-east-1")
    error, logs = await _fails(_job_events(sqs, f"{moto_url}/123456789012/no-such-queue"))
    assert "HIMIG_JOB_EVENTS_QUEUE_URL" in str(error) and "no such queue" in str(error)
    assert len(_error_lines(logs)) == 1
