"""`VerifyWorkflow`: prove that what a finished migration imported is in HealthImaging, without importing.

The default check makes no "touch" (GetImageSet and SearchImageSets only), so archived image sets stay in their
tier; the deep check reads each image set's metadata (one touch per set) to check every SOP instance and, when
asked, chosen attributes against the source headers. Differences are listed by source key and kind (attribute
*names* only, never values) in ``differences.ndjson`` under the migration's work prefix.

`SourceVerifyWorkflow` proves a bare source (an S3 prefix) against a data store the same way, with no migration:
it reads the source's headers (one ranged GET per file) and checks each study and series it finds. A source named
by a connector (a local directory, a DICOMweb or DIMSE PACS) is first pulled, exactly as a migration pulls it, into
a landing prefix under the work prefix (`verify_landing`), and what landed is checked like an S3 source. With
``pixels`` the deep check also compares the pixel data of a seeded sample of instances, frame by frame, through
`GetImageFrame` (one touch per frame).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, StrictBool, ValidationInfo, field_validator, model_validator

from contracts.common import Int, Strict
from contracts.migration import DATASTORE_ID_PATTERN, FinishedMigrationRef, _check_s3
from contracts.s3uri import parse_s3_uri
from contracts.sources import SourceConnector

# A DICOM keyword (checked against the data dictionary by the activity); never a value.
KEYWORD_PATTERN = r"^[A-Z][A-Za-z0-9]{0,63}$"
MAX_ATTRIBUTES = 32
# Instances whose frames the deep check reads (each frame a touch, and the source file read whole).
MAX_PIXEL_SAMPLE = 1000


def verify_workflow_id(migration_id: str) -> str:
    return f"verify-{migration_id}"


def source_verify_workflow_id(source: str, datastore_id: str) -> str:
    """``verify-source-<16 hex>`` naming the (source, data store) pair: no key, path or UID reaches the id.
    ``source`` is the S3 prefix, or `source_key` of a connector."""
    import hashlib

    return "verify-source-" + hashlib.sha256(f"{source}|{datastore_id}".encode()).hexdigest()[:16]


def source_key(input: SourceVerifyInput) -> str:
    """What names the source of a verification: its S3 prefix, or its connector's canonical JSON."""
    if input.source_connector is not None:
        return input.source_connector.model_dump_json(exclude_none=True)
    return input.source_s3_uri or ""


def describe_source(input: SourceVerifyInput) -> str:
    """The source in words for results and logs: its S3 prefix, or the connector's kind and address (never a
    local path: folder names often hold patient names)."""
    c = input.source_connector
    if c is None:
        return input.source_s3_uri or ""
    if c.kind == "local":
        return "local directory"
    if c.kind == "dicomweb":
        parts = urlsplit(c.url)
        return f"DICOMweb {parts.scheme}://{parts.netloc}"
    return f"DIMSE {c.called_ae}@{c.host}:{c.port}"


def verify_run_prefix(work_s3_uri: str, run_id: str) -> str:
    """``<work>/verify-source/<run id>/``: one verification run's result, differences and (with a connector) the
    pulled copy of its source."""
    return parse_s3_uri(work_s3_uri, field="work_s3_uri").join("verify-source", run_id).as_prefix().uri


def verify_landing(work_s3_uri: str, run_id: str) -> str:
    """``<run prefix>/landing/``: where a connector source is pulled before it is checked."""
    return parse_s3_uri(verify_run_prefix(work_s3_uri, run_id)).join("landing").as_prefix().uri


def verify_pull_id(run_id: str) -> str:
    """The id the pull's bookkeeping (units, failures, inventory) is kept under: ``<work>/verify-source/<run>/pull/``."""
    return f"verify-source/{run_id}/pull"


class DifferenceKind(StrEnum):
    IMAGE_SET_GONE = "image_set_gone"  # the image set the report names no longer exists (or is deleted)
    MOVED_TO_NON_PRIMARY = "moved_to_non_primary"  # reported primary, now non-primary
    MISSING = "missing"  # the instance (deep) or some instances of the set (by count) are not there
    NOT_IN_EXPECTED_SERIES = "not_in_expected_series"  # deep: the instance is in the set, under another series
    EXTRA = "extra"  # instances (deep) or image sets (in a verified study) the migration did not import
    METADATA_DIFFERS = "metadata_differs"  # deep, with attributes: the named attributes differ from the source
    PIXELS_DIFFER = "pixels_differ"  # deep, with pixels: a sampled frame's pixels differ from the source's
    UNREADABLE = "unreadable"  # a bare source: a file without a readable DICOM header, nothing HealthImaging holds
    NOT_PULLED = "not_pulled"  # a connector source: a study or file the source listed but would not deliver


