"""Large PACS queries against a real Orthanc that caps its answers (LimitFindResults=3, LimitFindInstances=4):
the study search is split by date until no answer is cut off, a study's instance search by series, and what
cannot be split is reported instead of trusted."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from contracts.sources import DicomwebSource, DimseSource
from tests.activities.sources.pacs import Seeded, dated
from tests.activities.sources.support import buckets, failures, landed, receive_input, run_receive
from tests.support.dicom import uid
from tests.support.orthanc import CAP_INSTANCES, CAP_STUDIES, ORTHANC_AET, OUR_AET, Orthanc


def _dimse(orthanc: Orthanc, **kw: Any) -> DimseSource:
    return DimseSource(kind="dimse", host="127.0.0.1", port=orthanc.dicom_port, called_ae=ORTHANC_AET,
                       calling_ae=OUR_AET, **kw)


def _dicomweb(orthanc: Orthanc, **kw: Any) -> DicomwebSource:
    return DicomwebSource(kind="dicomweb", url=orthanc.dicomweb, **kw)


def _eight_studies(orthanc: Orthanc) -> Seeded:
    """Eight one-instance studies on eight days across 2001-2024 (more than twice the cap)."""
    orthanc.clear()
    seeded = Seeded()
    for day in ("20010105", "20050610", "20090101", "20120229", "20150730", "20181111", "20211201", "20240315"):
        dated(orthanc, seeded, uid(), day)
    return seeded


def test_orthanc_cuts_an_unsplit_search_off(capped_orthanc: Orthanc) -> None:
    """The PACS behaviour reproduced: C-FIND stops at the cap and ends with 0xFE00 (Cancel), which we never
    asked for; QIDO-RS stops at the cap plus one without any warning."""
    _eight_studies(capped_orthanc)
    ae = AE(ae_title=OUR_AET)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", capped_orthanc.dicom_port, ae_title=ORTHANC_AET)
    query = Dataset()
    query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", ""
    statuses = [int(status.Status) for status, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)]
    assoc.release()
    assert statuses == [0xFF00] * CAP_STUDIES + [0xFE00]
    resp = requests.get(capped_orthanc.dicomweb + "/studies", params={"limit": 100}, timeout=30)
    assert len(resp.json()) == CAP_STUDIES + 1 and "Warning" not in resp.headers


@pytest.mark.parametrize("source", [
    pytest.param(lambda o: _dimse(o), id="c-find-flagged"),
    pytest.param(lambda o: _dimse(o, result_cap=CAP_STUDIES), id="c-find-capped"),
    pytest.param(lambda o: _dicomweb(o, result_cap=CAP_STUDIES), id="qido-capped"),
])
def test_every_study_past_the_cap_is_enumerated_and_pulled(s3: Any, capped_orthanc: Orthanc, source: Any) -> None:
    seeded = _eight_studies(capped_orthanc)
    land, work = buckets(s3)
    inp = receive_input(land, work, source(capped_orthanc))
    result, _ = run_receive(s3, inp)
    assert result is not None and result.source_failures == 0
    assert set(landed(s3, land)) == seeded.landing_keys()


def test_qido_without_result_cap_cannot_see_the_silent_cut(s3: Any, capped_orthanc: Orthanc) -> None:
    """Why a DICOMweb source needs result_cap: Orthanc's QIDO-RS neither flags nor pages past its cap."""
    _eight_studies(capped_orthanc)
    land, work = buckets(s3)
    result, _ = run_receive(s3, receive_input(land, work, _dicomweb(capped_orthanc)))
    assert result is not None and result.files == CAP_STUDIES + 1


@pytest.mark.parametrize(("source", "found"), [
    pytest.param(lambda o: _dimse(o), CAP_STUDIES, id="c-find"),
    pytest.param(lambda o: _dicomweb(o, result_cap=CAP_STUDIES), CAP_STUDIES + 1, id="qido"),
])
def test_a_day_above_the_cap_is_a_search_truncated_row(s3: Any, capped_orthanc: Orthanc, source: Any,
                                                       found: int) -> None:
    capped_orthanc.clear()
    seeded = Seeded()
    crowded = [uid() for _ in range(5)]
    for study in crowded:
        dated(capped_orthanc, seeded, study, "20200301")
    others = [uid(), uid()]
    dated(capped_orthanc, seeded, others[0], "20100101")
    dated(capped_orthanc, seeded, others[1], "20220101")
    land, work = buckets(s3)
    inp = receive_input(land, work, source(capped_orthanc))
    result, _ = run_receive(s3, inp)
    assert result is not None
    got = {key.split("/")[1] for key in landed(s3, land)}
    assert set(others) <= got and len(got & set(crowded)) == found
    [row] = failures(s3, inp)
    assert row["code"] == "SearchTruncated" and row["state"] == "failed"
    assert f"for 2020-03-01 to 2020-03-01 reached {found} " in row["reason"]


