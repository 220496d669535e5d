"""Per-file records written as NDJSON under the work prefix (never in workflow history)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field, field_validator

from contracts.common import FileState
from contracts.s3uri import parse_s3_uri


class InventoryEntry(BaseModel):
    """One source object, as listed by the receive stage."""

    key: str
    size: int
    etag: str = ""


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class FindingOrigin(StrEnum):
    """Who found a problem: our parse and validation, or HealthImaging's import job (its WARNING output)."""

    HIMIG = "himig"
    HEALTHIMAGING = "healthimaging"


class Finding(BaseModel):
    """One problem found in a file. ``reason`` is readable by an operator and contains no PHI."""

    code: str
    severity: Severity
    reason: str
    attribute: str | None = None
    origin: FindingOrigin = FindingOrigin.HIMIG


class ParsedRecord(BaseModel):
    """What the header-only parse learned about one file. Patient-level values are kept only as a hash."""

    key: str
    size: int
    etag: str = ""
    readable: bool
    findings: list[Finding] = Field(default_factory=list)
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    transfer_syntax_uid: str | None = None
    modality: str | None = None
    is_dicomdir: bool = False
    header_bytes: int = 0
    # sha256 over the normalised patient / study / series attributes (conflict prediction without PHI).
    patient_fingerprint: str | None = None
    study_fingerprint: str | None = None
    series_fingerprint: str | None = None
    # sha256 of the bytes read (header only); with size and etag it identifies identical content.
    header_sha256: str | None = None
    # Keyed HMAC of the header's elements in a canonical form (activities.instance_identity): equal for the same
    # dataset in another transfer syntax or with another file meta group. None in records written before it.
    dataset_fingerprint: str | None = None


class InstanceRecord(BaseModel):
    """The canonical record of a valid instance, input to batch planning."""

    key: str
    size: int
    etag: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    sop_class_uid: str
    patient_fingerprint: str
    study_fingerprint: str
    series_fingerprint: str
    content_id: str
    # Header identity independent of the encoding (see ParsedRecord); "" when unknown (older records).
    dataset_fingerprint: str = ""
    header_bytes: int = 0  # where Pixel Data starts (0: unknown): what re-reading the header costs
    warnings: list[Finding] = Field(default_factory=list)
    # Set by planning: HealthImaging is expected to put this file in a non-primary image set (its series is
    # already held, in this source or in the data store, with other patient/study/series attributes).
    predicted_non_primary: bool = False
    prediction_reason: str | None = None


class ImportedInstance(BaseModel):
    """One line of the data store's import index (no patient values: attributes only as fingerprints)."""

    sop_instance_uid: str
    content_id: str
    image_set_id: str
    is_primary: bool
    study_instance_uid: str
    series_instance_uid: str
    # patient / study / series fingerprints joined: equal means HealthImaging would see no conflict.
    attributes_fingerprint: str
    migration_id: str
    batch: int = Field(ge=0, strict=True)
    # Added with #15: the header's identity independent of the encoding, and where the imported file was read from
    # (so a later copy in another encoding can be compared with it). Lines written before have none of these and
    # are compared by content_id alone, as they were.
    dataset_fingerprint: str | None = None
    source_uri: str | None = None  # s3://bucket/key of the imported file
    source_etag: str | None = None  # its ETag then: a file rewritten since is not compared
    size: int | None = Field(None, ge=0, strict=True)  # strict: "12" or true is a corrupt line, not a number
    header_bytes: int | None = Field(None, ge=0, strict=True)
    transfer_syntax_uid: str | None = None

    @field_validator("source_uri")
    @classmethod
    def _an_object(cls, value: str | None) -> str | None:
        if value is not None and not parse_s3_uri(value, field="source_uri").key:
            raise ValueError("source_uri: names a bucket, not an object (s3://bucket/key)")
        return value


class LedgerEntry(BaseModel):
    """The terminal state of one source file. The report is the union of all ledger lines."""

    key: str
    state: FileState
    size: int = 0
    reason: str | None = None
    code: str | None = None
    batch: int | None = None
    job_id: str | None = None
    image_set_id: str | None = None
    is_primary: bool | None = None
    image_set_version: int | None = None
    duplicate_of: str | None = None
    # A conflicting duplicate: the attributes that differ from the file it duplicates (names only, never values).
    differing_attributes: list[str] | None = None
    # Planning's prediction that the file lands in a non-primary image set, and why (no patient values).
    predicted_non_primary: bool | None = None
    prediction_reason: str | None = None
    # Every finding of a rejected file (code, severity, attribute, reason); `code`/`reason` join the rejecting ones.
    # Of an imported or failed file: our warnings and the import job's, each with its origin.
    findings: list[Finding] | None = None
    # Where the file belongs (UIDs, no patient values), for the report's per-study and per-series tables.
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None


def attributes_fingerprint(inst: InstanceRecord) -> str:
    """The attributes HealthImaging compares within a series, as one fingerprint (no patient values).

    Written into the data store's import index by review and compared by planning: one definition for both.
    """
    return f"{inst.patient_fingerprint}/{inst.study_fingerprint}/{inst.series_fingerprint}"


class FailedFile(BaseModel):
    """One line of a data store's failed index: a file whose import into the data store the service failed for a
    reason that would fail again (no patient values: the service's reason stays in the migration's report)."""

    content_id: str  # size:ETag:header hash; the same content fails the same way
    sop_instance_uid: str
    key: str  # where the file was read from (in the migration's source bucket)
    code: str  # the service's exceptionType
    migration_id: str
    batch: int = Field(ge=0, strict=True)
