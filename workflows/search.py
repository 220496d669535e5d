"""Upserting the search attributes of `contracts.search` from a workflow, only when a value changes.

Each upsert is one history event, so callers upsert on state changes only, and values already set (by an
earlier upsert, or inherited by a continue-as-new run) are not written again.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.common import SearchAttributeKey

with workflow.unsafe.imports_passed_through():
    from workflows import patches


def upsert(values: dict[SearchAttributeKey[str], str | None], patch: str = patches.SEARCH_ATTRIBUTES) -> None:
    """Set the given keyword attributes (None leaves one unchanged) in one command, if any of them changed.

    A no-op when replaying a history recorded before search attributes existed (``workflow.patched(patch)``;
    a workflow whose upserts belong to a larger change passes that change's patch id).
    """
    current = workflow.info().typed_search_attributes
    updates = [key.value_set(value) for key, value in values.items()
               if value is not None and current.get(key) != value]
    if updates and workflow.patched(patch):
        workflow.upsert_search_attributes(updates)
