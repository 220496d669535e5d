"""validate: decide, per file and per validation level, whether it may be imported.

The parse stage records findings with codes; this stage applies the level's policy to them. A rejected
file never reaches import and is written to the ledger as ``rejected`` with every reason.
"""

from __future__ import annotations

from typing import Any

from temporalio import activity

from activities.heartbeat import keeps_alive
from activities.storage import put_ndjson, read_models
from contracts import layout
from contracts.common import FileState, ValidationLevel
from contracts.records import Finding, LedgerEntry, ParsedRecord, Severity
from contracts.stages import PageInput, ValidateResult

_ALL = {ValidationLevel.MINIMAL, ValidationLevel.STRUCTURE_ONLY, ValidationLevel.STRICT}
_STRUCTURE = {ValidationLevel.STRUCTURE_ONLY, ValidationLevel.STRICT}
_STRICT = {ValidationLevel.STRICT}

# Which finding codes reject a file at which levels. `minimal` lets through anything the service itself
# can judge (its verdict then appears as `failed` with the service's reason); stricter levels catch it first.
REJECTING_LEVELS: dict[str, set[ValidationLevel]] = {
    "zero_byte": _ALL,
    "not_dicom": _ALL,
    "unparseable": _ALL,
    "compressed_archive": _ALL,
    "dicomdir": _ALL,
    "source_missing": _ALL,
    "source_unreadable": _ALL,
    "missing_sop_instance_uid": _ALL,
    "missing_study_instance_uid": _STRUCTURE,
    "missing_series_instance_uid": _STRUCTURE,
    "missing_sop_class_uid": _STRUCTURE,
    "missing_transfer_syntax": _STRUCTURE,
    "unknown_transfer_syntax": _STRUCTURE,
    "truncated": _STRUCTURE,
    "bad_vr": _STRUCTURE,
    "invalid_uid": _STRUCTURE,
    "missing_pixel_data": _STRUCTURE,
    "ts_mismatch": _STRUCTURE,
    "element_order": _STRUCTURE,
    "meta_group_length": _STRUCTURE,
    "pixel_data_size": _STRUCTURE,
    "bad_sequence": _STRUCTURE,
    "trailing_garbage": _STRUCTURE,
    # Only recorded when HIMIG_IMPORT_REJECTS_TRAILING_PADDING says the data store's import fails such files; then
    # sending them is certain to fail, at any level (by default zero padding is `trailing_padding`, a note).
    "trailing_padding_rejected": _ALL,
    "length_limit": _STRICT,
    # Legal enough to parse, but not what the standard (or the data's consumers) expect.
    "unknown_charset": _STRICT,
    "charset_decode_error": _STRICT,
    "non_ascii_without_charset": _STRICT,
    "multi_valued": _STRICT,
    "vr_length": _STRICT,
    "bad_date": _STRICT,
    "bad_time": _STRICT,
    "meta_mismatch": _STRICT,
    "meta_group_length_missing": _STRICT,
    "series_uid_equals_study_uid": _STRICT,
    "odd_length": _STRICT,
    # DICOM forbids it, HealthImaging's UID pattern ([0-9.]+) accepts it: only `strict` refuses it.
    "uid_not_dicom": _STRICT,
    # Never rejecting (warnings and notes only): empty_patient_id, private_without_creator,
    # trailing_data_not_inspected, trailing_padding.
}


def rejects(code: str, level: ValidationLevel) -> bool:
    """True when a finding with ``code`` rejects the file at ``level`` (unknown codes are only warnings)."""
    return level in REJECTING_LEVELS.get(code, set())


class ValidateActivities:
    def __init__(self, s3: Any) -> None:
        self._s3 = s3

    @activity.defn(name="validate_page")
    @keeps_alive
    def validate_page(self, input: PageInput) -> ValidateResult:
        records = read_models(self._s3, layout.parsed_page(input.work_s3_uri, input.migration_id, input.page),
                              ParsedRecord)
        valid: list[ParsedRecord] = []
        rejected: list[LedgerEntry] = []
        for rec in records:
            blocking = [f for f in rec.findings if rejects(f.code, input.validation_level)]
            if not rec.readable and not blocking:
                # Whatever the level, bytes we could not read as DICOM are never sent to the service.
                blocking = rec.findings or [Finding(code="unreadable", severity=Severity.ERROR,
                                                    reason="file could not be read as DICOM")]
            if blocking:
                rejected.append(LedgerEntry(
                    key=rec.key, state=FileState.REJECTED, size=rec.size,
                    code=",".join(dict.fromkeys(f.code for f in blocking)),
                    reason="; ".join(dict.fromkeys(f.reason for f in blocking)),
                    findings=rec.findings or blocking, study_instance_uid=rec.study_instance_uid,
                    series_instance_uid=rec.series_instance_uid,
                ))
            else:
                valid.append(rec)
        put_ndjson(self._s3, layout.validated_page(input.work_s3_uri, input.migration_id, input.page), valid)
        put_ndjson(self._s3, layout.ledger_for_page(input.work_s3_uri, input.migration_id, input.page), rejected)
        return ValidateResult(valid=len(valid), rejected=len(rejected))