def test_date_window_and_modalities_narrow_the_pull(s3: Any, capped_orthanc: Orthanc) -> None:
    capped_orthanc.clear()
    seeded = Seeded()
    wanted = [uid(), uid()]
    dated(capped_orthanc, seeded, wanted[0], "20200105", modality="MR")
    dated(capped_orthanc, seeded, wanted[1], "20200620", modality="CT")
    dated(capped_orthanc, seeded, uid(), "20200310", modality="US")  # outside the modalities
    dated(capped_orthanc, seeded, uid(), "20191231", modality="CT")  # before the window
    dated(capped_orthanc, seeded, uid(), "20210101", modality="MR")  # after the window
    for source in (_dimse, lambda o, **kw: _dicomweb(o, result_cap=CAP_STUDIES, **kw)):
        land, work = buckets(s3)
        config = source(capped_orthanc, study_date_from="2020-01-01", study_date_to="2020-12-31",
                        modalities=["MR", "CT"])
        result, _ = run_receive(s3, receive_input(land, work, config))
        assert result is not None and result.source_failures == 0
        assert {key.split("/")[1] for key in landed(s3, land)} == set(wanted)


def test_a_study_whose_instance_search_is_cut_off_is_listed_by_series(s3: Any, capped_orthanc: Orthanc) -> None:
    """Six instances in two series of three: the study's search stops at 4 (0xFE00), each series' does not."""
    capped_orthanc.clear()
    seeded = Seeded()
    study, crowded = uid(), uid()
    dated(capped_orthanc, seeded, study, "20200101", instances=3)
    dated(capped_orthanc, seeded, study, "20200101", instances=3)
    land, work = buckets(s3)
    inp = receive_input(land, work, _dimse(capped_orthanc, study_uids=[study]))
    result, _ = run_receive(s3, inp)
    assert result is not None and result.source_failures == 0 and result.files == 6
    # One series above the instance cap: its listing stays cut off and is reported, its instances still arrive.
    dated(capped_orthanc, seeded, study, "20200101", series=crowded, instances=CAP_INSTANCES + 1)
    land, work = buckets(s3)
    inp = receive_input(land, work, _dimse(capped_orthanc, study_uids=[study]))
    result, _ = run_receive(s3, inp)
    assert result is not None and result.files == 6 + CAP_INSTANCES + 1
    [row] = failures(s3, inp)
    assert (row["key"], row["code"]) == (f"landed/{study}/{crowded}/search-truncated", "SearchTruncated")
    assert set(landed(s3, land)) == seeded.landing_keys()


@pytest.mark.parametrize("day", ["", "absent"])
def test_undated_studies_listed_before_the_cut_are_pulled_and_reported(s3: Any, capped_orthanc: Orthanc,
                                                                       day: str) -> None:
    seeded = _eight_studies(capped_orthanc)
    undated = uid()
    dated(capped_orthanc, seeded, undated, day)
    ae = AE(ae_title=OUR_AET)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", capped_orthanc.dicom_port, ae_title=ORTHANC_AET)
    query = Dataset()
    query.QueryRetrieveLevel, query.StudyInstanceUID, query.StudyDate = "STUDY", "", "18500101-22001231"
    by_range = {str(i.StudyInstanceUID) for s, i in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
                if i is not None and int(s.Status) in (0xFF00, 0xFF01)}
    query.StudyDate = ""
    unsplit = [str(i.StudyInstanceUID) for s, i in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
               if i is not None and int(s.Status) in (0xFF00, 0xFF01)]
    assoc.release()
    # Orthanc's closed date range never matches a study without a StudyDate.
    assert undated not in by_range
    land, work = buckets(s3)
    inp = receive_input(land, work, _dimse(capped_orthanc))
    result, _ = run_receive(s3, inp)
    assert result is not None
    got = {key.split("/")[1] for key in landed(s3, land)}
    assert got >= {st for st, _, _ in seeded.instances} - {undated}
    rows = failures(s3, inp)
    if day == "":
        # An empty StudyDate is matched by Orthanc's open-ended "-YYYYMMDD" range (the earliest piece), so the
        # split search finds it like a dated study: nothing to report.
        assert undated in got and not rows
    elif undated in unsplit:  # Orthanc's order decides whether it comes before the cut
        assert undated in got
        [row] = rows
        assert row["code"] == "SearchTruncated" and "1 of them without a study date" in row["reason"]
    else:
        # Never listed: the gap the README names (no DICOM search finds a study by a missing date).
        assert undated not in got and not rows


