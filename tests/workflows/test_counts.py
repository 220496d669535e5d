"""Files per state add up the same way for a migration (its batches) and a batch (its halves)."""

from __future__ import annotations

from contracts.common import FileState
from workflows.counts import add_counts


def test_counts_add_per_state_into_a_new_dict() -> None:
    a = {FileState.IMPORTED: 3}
    out = add_counts(a, {FileState.IMPORTED: 2, FileState.FAILED: 1})
    assert out == {FileState.IMPORTED: 5, FileState.FAILED: 1}
    assert a == {FileState.IMPORTED: 3}


def test_a_zero_adds_no_state() -> None:
    assert add_counts({}, {FileState.FAILED: 0}) == {}
    assert add_counts({FileState.FAILED: 2}, {FileState.FAILED: 0}) == {FileState.FAILED: 2}
