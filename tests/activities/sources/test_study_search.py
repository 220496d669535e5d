"""The date-splitting study search against a model PACS that caps its answers the ways real ones do (cut off
silently, or flagged), built here with DICOM range matching; the Orthanc tests are in test_capped_search.py."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from activities.sources.common import SourceUnavailable, parse_marker
from activities.sources.study_search import Answer, Window, search_studies, window


@dataclass
class ModelPacs:
    """Studies as (uid, YYYYMMDD or "" for none, modalities); answers hold at most ``cap`` matches."""

    studies: list[tuple[str | None, str, set[str]]]
    cap: int
    flags: bool = False  # flag a cut-off answer (C-FIND 0xFE00, QIDO Warning 299) instead of cutting silently
    searches: list[tuple[str | None, str | None]] = field(default_factory=list)

    def search(self, dates: str | None, modality: str | None) -> Answer:
        self.searches.append((dates, modality))
        first, _, last = (dates or "-").partition("-")
        matches = [uid for uid, day, mods in self.studies
                   # A range key never matches a study without a date (as Orthanc and most PACS do).
                   if (dates is None or (day and (not first or day >= first) and (not last or day <= last)))
                   and (modality is None or modality in mods)]
        return Answer(matches[: self.cap], self.flags and len(matches) > self.cap)


def _uids(found: list[str | None]) -> list[str]:
    return [u for u in found if u is not None and parse_marker(u) is None]


def _markers(found: list[str | None]) -> list[tuple[str, str]]:
    return [m for u in found if u is not None and (m := parse_marker(u)) is not None]


def _spread(n: int, day: str = "") -> list[tuple[str | None, str, set[str]]]:
    """``n`` studies on distinct days from 1990 on (or all on ``day``)."""
    return [(f"1.2.{i}", day or f"{1990 + i // 300}{(i // 25) % 12 + 1:02d}{i % 25 + 1:02d}", {"CT"}) for i in range(n)]


@pytest.mark.parametrize(("cap", "flags", "configured"), [(10, False, 10), (10, True, None), (2, False, 2),
                                                            (7, False, 7), (2, True, None)])
def test_a_capped_pacs_is_enumerated_completely(cap: int, flags: bool, configured: int | None) -> None:
    pacs = ModelPacs(_spread(100), cap, flags)
    found = list(search_studies(pacs.search, Window(None, None), None, configured))
    assert sorted(_uids(found)) == sorted(u for u, _, _ in pacs.studies if u) and not _markers(found)
    assert len(_uids(found)) == len(set(_uids(found)))


def test_an_answer_below_the_cap_is_one_search() -> None:
    pacs = ModelPacs(_spread(9), 10)
    assert len(_uids(list(search_studies(pacs.search, Window(None, None), None, 10)))) == 9
    assert pacs.searches == [(None, None)]


def test_without_a_configured_cap_a_silent_cut_is_not_detectable() -> None:
    """What the source's result_cap is for: a PACS that neither flags nor is known to cap is trusted."""
    pacs = ModelPacs(_spread(20), 10)
    assert len(_uids(list(search_studies(pacs.search, Window(None, None), None, None)))) == 10


def test_a_single_day_above_the_cap_is_a_truncation_marker_and_the_rest_is_complete() -> None:
    crowded = [(f"1.3.{i}", "20200301", {"CT"}) for i in range(5)]
    pacs = ModelPacs(_spread(30) + crowded, 3)
    found = list(search_studies(pacs.search, Window(None, None), None, 3))
    assert set(_uids(found)) == {u for u, _, _ in _spread(30)} | {f"1.3.{i}" for i in range(3)}
    assert _markers(found) == [("search-truncated", "2020-03-01 to 2020-03-01: 3")]


