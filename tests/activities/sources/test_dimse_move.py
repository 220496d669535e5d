"""C-MOVE retrieval against a real Orthanc: Orthanc moves studies to the worker's C-STORE receiver, which routes
each instance to the pull it belongs to, and refuses everything else."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from temporalio.exceptions import ApplicationError

from activities.sources import dimse, move_receiver
from activities.sources.common import Landing, PullCursor, UnitOutcome, pull_all
from activities.sources.dimse import DimseConnector, _Store
from activities.sources.move_receiver import NOT_AUTHORIZED, MoveDestination, MoveReceiver
from activities.sources.registry import SourceSettings
from contracts import layout
from contracts.sources import DimseSource
from tests.activities.sources import support
from tests.activities.sources.pacs import seed_two_studies
from tests.activities.sources.support import buckets, failures, landed, receive_input, run_receive
from tests.support.dicom import make_instance, uid
from tests.support.dimse_pacs import PACS_AET, LoadLimitedPacs
from tests.support.eventually import assert_eventually_sync
from tests.support.orthanc import ORTHANC_AET, OUR_AET, Orthanc
from tests.support.servers import free_port

MOVE_AET = "HIMIGMOVE"


@pytest.fixture
def destination(orthanc: Orthanc) -> Iterator[MoveDestination]:
    """A fresh port for the receiver, declared to Orthanc as the move destination ``MOVE_AET``."""
    dest = MoveDestination(MOVE_AET, "127.0.0.1", free_port())
    orthanc.put_modality("himig-move", MOVE_AET, dest.port)
    yield dest
    if (receiver := move_receiver._receivers.pop(dest, None)) is not None:
        receiver.stop()


def _source(orthanc: Orthanc, **kw: Any) -> DimseSource:
    return DimseSource(kind="dimse", host="127.0.0.1", port=orthanc.dicom_port, called_ae=ORTHANC_AET,
                       calling_ae=OUR_AET, retrieve="move", **kw)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _not(value: bool) -> None:
    assert not value


def test_every_study_is_pulled_by_c_move_with_its_pixels(s3: Any, orthanc: Orthanc,
                                                         destination: MoveDestination) -> None:
    seeded = seed_two_studies(orthanc)
    land, work = buckets(s3)
    inp = receive_input(land, work, _source(orthanc))
    result, _ = run_receive(s3, inp, settings=SourceSettings(dimse_move=destination, unit_backoff_seconds=0.0))
    assert result is not None and result.source_failures == 0 and result.files == 7
    got = landed(s3, land)
    assert set(got) == seeded.landing_keys()
    for (study, series, sop), original in seeded.instances.items():
        ds = pydicom.dcmread(io.BytesIO(got[f"landed/{study}/{series}/{sop}.dcm"]))
        want = pydicom.dcmread(io.BytesIO(original))
        # Every encoding is accepted, so nothing was transcoded (JPEG 2000 stays JPEG 2000).
        assert ds.file_meta.TransferSyntaxUID == want.file_meta.TransferSyntaxUID
        assert ds.PixelData == want.PixelData
    receiver = move_receiver._receivers[destination]
    assert vars(receiver.refused) == {"unknown_peer": 0, "unexpected_study": 0, "other_move": 0, "unreadable": 0}
    # The receiver stays up between the studies of a pull, and stops once it has been idle for its linger time.
    assert _listening(destination.port)
    receiver.linger_seconds = 0.0
    with receiver.expect(ORTHANC_AET, uid(), OUR_AET, [], _Store(support.landing(s3, land), "1.2")):
        pass
    assert_eventually_sync(lambda: _not(_listening(destination.port)))


@pytest.mark.parametrize("retrieve", ["get", "move"])
def test_an_instance_of_a_private_sop_class_is_retrieved(s3: Any, orthanc: Orthanc, destination: MoveDestination,
                                                         retrieve: str) -> None:
    """pynetdicom aborts a C-STORE of a class it does not know; a class C-FIND listed is registered first."""
    orthanc.clear()
    study, series = uid(), uid()
    ds = pydicom.dcmread(io.BytesIO(make_instance(study, series)))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = f"1.2.826.0.1.3680043.8.498.{7 if retrieve == 'get' else 8}1"
    body = io.BytesIO()
    ds.save_as(body, enforce_file_format=True)
    orthanc.upload(body.getvalue())
    orthanc.upload(make_instance(study, series))
    land, _ = buckets(s3)
    out = DimseConnector(_source(orthanc).model_copy(update={"retrieve": retrieve}), move=destination).pull(
        study, support.landing(s3, land))
    got = landed(s3, land)
    if retrieve == "move":
        assert not out.failures and out.pulled == 2
        assert f"landed/{study}/{series}/{ds.SOPInstanceUID}.dcm" in got
    else:
        # Orthanc 1.10 accepts the private class's context but fails its C-GET sub-operation (0xB000), where its
        # C-MOVE sends it: the instance is a row naming the status, the other one lands.
        assert out.pulled == 1 and len(got) == 1
        [row] = out.failures
        assert row.key.endswith(f"/{ds.SOPInstanceUID}.dcm") and "C-GET final status 0xB000" in (row.reason or "")


def test_move_without_a_receiver_on_the_worker_is_refused_naming_the_settings(s3: Any, orthanc: Orthanc) -> None:
    seed_two_studies(orthanc)
    land, work = buckets(s3)
    inp = receive_input(land, work, _source(orthanc))
    with pytest.raises(ApplicationError) as info:
        run_receive(s3, inp)
    assert info.value.type == "InvalidSourceConnector" and info.value.non_retryable
    assert "HIMIG_DIMSE_MOVE_AE_TITLE and HIMIG_DIMSE_MOVE_PORT" in str(info.value)


def test_a_destination_the_pacs_does_not_know_becomes_failure_rows_after_retries(s3: Any, orthanc: Orthanc) -> None:
    """Orthanc answers an unknown move destination with 0xC000 (a real PACS: 0xA801, which stops the
    migration as misconfigured); every listed instance becomes a row naming the status and the tries."""
    seeded = seed_two_studies(orthanc)
    land, _ = buckets(s3)
    unknown = MoveDestination("NOBODY", "127.0.0.1", free_port())
    connector = DimseConnector(_source(orthanc), move=unknown, move_attempts=2, move_backoff_seconds=0.0)
    study = seeded.studies[0]
    out = connector.pull(study, support.landing(s3, land))
    want = {f"landed/{st}/{se}/{sop}.dcm" for st, se, sop in seeded.instances if st == study}
    assert {f.key for f in out.failures} == want and out.pulled == 0
    for row in out.failures:
        assert row.code == "RetrieveFailed"
        assert "after 2 tries (C-MOVE final status 0xC000" in (row.reason or "")
    move_receiver._receivers.pop(unknown).stop()


def test_a_move_the_pacs_delivers_elsewhere_is_reported_with_the_mapping_to_check(s3: Any, orthanc: Orthanc) -> None:
    """The PACS maps our AE title to another listener (another worker, an old address) that accepts everything:
    Orthanc reports success, nothing reached us, and every listed instance is a row saying what to check."""
    seeded = seed_two_studies(orthanc)
    elsewhere = AE(ae_title=MOVE_AET)
    elsewhere.supported_contexts = StoragePresentationContexts
    other_port = free_port()
    server = elsewhere.start_server(("127.0.0.1", other_port), block=False,
                                    evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])
    ours = MoveDestination(MOVE_AET, "127.0.0.1", free_port())
    orthanc.put_modality("himig-move", MOVE_AET, other_port)
    try:
        land, _ = buckets(s3)
        # The study in the default encodings (the other holds JPEG 2000, which that listener does not accept).
        study = next(st for st, _, _ in seeded.instances if sum(1 for k in seeded.instances if k[0] == st) == 4)
        out = DimseConnector(_source(orthanc), move=ours, move_attempts=1).pull(study, support.landing(s3, land))
    finally:
        server.shutdown()
        move_receiver._receivers.pop(ours).stop()
    assert out.pulled == 0 and len(out.failures) == 4
    for row in out.failures:
        assert row.code == "NotDelivered", row.reason
        assert "C-MOVE final status 0x0000; the PACS reported 4 sent, 0 failed, 0 with warnings; this worker " \
               f"received 0) (the PACS reports success: check that it maps {MOVE_AET} to this worker" in (row.reason or "")


class _RefusingStore(_Store):
    """Answers 0xA700 (out of resources) for the first ``refusals`` stores of ``sop``, as a loaded receiver might."""

    refusals: dict[str, int] = {}

    def __call__(self, event: Any, encoded: bytes | None = None) -> int:
        sop = str(event.request.AffectedSOPInstanceUID)
        if self.refusals.get(sop, 0) > 0:
            self.refusals[sop] -= 1
            return 0xA700
        return super().__call__(event, encoded)


class _Flaky(DimseConnector):
    moves: list[str] = []

    def _store(self, landing: Landing, study: str) -> _Store:
        return _RefusingStore(landing, study)

    def _move_once(self, unit: str, missing: Any, message_id: int) -> Any:
        self.moves.append("study" if missing is None else f"{len(missing)} instances")
        return super()._move_once(unit, missing, message_id)


@pytest.mark.parametrize("refusals", [1, 5])
def test_refused_sub_operations_are_moved_again_then_reported(s3: Any, orthanc: Orthanc,
                                                              destination: MoveDestination, refusals: int) -> None:
    seeded = seed_two_studies(orthanc)
    study = next(st for st, _, _ in seeded.instances if sum(1 for k in seeded.instances if k[0] == st) == 4)
    victim = sorted(sop for st, _, sop in seeded.instances if st == study)[0]
    _RefusingStore.refusals = {victim: refusals}
    _Flaky.moves = []
    land, _ = buckets(s3)
    out: UnitOutcome = _Flaky(_source(orthanc), move=destination, move_attempts=3,
                              move_backoff_seconds=0.0).pull(study, support.landing(s3, land))
    # The first move is the whole study; Orthanc ends it at the refused store (0xC000, no counts), and the
    # repeats ask only for what has not arrived (IMAGE-level UID lists per series).
    assert _Flaky.moves[0] == "study" and len(_Flaky.moves) == 1 + min(refusals, 2), _Flaky.moves
    assert all(m.endswith(" instances") and 1 <= int(m.split()[0]) <= 4 for m in _Flaky.moves[1:])
    # Every listed instance is accounted for: landed, or a row (Orthanc sends nothing after a refused store, so
    # the instances queued behind the victim are rows too).
    keys = {f"landed/{st}/{se}/{sop}.dcm" for st, se, sop in seeded.instances if st == study}
    assert {f.key for f in out.failures} | set(landed(s3, land)) == keys and out.pulled + len(out.failures) == 4
    assert bool(out.failures) == refusals_exhaust(refusals)
    for row in out.failures:
        assert row.code == "RetrieveFailed" and "after 3 tries (C-MOVE final status 0xC000" in (row.reason or "")
    assert not out.failures or any(f.key.endswith(f"/{victim}.dcm") for f in out.failures)


def refusals_exhaust(refusals: int) -> bool:
    return refusals >= 3


def test_concurrent_pulls_of_one_pacs_are_routed_to_their_own_landing(s3: Any, orthanc: Orthanc,
                                                                      destination: MoveDestination) -> None:
    seeded = seed_two_studies(orthanc)
    a, b = buckets(s3), buckets(s3)
    results: dict[str, UnitOutcome] = {}

    def pull(study: str, bucket: str) -> None:
        results[study] = DimseConnector(_source(orthanc), move=destination).pull(study, support.landing(s3, bucket))

    threads = [threading.Thread(target=pull, args=(st, bk[0])) for st, bk in zip(seeded.studies, (a, b), strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for study, (bucket, _) in zip(seeded.studies, (a, b), strict=True):
        assert not results[study].failures
        assert set(landed(s3, bucket)) == {k for k in seeded.landing_keys() if k.startswith(f"landed/{study}/")}


def test_moves_against_one_pacs_never_exceed_the_per_source_bound(s3: Any, orthanc: Orthanc,
                                                                  destination: MoveDestination) -> None:
    orthanc.clear()
    studies = [uid() for _ in range(4)]
    for study in studies:
        orthanc.upload(make_instance(study, uid()))
    running, peak = 0, 0
    lock = threading.Lock()

    class Counting(DimseConnector):
        def _pull_move(self, *args: Any) -> None:
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            try:
                time.sleep(0.2)  # hold the slot long enough for the other pulls to contend for it
                super()._pull_move(*args)
            finally:
                with lock:
                    running -= 1

    land, work = buckets(s3)
    # A port of its own, so this test's semaphore (keyed by the PACS address) is not shared with other tests.
    config = _source(orthanc, parallel=4)
    dimse._slots.pop((config.host, config.port, config.called_ae), None)
    connector = Counting(config, move=destination, retrievals_per_source=2)
    landing = support.landing(s3, land)
    pull_all(s3, connector, landing, f"s3://{work}/runs/", "m-bound", PullCursor(), lambda _: None)
    dimse._slots.pop((config.host, config.port, config.called_ae), None)
    # Four studies pulled four at a time, never more than two moves at once (fewer when the machine staggers them).
    assert 1 <= peak <= 2 and landing.objects == 4


# ---- the receiver on its own: what it refuses ---------------------------------------------------------------------


def _send(port: int, calling: str, ds: Dataset, originator: tuple[str, int] | None = None) -> int:
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title=MOVE_AET)
    assert assoc.is_established
    try:
        aet, msg = originator or (None, None)
        status = assoc.send_c_store(ds, originator_aet=aet, originator_id=msg)
        return int(status.Status)
    finally:
        assoc.release()


def _ct(study: str) -> Dataset:
    return pydicom.dcmread(io.BytesIO(make_instance(study, uid())))


def test_the_receiver_lands_only_what_a_pull_expects(s3: Any) -> None:
    land, _ = buckets(s3)
    dest = MoveDestination(MOVE_AET, "127.0.0.1", free_port())
    receiver = MoveReceiver(dest, dimse.ALL_SYNTAXES, timeout=10)
    receiver.linger_seconds = 0.0
    study, other = uid(), uid()
    store = _Store(support.landing(s3, land), study)
    with receiver.expect("PACS", study, OUR_AET, [], store) as reg:
        good = _ct(study)
        assert _send(dest.port, "PACS", good, (OUR_AET, reg.message_id)) == 0x0000
        assert _send(dest.port, "PACS", _ct(study)) == 0x0000  # a PACS that names no originator is routed by study
        # Another AE sending the study being pulled, the PACS sending a study nobody pulls, a store of another
        # move (our originator AE title with another message id), and an instance without a study are refused.
        assert _send(dest.port, "INTRUDER", _ct(study)) == NOT_AUTHORIZED
        assert _send(dest.port, "PACS", _ct(other)) == NOT_AUTHORIZED
        assert _send(dest.port, "PACS", _ct(study), (OUR_AET, reg.message_id + 1)) == NOT_AUTHORIZED
        # An originator that is not our AE title (pynetdicom names itself): its message id is not ours to check.
        assert _send(dest.port, "PACS", _ct(study), ("PACS", reg.message_id + 7)) == 0x0000
        no_study = _ct(study)
        del no_study.StudyInstanceUID
        assert _send(dest.port, "PACS", no_study) == NOT_AUTHORIZED
        assert reg.received == 3
    assert_eventually_sync(lambda: _not(_listening(dest.port)))  # no pull left: it stops listening
    assert vars(receiver.refused) == {"unknown_peer": 1, "unexpected_study": 1, "other_move": 1, "unreadable": 1}
    got = landed(s3, land)
    assert store.stored == len(got) == 3 and f"landed/{study}/{good.SeriesInstanceUID}/{good.SOPInstanceUID}.dcm" in got


def test_a_class_a_later_pull_lists_is_accepted_by_the_running_receiver(s3: Any) -> None:
    """A private SOP class (not among the standard storage classes) that a pull's C-FIND listed is negotiated even
    when the receiver was already running for another pull."""
    dest = MoveDestination(MOVE_AET, "127.0.0.1", free_port())
    receiver = MoveReceiver(dest, dimse.ALL_SYNTAXES, timeout=10)
    land, _ = buckets(s3)
    private = "1.2.826.0.1.3680043.8.498.999"
    first, second = uid(), uid()
    ds = _ct(second)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = private
    with receiver.expect("PACS", first, OUR_AET, [], _Store(support.landing(s3, land), first)), \
            receiver.expect("PACS", second, OUR_AET, [private], _Store(support.landing(s3, land), second)):
        ae = AE(ae_title="PACS")
        ae.add_requested_context(private, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", dest.port, ae_title=MOVE_AET)
        assert assoc.is_established
        try:
            assert int(assoc.send_c_store(ds).Status) == 0x0000
        finally:
            assoc.release()
    receiver.stop()
    assert len(landed(s3, land)) == 1


def test_two_pulls_of_one_study_take_turns(s3: Any) -> None:
    dest = MoveDestination(MOVE_AET, "127.0.0.1", free_port())
    receiver = MoveReceiver(dest, dimse.ALL_SYNTAXES, timeout=10)
    study = uid()
    order: list[str] = []
    land, _ = buckets(s3)

    def second() -> None:
        with receiver.expect("PACS", study, OUR_AET, [], _Store(support.landing(s3, land), study)):
            order.append("second")

    with receiver.expect("PACS", study, OUR_AET, [], _Store(support.landing(s3, land), study)):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.2)
        order.append("first")
    thread.join()
    receiver.stop()
    assert order == ["first", "second"]


def test_a_port_already_taken_is_a_clear_error(s3: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        dest = MoveDestination(MOVE_AET, "127.0.0.1", taken.getsockname()[1])
        receiver = MoveReceiver(dest, dimse.ALL_SYNTAXES, timeout=10)
        land, _ = buckets(s3)
        with (pytest.raises(dimse.SourceUnavailable, match=r"cannot listen on 127\.0\.0\.1:\d+ \(HIMIG_DIMSE_MOVE_HOST"),
              receiver.expect("PACS", uid(), OUR_AET, [], _Store(support.landing(s3, land), "1.2"))):
            pass
        # A failed start leaves nothing registered: the next pull of that study is not blocked.
        assert not receiver._expected


# ---- a PACS that refuses moves under load (0xA702) and unknown destinations (0xA801): what Orthanc cannot show --


@pytest.fixture
def load_pacs() -> Iterator[LoadLimitedPacs]:
    studies = {}
    for _ in range(6):
        study, series = uid(), uid()
        studies[study] = [pydicom.dcmread(io.BytesIO(make_instance(study, series))) for _ in range(3)]
    dest = MoveDestination(MOVE_AET, "127.0.0.1", free_port())
    pacs = LoadLimitedPacs(studies, {MOVE_AET: ("127.0.0.1", dest.port)}, max_moves=2).start()
    yield pacs
    pacs.stop()
    if (receiver := move_receiver._receivers.pop(dest, None)) is not None:
        receiver.stop()


def _load_source(pacs: LoadLimitedPacs, **kw: Any) -> DimseSource:
    return DimseSource(kind="dimse", host="127.0.0.1", port=pacs.port, called_ae=PACS_AET, calling_ae=OUR_AET,
                       retrieve="move", **kw)


def _pull_everything(s3: Any, pacs: LoadLimitedPacs, per_source: int) -> tuple[Landing, list[Any]]:
    land, work = buckets(s3)
    config = _load_source(pacs, parallel=6)
    dimse._slots.pop((config.host, config.port, config.called_ae), None)
    dest = MoveDestination(MOVE_AET, "127.0.0.1", pacs.destinations[MOVE_AET][1])
    connector = DimseConnector(config, move=dest, retrievals_per_source=per_source, move_attempts=3,
                               move_backoff_seconds=0.05)
    landing = support.landing(s3, land)
    # Through the pull loop's parallel window, as the activity runs it.
    pull_all(s3, connector, landing, f"s3://{work}/runs/", "m-load", PullCursor(), lambda _: None)
    rows = support.ndjson_rows(s3, layout.receive_failures_prefix(f"s3://{work}/runs/", "m-load"))
    dimse._slots.pop((config.host, config.port, config.called_ae), None)
    return landing, rows


def test_the_per_source_bound_keeps_a_loaded_pacs_from_refusing(s3: Any, load_pacs: LoadLimitedPacs) -> None:
    landing, rows = _pull_everything(s3, load_pacs, per_source=2)
    assert load_pacs.refused == 0 and load_pacs.peak <= 2
    assert landing.objects == 18 and not rows


def test_moves_beyond_what_the_pacs_takes_are_refused_then_retried(s3: Any, load_pacs: LoadLimitedPacs) -> None:
    load_pacs.hold_seconds = 1.0  # long enough that six parallel pulls reach the PACS while two moves run
    landing, rows = _pull_everything(s3, load_pacs, per_source=6)
    assert load_pacs.refused > 0 and load_pacs.peak == 2  # the PACS answered 0xA702 to the moves beyond two
    # Every instance is accounted for: landed, or a row naming the refusal after the retries.
    assert landing.objects + len(rows) == 18
    for row in rows:
        assert row["code"] == "RetrieveFailed" and "C-MOVE final status 0xA702" in row["reason"]


def test_an_unknown_move_destination_stops_the_migration_naming_it(s3: Any, load_pacs: LoadLimitedPacs) -> None:
    land, work = buckets(s3)
    inp = receive_input(land, work, _load_source(load_pacs))
    elsewhere = MoveDestination("UNREGISTERED", "127.0.0.1", free_port())
    with pytest.raises(ApplicationError) as info:
        run_receive(s3, inp, settings=SourceSettings(dimse_move=elsewhere, unit_backoff_seconds=0.0))
    assert info.value.type == "InvalidSourceConnector" and info.value.non_retryable
    assert "does not know the move destination UNREGISTERED (0xA801)" in str(info.value)
    move_receiver._receivers.pop(elsewhere).stop()


@pytest.mark.parametrize(("aborts", "lands"), [(1, 3), (2, 3), (99, 0)])
def test_an_association_dropped_mid_move_is_retried_then_reported(s3: Any, load_pacs: LoadLimitedPacs, aborts: int,
                                                                  lands: int) -> None:
    """The PACS drops the association once a move is under way: the move is repeated (and the study pulled
    again by the activity's per-unit retries); a PACS that keeps dropping leaves the study a SourceUnavailable
    row while its C-ECHO still answers."""
    load_pacs.aborts = aborts
    study = next(iter(load_pacs.studies))
    land, work = buckets(s3)
    inp = receive_input(land, work, _load_source(load_pacs, study_uids=[study]))
    dest = MoveDestination(MOVE_AET, "127.0.0.1", load_pacs.destinations[MOVE_AET][1])
    result, _ = run_receive(s3, inp, settings=SourceSettings(dimse_move=dest, unit_backoff_seconds=0.0))
    assert result is not None and len(landed(s3, land)) == lands
    rows = failures(s3, inp)
    if lands == 3:
        assert not rows
    else:
        [row] = rows
        assert (row["key"], row["code"]) == (f"landed/{study}/", "SourceUnavailable")
        assert "C-MOVE: the association broke before the study was delivered" in row["reason"]