def test_a_cut_off_qido_instance_search_still_lands_the_whole_study(s3: Any, capped_orthanc: Orthanc) -> None:
    """QIDO-RS instance searches are not split: WADO-RS takes the whole study, so instances beyond the cut still
    land, and nothing is reported missing that arrived."""
    capped_orthanc.clear()
    seeded = Seeded()
    study = uid()
    dated(capped_orthanc, seeded, study, "20200101", instances=CAP_INSTANCES + 2)
    listed = requests.get(f"{capped_orthanc.dicomweb}/studies/{study}/instances", params={"limit": 1000}, timeout=30)
    assert len(listed.json()) < CAP_INSTANCES + 2  # the cut this reproduces
    land, work = buckets(s3)
    inp = receive_input(land, work, _dicomweb(capped_orthanc, study_uids=[study]))
    result, _ = run_receive(s3, inp)
    assert result is not None and result.source_failures == 0
    assert set(landed(s3, land)) == seeded.landing_keys()


def test_a_study_with_more_series_than_the_cap_is_retrieved_whole_and_reported(s3: Any,
                                                                               capped_orthanc: Orthanc) -> None:
    """Five one-instance series: the instance search stops at 4, the series search at 3; the study is still
    retrieved (C-GET takes it whole) and one row says its listing stayed cut off."""
    capped_orthanc.clear()
    seeded = Seeded()
    study = uid()
    for _ in range(CAP_INSTANCES + 1):
        dated(capped_orthanc, seeded, study, "20200101")
    land, work = buckets(s3)
    inp = receive_input(land, work, _dimse(capped_orthanc, study_uids=[study]))
    result, _ = run_receive(s3, inp)
    assert result is not None and result.files == CAP_INSTANCES + 1
    assert set(landed(s3, land)) == seeded.landing_keys()
    [row] = failures(s3, inp)
    assert (row["key"], row["code"]) == (f"landed/{study}/search-truncated", "SearchTruncated")
    assert f"the study's series search (C-FIND) at {CAP_STUDIES} matches" in row["reason"]


@pytest.mark.parametrize("source", [
    pytest.param(lambda o: _dimse(o), id="c-find"),  # the cut is flagged (0xFE00) even per series
    pytest.param(lambda o: _dicomweb(o), id="qido"),  # unflagged: the study's instance count shows it
])
def test_a_cut_off_instance_listing_is_reported_never_passed(capped_orthanc: Orthanc, source: Any) -> None:
    """`himig verify` by listing: a study whose one series holds more instances than the PACS answers per search
    lists a ``ListingTruncated`` row; a study within the cap lists every instance and no row."""
    from activities.sources.registry import SourceSettings, connector_for
    from activities.verify_listing import list_source
    from tests.support.dicom import make_instance

    capped_orthanc.clear()
    big, small = (uid(), uid()), (uid(), uid())
    for study, series, n in ((*big, CAP_INSTANCES + 2), (*small, CAP_INSTANCES - 1)):
        for _ in range(n):
            capped_orthanc.upload(make_instance(study, series))
    config = source(capped_orthanc).model_copy(update={"study_uids": [big[0], small[0]]})
    connector = connector_for(config, SourceSettings())
    inv, found = list_source(connector, lambda: None)  # type: ignore[arg-type]
    assert [d["code"] for d in found] == ["ListingTruncated"] and found[0]["key"].startswith(f"{big[0]}/")
    assert len(inv.studies[small[0]][small[1]]) == CAP_INSTANCES - 1
