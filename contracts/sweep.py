"""The reconciliation sweep: find a data store's non-primary image sets that have no reconciliation and start one.

A `ReconciliationWorkflow` can end without a decision having been applied for reasons outside it (terminated by
an operator or by Temporal's history limit, timed out): its non-primary image set then waits for nobody. The
`ReconciliationSweepWorkflow` lists the data store's non-primary image sets page by page and starts a
reconciliation for each one that has none open and none that completed (a completed one was decided, e.g.
`keep`); run it on a Temporal schedule (README "Reconciling non-primary image sets").
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from contracts.common import Closed, Float, Int, Strict
from contracts.migration import DATASTORE_ID_PATTERN
from contracts.reconciliation import DEFAULT_TIMEOUT_SECONDS

# Image sets per page of the listing activity (ids ride in workflow history, 32 characters each).
SWEEP_PAGE_SIZE = 50  # SearchImageSets takes at most 50
Count = Annotated[Int, Field(ge=0)]


class SweepCarry(Closed):
    """Where a sweep continues after it rolled over, and what it counted so far."""

    next_token: str = Field(min_length=1, max_length=8192)
    found: Count = 0
    started: Count = 0
    already: Count = 0


class SweepInput(Strict):
    """Input of `ReconciliationSweepWorkflow` (plain JSON from `temporal schedule create ... --input`)."""

    datastore_id: Annotated[str, Field(pattern=DATASTORE_ID_PATTERN)]
    timeout_seconds: Float = Field(DEFAULT_TIMEOUT_SECONDS, gt=0, le=366 * 24 * 3600,
                                   description="decision timeout of the reconciliations it starts")
    continued: SweepCarry | None = Field(
        None, description="internal: set by the workflow itself when it continues as new; a start with it fails")


class NonPrimaryPageInput(BaseModel):
    """Input of the `list_non_primary` activity."""

    datastore_id: str
    next_token: str | None = None


class NonPrimaryPage(BaseModel):
    image_set_ids: list[str]
    next_token: str | None = None


class SweepResult(BaseModel):
    datastore_id: str
    found: int = Field(description="non-primary image sets listed")
    started: int = Field(description="reconciliations started (none was open or completed for the set)")
    already: int = Field(description="sets with a reconciliation open, or one that completed (decided)")
