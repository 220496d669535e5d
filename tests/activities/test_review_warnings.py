"""Warnings reach the report: an imported file with our parse warnings or the import job's is
``imported_with_warnings`` and carries every warning, each marked by its origin."""

from __future__ import annotations

from typing import Any

import pytest

from activities.review import MAX_SERVICE_WARNINGS, JobOutput, classify_file, service_warnings
from contracts.common import FileState
from contracts.records import Finding, FindingOrigin, Severity

IMAGE_SET = "i" * 32
OURS = [Finding(code="empty_patient_id", severity=Severity.WARNING, reason="PatientID is missing or empty",
                attribute="PatientID"),
        Finding(code="bad_date", severity=Severity.WARNING, reason="StudyDate is not a DICOM date (YYYYMMDD)",
                attribute="StudyDate")]
SERVICE = {"warning_reason_code": 45330, "type": "InvalidOffsetTable", "message": "invalid offset table"}


def _success() -> JobOutput:
    return JobOutput(summary={}, success={"k": {"importResponse": {"imageSetId": IMAGE_SET, "isPrimary": True,
                                                                   "imageSetVersion": 1}}})


def _warning(warnings: Any) -> JobOutput:
    return JobOutput(summary={}, warning={"k": {"importResponse": {"imageSetId": IMAGE_SET, "isPrimary": True,
                                                                   "warnings": warnings}}})


class TestOurWarnings:
    def test_a_clean_import_stays_imported(self) -> None:
        entry = classify_file("k", _success(), False, None, [])
        assert entry.state is FileState.IMPORTED and entry.findings is None and entry.reason is None

    def test_our_parse_warnings_make_an_imported_file_imported_with_warnings(self) -> None:
        entry = classify_file("k", _success(), False, None, OURS)
        assert entry.state is FileState.IMPORTED_WITH_WARNINGS and entry.image_set_id == IMAGE_SET
        assert [(f.origin, f.code) for f in entry.findings or []] == [
            (FindingOrigin.HIMIG, "empty_patient_id"), (FindingOrigin.HIMIG, "bad_date")]
        assert entry.code == "himig:empty_patient_id,himig:bad_date"
        assert entry.reason == ("himig: PatientID is missing or empty; "
                                "himig: StudyDate is not a DICOM date (YYYYMMDD)")

    def test_ours_and_the_services_each_keep_their_origin(self) -> None:
        entry = classify_file("k", _warning([SERVICE]), False, None, OURS[:1])
        assert entry.state is FileState.IMPORTED_WITH_WARNINGS
        assert [(f.origin, f.code) for f in entry.findings or []] == [
            (FindingOrigin.HIMIG, "empty_patient_id"), (FindingOrigin.HEALTHIMAGING, "InvalidOffsetTable")]
        assert "healthimaging: invalid offset table (warning code 45330)" in (entry.reason or "")

    def test_a_finding_claiming_the_services_origin_is_still_ours(self) -> None:
        # Our records are ours: a parse record can never pass its finding off as HealthImaging's.
        forged = OURS[0].model_copy(update={"origin": FindingOrigin.HEALTHIMAGING})
        entry = classify_file("k", _success(), False, None, [forged])
        assert [f.origin for f in entry.findings or []] == [FindingOrigin.HIMIG]

    def test_a_failed_file_keeps_our_warnings_as_context(self) -> None:
        out = JobOutput(summary={}, failure={"k": {"exception": {"exceptionType": "ValidationException",
                                                                 "message": "no pixel data"}}})
        entry = classify_file("k", out, False, None, OURS)
        assert entry.state is FileState.FAILED and entry.code == "ValidationException"
        assert [f.code for f in entry.findings or []] == ["empty_patient_id", "bad_date"]

    def test_repeated_warnings_are_summarised_once(self) -> None:
        entry = classify_file("k", _success(), False, None, [OURS[0], OURS[0]])
        assert entry.code == "himig:empty_patient_id" and (entry.reason or "").count("PatientID") == 1


class TestServiceWarningsAreUntrusted:
    @pytest.mark.parametrize("warnings", [None, "text", 7, True, [], {"type": "x"}])
    def test_a_file_in_the_warning_output_always_carries_a_warning(self, warnings: Any) -> None:
        entry = classify_file("k", _warning(warnings), False, None, [])
        assert entry.state is FileState.IMPORTED_WITH_WARNINGS
        assert [(f.origin, f.code) for f in entry.findings or []] == [(FindingOrigin.HEALTHIMAGING, "warning")]

    @pytest.mark.parametrize("item,code,reason", [
        ({"warning_reason_code": True, "type": ["x"], "message": {"a": 1}}, "warning", "imported with a warning"),
        ({"warning_reason_code": 45330}, "45330", "imported with a warning (warning code 45330)"),
        ("not an object", "warning", "imported with a warning"),
        ({"type": "T" * 500, "message": "m" * 5000}, "T" * 100, "m" * 500),
    ])
    def test_odd_fields_become_bounded_text(self, item: Any, code: str, reason: str) -> None:
        [finding] = service_warnings({"warnings": [item]})
        assert (finding.code, finding.reason, finding.severity) == (code, reason, Severity.WARNING)

    def test_a_flood_of_warnings_is_bounded(self) -> None:
        assert len(service_warnings({"warnings": [SERVICE] * 10_000})) == MAX_SERVICE_WARNINGS

    def test_an_import_response_that_is_not_an_object_is_no_crash(self) -> None:
        out = JobOutput(summary={}, warning={"k": {"importResponse": ["x"]}})
        entry = classify_file("k", out, False, None, [])
        assert entry.state is FileState.IMPORTED_WITH_WARNINGS and entry.image_set_id is None
