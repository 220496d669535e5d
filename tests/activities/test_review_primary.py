"""Review's isPrimary check (activities/review.py `primary_lookups`): GetImageSet only where the job's own two
statements (every file's output line, the manifest's imageSetsSummary) do not already agree that a set is primary."""

from __future__ import annotations

from typing import Any

import pytest

from activities.review import primary_lookups
from contracts.stages import ImageSetRef

A, B = "a" * 32, "b" * 32


def _ref(image_set_id: str, primary: bool) -> ImageSetRef:
    return ImageSetRef(image_set_id=image_set_id, version=1, is_primary=primary, instances=2)


def _summary(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"imageSetsSummary": list(entries)}


def _ids(refs: list[ImageSetRef]) -> list[str]:
    return [r.image_set_id for r in refs]


class TestNoLookup:
    def test_lines_and_summary_agreeing_on_primary_need_no_call(self) -> None:
        problems, lookups = primary_lookups({A: _ref(A, True), B: _ref(B, True)}, {A: {True}, B: {True}},
                                            _summary({"imageSetId": A, "isPrimary": True},
                                                     {"imageSetId": B, "isPrimary": True}))
        assert problems == [] and lookups == []


class TestLookup:
    @pytest.mark.parametrize(("claims", "summary"), [
        ({False}, {"imageSetId": A, "isPrimary": False}),  # non-primary: confirmed before a reconciliation
        ({True}, {"imageSetId": A, "isPrimary": False}),  # the two statements differ
        ({False}, {"imageSetId": A, "isPrimary": True}),
        ({True, None}, {"imageSetId": A, "isPrimary": True}),  # a line states no flag
        ({None}, {"imageSetId": A, "isPrimary": True}),
        ({True}, {"imageSetId": A}),  # the summary lists the set without a flag
        ({True}, {"imageSetId": A, "isPrimary": "true"}),  # a flag that is not a boolean is no statement
        ({True}, {"imageSetId": A, "isPrimary": 1}),
        ({True}, {"imageSetId": B, "isPrimary": True}),  # the summary does not list the set
        (set(), {"imageSetId": A, "isPrimary": True}),  # no line claims anything
    ])
    def test_a_set_the_job_does_not_state_primary_twice_is_looked_up(self, claims: set[bool | None],
                                                                      summary: dict[str, Any]) -> None:
        _, lookups = primary_lookups({A: _ref(A, True in claims)}, {A: claims}, _summary(summary))
        assert _ids(lookups) == [A]

    @pytest.mark.parametrize("summary", [{}, {"imageSetsSummary": None}, {"imageSetsSummary": []},
                                         {"imageSetsSummary": ["x", 3, None]}])
    def test_a_missing_or_malformed_summary_means_every_set_is_looked_up(self, summary: dict[str, Any]) -> None:
        problems, lookups = primary_lookups({A: _ref(A, True), B: _ref(B, True)}, {A: {True}, B: {True}}, summary)
        assert problems == [] and sorted(_ids(lookups)) == [A, B]

    def test_only_the_sets_in_doubt_are_looked_up(self) -> None:
        _, lookups = primary_lookups({A: _ref(A, True), B: _ref(B, False)}, {A: {True}, B: {False}},
                                     _summary({"imageSetId": A, "isPrimary": True},
                                              {"imageSetId": B, "isPrimary": False}))
        assert _ids(lookups) == [B]


def test_lines_disagreeing_on_a_set_are_a_problem_and_the_set_is_looked_up() -> None:
    problems, lookups = primary_lookups({A: _ref(A, True)}, {A: {True, False}},
                                        _summary({"imageSetId": A, "isPrimary": True}))
    assert problems == [f"image set {A}: the job output's lines disagree on isPrimary"] and _ids(lookups) == [A]
