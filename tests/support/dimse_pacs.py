"""A small Query/Retrieve PACS built on pynetdicom, for what Orthanc cannot show: a PACS that refuses C-MOVEs
beyond a number running at once with ``0xA702`` (Refused: Out of resources; pynetdicom#629 saw it at 30 parallel
moves where 10 worked) and that answers an unknown move destination with ``0xA801``, as the standard says
(Orthanc answers ``0xC000``). It listens on 127.0.0.1 only, so it needs no private namespace.

It answers C-FIND at STUDY and IMAGE level from the datasets it holds and C-MOVEs a study (or a list of
instances) to the destinations it knows by AE title, sending each instance as a C-STORE sub-operation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from tests.support.servers import free_port

PACS_AET = "LOADPACS"


@dataclass
class LoadLimitedPacs:
    """``max_moves`` C-MOVEs at once; each move holds its slot ``hold_seconds`` before sending (a busy PACS)."""

    studies: dict[str, list[Dataset]]
    destinations: dict[str, tuple[str, int]]
    max_moves: int
    hold_seconds: float = 0.1
    aborts: int = 0  # moves to abort: the association drops once the move is under way, before any instance
    port: int = field(default_factory=free_port)
    refused: int = 0  # moves answered 0xA702
    peak: int = 0  # most moves running at once
    _running: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadedAssociationServer | None = None

    def start(self) -> LoadLimitedPacs:
        ae = AE(ae_title=PACS_AET)
        ae.add_supported_context(Verification)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
        ae.add_requested_context(CTImageStorage)
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_FIND, self._find), (evt.EVT_C_MOVE, self._move)])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()

    def _find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        query = event.identifier
        if query.QueryRetrieveLevel == "STUDY":
            for study in self.studies:
                row = Dataset()
                row.QueryRetrieveLevel, row.StudyInstanceUID = "STUDY", study
                yield 0xFF00, row
        elif query.QueryRetrieveLevel == "IMAGE":
            for ds in self.studies.get(str(query.StudyInstanceUID), []):
                row = Dataset()
                row.QueryRetrieveLevel = "IMAGE"
                row.StudyInstanceUID, row.SeriesInstanceUID = ds.StudyInstanceUID, ds.SeriesInstanceUID
                row.SOPInstanceUID, row.SOPClassUID = ds.SOPInstanceUID, ds.SOPClassUID
                yield 0xFF00, row

    def _move(self, event: Any) -> Iterator[Any]:
        destination = self.destinations.get(str(event.move_destination).strip())
        if destination is None:
            yield None, None  # pynetdicom answers 0xA801, Move destination unknown
            return
        yield destination[0], destination[1]
        query = event.identifier
        wanted = query.get("SOPInstanceUID")
        wanted = None if not wanted else {str(wanted)} if isinstance(wanted, str) else {str(v) for v in wanted}
        matches = [ds for ds in self.studies.get(str(query.StudyInstanceUID), [])
                   if wanted is None or str(ds.SOPInstanceUID) in wanted]
        with self._lock:
            busy = self._running >= self.max_moves
            if busy:
                self.refused += 1
            else:
                self._running += 1
                self.peak = max(self.peak, self._running)
        if busy:
            yield len(matches)
            yield 0xA702, None
            return
        try:
            yield len(matches)
            time.sleep(self.hold_seconds)
            for index, ds in enumerate(matches):
                if index == 0 and self.aborts > 0:
                    self.aborts -= 1
                    event.assoc.abort()
                    return
                yield 0xFF00, ds
        finally:
            with self._lock:
                self._running -= 1
