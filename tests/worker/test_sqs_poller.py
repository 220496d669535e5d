"""The SQS long-poll loop keeps going through transient trouble and stops promptly (real sockets, no mocks)."""

from __future__ import annotations

import asyncio
from typing import Any

import boto3
from botocore.config import Config

from tests.support.eventually import assert_eventually
from tests.support.servers import free_port
from worker.sqs_poller import SqsPoller


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
    await asyncio.wait_for(task, timeout=5)


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

    await assert_eventually(both_handled, timeout=5)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert sorted(poller.handled) == ["a", "b"] and poller.messages_deleted == 2
    attrs = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
    assert attrs["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "1"  # "boom" waits for re-delivery
