"""Routing a batch's studies to HealthLake: the routing options, the import it starts and the outcome it reports."""

from __future__ import annotations

from pydantic import BaseModel, Field

from contracts.common import Bool, Closed, Int, ValidationLevel


class FhirRouting(Closed):
    """Where and how a batch's ImagingStudy resources go into HealthLake."""

    datastore_id: str
    validation_level: ValidationLevel = ValidationLevel.STRUCTURE_ONLY
    validate_first: Bool = False
    # 2: routed again because the study gained image sets while round 1 was in flight (see workflows/batch.py).
    round: Int = Field(1, ge=1, le=2)


class FhirFailure(BaseModel):
    """One resource HealthLake (or `$validate`) refused: ids, issue codes and element paths only, never values."""

    resource_type: str
    resource_id: str | None = None
    stage: str = Field(description="validate ($validate refused it, not imported) or import (the job refused it)")
    issues: list[str] = Field(default_factory=list, description="'code at Element.path' per issue")


class FhirImportRef(BaseModel):
    """A started HealthLake import of one batch's ImagingStudy NDJSON (job_id None: nothing to import)."""

    datastore_id: str
    job_id: str | None
    input_s3_uri: str
    output_s3_uri: str
    studies: int
    resources: int
    validation_level: ValidationLevel
    # At most MAX_FAILURES (below) of the resources refused before import; the counts below
    # and the start record (``fhir/batch-NNNNN.start.json``) cover all of them.
    validate_rejected: list[FhirFailure] = Field(default_factory=list)
    rejected_by_validate: int = Field(0, description="resources $validate refused (not imported)")
    refused_at_build: int = Field(0, description="resources our builder made that the FHIR model refuses (not sent)")


class FhirJobOutcome(BaseModel):
    job_id: str
    status: str
    message: str | None = None


# A HealthLake import job in one of these states ran to its end: its review counts every resource it was sent.
FHIR_JOB_DONE = frozenset({"COMPLETED", "COMPLETED_WITH_ERRORS"})
# Refused resources kept in workflow payloads (FhirImportRef, FhirSummary); the job's FAILURE/ folder and the
# start record have all of them.
MAX_FAILURES = 20


def fhir_round_done(job_status: str | None, reviewed: bool | None) -> bool:
    """Did a HealthLake routing round run to its end and get reviewed? (A round 2 that did counts for its batch.)

    ``reviewed`` None (absent from a ``result.json``) counts as reviewed; pure, so workflow code may call it.
    """
    return job_status in FHIR_JOB_DONE and reviewed is not False


class FhirSummary(BaseModel):
    """The FHIR outcome of one batch: counts, plus the refused resources (ids and issue codes, no values)."""

    job_id: str | None = None
    job_status: str | None = None
    studies: int = 0
    resources: int = 0
    imported: int = 0
    failed: int = 0
    rejected_by_validate: int = 0
    # Imported studies whose primary image sets in HealthImaging now include sets the resource did not list.
    stale_studies: int = 0
    rerouted: bool = False
    # False: the job's output has not (yet) been reviewed; the counts above are not the job's (see problems).
    reviewed: bool = True
    failures: list[FhirFailure] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)
    summary_uri: str | None = None
