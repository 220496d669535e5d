"""DIMSE connector: C-FIND (Study Root) enumerates studies and each study's instances; a study is pulled by
C-GET over our own association, or by C-MOVE to the worker's C-STORE receiver (`move_receiver`); either way an
``EVT_C_STORE`` handler writes each received instance (P10, with file meta) to the landing prefix.

The study search is split by study date when the PACS cuts its answers off (`study_search`); a study's instance
search that is cut off is split by series. Every instance C-FIND listed that the retrieval did not deliver (a
failed sub-operation, a warning status, an aborted association) becomes a failed report line naming the PACS
status; C-FIND matches without a UID are counted in an ``UnusableListing`` row.

At most ``retrievals_per_source`` C-GETs/C-MOVEs run at once against one PACS from this process (a semaphore per
PACS address): PACS fail under too many parallel moves (30 concurrent C-MOVEs answered ``0xA702``, out of
resources, where 10 worked: pynetdicom#629). A C-MOVE ending in ``0xA7xx``/``0xCxxx``/``0xB000`` or a broken
association is retried, with a doubling pause, for just the instances that did not arrive.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE, build_role, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # generated at import time
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from activities.sources.common import (
    UNIT_ATTEMPTS,
    UNIT_BACKOFF_SECONDS,
    Landing,
    SourceMisconfigured,
    SourceUnavailable,
    StudyConnector,
    UnitOutcome,
    header_uids,
    instance_key,
    landing_key,
    study_key,
)
from activities.sources.move_receiver import MoveDestination, MoveReceiver, receiver_for
from activities.sources.quick_ack import quick_ack
from activities.sources.storage_classes import accept_as_storage
from activities.sources.study_search import Answer, search_studies, window
from contracts.sources import DimseSource

# pynetdicom logs query identifiers by default; ours hold only UIDs, but a PACS's answers are not ours to log.
pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False

MAX_MATCHES = 1_000_000  # bounds every C-FIND response loop
# A context per (SOP class, transfer syntax) lets the PACS send each instance in its stored encoding instead of
# transcoding it: the uncompressed pair first, then the common compressed encodings one per context.
TRANSFER_GROUPS: list[list[str]] = [
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian], [JPEGBaseline8Bit], [JPEGExtended12Bit], [JPEGLosslessSV1],
    [JPEGLSLossless], [JPEG2000Lossless], [JPEG2000], [RLELossless], [DeflatedExplicitVRLittleEndian],
    [ExplicitVRBigEndian],
]
MAX_CONTEXTS = 128  # the association's presentation-context limit (odd ids 1..255)
RETRIEVALS_PER_SOURCE = 4  # default bound of concurrent C-GETs/C-MOVEs against one PACS from one process
CANCEL = 0xFE00  # what Orthanc ends a cut-off C-FIND with (we never send C-CANCEL, so it is the PACS cutting off)
MOVE_DESTINATION_UNKNOWN = 0xA801
UIDS_PER_MOVE = 200  # SOP Instance UIDs per IMAGE-level C-MOVE of a retry (a UID list, PS3.4 C.4.2.2.1)


def retryable(status: int | None) -> bool:
    """Whether a C-MOVE that ended with ``status`` (None: the association broke) may deliver more when repeated:
    out of resources (A7xx), unable to process (Cxxx), sub-operations failed (B000)."""
    return status is None or (status & 0xFF00) == 0xA700 or (status & 0xF000) == 0xC000 or status == 0xB000


_slots: dict[tuple[str, int, str], threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()


def source_slot(config: DimseSource, size: int) -> threading.BoundedSemaphore:
    """The process's semaphore bounding concurrent retrievals from the PACS ``config`` names."""
    key = (config.host.lower(), config.port, config.called_ae)
    with _slots_lock:
        if key not in _slots:
            _slots[key] = threading.BoundedSemaphore(size)
        return _slots[key]


ALL_SYNTAXES = [syntax for group in TRANSFER_GROUPS for syntax in group]


