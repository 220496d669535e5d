"""The final report's document (``report.json``), as the HTML report and the CLI read it.

``report.json`` is written by the ``write_report`` activity (activities/report.py) and read back by `himig
report`; everything the HTML page shows comes from here, never from the per-file lines, so the page costs the
same for ten files as for ten million: per-state totals, per-time-bucket counts, reason and warning histograms,
the top studies and series (capped; the CSV holds every file) and the non-primary image sets.

Sections for steps that may not have run (`himig plan`, `himig verify`) are optional: absent means "did not
run", which the page says. Those steps write them next to the report (``report/plan.json``,
``report/verify.json``, `contracts.layout`); the report and `himig report --html` read them from there. Values are UIDs, ids, counts, codes and our own reasons: no patient values.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt

from contracts.common import FileState
from contracts.records import FindingOrigin

# Rows of the per-study, per-series and non-primary tables kept in report.json (and shown); the rest is counted.
TABLE_LIMIT = 50
# Reasons in the histogram (the most frequent); `reasons` in report.json keeps them all.
REASON_LIMIT = 20
# Time buckets of the throughput and files-per-state charts.
TIMELINE_BUCKETS = 48


class _Read(BaseModel):
    """Read strictly (types are checked, no coercion) but tolerant of keys a newer writer added."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class TimelineBucket(_Read):
    """Files that reached their terminal state within [start, end)."""

    start: datetime
    end: datetime
    files_by_state: dict[FileState, NonNegativeInt]
    bytes: NonNegativeInt


class GroupRow(_Read):
    """One study or one series: its files by terminal state and the image sets they landed in."""

    study_instance_uid: str
    series_instance_uid: str | None = None  # None for a study row
    files: NonNegativeInt
    bytes: NonNegativeInt
    files_by_state: dict[FileState, NonNegativeInt]
    image_sets: list[str] = Field(default_factory=list)  # at most IMAGE_SETS_PER_ROW, primary first
    non_primary_image_sets: list[str] = Field(default_factory=list)

    @property
    def problems(self) -> int:
        """Files of the group that were not imported (rejected or failed)."""
        return self.files_by_state.get(FileState.REJECTED, 0) + self.files_by_state.get(FileState.FAILED, 0)


IMAGE_SETS_PER_ROW = 5


class NonPrimarySet(_Read):
    """A non-primary image set the migration produced, and where its reconciliation stands."""

    image_set_id: str
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    files: NonNegativeInt
    reconciliation_id: str
    # A ReconciliationState value when known (`himig report` asks each workflow); None: not asked.
    reconciliation_state: str | None = None


class WarningCount(_Read):
    """How many imported files carry a warning with this code from this origin."""

    origin: FindingOrigin
    code: str
    files: NonNegativeInt


class PlanRow(_Read):
    label: str
    planned: float | None = None  # None: a plan cannot predict it (what the import job decides)
    actual: float | None = None


class PlanComparison(_Read):
    """What a dry run (`himig plan`) predicted, next to what the migration did."""

    planned_at: datetime | None = None
    rows: list[PlanRow]


class VerifyResult(_Read):
    """The outcome of `himig verify` (archive against data store) for this migration."""

    verified_at: datetime | None = None
    passed: bool
    counts: dict[str, NonNegativeInt] = Field(default_factory=dict)
    problems: list[str] = Field(default_factory=list)


class ReportDetails(_Read):
    """The report's aggregates beyond the per-state totals (``report.json`` → ``details``)."""

    started_at: datetime | None = None
    finished_at: datetime | None = None
    timeline: list[TimelineBucket] = Field(default_factory=list)
    studies_total: NonNegativeInt = 0
    studies: list[GroupRow] = Field(default_factory=list)
    series_total: NonNegativeInt = 0
    series: list[GroupRow] = Field(default_factory=list)
    # Files in no study: no Study Instance UID was read (not DICOM, unreadable, or never received).
    unplaced_files: NonNegativeInt = 0
    non_primary_total: NonNegativeInt = 0
    non_primary: list[NonPrimarySet] = Field(default_factory=list)
    warnings: list[WarningCount] = Field(default_factory=list)
    # Base of the DICOMweb links to image sets (QIDO-RS instances of the series with ?imageSetId=).
    dicomweb_url: str | None = None
    plan: PlanComparison | None = None
    verify: VerifyResult | None = None
    # A plan.json or verify.json next to the report that could not be read (the field at fault, not its value).
    section_problems: list[str] = Field(default_factory=list)


class ReportDocument(_Read):
    """``report.json``: what the text, JSON and HTML reports show."""

    migration_id: str
    datastore_id: str | None = None
    files_total: NonNegativeInt
    bytes_total: NonNegativeInt
    files_by_state: dict[FileState, NonNegativeInt]
    reasons: dict[str, NonNegativeInt] = Field(default_factory=dict)
    image_sets: NonNegativeInt = 0
    primary_image_sets: NonNegativeInt = 0
    non_primary_image_sets: list[str] = Field(default_factory=list)
    predicted_non_primary: NonNegativeInt = 0
    predicted_non_primary_confirmed: NonNegativeInt = 0
    predicted_non_primary_not_confirmed: NonNegativeInt = 0
    non_primary_not_predicted: NonNegativeInt = 0
    unaccounted: NonNegativeInt = 0
    accounted_twice: NonNegativeInt = 0
    cancelled: bool = False
    files_uri: str | None = None
    csv_uri: str | None = None
    # Where a dry run's and a verification's documents for this migration are read from (absent: none ran).
    plan_uri: str | None = None
    verify_uri: str | None = None
    fhir: dict[str, object] | None = None
    details: ReportDetails = Field(default_factory=ReportDetails)
