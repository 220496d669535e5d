"""Inputs, messages, query answers and activity contracts of `ReconciliationWorkflow`.

PHI: nothing here carries DICOM values. A conflict is described by attribute *names* and short keyed
fingerprints of the primary (old) and non-primary (new) values, so an operator sees *what* differs and *that*
the values differ; the values themselves stay in HealthImaging (GetImageSetMetadata), readable by authorised
users only. The one exception is `ReconciliationDecision.update_first`, whose values an operator types on
purpose; it reaches workflow history (encrypted by the payload codec) but never the query answer.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from contracts.common import Bool, Closed, Float, Int, Strict
from contracts.migration import DATASTORE_ID_PATTERN, MIGRATION_ID_PATTERN

IMAGE_SET_ID_PATTERN = r"^[0-9a-z]{32}$"
# Reviewer names end up in the decision log and in logs: an operator identity, never free text.
REVIEWER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,199}$"
DEFAULT_TIMEOUT_SECONDS = 7 * 24 * 3600.0

# The normalized elements whose disagreement with a primary set makes an import non-primary (HealthImaging DG
# "metadata-normalization"). Differences in these are flagged as the cause; other differences are context.
NORMALIZED_ATTRIBUTES: dict[str, frozenset[str]] = {
    "Patient": frozenset({"PatientID", "PatientName", "PatientBirthDate", "PatientSex"}),
    "Study": frozenset({"StudyInstanceUID", "StudyDate", "AccessionNumber", "StudyID"}),
    "Series": frozenset({"SeriesInstanceUID", "SeriesNumber", "Modality"}),
}
# Levels an operator may correct before promoting: UpdateImageSetMetadata takes Patient and Study documents.
UPDATABLE_LEVELS = ("Patient", "Study")

Level = Literal["Patient", "Study", "Series"]


class ReconciliationState(StrEnum):
    DESCRIBING = "describing"
    AWAITING_DECISION = "awaiting_decision"
    ESCALATED = "escalated"  # still awaiting a decision: escalation never decides
    APPLYING = "applying"
    PROMOTED = "promoted"
    KEPT = "kept"
    DISCARDED = "discarded"
    FAILED = "failed"
    CANCELLED = "cancelled"  # a standard Temporal cancel came before any decision


OPEN_STATES = frozenset({ReconciliationState.DESCRIBING, ReconciliationState.AWAITING_DECISION,
                         ReconciliationState.ESCALATED})


class ReconciliationAction(StrEnum):
    PROMOTE = "promote"  # CopyImageSet(promoteToPrimary, force) → new primary id, then delete the non-primary set
    KEEP = "keep"  # leave the non-primary set as it is
    DISCARD = "discard"  # DeleteImageSet of the non-primary set


class ReconciliationInput(Strict):
    """Start input (plain JSON from `route`, the CLI or the Temporal UI).

    Workflow id convention: `recon-<datastoreId>-<imageSetId>` (`reconciliation_workflow_id`).
    """

    datastore_id: Annotated[str, Field(pattern=DATASTORE_ID_PATTERN)]
    image_set_id: Annotated[str, Field(pattern=IMAGE_SET_ID_PATTERN, description="the non-primary image set")]
    migration_id: Annotated[str | None, Field(pattern=MIGRATION_ID_PATTERN)] = None
    batch: Int | None = Field(None, ge=0)
    timeout_seconds: Float = Field(DEFAULT_TIMEOUT_SECONDS, gt=0, le=366 * 24 * 3600,
                                   description="wait this long for a decision, then escalate (and keep waiting)")
    authorized_reviewers: list[Annotated[str, Field(pattern=REVIEWER_PATTERN)]] | None = Field(
        None, description="when set, only these reviewers may decide")
    # The wait for a decision can outlive any history (a flood of signals, months of escalation): the workflow
    # continues as new with what it has gathered. A caller cannot set it (`workflows.carried`).
    continued: ReconciliationCarry | None = Field(
        None, description="internal: set by the workflow itself when it continues as new; a start with it fails")


class ReconciliationDecision(Strict):
    """What the `approve` signal and the `decide` update carry, e.g.
    ``{"action": "promote", "reviewer": "alice", "reason": "new demographics are correct"}``."""

    action: ReconciliationAction
    reviewer: Annotated[str, Field(pattern=REVIEWER_PATTERN)]
    reason: str | None = Field(None, max_length=1000, description="why (no PHI)")
    update_first: dict[Literal["Patient", "Study"], dict[str, Any]] | None = Field(
        None, description="promote only: attributes applied with UpdateImageSetMetadata(force) before the copy, "
                          'e.g. {"Patient": {"PatientID": "..."}}')
    reconciliation_id: str | None = Field(
        None, max_length=300, description="the reconciliation (workflow id) this decision is for; required (a "
        "decision without it, or naming another, is refused), so an attested decision copied out of one history "
        "decides nothing else (`himig approve` sets it)")

    @field_validator("update_first")
    @classmethod
    def _attributes(cls, value: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]] | None:
        if value is not None:
            if not any(value.values()):
                raise ValueError("must name at least one attribute")
            for attrs in value.values():
                for name in attrs:
                    if not name.isidentifier() or len(name) > 64:
                        raise ValueError("attribute names must be DICOM keywords")
        return value

    @model_validator(mode="after")
    def _update_only_with_promote(self) -> ReconciliationDecision:
        if self.update_first and self.action is not ReconciliationAction.PROMOTE:
            raise ValueError("update_first is only allowed with action 'promote'")
        return self


class DecisionRecord(Closed):
    """One decision attempt, accepted or not: who, when, why, through which message, and what became of it."""

    at: datetime
    via: Literal["signal", "update"]
    accepted: Bool
    action: ReconciliationAction | None = None
    reviewer: str | None = None
    reason: str | None = None
    updated_attributes: list[str] = Field(default_factory=list, description="names only, never values")
    error: str | None = Field(None, description="why it was rejected (field names and rules, never input values)")
    claimed_reviewer: str | None = Field(
        None, description="the `reviewer` the decision's JSON named when it differs from the attested identity "
                          "(which is what `reviewer` records); ignored for authorisation")


class AttributeDifference(Closed):
    level: Level
    attribute: str
    normalized: Bool = Field(description="one of the elements that decide primary vs non-primary")
    primary_fingerprint: str | None = Field(description="keyed hash prefix of the primary's value; None = absent")
    non_primary_fingerprint: str | None


class ConflictDescription(Closed):
    """Result of `describe_conflict` (stored in history, hence fingerprints instead of values)."""

    datastore_id: str
    image_set_id: str
    image_set_state: str
    is_primary: Bool
    version: str
    instances: Annotated[Int, Field(ge=0)]
    primary_image_set_id: str | None = None
    primary_version: str | None = None
    compared_with: Literal["series", "study"] | None = Field(
        None, description="whether the primary set found is of the same series or only of the same study")
    differences: list[AttributeDifference] = Field(default_factory=list)

    @property
    def reconcilable(self) -> bool:
        return self.image_set_state == "ACTIVE" and not self.is_primary


class ReconciliationCarry(Closed):
    """What a `ReconciliationWorkflow` still waiting for a decision carries into its next run: the conflict it
    described, the decision log, the deadline and whether it escalated. Nothing is in flight when it rolls over."""

    state: ReconciliationState
    conflict: ConflictDescription
    decisions: list[DecisionRecord] = Field(default_factory=list)
    decision_deadline: datetime
    escalated_at: datetime | None = None
    error: str | None = None
    runs: Annotated[Int, Field(ge=1)] = 1

    @model_validator(mode="after")
    def _waiting(self) -> ReconciliationCarry:
        if self.state not in (ReconciliationState.AWAITING_DECISION, ReconciliationState.ESCALATED):
            raise ValueError("state: only a reconciliation awaiting a decision continues as new")
        return self


class ReconciliationStatus(BaseModel):
    """Answer of the `conflict` query."""

    datastore_id: str
    image_set_id: str
    migration_id: str | None
    batch: int | None
    state: ReconciliationState
    conflict: ConflictDescription | None
    decisions: list[DecisionRecord]
    escalated_at: datetime | None = None
    decision_deadline: datetime | None = None
    promoted_image_set_id: str | None = None
    error: str | None = None


class ReconciliationOutcome(BaseModel):
    """Workflow result, and what the `decide` update returns once the decision has been applied."""

    datastore_id: str
    image_set_id: str
    state: ReconciliationState
    action: ReconciliationAction | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None
    reason: str | None = None
    promoted_image_set_id: str | None = None
    error: str | None = None


# ---- activity contracts -------------------------------------------------------------------------------------


class ImageSetTarget(BaseModel):
    datastore_id: str
    image_set_id: str


class UpdateFirstInput(BaseModel):
    datastore_id: str
    image_set_id: str
    attributes: dict[str, dict[str, Any]]


class UpdateFirstResult(BaseModel):
    version: str
    changed: bool


class PromoteInput(BaseModel):
    datastore_id: str
    image_set_id: str
    primary_image_set_id: str | None
    # A primary set of the series created after this instant that holds every source instance is the copy a
    # previous attempt made (CopyImageSet has no client token).
    not_before: datetime


class PromoteResult(BaseModel):
    image_set_id: str
    reused_existing: bool


class ImageSetStatus(BaseModel):
    image_set_id: str
    state: str
    workflow_status: str
    is_primary: bool
    version: str


class DeleteResult(BaseModel):
    already_deleted: bool


class ReviewerClaim(BaseModel):
    """What a decision's payload claims about its sender, for `verify_reviewer` (contracts/attestation.py)."""

    identity: str | None = Field(None, description="`himig-attested-by`; None when the payload has none")
    attestation: str | None = Field(None, description="`himig-attestation` (hex HMAC)")
    payload_sha256: str = Field(description="hex SHA-256 of the payload's data, as the workflow received it")


class ReviewerVerdict(BaseModel):
    """Answer of `verify_reviewer`: the verified identity, or why the decision is refused."""

    accepted: bool
    reviewer: str | None = Field(None, description="the identity whose attestation verified (refused or not)")
    error: str | None = None


class EscalationInput(BaseModel):
    datastore_id: str
    image_set_id: str
    workflow_id: str
    migration_id: str | None = None
    batch: int | None = None
    waiting_seconds: float


def reconciliation_workflow_id(datastore_id: str, image_set_id: str) -> str:
    return f"recon-{datastore_id}-{image_set_id}"


# ReconciliationInput names ReconciliationCarry (defined after it, with the models it carries): resolve it now,
# so the input is complete when it is first imported, not when it is first validated.
ReconciliationInput.model_rebuild()
