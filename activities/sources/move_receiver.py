"""The worker's C-STORE receiver for C-MOVE: the move destination a PACS sends a study to.

A C-MOVE names a destination by AE title and the PACS maps that title to a host and port of its own
configuration, so a pull cannot pick an ephemeral port: one receiver per worker process listens on the configured
port (``HIMIG_DIMSE_MOVE_*``) while pulls are running (and ``LINGER_SECONDS`` after the last), and routes every received instance to the pull it
belongs to. A pull registers (PACS AE title, StudyInstanceUID) with a process-unique C-MOVE message id; a store is
routed when

- the association comes from that PACS's AE title,
- the instance's StudyInstanceUID is one a pull is waiting for, and
- when the PACS names the move originator as the standard says (our calling AE title), the Move Originator Message
  ID is the pull's own: a store left over from an earlier, abandoned move of the same study by another migration
  is refused, not landed in the wrong place. A PACS that fills the originator with something else (pynetdicom
  puts its own AE title there) is routed by PACS and study alone.

Two pulls of one study from one PACS in the same process take turns (the second waits), so a study is never
ambiguous. Everything else is refused with ``0x0124`` (Refused: Not Authorized); the PACS counts it as a failed
sub-operation, and the receiver counts and logs it (never a UID).
"""

from __future__ import annotations

import io
import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, evt
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import time
from pynetdicom.transport import ThreadedAssociationServer

from activities.sources.common import SourceUnavailable
from activities.sources.quick_ack import quick_ack
from activities.sources.storage_classes import accept_as_storage

log = logging.getLogger("himig.dimse.receiver")

NOT_AUTHORIZED = 0x0124  # PS3.7 general status "Refused: Not Authorized"
# How long the receiver stays up after its last pull: the next study's pull (a migration pulls study after study)
# reuses it instead of paying a server shutdown (up to half a second of socketserver polling) and a new bind.
LINGER_SECONDS = 5.0
# A store handler: the pull's landing of one received instance, given the event and its P10 body (built once,
# here, so a large instance is not copied twice); returns the C-STORE status.
Sink = Callable[[Any, bytes], int]


@dataclass(frozen=True)
class MoveDestination:
    """Where this worker receives C-MOVEs: its AE title (as the PACS knows it) and the address it listens on."""

    ae_title: str
    host: str
    port: int


@dataclass
class _Expected:
    sink: Sink
    message_id: int
    originator: str  # our calling AE title: the PACS names it as the move originator
    received: int = 0


@dataclass
class Refusals:
    """Stores refused since the receiver started, by reason (counts only)."""

    unknown_peer: int = 0
    unexpected_study: int = 0
    other_move: int = 0
    unreadable: int = 0

    def add(self, reason: str) -> None:
        setattr(self, reason, getattr(self, reason) + 1)


