"""Event-driven ingestion: an SQS listener that turns S3 ObjectCreated events into `IngestWorkflow` signals.

S3 (bucket notification, or EventBridge "Object Created" routed to the queue) → SQS → `SqsListener` → one ranged
GET of the object's first 64 KiB to find its StudyInstanceUID → signal-with-start of the study's
`IngestWorkflow` (``ingest-<datastore>-<sha256(study uid)[:16]>``).

Delivery rules:
- A message is deleted only after every arrival in it was signalled; a crash or a Temporal outage leaves it in
  the queue and SQS re-delivers it after the visibility timeout. Duplicates are harmless (the workflow dedupes).
- An object the C-STORE receiver wrote (S3 metadata ``himig-delivered-by: dimse-receiver``) was signalled by the
  receiver before it acknowledged the C-STORE; the listener counts it and leaves it (no double delivery).
- A body that cannot be parsed at all, or records that carry no usable object, are logged (message id and a
  reason, never a key: keys may contain PHI) and deleted. Re-delivery could never fix them, and leaving them to
  a redrive policy would only delay the valid records that share their message. A queue that wants to keep
  them can add a DLQ; nothing here depends on it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

import structlog
from botocore.exceptions import ClientError
from pydantic import ValidationError
from temporalio.client import Client

from activities.dicom_header import parse_header
from activities.storage import object_size
from contracts.ingest import Arrival, in_prefix
from contracts.receiver import DELIVERED_BY_RECEIVER, DELIVERY_METADATA
from contracts.s3uri import parse_s3_uri
from worker.ingest_signal import signal_arrival
from worker.settings import IngestSettings
from worker.sqs_poller import SqsPoller

log = structlog.get_logger("himig.listener")

HEADER_RANGE = 64 * 1024


class MalformedMessage(ValueError):
    """The message body is not an S3 event notification at all (the reason contains no key)."""


@dataclass
class ObjectEvent:
    bucket: str
    arrival: Arrival


@dataclass
class ParsedBody:
    events: list[ObjectEvent]
    skipped: int  # records ignored on purpose (other event names, test events)
    malformed: int  # records without a usable bucket/key/size


def _event_time(value: Any) -> datetime:
    if isinstance(value, int | float):  # moto's EventBridge events carry a unix time
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str) and value:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    raise ValueError("missing event time")


def _object_event(bucket: Any, obj: Any, when: Any, *, encoded: bool) -> ObjectEvent:
    if not isinstance(bucket, str) or not isinstance(obj, dict) or not isinstance(obj.get("key"), str):
        raise ValueError("record without bucket or key")
    # Notification records URL-encode keys (`incoming%2Fa+b.dcm`); EventBridge events carry them as is.
    key = unquote_plus(obj["key"]) if encoded else obj["key"]
    etag = str(obj.get("eTag") or obj.get("etag") or "").strip('"')
    arrival = Arrival(key=key, size=int(obj.get("size") or 0), etag=etag, event_time=_event_time(when),
                      sequencer=obj.get("sequencer") or None)
    return ObjectEvent(bucket=bucket, arrival=arrival)


def parse_event_body(body: str) -> ParsedBody:
    """Object-created events in one SQS message body (S3 notification or EventBridge event).

    Raises:
        MalformedMessage: the body is not JSON or has neither ``Records`` nor an EventBridge ``detail``.
    """
    try:
        doc = json.loads(body)
    except ValueError:
        raise MalformedMessage("body is not JSON") from None
    if not isinstance(doc, dict):
        raise MalformedMessage("body is not a JSON object")
    if doc.get("Event") == "s3:TestEvent":  # sent once when a notification configuration is saved
        return ParsedBody([], 1, 0)
    if "detail-type" in doc:
        if doc.get("source") != "aws.s3" or doc.get("detail-type") != "Object Created":
            return ParsedBody([], 1, 0)
        detail: dict[str, Any] = doc["detail"] if isinstance(doc.get("detail"), dict) else {}
        try:
            bucket = (detail.get("bucket") or {}).get("name")
            return ParsedBody([_object_event(bucket, detail.get("object"), doc.get("time"), encoded=False)], 0, 0)
        except (ValueError, TypeError, AttributeError, ValidationError):
            return ParsedBody([], 0, 1)
    records = doc.get("Records")
    if not isinstance(records, list):
        raise MalformedMessage("JSON without Records or an EventBridge detail")
    parsed = ParsedBody([], 0, 0)
    for record in records:
        if not isinstance(record, dict) or not str(record.get("eventName", "")).startswith("ObjectCreated:"):
            parsed.skipped += 1
            continue
        try:
            s3 = record.get("s3") or {}
            parsed.events.append(_object_event((s3.get("bucket") or {}).get("name"), s3.get("object"),
                                               record.get("eventTime"), encoded=True))
        except (ValueError, TypeError, AttributeError, ValidationError):
            parsed.malformed += 1
    return parsed


def configure_bucket_notifications(s3: Any, sqs: Any, bucket: str, prefix: str, queue_name: str) -> str:
    """Create ``queue_name`` and send ``bucket``'s ObjectCreated events under ``prefix`` to it; return its URL.

    Used by the tests and the demo on moto; on AWS the same policy and configuration are deployed by IaC.
    """
    queue_url: str = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "s3.amazonaws.com"}, "Action": "sqs:SendMessage",
        "Resource": arn, "Condition": {"ArnLike": {"aws:SourceArn": f"arn:aws:s3:*:*:{bucket}"}}}]}
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(policy)})
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [{
        "QueueArn": arn, "Events": ["s3:ObjectCreated:*"],
        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}}}]})
    return queue_url


class SqsListener(SqsPoller):
    """Signal-with-starts `IngestWorkflow` for every new object under the watched prefix."""

    kind = "ingest"
    queue_setting = "HIMIG_INGEST_QUEUE_URL"

    def __init__(self, client: Client, sqs: Any, s3: Any, settings: IngestSettings, task_queue: str) -> None:
        if not settings.queue_url:
            raise ValueError("queue_url: the listener needs HIMIG_INGEST_QUEUE_URL")
        super().__init__(sqs, settings.queue_url, settings.wait_seconds, settings.visibility_timeout)
        self._client, self._s3, self._settings = client, s3, settings
        self._task_queue = task_queue
        self._input = settings.ingest_input()  # fail at start on bad settings, not on the first message
        self._bucket = parse_s3_uri(self._input.source_s3_uri).bucket
        self.signalled = 0
        self.left_to_receiver = 0  # objects the C-STORE receiver wrote and delivered itself

    def counters(self) -> dict[str, int]:
        return {"signalled": self.signalled, "left_to_receiver": self.left_to_receiver,
                "messages_deleted": self.messages_deleted}

    async def handle(self, message: dict[str, Any]) -> None:
        msg_id = message.get("MessageId", "?")
        try:
            parsed = parse_event_body(message.get("Body", ""))
        except MalformedMessage as err:
            log.warning("deleting a malformed ingest message", message_id=msg_id, reason=str(err))
            await self._delete(message)
            return
        if parsed.malformed:
            log.warning("ignoring records without a usable object", message_id=msg_id, records=parsed.malformed)
        try:
            for event in self._wanted(parsed.events):
                await self._signal(event.arrival)
        except Exception as err:  # Temporal or S3 unavailable: keep the message, SQS re-delivers it
            log.warning("ingest message kept for re-delivery", message_id=msg_id, error=type(err).__name__)
            return
        await self._delete(message)

    def _wanted(self, events: Iterable[ObjectEvent]) -> Iterable[ObjectEvent]:
        for event in events:
            if in_prefix(self._input.source_s3_uri, event.bucket, event.arrival.key):
                yield event
            else:
                log.info("ignoring an object outside the watched prefix")

    async def _signal(self, arrival: Arrival) -> None:
        study, by_receiver = await asyncio.to_thread(self._study_uid, arrival.key)
        if by_receiver:
            # The C-STORE receiver acknowledged this object only after signalling it itself.
            self.left_to_receiver += 1
            return
        await signal_arrival(self._client, self._input, self._task_queue, self._bucket, study, arrival)
        self.signalled += 1

    def _study_uid(self, key: str) -> tuple[str | None, bool]:
        """StudyInstanceUID from ONE ranged GET, or None (not DICOM, header over 64 KiB, object gone), and whether
        the C-STORE receiver wrote (and so already delivered) the object."""
        try:
            resp = self._s3.get_object(Bucket=self._bucket, Key=key, Range=f"bytes=0-{HEADER_RANGE - 1}")
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "InvalidRange"):
                return None, False  # still signalled: the migration records the file's verdict (missing / empty)
            raise
        if (resp.get("Metadata") or {}).get(DELIVERY_METADATA) == DELIVERED_BY_RECEIVER:
            return None, True
        buf = resp["Body"].read()
        uid = parse_header(buf, object_size(resp, len(buf)), key).values.get("study_instance_uid")
        return (str(uid) if uid else None), False
