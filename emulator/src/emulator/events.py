"""EventBridge notifications in AWS HealthImaging's envelope (research/healthimaging.md §4.2).

The backend calls one hook at every state change::

    backend.events.emit(detail_type, detail, resources)

or one of the helpers that build the documented ``detail`` (``datastore_event``, ``job_event``,
``image_set_event``). ``emit`` never blocks and never raises: events are queued and a background sender delivers
them with ``PutEvents`` to an EventBridge bus (found the standard way, ``AWS_ENDPOINT_URL_EVENTBRIDGE``; e.g. the
local moto server, where a rule with an SQS target then receives them) and/or POSTs the full envelope to a
webhook. Failed deliveries are retried a few times with backoff and counted; the API call that caused the event
has long returned by then. The last events are also kept in memory for ``GET /_emulator/events``.

Delivery faults (``event_duplicate``, ``event_reorder``) come from :mod:`emulator.faults`.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import os
import threading
import time
import urllib.request
import uuid
from typing import Any

from emulator.faults import FaultInjector

log = logging.getLogger("emulator.events")

SOURCE = "aws.medical-imaging"
IMAGING_VERSION = "1.0"
PUT_EVENTS_BATCH = 10  # PutEvents accepts at most 10 entries


class EventSink:
    """The hook the backend calls. This base class builds the detail documents and drops the events."""

    region = "us-east-1"
    account_id = "123456789012"
    image_set_id_key = "imageSetId"

    def emit(self, detail_type: str, detail: dict[str, Any], resources: list[str] | None = None) -> None:
        """Publish one event (``source`` aws.medical-imaging). Never blocks, never raises."""

    # ---- helpers building the documented detail shapes

    def _arn(self, datastore_id: str, image_set_id: str | None = None) -> str:
        arn = f"arn:aws:medical-imaging:{self.region}:{self.account_id}:datastore/{datastore_id}"
        return f"{arn}/imageset/{image_set_id}" if image_set_id else arn

    def datastore_event(self, detail_type: str, datastore_id: str, datastore_name: str, status: str) -> None:
        """"Data Store Creating|Creation Failed|Created|Deleting|Deleted"."""
        self.emit(detail_type, {"imagingVersion": IMAGING_VERSION, "datastoreId": datastore_id,
                                "datastoreName": datastore_name, "datastoreStatus": status},
                  [self._arn(datastore_id)])

    def job_event(self, detail_type: str, job: Any) -> None:
        """"Import Job Submitted|In Progress|Completed|Failed" for an ``ImportJob`` (or anything with its fields).

        ``outputS3Uri`` is the resolved per-job folder, the same value GetDICOMImportJob returns.
        """
        self.emit(detail_type, {
            "imagingVersion": IMAGING_VERSION, "datastoreId": job.datastore_id, "jobId": job.id,
            "jobName": job.name, "jobStatus": job.status, "inputS3Uri": job.input_uri,
            "outputS3Uri": job.resolved_output_uri,
        }, [self._arn(job.datastore_id)])

    def image_set_event(self, detail_type: str, *, datastore_id: str, image_set_id: str, version: int | str,
                        is_primary: bool, state: str, workflow_status: str,
                        extra: dict[str, Any] | None = None) -> None:
        """"Image Set Created|Updating|Updated|Copying|Copied|Deleting|Deleted|...".

        ``extra`` adds fields some detail types carry, e.g. ``{"sourceImageSetArn": ...}`` for "Image Set Copying".
        """
        detail: dict[str, Any] = {"imagingVersion": IMAGING_VERSION, "isPrimary": bool(is_primary),
                                  "imageSetVersion": str(version), "datastoreId": datastore_id}
        keys = ("imageSetId", "imagesetId") if self.image_set_id_key == "both" else (self.image_set_id_key,)
        for key in keys:
            detail[key] = image_set_id
        detail.update(imageSetState=state, imageSetWorkflowStatus=workflow_status, **(extra or {}))
        self.emit(detail_type, detail, [self._arn(datastore_id, image_set_id)])


class EventPublisher(EventSink):
    """Queues envelopes and delivers them from one background thread (so their order is the emit order)."""

    def __init__(self, *, region: str, account_id: str, faults: FaultInjector | None = None,
                 eventbridge: bool = False, bus_name: str = "default", webhook_url: str | None = None,
                 max_attempts: int = 4, image_set_id_key: str = "imageSetId", keep: int = 1000) -> None:
        self.region = region
        self.account_id = account_id
        self.image_set_id_key = image_set_id_key
        self.faults = faults or FaultInjector()
        self.eventbridge = eventbridge
        self.bus_name = bus_name
        self.webhook_url = webhook_url
        self.max_attempts = max(1, max_attempts)
        self._cond = threading.Condition()
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._held: list[tuple[float, dict[str, Any]]] = []  # (deadline, envelope) for event_reorder
        self._log: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self._busy = False
        self._stop = threading.Event()
        self._client: Any = None
        self._thread = threading.Thread(target=self._loop, name="event-sender", daemon=True)
        self.counters: dict[str, int] = dict.fromkeys(
            ("emitted", "delivered", "failed", "retries", "duplicated", "reordered",
             "webhookDelivered", "webhookFailed"), 0)

    # ---- lifecycle

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Deliver what is queued (bounded by ``timeout``), then stop the sender."""
        self.flush(timeout)
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=timeout)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued (and held) has been handed to the sinks; True if it was."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._held or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(min(remaining, 0.05))
        return True

    def clear(self) -> None:
        with self._cond:
            self._log.clear()
            for k in self.counters:
                self.counters[k] = 0

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            return {"eventBridge": self.eventbridge, "busName": self.bus_name, "webhookUrl": self.webhook_url,
                    "counters": dict(self.counters), "pending": len(self._queue) + len(self._held),
                    "events": list(self._log)}

    # ---- the hook

    def emit(self, detail_type: str, detail: dict[str, Any], resources: list[str] | None = None) -> None:
        try:
            envelope = {
                "version": "0", "id": str(uuid.uuid4()), "detail-type": detail_type, "source": SOURCE,
                "account": self.account_id,
                "time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "region": self.region, "resources": list(resources or []), "detail": detail,
            }
            ctx = {"detailType": detail_type}
            duplicate = self.faults.fire("event_duplicate", ctx)
            reorder = self.faults.fire("event_reorder", ctx)
            copies = 1 + (int(duplicate.options.get("copies", 1)) if duplicate else 0)
            with self._cond:
                self.counters["emitted"] += 1
                self.counters["duplicated"] += copies - 1
                if reorder is not None:
                    # Held back until the next event has been queued (or the hold expires), then sent after it.
                    hold = float(reorder.options.get("holdSeconds", 2.0))
                    self.counters["reordered"] += 1
                    self._held.extend((time.monotonic() + hold, envelope) for _ in range(copies))
                else:
                    # Duplicates of an at-least-once delivery carry the same event id.
                    self._queue.extend(envelope for _ in range(copies))
                    released = [env for _, env in self._held]
                    self._held.clear()
                    self._queue.extend(released)
                self._cond.notify_all()
        except Exception:  # an event must never fail the API call that caused it
            log.exception("could not queue a %s event", detail_type)

    # ---- sender thread

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                now = time.monotonic()
                due = [env for deadline, env in self._held if deadline <= now]
                if due:
                    self._held = [(d, e) for d, e in self._held if d > now]
                    self._queue.extend(due)
                if not self._queue:
                    self._cond.wait(0.05 if self._held else 0.5)
                    continue
                batch = [self._queue.popleft() for _ in range(min(PUT_EVENTS_BATCH, len(self._queue)))]
                self._busy = True
            try:
                self._deliver(batch)
            except Exception:
                log.exception("event delivery failed")
            finally:
                with self._cond:
                    self._busy = False
                    self._log.extend(batch)
                    self._cond.notify_all()

    def _deliver(self, batch: list[dict[str, Any]]) -> None:
        if self.eventbridge:
            self._put_events(batch)
        if self.webhook_url:
            for envelope in batch:
                self._post_webhook(envelope)

    def _events_client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            # Our own retry loop below; short timeouts so a dead endpoint cannot stall the sender for long.
            self._client = boto3.client("events", region_name=self.region, config=Config(
                retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5))
        return self._client

    def _put_events(self, batch: list[dict[str, Any]]) -> None:
        entries = [{
            "Source": env["source"], "DetailType": env["detail-type"], "Detail": json.dumps(env["detail"]),
            "Resources": env["resources"], "EventBusName": self.bus_name,
            "Time": dt.datetime.strptime(env["time"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC),
        } for env in batch]
        pending = entries
        for attempt in range(1, self.max_attempts + 1):
            try:
                result = self._events_client().put_events(Entries=pending)
                failed = [entry for entry, r in zip(pending, result.get("Entries", []), strict=False)
                          if r.get("ErrorCode")]
                self._count("delivered", len(pending) - len(failed))
                pending = failed
            except Exception as exc:
                log.warning("PutEvents attempt %d failed: %s", attempt, type(exc).__name__)
            if not pending:
                return
            if attempt < self.max_attempts and not self._stop.is_set():
                self._count("retries", len(pending))
                time.sleep(min(2.0, 0.1 * 2 ** (attempt - 1)))
        self._count("failed", len(pending))
        log.warning("dropped %d event(s) after %d PutEvents attempts", len(pending), self.max_attempts)

    def _post_webhook(self, envelope: dict[str, Any]) -> None:
        assert self.webhook_url
        body = json.dumps(envelope).encode()
        for attempt in range(1, self.max_attempts + 1):
            try:
                req = urllib.request.Request(self.webhook_url, data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=5) as resp:
                    resp.read()
                self._count("webhookDelivered", 1)
                return
            except Exception as exc:
                log.warning("webhook attempt %d failed: %s", attempt, type(exc).__name__)
            if attempt < self.max_attempts and not self._stop.is_set():
                self._count("retries", 1)
                time.sleep(min(2.0, 0.1 * 2 ** (attempt - 1)))
        self._count("webhookFailed", 1)

    def _count(self, name: str, n: int) -> None:
        with self._cond:
            self.counters[name] += n


def eventbridge_configured() -> bool:
    """Is an EventBridge endpoint set the standard way (so ``--events auto`` delivers)?"""
    return bool(os.environ.get("AWS_ENDPOINT_URL_EVENTBRIDGE") or os.environ.get("AWS_ENDPOINT_URL"))
