"""Adding up files per state, as batches report them to their migration and split halves to their batch."""

from __future__ import annotations

from collections.abc import Mapping

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from contracts.common import FileState


def add_counts(a: Mapping[FileState, int], b: Mapping[FileState, int]) -> dict[FileState, int]:
    """The per-state sums of ``a`` and ``b``, as a new dict; a zero in ``b`` adds no state."""
    out = dict(a)
    for state, n in b.items():
        if n:
            out[state] = out.get(state, 0) + n
    return out