def study_of(body: bytes) -> str | None:
    """The StudyInstanceUID of an encoded P10 ``body`` (header only; None when missing or unreadable)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(body), stop_before_pixels=True, force=True,
                             specific_tags=["StudyInstanceUID"])
        return str(ds.get("StudyInstanceUID", "") or "") or None
    except (InvalidDicomError, ValueError, AttributeError, EOFError, OSError):
        return None


class MoveReceiver:
    """One C-STORE SCP shared by every C-MOVE pull of this process (see the module docstring)."""

    def __init__(self, destination: MoveDestination, transfer_syntaxes: list[str], timeout: float = 60.0) -> None:
        self.destination = destination
        self._syntaxes = transfer_syntaxes
        self._timeout = timeout
        self._lock = threading.Condition()
        self._expected: dict[tuple[str, str], _Expected] = {}
        self._classes: set[str] = set()
        self._server: ThreadedAssociationServer | None = None
        self._idle: threading.Timer | None = None
        self.linger_seconds = LINGER_SECONDS
        self._ae: AE | None = None
        self.refused = Refusals()

    # ---- the pull's side --------------------------------------------------------------------------------------

    @contextmanager
    def expect(self, pacs_ae: str, study: str, originator: str, classes: list[str], sink: Sink) -> Iterator[_Expected]:
        """Route the stores of ``study`` from ``pacs_ae`` to ``sink`` while the block runs; yields the registration
        (its ``message_id`` is the one to send the C-MOVE with). Starts the receiver if it is not running."""
        key = (pacs_ae.strip(), study)
        with self._lock:
            while key in self._expected:  # the same study from the same PACS in another pull: take turns
                self._lock.wait()
            entry = _Expected(sink, _next_message_id(), originator.strip())
            self._expected[key] = entry
            if self._idle is not None:
                self._idle.cancel()
                self._idle = None
            self._accept(classes)
            try:
                self._start()
            except BaseException:
                del self._expected[key]
                self._lock.notify_all()
                raise
        try:
            yield entry
        finally:
            with self._lock:
                del self._expected[key]
                self._lock.notify_all()
                if not self._expected and self._server is not None and self._idle is None:
                    self._idle = threading.Timer(self.linger_seconds, self._stop_if_idle)
                    self._idle.daemon = True
                    self._idle.start()

    def _stop_if_idle(self) -> None:
        with self._lock:
            self._idle = None
            if not self._expected:
                self._stop()

    def stop(self) -> None:
        """Stop listening now (worker shutdown, tests); a later pull starts it again."""
        with self._lock:
            if self._idle is not None:
                self._idle.cancel()
                self._idle = None
            self._stop()

    def _accept(self, classes: list[str]) -> None:
        """Accept ``classes`` (besides the standard storage classes) in every transfer syntax we offer for C-GET."""
        if self._ae is None:
            self._ae = AE(ae_title=self.destination.ae_title)
            self._ae.acse_timeout = self._ae.dimse_timeout = self._ae.network_timeout = self._timeout
            self._ae.add_supported_context(Verification)
            for context in StoragePresentationContexts:
                self._add(str(context.abstract_syntax))
        for cls in accept_as_storage(classes):
            self._add(cls)

    def _add(self, cls: str) -> None:
        assert self._ae is not None
        if cls not in self._classes:
            self._classes.add(cls)
            self._ae.add_supported_context(cls, self._syntaxes)
            if self._server is not None:
                # A running server negotiates from the list it was started with: give it a new one (each
                # association copies the list, so replacing it is safe while others negotiate).
                self._server.contexts = self._ae.supported_contexts

    def _start(self) -> None:
        if self._server is not None:
            return
        assert self._ae is not None
        d = self.destination
        try:
            self._server = self._ae.start_server((d.host, d.port), block=False,
                                                 evt_handlers=[(evt.EVT_C_STORE, self._on_store),
                                                               (evt.EVT_CONN_OPEN, self._on_open)])
        except OSError as err:
            raise SourceUnavailable(f"the C-MOVE receiver cannot listen on {d.host}:{d.port} "
                                    f"(HIMIG_DIMSE_MOVE_HOST/PORT): {err.strerror or type(err).__name__}") from None
        log.info("C-MOVE receiver listening", extra={"ae_title": d.ae_title, "port": d.port})

    def _stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
            log.info("C-MOVE receiver stopped", extra={"port": self.destination.port})

    # ---- the PACS's side --------------------------------------------------------------------------------------

    @staticmethod
    def _on_open(event: Any) -> None:
        # Orthanc writes each C-STORE in small pieces with Nagle on; without an immediate ACK every instance waits
        # for our delayed ACK (~40 ms), as on the C-GET association.
        quick_ack(event.assoc.dul.socket)

    def _on_store(self, event: Any) -> int:
        peer = str(event.assoc.requestor.ae_title).strip()
        body = event.encoded_dataset(include_meta=True)
        study = study_of(body)
        request = event.request
        move_id = getattr(request, "MoveOriginatorMessageID", None)
        move_ae = str(getattr(request, "MoveOriginatorApplicationEntityTitle", "") or "").strip()
        with self._lock:
            if study is None:
                return self._refuse("unreadable")
            entry = self._expected.get((peer, study))
            if entry is None:
                peers = {p for p, _ in self._expected}
                return self._refuse("unexpected_study" if peer in peers else "unknown_peer")
            # A PACS that names the move a store belongs to (originator AE title = our calling AE title) must name
            # this pull's move. Some fill the fields otherwise (pynetdicom puts its own AE title there); their
            # message id is not ours to check, and the store is routed by PACS and study alone.
            if move_ae == entry.originator and move_id is not None and int(move_id) != entry.message_id:
                return self._refuse("other_move")
        status = entry.sink(event, body)
        if status == 0x0000:
            with self._lock:
                entry.received += 1
        return status

    def _refuse(self, reason: str) -> int:
        self.refused.add(reason)
        log.warning("C-MOVE receiver refused a store", extra={"reason": reason, "refused": getattr(self.refused, reason)})
        return NOT_AUTHORIZED


_ids = itertools.count(1)
_ids_lock = threading.Lock()


def _next_message_id() -> int:
    """A message id for a C-MOVE (1..65535): distinct among the moves one process has running."""
    with _ids_lock:
        return (next(_ids) - 1) % 0xFFFF + 1


_receivers: dict[MoveDestination, MoveReceiver] = {}
_receivers_lock = threading.Lock()


def receiver_for(destination: MoveDestination, transfer_syntaxes: list[str], timeout: float) -> MoveReceiver:
    """The process's receiver for ``destination`` (one per address, however many pulls share it)."""
    with _receivers_lock:
        if destination not in _receivers:
            _receivers[destination] = MoveReceiver(destination, transfer_syntaxes, timeout)
        return _receivers[destination]