def context_groups(classes: int) -> list[list[str]]:
    """Transfer-syntax groups to offer per SOP class so that all classes fit next to the C-GET context.

    With many SOP classes each gets fewer encodings (the uncompressed pair always); the PACS transcodes the rest.
    """
    groups = TRANSFER_GROUPS
    while classes * len(groups) > MAX_CONTEXTS - 1 and len(groups) > 1:
        groups = groups[:-1]
    return groups


def _status(ds: Dataset | None) -> int | None:
    return int(ds.Status) if ds is not None and "Status" in ds else None


def _count(ds: Dataset | None, name: str) -> int:
    value = ds.get(name) if ds is not None else None
    return int(value) if isinstance(value, int) else 0


def _uid_list(identifier: Dataset | None) -> set[str]:
    """The Failed SOP Instance UID List of a C-GET/C-MOVE response identifier."""
    if identifier is None or "FailedSOPInstanceUIDList" not in identifier:
        return set()
    value = identifier.FailedSOPInstanceUIDList
    return {str(v) for v in ([value] if isinstance(value, str) else list(value)) if v}


@dataclass
class _Store:
    """The C-STORE handler of one retrieval: lands each received instance under the study's landing keys."""

    landing: Landing
    study: str
    delivered: dict[str, str] = field(default_factory=dict)
    stored: int = 0  # every object written (two objects with one SOP UID are two keys)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, event: Any, encoded: bytes | None = None) -> int:
        """Land one C-STORE; ``encoded`` is its P10 body when the caller already built it (the receiver does)."""
        try:
            sop = str(event.request.AffectedSOPInstanceUID or "") or None
            # The P10 body as received; only its header is parsed (pixels are neither decoded nor re-encoded).
            body = io.BytesIO(encoded if encoded is not None else event.encoded_dataset(include_meta=True))
            series, _ = header_uids(body)
            with self.lock:
                # A second object with the same SOP UID gets a content-hash suffix instead of overwriting.
                key = landing_key(self.landing.prefix, self.study, series, sop, body, self.delivered)
            self.landing.put(key, body, len(body.getvalue()))
            with self.lock:
                self.stored += 1
            return 0x0000
        except Exception as err:  # the PACS gets a failure status; the instance is reported as not delivered
            with self.lock:
                self.errors.append(type(err).__name__)
            return 0xA700

    def check(self, what: str) -> None:
        if self.errors:
            # Writing to S3 failed inside the handler: retry the study rather than report PACS failures.
            raise SourceUnavailable(f"{what}: {len(self.errors)} instances could not be written ({self.errors[0]})")


@dataclass
class _Listing:
    """A study's instances as C-FIND listed them."""

    expected: dict[str, tuple[str | None, str | None]]  # SOP Instance UID -> (Series UID, SOP Class UID)
    unusable: int = 0  # matches without a SOP Instance UID
    # Searches that stayed cut off -> their matches: a series' instance search by Series UID, the study's series
    # search under "".
    truncated: dict[str, int] = field(default_factory=dict)


