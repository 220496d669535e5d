"""The error vocabulary (contracts/errors.py) and the patch ids (workflows/patches.py) are recorded in histories
and reports: their values are pinned here, and nothing outside those modules spells them by hand."""

from __future__ import annotations

import re
from pathlib import Path

from contracts.errors import BACKOFF, FATAL, ErrorType
from workflows import patches, policies

ROOT = Path(__file__).resolve().parents[2]

# The values as recorded; a change here breaks the replay of running workflows and the reading of old reports.
RECORDED = {
    "ThrottlingException", "ServiceQuotaExceededException", "TooManyRequestsException", "SlowDown",
    "RequestLimitExceeded", "InternalServerException", "ServiceUnavailable", "ValidationException",
    "ResourceNotFoundException", "AccessDeniedException", "ConflictException", "NoSuchBucket", "ValidationError",
    "EmptyBatch", "ImageSetMutationFailed", "PromotionNotPrimary", "InvalidSourceManifest", "InvalidSourceConnector",
    "InvalidMigrationId", "InvalidIngestId", "DecisionRejected", "RollbackRefused", "PlanRefused", "PlanStale", "JobSlotsFull",
    "CallerSetInternalState", "MissingBatchPlan", "JobStillRunning", "ManifestNotYetVisible",
    "ImageSetBusy", "ImageSetNotReady", "DicomWebUnavailable", "HealthLakeUnavailable", "InputWriteConflict",
    "PutEventsFailed", "CorruptInventory", "CorruptUnitList", "SourceUnavailable",
}
PATCH_IDS = {"split-failed-batch", "start-reconciliation", "search-attributes", "job-events", "ingest-spill",
             "source-changed-no-job", "fhir-routing", "verify-reviewer",
             "roll-over-reconciliation", "standard-cancel", "ingest-standard-cancel", "reconciliation-standard-cancel",
             "batch-standard-cancel", "from-plan", "planning-waves", "large-folders-by-page"}


def _sources() -> list[Path]:
    return [p for folder in ("activities", "workflows") for p in (ROOT / folder).rglob("*.py")]


class TestErrorTypes:
    def test_values_are_the_recorded_ones(self) -> None:
        assert {e.value for e in ErrorType} == RECORDED

    def test_backoff_and_fatal_are_disjoint(self) -> None:
        assert not BACKOFF & FATAL

    def test_every_retry_policy_lists_fatal_in_a_fixed_order(self) -> None:
        policies_ = [v for v in vars(policies).values() if type(v).__name__ == "RetryPolicy"]
        assert len(policies_) == 6
        for policy in policies_:
            assert list(policy.non_retryable_error_types or []) == sorted(FATAL)

    def test_no_type_is_spelled_by_hand(self) -> None:
        # Raised (type="X"), compared (== "X") or passed as benign_retry's kind. Per-file failure codes in the
        # ledgers (e.g. a unit's "SourceUnavailable" row) are data, not error types, and are not matched.
        names = "|".join(sorted(RECORDED))
        quoted = re.compile(rf'(type=|==\s*|benign_retry\([^()]*(?:\([^()]*\)[^()]*)*,\s*)"({names})"')
        found = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in _sources() for m in quoted.finditer(p.read_text())]
        assert found == []


class TestPatchIds:
    def test_values_are_the_recorded_ones(self) -> None:
        ids = {v for k, v in vars(patches).items() if k.isupper()}
        assert ids == PATCH_IDS

    def test_every_patched_call_names_a_registered_id(self) -> None:
        calls = [m.group(1) for p in _sources() for m in re.finditer(r"workflow\.patched\(([^)]*)\)", p.read_text())]
        assert calls
        assert all(arg.startswith("patches.") or arg == "patch" for arg in calls), calls