def test_a_day_with_exactly_the_cap_is_reported_as_possibly_cut_off() -> None:
    """A PACS that cuts off silently answers a full day and a cut-off day alike: the day is reported, not trusted."""
    pacs = ModelPacs([(f"1.4.{i}", "20200301", {"CT"}) for i in range(3)] + _spread(5), 3)
    found = list(search_studies(pacs.search, Window(None, None), None, 3))
    assert len(set(_uids(found))) == 8 and _markers(found) == [("search-truncated", "2020-03-01 to 2020-03-01: 3")]
    # A PACS that flags its cuts is believed: a full day it does not flag is complete.
    flagging = ModelPacs(pacs.studies, 3, flags=True)
    assert not _markers(list(search_studies(flagging.search, Window(None, None), None, None)))


def test_undated_studies_seen_before_the_cut_are_kept_and_flagged() -> None:
    undated = [("1.9.1", "", {"CT"}), ("1.9.2", "", {"CT"})]
    pacs = ModelPacs(undated + _spread(20), 5)
    found = list(search_studies(pacs.search, Window(None, None), None, 5))
    assert set(_uids(found)) == {"1.9.1", "1.9.2"} | {u for u, _, _ in _spread(20)}
    assert _markers(found) == [("undated-studies", "5: 2")]


def test_the_date_window_is_every_search_s_bound() -> None:
    pacs = ModelPacs(_spread(100), 4)
    found = list(search_studies(pacs.search, window("1990-03-01", "1990-06-30"), None, 4))
    want = {u for u, day, _ in pacs.studies if "19900301" <= day <= "19900630"}
    assert set(_uids(found)) == want and want
    for dates, _ in pacs.searches:
        assert dates is not None
        first, last = dates.split("-")
        assert "19900301" <= first <= last <= "19900630"


def test_studies_far_before_and_after_the_split_bounds_are_found() -> None:
    odd = [("1.7.1", "17990101", {"CT"}), ("1.7.2", "23000101", {"CT"}), ("1.7.3", "18491231", {"CT"})]
    pacs = ModelPacs(odd + _spread(10), 2)
    found = list(search_studies(pacs.search, Window(None, None), None, 2))
    assert {"1.7.1", "1.7.2", "1.7.3"} <= set(_uids(found))
    assert len(set(_uids(found))) == 13


def test_modalities_are_searched_one_at_a_time_and_merged() -> None:
    studies = [("1.5.1", "20200101", {"CT"}), ("1.5.2", "20200102", {"MR"}), ("1.5.3", "20200103", {"CT", "MR"}),
               ("1.5.4", "20200104", {"US"})]
    pacs = ModelPacs(studies, 100)
    found = list(search_studies(pacs.search, Window(None, None), ["CT", "MR"], None))
    assert _uids(found) == ["1.5.1", "1.5.3", "1.5.2"]
    assert [m for _, m in pacs.searches] == ["CT", "MR"]


def test_rows_without_a_uid_are_counted_once_even_when_split() -> None:
    pacs = ModelPacs([(None, "20200101", {"CT"}), *_spread(20)], 5)
    found = list(search_studies(pacs.search, Window(None, None), None, 5))
    assert found.count(None) == 1 and len(set(_uids(found))) == 20


def test_a_pathological_cap_is_bounded_not_endless(monkeypatch: pytest.MonkeyPatch) -> None:
    from activities.sources import study_search

    monkeypatch.setattr(study_search, "MAX_SEARCHES", 50)
    pacs = ModelPacs(_spread(200), 1)
    with pytest.raises(SourceUnavailable, match="more than 50 searches"):
        list(search_studies(pacs.search, Window(None, None), None, 1))


@pytest.mark.parametrize(("w", "dicom"), [(Window(None, None), None), (window("2020-01-01", None), "20200101-"),
                                          (window(None, "2020-01-31"), "-20200131"),
                                          (window("2020-01-01", "2020-01-01"), "20200101-20200101")])
def test_windows_are_dicom_ranges(w: Window, dicom: str | None) -> None:
    assert w.dicom() == dicom


def test_halving_covers_the_window_without_overlap() -> None:
    w = window("2020-01-01", "2020-01-10")
    halves = w.halves()
    assert halves is not None
    left, right = halves
    assert (left.dicom(), right.dicom()) == ("20200101-20200105", "20200106-20200110")
    assert window("2020-01-01", "2020-01-01").halves() is None