class DimseConnector(StudyConnector):
    SEARCH = "C-FIND"
    ROWS = "matches"

    def __init__(self, config: DimseSource, timeout: float = 60.0, move: MoveDestination | None = None,
                 retrievals_per_source: int = RETRIEVALS_PER_SOURCE, move_attempts: int = UNIT_ATTEMPTS,
                 move_backoff_seconds: float = UNIT_BACKOFF_SECONDS) -> None:
        self._config = config
        self._timeout = timeout
        self._move = move
        self._slot = source_slot(config, retrievals_per_source)
        self._move_attempts = max(1, move_attempts)
        self._move_backoff = move_backoff_seconds
        self.parallel = config.parallel

    def describe(self) -> str:
        c = self._config
        return f"DIMSE source {c.called_ae}@{c.host}:{c.port}"

    def _ae(self) -> AE:
        ae = AE(ae_title=self._config.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self._timeout
        ae.connection_timeout = min(10.0, self._timeout)
        return ae

    def _associate(self, ae: AE, **kwargs: Any) -> Association:
        c = self._config
        assoc = ae.associate(c.host, c.port, ae_title=c.called_ae, **kwargs)
        if not assoc.is_established:
            # A PACS that refuses a peer may abort instead of rejecting, and a reject followed at once by a closed
            # socket can reach pynetdicom as an abort: both point at the AE titles.
            why = ("the association was rejected (check called_ae/calling_ae and the PACS's list of peers)"
                   if assoc.is_rejected else
                   "the association was aborted before it was established (check called_ae/calling_ae and the "
                   "PACS's list of peers)" if assoc.is_aborted
                   else "the PACS did not answer")
            raise SourceUnavailable(why)
        return assoc

    def _find(self, assoc: Association, query: Dataset, what: str) -> tuple[list[Dataset], bool]:
        """Every match of ``query``, and whether the answer is cut off (flagged by the PACS or ``result_cap``)."""
        found: list[Dataset] = []
        for count, (status, identifier) in enumerate(
                assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)):
            if count > MAX_MATCHES:
                raise SourceUnavailable(f"{what}: more than {MAX_MATCHES} matches")
            code = _status(status)
            if code is None:
                raise SourceUnavailable(f"{what}: the association broke (no C-FIND response)")
            if code in (0xFF00, 0xFF01):
                if identifier is not None:
                    found.append(identifier)
            elif code == CANCEL:
                return found, True
            elif code != 0x0000:
                raise SourceUnavailable(f"{what}: C-FIND failed with status 0x{code:04X}")
        cap = self._config.result_cap
        return found, cap is not None and len(found) >= cap

    def probe(self) -> None:
        """A C-ECHO: raises when the PACS as a whole is unreachable or refuses the association."""
        ae = self._ae()
        ae.add_requested_context(Verification)
        assoc = self._associate(ae)
        try:
            code = _status(assoc.send_c_echo())
        finally:
            if assoc.is_established:
                assoc.release()
        if code != 0x0000:
            raise SourceUnavailable("probing the PACS: C-ECHO failed" + ("" if code is None else f" (0x{code:04X})"))

    def units(self) -> Iterator[str]:
        return self._study_units(self._config.study_uids, self._list_studies)

    def _list_studies(self) -> Iterator[str | None]:
        """Every study C-FIND matched (once each), split by date while answers are cut off (`study_search`)."""
        c = self._config
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = self._associate(ae)

        def search(dates: str | None, modality: str | None) -> Answer:
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = ""
            query.StudyDate = dates or ""
            if modality:
                query.ModalitiesInStudy = modality
            found, cut = self._find(assoc, query, "finding studies")
            return Answer([str(m.get("StudyInstanceUID", "") or "") or None for m in found], cut)

        try:
            yield from search_studies(search, window(c.study_date_from, c.study_date_to), c.modalities, c.result_cap)
        finally:
            if assoc.is_established:
                assoc.release()

    def _listing(self, study: str) -> _Listing:
        """The instances of ``study``; an instance search the PACS cuts off is repeated per series."""
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = self._associate(ae)
        listing = _Listing({})
        try:
            matches, cut = self._image_find(assoc, study, None)
            if cut:
                query = Dataset()
                query.QueryRetrieveLevel = "SERIES"
                query.StudyInstanceUID = study
                query.SeriesInstanceUID = ""
                series, series_cut = self._find(assoc, query, "finding a study's series")
                if series_cut:
                    listing.truncated[""] = len(series)  # the series beyond the cut are retrieved, not listed
                matches = []
                for row in series:
                    uid = str(row.get("SeriesInstanceUID", "") or "")
                    if not uid:
                        continue
                    found, cut = self._image_find(assoc, study, uid)
                    matches += found
                    if cut:
                        listing.truncated[uid] = len(found)
            for identifier in matches:
                sop = str(identifier.get("SOPInstanceUID", "") or "")
                if sop:
                    listing.expected[sop] = (str(identifier.get("SeriesInstanceUID", "") or "") or None,
                                             str(identifier.get("SOPClassUID", "") or "") or None)
                else:
                    listing.unusable += 1
        finally:
            assoc.release()
        return listing

    def _instances(self, study: str) -> tuple[dict[str, str | None], int, dict[str, int]]:
        listing = self._listing(study)
        return {sop: series for sop, (series, _) in listing.expected.items()}, listing.unusable, listing.truncated

    def _image_find(self, assoc: Association, study: str, series: str | None) -> tuple[list[Dataset], bool]:
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = study
        query.SeriesInstanceUID = series or ""
        query.SOPInstanceUID = ""
        query.SOPClassUID = ""
        return self._find(assoc, query, "finding a study's instances")

    def _storage_classes(self, expected: dict[str, tuple[str | None, str | None]]) -> list[str]:
        """The SOP classes to accept C-STOREs for: those C-FIND reported for the study (private ones registered
        with pynetdicom as storage classes; a value that is not a UID is left out)."""
        return accept_as_storage(sorted({cls for _, cls in expected.values() if cls}))

    def pull(self, unit: str, landing: Landing) -> UnitOutcome:
        if (marked := self._marker_outcome(unit, landing)) is not None:
            return marked
        out = UnitOutcome()
        listing = self._listing(unit)
        if not self._check_listing(unit, landing, out, bool(listing.expected), listing.unusable):
            return out
        for series, matches in sorted(listing.truncated.items()):
            what = "the series' instance search" if series else "the study's series search"
            out.fail(f"{study_key(landing.prefix, unit)}{series + '/' if series else ''}search-truncated",
                     "SearchTruncated", f"the PACS cut off {what} (C-FIND) at {matches} matches; the study is "
                     "retrieved whole, but instances beyond the cut cannot be checked for delivery")
        with self._slot:
            if self._config.retrieve == "move":
                self._pull_move(unit, listing, landing, out)
            else:
                self._pull_get(unit, listing, landing, out)
        return out

    def _store(self, landing: Landing, study: str) -> _Store:
        """The C-STORE handler of one retrieval of ``study``."""
        return _Store(landing, study)

    def _pull_get(self, unit: str, listing: _Listing, landing: Landing, out: UnitOutcome) -> None:
        expected = listing.expected
        classes = self._storage_classes(expected)
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        groups = context_groups(len(classes))
        for cls in classes[: MAX_CONTEXTS - 1]:
            for syntaxes in groups:
                ae.add_requested_context(cls, syntaxes)
        roles = [build_role(cls, scp_role=True) for cls in classes[: MAX_CONTEXTS - 1]]
        store = self._store(landing, unit)
        assoc = self._associate(ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, store)])
        quick_ack(assoc.dul.socket)
        final: int | None = None
        failed_list: set[str] = set()
        try:
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = unit
            for count, (status, identifier) in enumerate(
                    assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)):
                if count > MAX_MATCHES:
                    break
                final = _status(status)
                failed_list |= _uid_list(identifier)
        finally:
            if assoc.is_established:
                assoc.release()
        store.check("C-GET")
        out.pulled += store.stored
        outcome = "the association broke" if final is None else f"C-GET final status 0x{final:04X}"
        for sop, (series, _cls) in sorted(expected.items()):
            if sop not in store.delivered:
                code = "RetrieveFailed" if sop in failed_list or (final or 0) >= 0xA000 else "NotDelivered"
                out.fail(instance_key(landing.prefix, unit, series, sop), code,
                         f"C-FIND listed this instance but the C-GET did not deliver it ({outcome})")
        if final is None and len(store.delivered) < len(expected):
            raise SourceUnavailable("C-GET: the association broke before the study was delivered")

    def _receiver(self) -> MoveReceiver:
        if self._move is None:
            raise SourceMisconfigured("retrieve is 'move' but this worker has no C-MOVE receiver (set "
                                      "HIMIG_DIMSE_MOVE_AE_TITLE and HIMIG_DIMSE_MOVE_PORT, and register that AE "
                                      "title with the PACS as a move destination)")
        return receiver_for(self._move, ALL_SYNTAXES, self._timeout)

    def _pull_move(self, unit: str, listing: _Listing, landing: Landing, out: UnitOutcome) -> None:
        """C-MOVE the study to the receiver; repeat for what did not arrive while the PACS's answer says a repeat
        may help (`retryable`), with a doubling pause; what never arrives becomes failure rows."""
        receiver = self._receiver()
        expected = listing.expected
        received: set[str] = set()
        failed_list: set[str] = set()
        outcome = ""
        final: int | None = None
        for attempt in range(self._move_attempts):
            missing = {sop: expected[sop] for sop in expected if sop not in received}
            store = self._store(landing, unit)
            with receiver.expect(self._config.called_ae, unit, self._config.calling_ae,
                                 self._storage_classes(expected), store) as registration:
                final, counts, failed_list = self._move_once(unit, None if attempt == 0 else missing,
                                                             registration.message_id)
            store.check("C-MOVE")
            # A repeat at STUDY level (series unknown) sends again what had arrived: count each instance once.
            again = len(received & set(store.delivered))
            out.pulled += store.stored - again
            received |= set(store.delivered)
            outcome = (("the association broke" if final is None else f"C-MOVE final status 0x{final:04X}")
                       + f"; the PACS reported {counts[0]} sent, {counts[1]} failed, {counts[2]} with warnings; "
                       f"this worker received {len(store.delivered)}")
            if final == MOVE_DESTINATION_UNKNOWN:
                raise SourceMisconfigured(f"C-MOVE: the PACS does not know the move destination "
                                          f"{receiver.destination.ae_title} (0xA801): register that AE title with "
                                          f"this worker's address and port {receiver.destination.port}")
            if all(sop in received for sop in expected) or not retryable(final):
                break
            if attempt + 1 < self._move_attempts:
                time.sleep(self._move_backoff * 2**attempt)
        if final is None:
            raise SourceUnavailable("C-MOVE: the association broke before the study was delivered")
        # Success while listed instances never arrived: they went elsewhere, or the PACS's listing and store differ.
        hint = (f" (the PACS reports success: check that it maps {receiver.destination.ae_title} to this worker's "
                "address and port)" if final == 0x0000 else "")
        for sop, (series, _cls) in sorted(expected.items()):
            if sop not in received:
                code = "RetrieveFailed" if sop in failed_list or (final or 0) >= 0xA000 else "NotDelivered"
                out.fail(instance_key(landing.prefix, unit, series, sop), code,
                         f"C-FIND listed this instance but the C-MOVE did not deliver it after "
                         f"{attempt + 1} tries ({outcome}){hint}")

    def _move_once(self, unit: str, missing: dict[str, tuple[str | None, str | None]] | None,
                   message_id: int) -> tuple[int | None, tuple[int, int, int], set[str]]:
        """One C-MOVE of the study (``missing`` None), or IMAGE-level C-MOVEs of the ``missing`` instances (UID
        lists per series); (the first final status that was not success, else 0x0000; (sent, failed, warnings)
        summed; failed UIDs)."""
        assert self._move is not None
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        queries: list[Dataset] = []
        if missing is None or any(series is None for series, _ in missing.values()):
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = unit
            queries.append(query)
        else:
            by_series: dict[str, list[str]] = {}
            for sop, (series, _) in sorted(missing.items()):
                by_series.setdefault(str(series), []).append(sop)
            for series, sops in by_series.items():
                for start in range(0, len(sops), UIDS_PER_MOVE):
                    query = Dataset()
                    query.QueryRetrieveLevel = "IMAGE"
                    query.StudyInstanceUID = unit
                    query.SeriesInstanceUID = series
                    query.SOPInstanceUID = sops[start : start + UIDS_PER_MOVE]
                    queries.append(query)
        assoc = self._associate(ae)
        worst: int | None = 0x0000  # the answer that matters when one of several moves did not succeed
        sent = failed = warned = 0
        failed_list: set[str] = set()
        try:
            for query in queries:
                final: int | None = None
                last: Dataset | None = None
                for count, (status, identifier) in enumerate(assoc.send_c_move(
                        query, self._move.ae_title, StudyRootQueryRetrieveInformationModelMove, msg_id=message_id)):
                    if count > MAX_MATCHES:
                        break
                    final, last = _status(status), status
                    failed_list |= _uid_list(identifier)
                sent += _count(last, "NumberOfCompletedSuboperations")
                failed += _count(last, "NumberOfFailedSuboperations")
                warned += _count(last, "NumberOfWarningSuboperations")
                if final != 0x0000 and worst == 0x0000:
                    worst = final
                if final is None or final == MOVE_DESTINATION_UNKNOWN:
                    worst = final
                    break
        finally:
            if assoc.is_established:
                assoc.release()
        return worst, (sent, failed, warned), failed_list
