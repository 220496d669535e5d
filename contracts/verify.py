"""`VerifyWorkflow`: prove that what a finished migration imported is in HealthImaging, without importing.

The default check makes no "touch" (GetImageSet and SearchImageSets only), so archived image sets stay in their
tier; the deep check reads each image set's metadata (one touch per set) to check every SOP instance and, when
asked, chosen attributes against the source headers. Differences are listed by source key and kind (attribute
*names* only, never values) in ``differences.ndjson`` under the migration's work prefix.

`SourceVerifyWorkflow` proves a bare source (an S3 prefix) against a data store the same way, with no migration:
it reads the source's headers (one ranged GET per file) and checks each study and series it finds. With
``pixels`` the deep check also compares the pixel data of a seeded sample of instances, frame by frame, through
`GetImageFrame` (one touch per frame).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, Field, StrictBool, ValidationInfo, field_validator, model_validator

from contracts.common import Int, Strict
from contracts.migration import DATASTORE_ID_PATTERN, FinishedMigrationRef, _check_s3

# A DICOM keyword (checked against the data dictionary by the activity); never a value.
KEYWORD_PATTERN = r"^[A-Z][A-Za-z0-9]{0,63}$"
MAX_ATTRIBUTES = 32
# Instances whose frames the deep check reads (each frame a touch, and the source file read whole).
MAX_PIXEL_SAMPLE = 1000


def verify_workflow_id(migration_id: str) -> str:
    return f"verify-{migration_id}"


def source_verify_workflow_id(source_s3_uri: str, datastore_id: str) -> str:
    """``verify-source-<16 hex>`` naming the (source, data store) pair: no key or UID reaches the id."""
    import hashlib

    return "verify-source-" + hashlib.sha256(f"{source_s3_uri}|{datastore_id}".encode()).hexdigest()[:16]


class DifferenceKind(StrEnum):
    IMAGE_SET_GONE = "image_set_gone"  # the image set the report names no longer exists (or is deleted)
    MOVED_TO_NON_PRIMARY = "moved_to_non_primary"  # reported primary, now non-primary
    MISSING = "missing"  # the instance (deep) or some instances of the set (by count) are not there
    NOT_IN_EXPECTED_SERIES = "not_in_expected_series"  # deep: the instance is in the set, under another series
    EXTRA = "extra"  # instances (deep) or image sets (in a verified study) the migration did not import
    METADATA_DIFFERS = "metadata_differs"  # deep, with attributes: the named attributes differ from the source
    PIXELS_DIFFER = "pixels_differ"  # deep, with pixels: a sampled frame's pixels differ from the source's
    UNREADABLE = "unreadable"  # a bare source: a file without a readable DICOM header, nothing HealthImaging holds


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
    """A bare source (every object under an S3 prefix) against a data store, no migration needed."""

    source_s3_uri: str = Field(description="the source prefix, s3://bucket/prefix/")
    datastore_id: Annotated[str, Field(pattern=DATASTORE_ID_PATTERN)]
    work_s3_uri: str = Field(description="where the result and differences are written (verify-source/<run>/)")

    @field_validator("source_s3_uri", "work_s3_uri")
    @classmethod
    def _s3(cls, v: str, info: ValidationInfo) -> str:
        return _check_s3(v, str(info.field_name))


class VerifyResult(BaseModel):
    migration_id: str | None = None  # None: a bare source (source_s3_uri)
    source_s3_uri: str | None = None
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