class VerifyOptions(Strict):
    """What a verification checks, beyond the default no-touch check."""

    deep: StrictBool = False
    attributes: list[Annotated[str, Field(pattern=KEYWORD_PATTERN)]] = Field(default_factory=list,
                                                                            max_length=MAX_ATTRIBUTES)
    pixels: Int = Field(0, ge=0, le=MAX_PIXEL_SAMPLE, description="deep: compare the frames of this many "
                        "instances (a seeded sample) with the source through GetImageFrame; each frame is a touch")
    pixel_seed: Int = Field(0, ge=0, le=2**31 - 1, description="the sample's seed: the same seed, the same sample")
    # Publish the outcome as an EventBridge event (a standing check run by a Temporal Schedule does).
    publish: StrictBool = False

    @model_validator(mode="after")
    def _pixels_are_deep(self) -> VerifyOptions:
        if self.pixels and not self.deep:
            raise ValueError("pixels: needs deep (frames are found through the image sets' metadata)")
        return self


class VerifyInput(FinishedMigrationRef, VerifyOptions):
    source_s3_uri: str = Field(description="the migration's source prefix (deep attribute checks read headers)")

    @field_validator("source_s3_uri")
    @classmethod
    def _source(cls, v: str) -> str:
        return _check_s3(v, "source_s3_uri")


class SourceVerifyInput(VerifyOptions):
    """A bare source against a data store, no migration needed: every object under an S3 prefix, or what a source
    connector (local directory, DICOMweb or DIMSE PACS) holds; exactly one of the two."""

    source_s3_uri: str | None = Field(None, description="the source prefix, s3://bucket/prefix/")
    source_connector: SourceConnector | None = Field(
        None, description="a local directory, DICOMweb or DIMSE PACS: pulled (as a migration pulls it) into "
        "<work>/verify-source/<run>/landing/ first, then what landed is checked")
    pull: StrictBool = Field(False, description="a PACS connector: pull every file and check what lands, instead "
                             "of checking what the PACS lists (QIDO-RS / C-FIND); --attribute and --pixels pull too")
    datastore_id: Annotated[str, Field(pattern=DATASTORE_ID_PATTERN)]
    work_s3_uri: str = Field(description="where the result and differences are written (verify-source/<run>/)")

    @field_validator("source_s3_uri", "work_s3_uri")
    @classmethod
    def _s3(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else _check_s3(v, str(info.field_name))

    @model_validator(mode="after")
    def _one_source(self) -> SourceVerifyInput:
        if self.source_s3_uri is not None and self.source_connector is not None:
            raise ValueError("source_s3_uri and source_connector are exclusive: a connector's source is pulled "
                             "under work_s3_uri, not into an S3 prefix of yours")
        if self.source_s3_uri is None and self.source_connector is None:
            raise ValueError("give source_s3_uri (an S3 prefix) or source_connector (a directory or a PACS)")
        if self.pull and (self.source_connector is None or self.source_connector.kind == "local"):
            raise ValueError("pull: only with a DICOMweb or DIMSE source_connector (an S3 prefix is read in place, "
                             "a directory is always pulled)")
        return self

    @property
    def listed_only(self) -> bool:
        """Checked by the PACS's listing alone, nothing pulled: a PACS connector, and nothing that needs the files
        (``attributes`` are read from headers, ``pixels`` from whole files)."""
        c = self.source_connector
        return c is not None and c.kind != "local" and not (self.pull or self.attributes or self.pixels)


class PulledSourceInput(BaseModel):
    """`verify_pulled_source`: a connector source, pulled by `receive_inventory`, checked where it landed. Built by
    `SourceVerifyWorkflow` only (never a workflow input), so an operator cannot point a check at another prefix."""

    request: SourceVerifyInput
    landing_s3_uri: str
    pull_id: str  # where the pull kept its bookkeeping: its failure rows are read back from there


class VerifyResult(BaseModel):
    migration_id: str | None = None  # None: a bare source (source_s3_uri)
    source_s3_uri: str | None = None  # with a connector: the landing prefix its source was pulled into
    source_connector: str | None = None  # a connector source, described without secrets or PHI
    deep: bool
    instances_expected: int
    instances_verified: int
    image_sets_checked: int
    differences: dict[DifferenceKind, int] = Field(default_factory=dict)
    differences_uri: str
    # What the check cost: image-set touches made (0 unless deep), and what a deep check would make.
    touches: int = 0
    touches_for_deep: int = 0
    requests: dict[str, int] = Field(default_factory=dict)
    published: bool = False
    # Deep with pixels: frames compared equal, and frames that could not be compared, by reason (never a pass).
    frames_compared: int = 0
    frames_not_comparable: dict[str, int] = Field(default_factory=dict)
    # What this check could not see (e.g. the default check of a bare source counts instances per series).
    notes: list[str] = Field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not any(self.differences.values())
