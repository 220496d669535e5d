"""Enumerating a PACS's studies when its answers may be cut off.

Many PACS stop a study search at a configured number of matches (500-1,000 is common; Orthanc's
``LimitFindResults``) and say so weakly or not at all: Orthanc ends a cut-off C-FIND with status ``0xFE00``
(Cancel) and a QIDO-RS answer with nothing at all. So an answer is taken as cut off when the PACS flags it
(C-FIND ``0xFE00``, a QIDO-RS ``Warning: 299``) or when it has as many matches as the source's ``result_cap``.

A cut-off answer is never trusted: its date range is halved and each half searched again, down to a single day.
A single day that is still cut off becomes a ``search-truncated`` marker (a failure row naming the day and the
count), so the report shows what could not be enumerated. A date search cannot find studies without a study date:
those the first, unsplit answer listed are kept, and an ``undated-studies`` marker says that more may exist.

Searches for several modalities are run one modality at a time (``ModalitiesInStudy`` with one value, which every
PACS supports) and merged; a study is listed once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta

from activities.sources.common import SourceUnavailable, marker

# The numeric bounds of an open-ended window, used only to pick where to halve it: the outermost pieces stay open
# (``-YYYYMMDD``, ``YYYYMMDD-``), so a study dated before or after them is still found.
EARLIEST = date(1850, 1, 1)
LATEST = date(2199, 12, 31)
MAX_SEARCHES = 200_000  # bounds the splitting (a cap of 1 on a PACS of 10^5 studies stays below it)


@dataclass(frozen=True)
class Answer:
    """One search's rows (a StudyInstanceUID, or None for a row without one) and whether the PACS flagged the
    answer as cut off."""

    uids: list[str | None]
    flagged: bool = False


# search(dicom_date_range or None, modality or None) -> Answer
Search = Callable[[str | None, str | None], Answer]


@dataclass(frozen=True)
class Window:
    """An inclusive range of study dates; None is an open end."""

    first: date | None
    last: date | None

    def dicom(self) -> str | None:
        """The DICOM range-matching value (``YYYYMMDD-YYYYMMDD``, open ends empty); None for no date key."""
        if self.first is None and self.last is None:
            return None
        return f"{_da(self.first)}-{_da(self.last)}"

    def label(self) -> str:
        return f"{self.first.isoformat() if self.first else '…'} to {self.last.isoformat() if self.last else '…'}"

    def halves(self) -> tuple[Window, Window] | None:
        """The two halves (earlier first), None for a single day."""
        lo, hi = self.first or EARLIEST, self.last or LATEST
        if hi <= lo:  # one day (or an open end beyond the numeric bounds): nothing left to halve
            return None
        mid = lo + (hi - lo) // 2
        return Window(self.first, mid), Window(mid + timedelta(days=1), self.last)


def _da(day: date | None) -> str:
    return day.strftime("%Y%m%d") if day else ""


def window(first: str | None, last: str | None) -> Window:
    """The window of a source's ``study_date_from`` / ``study_date_to`` (YYYY-MM-DD, already validated)."""
    return Window(date.fromisoformat(first) if first else None, date.fromisoformat(last) if last else None)


def is_cut(answer: Answer, cap: int | None) -> bool:
    return answer.flagged or (cap is not None and len(answer.uids) >= cap)


def search_studies(search: Search, whole: Window, modalities: list[str] | None, cap: int | None) -> Iterator[str | None]:
    """Every StudyInstanceUID the PACS has in ``whole`` (for ``modalities``), each once, then None per row without
    a UID and the markers described in the module docstring."""
    seen: set[str] = set()
    unusable = 0
    searches = 0

    def ask(piece: Window, modality: str | None) -> Answer:
        nonlocal searches
        searches += 1
        if searches > MAX_SEARCHES:
            raise SourceUnavailable(f"searching studies: more than {MAX_SEARCHES} searches to split a cut-off answer")
        return search(piece.dicom(), modality)

    options: list[str | None] = list(modalities) if modalities else [None]
    for modality in options:
        first = ask(whole, modality)
        if not is_cut(first, cap):
            for uid in first.uids:
                if uid is None:
                    unusable += 1
                elif uid not in seen:
                    seen.add(uid)
                    yield uid
            continue
        dated: set[str] = set()
        pending: list[tuple[Window, Answer | None]] = [(whole, first)]
        while pending:
            piece, answer = pending.pop()
            answer = answer or ask(piece, modality)
            split = piece.halves() if is_cut(answer, cap) else None
            if split:
                pending += [(split[1], None), (split[0], None)]  # the earlier half first
                continue
            unusable += answer.uids.count(None)
            yield from _leaf(answer, seen, dated)
            if is_cut(answer, cap):
                yield marker("search-truncated", f"{piece.label()}{_for(modality)}: {len(answer.uids)}")
        undated = [uid for uid in dict.fromkeys(first.uids) if uid is not None and uid not in dated]
        for uid in undated:
            if uid not in seen:
                seen.add(uid)
                yield uid
        if undated:
            yield marker("undated-studies", f"{len(first.uids)}{_for(modality)}: {len(undated)}")
    for _ in range(unusable):
        yield None


def _for(modality: str | None) -> str:
    return f" ({modality})" if modality else ""


def _leaf(answer: Answer, seen: set[str], dated: set[str]) -> Iterator[str]:
    for uid in answer.uids:
        if uid is None:
            continue
        dated.add(uid)
        if uid not in seen:
            seen.add(uid)
            yield uid
