"""`RollbackWorkflow`: undo a finished migration by deleting the image sets it created, and nothing else.

The workflow plans first (which image sets the migration created, which it must leave alone and why), then waits
for an operator to confirm by naming the count it will delete, then deletes, and records what it did next to the
migration's report. Nothing here carries DICOM values: image sets are named by id, kept ones by a reason code.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, Field, StrictInt

from contracts.common import Strict
from contracts.migration import DATASTORE_ID_PATTERN, FinishedMigrationRef
from contracts.reconciliation import REVIEWER_PATTERN

# An unconfirmed plan waits this long for its confirmation, then the rollback ends without deleting anything.
CONFIRM_TIMEOUT_SECONDS = 24 * 3600.0
# DeleteImageSet calls per activity: small enough to retry cheaply, few enough to keep the history short.
DELETE_CHUNK = 100


def rollback_workflow_id(migration_id: str) -> str:
    """One rollback per migration: starting it again finds the same workflow (and its record)."""
    return f"rollback-{migration_id}"


class KeepReason(StrEnum):
    """Why an image set the migration touched is not deleted."""

    EXISTED_BEFORE = "existed_before"  # the migration only added a version to a set that was already there
    CHANGED_AFTER = "changed_after"  # someone changed the set after the migration (a newer version than its own)
    PRIMARY_PREDATES = "primary_predates"  # a non-primary set whose series' primary set the migration did not make
    ALREADY_DELETED = "already_deleted"  # gone already (an earlier rollback, a reconciliation's discard)


class RollbackPhase(StrEnum):
    PLANNING = "planning"
    AWAITING_CONFIRMATION = "awaiting_confirmation"
    DELETING = "deleting"
    DONE = "done"
    EXPIRED = "expired"  # not confirmed in time: nothing deleted
    CANCELLED = "cancelled"


class RollbackInput(FinishedMigrationRef):
    requested_by: Annotated[str | None, Field(pattern=REVIEWER_PATTERN)] = None
    confirm_timeout_seconds: float = Field(CONFIRM_TIMEOUT_SECONDS, gt=0, le=30 * 24 * 3600, allow_inf_nan=False)


class RollbackPlan(BaseModel):
    """What a rollback would do; the ids themselves are in ``plan_uri`` (one JSON document in the work prefix)."""

    to_delete: int
    kept: dict[KeepReason, int] = Field(default_factory=dict)
    plan_uri: str


class DeleteChunk(Strict):
    plan_uri: str
    datastore_id: Annotated[str, Field(pattern=DATASTORE_ID_PATTERN)]
    start: int = Field(ge=0)
    count: int = Field(ge=1, le=DELETE_CHUNK)


class DeleteOutcome(BaseModel):
    deleted: int = 0
    already_deleted: int = 0


class RollbackConfirmation(Strict):
    """The operator's confirmation: the number of image sets they expect to delete, which must be the plan's."""

    count: StrictInt = Field(ge=0)
    by: Annotated[str, Field(pattern=REVIEWER_PATTERN)]


class RollbackProgress(BaseModel):
    migration_id: str
    phase: RollbackPhase
    plan: RollbackPlan | None = None
    deleted: int = 0
    already_deleted: int = 0
    confirmed_by: str | None = None
    record_uri: str | None = None


class RecordInput(Strict):
    input: RollbackInput
    progress: RollbackProgress
