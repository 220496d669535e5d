"""`VerifyWorkflow`: prove that what a finished migration imported is in HealthImaging, without importing.

The default check makes no "touch" (GetImageSet and SearchImageSets only), so archived image sets stay in their
tier; the deep check reads each image set's metadata (one touch per set) to check every SOP instance and, when
asked, chosen attributes against the source headers. Differences are listed by source key and kind (attribute
*names* only, never values) in ``differences.ndjson`` under the migration's work prefix.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, Field, StrictBool, field_validator

from contracts.migration import FinishedMigrationRef, _check_s3

# A DICOM keyword (checked against the data dictionary by the activity); never a value.
KEYWORD_PATTERN = r"^[A-Z][A-Za-z0-9]{0,63}$"
MAX_ATTRIBUTES = 32


def verify_workflow_id(migration_id: str) -> str:
    return f"verify-{migration_id}"


class DifferenceKind(StrEnum):
    IMAGE_SET_GONE = "image_set_gone"  # the image set the report names no longer exists (or is deleted)
    MOVED_TO_NON_PRIMARY = "moved_to_non_primary"  # reported primary, now non-primary
    MISSING = "missing"  # the instance (deep) or some instances of the set (by count) are not there
    NOT_IN_EXPECTED_SERIES = "not_in_expected_series"  # deep: the instance is in the set, under another series
    EXTRA = "extra"  # instances (deep) or image sets (in a verified study) the migration did not import
    METADATA_DIFFERS = "metadata_differs"  # deep, with attributes: the named attributes differ from the source


class VerifyInput(FinishedMigrationRef):
    source_s3_uri: str = Field(description="the migration's source prefix (deep attribute checks read headers)")
    deep: StrictBool = False
    attributes: list[Annotated[str, Field(pattern=KEYWORD_PATTERN)]] = Field(default_factory=list,
                                                                            max_length=MAX_ATTRIBUTES)
    # Publish the outcome as an EventBridge event (a standing check run by a Temporal Schedule does).
    publish: StrictBool = False

    @field_validator("source_s3_uri")
    @classmethod
    def _source(cls, v: str) -> str:
        return _check_s3(v, "source_s3_uri")


class VerifyResult(BaseModel):
    migration_id: str
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

    @property
    def clean(self) -> bool:
        return not any(self.differences.values())
