"""The DICOM C-STORE receiver: modalities and PACS push instances to an AE title; each one goes to S3 under the
ingest prefix and into its study's `IngestWorkflow` — the DICOM-side twin of the S3 → SQS listener.

For every C-STORE, in the association's own thread (pynetdicom runs one per association):

1. `worker.store_checks.check_received` parses the header of the dataset as received; a dataset that is not
   readable DICOM, cut short, not the SOP instance the request announced, or without a Study or Series UID is
   refused with a failure status (0xC210, 0xA900, 0xC212) and a rejection record.
2. PutObject of the P10 bytes as received (file meta + dataset; never decoded or re-encoded) at a key derived from
   hashes of the Study and SOP Instance UIDs (`contracts.receiver.received_key`): a re-sent instance overwrites its
   own object.
3. Signal-with-start of the study's `IngestWorkflow` (`worker.ingest_signal`), from the receiver itself: a
   deployment needs no bucket notification, and the object is tagged so the S3 listener, where one also watches
   the prefix, leaves it alone.
4. Only then status 0x0000. When S3 or Temporal fails, the sender gets 0xA700 (out of resources) and re-sends; an
   object stored before a failed hand-over is overwritten by the re-send (same key) and delivered then.

So an acknowledged instance is durable twice (in S3 and in the workflow's history), and a refused one is recorded
under ``<work>/receiver/rejected/`` (`contracts.receiver.Rejection`), never silently dropped. Associations from a
calling AE title not on the allow-list, to another called AE title, or beyond ``max_associations`` are rejected
by pynetdicom's ACSE with the standard reasons (calling / called AE title not recognised, local limit exceeded)
and logged. Nothing here logs a UID or a patient value.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import structlog
from botocore.exceptions import BotoCoreError, ClientError
from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import time
from pynetdicom.transport import ThreadedAssociationServer
from temporalio.client import Client
from temporalio.common import MetricMeter

from activities.errors import error_code
from activities.sources.quick_ack import quick_ack
from contracts import metrics
from contracts.ingest import Arrival, IngestInput
from contracts.receiver import (
    DELIVERED_BY_RECEIVER,
    DELIVERY_METADATA,
    Rejection,
    RejectionCode,
    StoreStatus,
    received_key,
    rejection_key,
    uid_hash,
)
from contracts.s3uri import parse_s3_uri
from worker.ingest_signal import signal_arrival
from worker.settings import ReceiverSettings
from worker.store_checks import Refusal, check_received

log = structlog.get_logger("himig.receiver")

# pynetdicom logs identifiers of requests and responses by default; a sender's datasets are not ours to log.
pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False

# How long one C-STORE may wait for Temporal to record its arrival signal before the sender is told to re-send:
# below the DIMSE timeout senders commonly use (30 s), so they get an answer rather than abort.
HANDOVER_TIMEOUT_SECONDS = 20.0
# A stop lets associations in progress finish this long before they are aborted (their unacknowledged
# instances are re-sent by their senders).
DRAIN_SECONDS = 10.0


class ReceiverStartError(RuntimeError):
    """The receiver cannot listen (the port is taken, the address is not this machine's); names the variable."""


class StoreReceiver:
    """A Storage SCP for every storage SOP class and transfer syntax pydicom knows, plus Verification (C-ECHO)."""

    def __init__(self, settings: ReceiverSettings, ingest: IngestInput, s3: Any, client: Client,
                 task_queue: str, meter: MetricMeter | None = None) -> None:
        if settings.port is None:
            raise ValueError("port: the receiver needs HIMIG_RECEIVER_PORT (or `himig receive --port`)")
        self._settings, self._ingest, self._s3, self._client = settings, ingest, s3, client
        self._task_queue = task_queue
        self._prefix = parse_s3_uri(ingest.source_s3_uri, field="source_s3_uri").as_prefix()
        self._allowed = settings.calling_ae_list()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: ThreadedAssociationServer | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.stored = 0
        self.refused: Counter[str] = Counter()  # C-STOREs refused, by RejectionCode
        self.associations_rejected: Counter[str] = Counter()  # by reason
        meter = meter or MetricMeter.noop
        self._instances = meter.create_counter(metrics.RECEIVED_INSTANCES.name,
                                               metrics.RECEIVED_INSTANCES.description,
                                               metrics.RECEIVED_INSTANCES.unit)
        self._rejected = meter.create_counter(metrics.RECEIVER_ASSOCIATIONS_REJECTED.name,
                                              metrics.RECEIVER_ASSOCIATIONS_REJECTED.description,
                                              metrics.RECEIVER_ASSOCIATIONS_REJECTED.unit)

    # ---- lifecycle ---------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (the configured one, once listening)."""
        if self._server is None:
            return int(self._settings.port or 0)
        return int(self._server.server_address[1])

    def _ae(self) -> AE:
        s = self._settings
        ae = AE(ae_title=s.ae_title)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax:
                ae.add_supported_context(context.abstract_syntax, AllTransferSyntaxes)
        ae.add_supported_context(Verification)
        ae.require_called_aet = True
        ae.require_calling_aet = self._allowed
        ae.maximum_associations = s.max_associations
        ae.maximum_pdu_size = s.max_pdu_bytes
        ae.network_timeout = s.idle_timeout_seconds
        ae.acse_timeout = ae.dimse_timeout = s.timeout_seconds
        return ae

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind and serve in background threads; C-STOREs hand their arrivals over through ``loop``."""
        self._loop = loop
        handlers: list[Any] = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_REJECTED, self._on_rejected),
                               (evt.EVT_CONN_OPEN, self._on_open), (evt.EVT_ABORTED, self._on_aborted)]
        s = self._settings
        try:
            self._server = self._ae().start_server((s.host, int(s.port or 0)), block=False, evt_handlers=handlers)
        except OSError as err:
            raise ReceiverStartError(f"HIMIG_RECEIVER_PORT / HIMIG_RECEIVER_HOST: cannot listen on {s.host}:{s.port} "
                                     f"({err.strerror or type(err).__name__}); choose a free port or an address of "
                                     "this machine") from None
        log.info("receiver listening", host=s.host, port=self.port, ae_title=s.ae_title,
                 calling_aes=self._allowed or "any", max_associations=s.max_associations)

    def stop(self, drain_seconds: float = DRAIN_SECONDS) -> None:
        """Stop accepting, let associations in progress finish (bounded), then abort what is left."""
        self._stopping.set()
        server = self._server
        if server is None:
            return
        server.shutdown()
        deadline = time.monotonic() + drain_seconds
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in server.active_associations:
            with contextlib.suppress(Exception):
                assoc.abort()
        log.info("receiver stopped", **self.counters())

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set (the worker's and `himig receive`'s entry point)."""
        self.start(asyncio.get_running_loop())
        try:
            await stop.wait()
        finally:
            await asyncio.to_thread(self.stop)

    def counters(self) -> dict[str, Any]:
        with self._lock:
            return {"stored": self.stored, "refused": dict(self.refused),
                    "associations_rejected": dict(self.associations_rejected)}

    # ---- association events ------------------------------------------------------------------------------

    def _on_open(self, event: Any) -> None:
        sock = event.assoc.dul.socket
        # Senders that write a PDU in pieces with Nagle on (Orthanc) would otherwise wait for our delayed ACK.
        quick_ack(sock)
        # pynetdicom reads the rest of a PDU whose header arrived with a blocking recv: a peer that stops mid-PDU
        # would hold its association (and a slot of max_associations) forever. With a timeout the read fails and
        # pynetdicom closes the connection.
        if sock is not None and sock.socket is not None:
            sock.socket.settimeout(self._settings.timeout_seconds)

    def _on_rejected(self, event: Any) -> None:
        requestor, acceptor = event.assoc.requestor, event.assoc.acceptor
        calling = str(requestor.ae_title).strip()
        if self._allowed and calling not in self._allowed:
            reason, label = "calling AE title not allowed", "calling_ae"
        elif str(getattr(requestor.primitive, "called_ae_title", "")).strip() != str(acceptor.ae_title).strip():
            reason, label = "called AE title not recognised", "called_ae"
        else:
            reason, label = "association limit reached", "limit"
        with self._lock:
            self.associations_rejected[reason] += 1
        self._rejected.add(1, {"reason": label})
        # AE titles and the peer address are configuration, not patient data.
        log.warning("association rejected", reason=reason, calling_ae=calling, peer=requestor.address)

    def _on_aborted(self, event: Any) -> None:
        # A C-STORE cut off by an abort was never acknowledged: its sender knows it failed and re-sends.
        log.info("association aborted", calling_ae=str(event.assoc.requestor.ae_title).strip(),
                 peer=event.assoc.requestor.address)

    # ---- C-STORE -----------------------------------------------------------------------------------------

    def _on_store(self, event: Any) -> int:
        req = event.request
        sop_class = str(req.AffectedSOPClassUID or "")
        sop = str(req.AffectedSOPInstanceUID or "")
        assoc = event.assoc
        record = Rejection(at=datetime.now(UTC), calling_ae=str(assoc.requestor.ae_title).strip(),
                           called_ae=str(assoc.acceptor.ae_title).strip(),
                           peer=f"{assoc.requestor.address}:{assoc.requestor.port}", status="",
                           code=RejectionCode.UNREADABLE, reason="", sop_class_uid=sop_class or None,
                           sop_instance_hash=uid_hash(sop, 24) if sop else None)
        if self._stopping.is_set():
            return self._refuse(record, StoreStatus.OUT_OF_RESOURCES, RejectionCode.SHUTTING_DOWN,
                                "the receiver is stopping; send again")
        body: bytes = event.encoded_dataset(include_meta=True)
        record = record.model_copy(update={"bytes": len(body)})
        try:
            study = check_received(body, sop_class, sop)
        except Refusal as refusal:
            return self._refuse(record, refusal.status, refusal.code, refusal.reason)
        except Exception as err:  # a parser failure we did not foresee is still a refusal on record, not a 0xC211
            return self._refuse(record, StoreStatus.CANNOT_UNDERSTAND, RejectionCode.UNREADABLE,
                                f"the dataset could not be checked ({type(err).__name__})")
        key = received_key(self._prefix, study, sop)
        try:
            resp = self._s3.put_object(Bucket=key.bucket, Key=key.key, Body=body, ContentType="application/dicom",
                                       Metadata={DELIVERY_METADATA: DELIVERED_BY_RECEIVER})
        except (ClientError, BotoCoreError) as err:
            what = error_code(err) if isinstance(err, ClientError) else type(err).__name__
            return self._refuse(record, StoreStatus.OUT_OF_RESOURCES, RejectionCode.NOT_STORED,
                                f"writing to S3 failed ({what}); send again")
        arrival = Arrival(key=key.key, size=len(body), etag=str(resp.get("ETag", "")).strip('"'),
                          event_time=datetime.now(UTC))
        try:
            self._hand_over(study, arrival)
        except Exception as err:  # Temporal unreachable or slow: the sender re-sends, which overwrites the object
            return self._refuse(record.model_copy(update={"stored_key": key.key}), StoreStatus.OUT_OF_RESOURCES,
                                RejectionCode.NOT_HANDED_OVER,
                                f"stored, but handing it to ingestion failed ({type(err).__name__}); send again")
        with self._lock:
            self.stored += 1
        self._instances.add(1, {"outcome": "stored"})
        return StoreStatus.SUCCESS

    def _hand_over(self, study: str, arrival: Arrival) -> None:
        if self._loop is None:
            raise RuntimeError("the receiver was not started")
        future = asyncio.run_coroutine_threadsafe(
            signal_arrival(self._client, self._ingest, self._task_queue, self._prefix.bucket, study, arrival),
            self._loop)
        try:
            future.result(timeout=HANDOVER_TIMEOUT_SECONDS)
        except BaseException:
            future.cancel()
            raise

    def _refuse(self, record: Rejection, status: int, code: RejectionCode, reason: str) -> int:
        record = record.model_copy(update={"status": f"0x{status:04X}", "code": code, "reason": reason})
        with self._lock:
            self.refused[code.value] += 1
        self._instances.add(1, {"outcome": code.value})
        log.warning("C-STORE refused", status=record.status, code=code.value, reason=reason,
                    calling_ae=record.calling_ae, peer=record.peer, sop_instance_hash=record.sop_instance_hash)
        loc = rejection_key(self._ingest.work_s3_uri, record.at, uuid.uuid4().hex[:12])
        try:
            self._s3.put_object(Bucket=loc.bucket, Key=loc.key, Body=record.model_dump_json().encode(),
                                ContentType="application/json")
        except (ClientError, BotoCoreError) as err:
            # S3 itself is failing: the log line above is then the only record, so say so.
            log.error("rejection record not written; the log line above is the record",
                      error=error_code(err) if isinstance(err, ClientError) else type(err).__name__)
        return status
