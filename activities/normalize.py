"""normalize: turn validated parse records into canonical instance records (input to batch planning)."""

from __future__ import annotations

from typing import Any

from temporalio import activity

from activities.heartbeat import keeps_alive
from activities.storage import put_ndjson, read_models
from contracts import layout
from contracts.records import InstanceRecord, ParsedRecord, Severity
from contracts.stages import NormalizeResult, PageInput


def to_instance(rec: ParsedRecord) -> InstanceRecord:
    """Canonical record of one valid file. Absent optional values become '' so planning can compare them."""
    return InstanceRecord(
        key=rec.key,
        size=rec.size,
        etag=rec.etag,
        sop_instance_uid=rec.sop_instance_uid or "",
        study_instance_uid=rec.study_instance_uid or "",
        series_instance_uid=rec.series_instance_uid or "",
        transfer_syntax_uid=rec.transfer_syntax_uid or "",
        sop_class_uid=rec.sop_class_uid or "",
        patient_fingerprint=rec.patient_fingerprint or "",
        study_fingerprint=rec.study_fingerprint or "",
        series_fingerprint=rec.series_fingerprint or "",
        # Same size + same ETag (MD5 for single-part uploads) + same header bytes: identical content.
        content_id=f"{rec.size}:{rec.etag}:{rec.header_sha256 or ''}",
        dataset_fingerprint=rec.dataset_fingerprint or "",
        header_bytes=rec.header_bytes,
        warnings=[f for f in rec.findings if f.severity is not Severity.INFO],
    )


class NormalizeActivities:
    def __init__(self, s3: Any) -> None:
        self._s3 = s3

    @activity.defn(name="normalize_page")
    @keeps_alive
    def normalize_page(self, input: PageInput) -> NormalizeResult:
        records = read_models(self._s3, layout.validated_page(input.work_s3_uri, input.migration_id, input.page),
                              ParsedRecord)
        instances = [to_instance(r) for r in records]
        put_ndjson(self._s3, layout.normalized_page(input.work_s3_uri, input.migration_id, input.page), instances)
        return NormalizeResult(instances=len(instances))
