"""SearchImageSets: the ``DICOMTags`` summary kept per image set, and filtering and sorting on it.

An image set's summary is stored with its row (``image_sets.dicom_tags``) whenever a version is written (imports,
mutations); a search filters and sorts the summaries of a data store's live sets in memory.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from emulator.errors import ValidationException
from emulator.medicalimaging import tiers

Predicate = Callable[[dict[str, Any]], bool]


def dicom_tags(patient: dict[str, Any], study: dict[str, Any], series: dict[str, Any],
               instances: int) -> dict[str, Any]:
    """The ``DICOMTags`` summary SearchImageSets returns (and filters on)."""
    def text(doc: dict[str, Any], name: str) -> str | None:
        v = doc.get(name)
        if v is None:
            return None
        return "\\".join(map(str, v)) if isinstance(v, list) else str(v)

    series_number = text(series, "SeriesNumber")
    tags: dict[str, Any] = {
        "DICOMPatientId": text(patient, "PatientID"),
        "DICOMPatientName": text(patient, "PatientName"),
        "DICOMPatientBirthDate": text(patient, "PatientBirthDate"),
        "DICOMPatientSex": text(patient, "PatientSex"),
        "DICOMStudyInstanceUID": text(study, "StudyInstanceUID"),
        "DICOMStudyId": text(study, "StudyID"),
        "DICOMStudyDescription": text(study, "StudyDescription"),
        "DICOMNumberOfStudyRelatedSeries": 1,
        "DICOMNumberOfStudyRelatedInstances": instances,
        "DICOMAccessionNumber": text(study, "AccessionNumber"),
        "DICOMSeriesInstanceUID": text(series, "SeriesInstanceUID"),
        "DICOMSeriesModality": text(series, "Modality"),
        "DICOMSeriesBodyPart": text(series, "BodyPartExamined"),
        "DICOMSeriesNumber": int(series_number) if series_number and series_number.strip().lstrip("-").isdigit()
        else None,
        "DICOMStudyDate": text(study, "StudyDate"),
        "DICOMStudyTime": text(study, "StudyTime"),
    }
    return {k: v for k, v in tags.items() if v is not None}


_EQUAL_TAGS = {
    "DICOMPatientId": "DICOMPatientId",
    "DICOMAccessionNumber": "DICOMAccessionNumber",
    "DICOMStudyId": "DICOMStudyId",
    "DICOMStudyInstanceUID": "DICOMStudyInstanceUID",
    "DICOMSeriesInstanceUID": "DICOMSeriesInstanceUID",
}
_RANGE_FIELDS = ("createdAt", "updatedAt", "DICOMStudyDateAndTime")


def _study_datetime(value: dict[str, Any]) -> str:
    date = str(value.get("DICOMStudyDate") or "")
    time_ = str(value.get("DICOMStudyTime") or "").split(".")[0]
    return date + time_.ljust(6, "0") if date else ""


def _summary_value(summary: dict[str, Any], name: str) -> Any:
    if name in _EQUAL_TAGS:
        return summary["DICOMTags"].get(_EQUAL_TAGS[name])
    if name == "DICOMStudyDateAndTime":
        return _study_datetime(summary["DICOMTags"])
    return summary.get(name)


def _sort_value(summary: dict[str, Any], name: str) -> Any:
    v = _summary_value(summary, name)
    return "" if v is None and name == "DICOMStudyDateAndTime" else (v or 0)


def _filter_predicate(flt: dict[str, Any], index: int) -> Predicate:
    values = flt["values"]
    operator = flt["operator"]
    names = [next(iter(v)) for v in values]
    where = f"searchCriteria.filters.{index}.member"
    if len(set(names)) != 1:
        raise ValidationException(f"1 validation error detected: Value at '{where}.values' failed to satisfy "
                                  "constraint: all values of one filter must use the same attribute")
    name = names[0]
    if operator == "EQUAL":
        if len(values) != 1:
            raise ValidationException(f"1 validation error detected: Value at '{where}.values' failed to satisfy "
                                      "constraint: the EQUAL operator takes exactly 1 value")
        wanted = values[0][name]
        if name == "DICOMStudyDateAndTime":
            wanted_dt = _study_datetime(wanted)
            has_time = bool(wanted.get("DICOMStudyTime"))
            return lambda s: (_summary_value(s, name) == wanted_dt if has_time
                              else _summary_value(s, name)[:8] == wanted_dt[:8])
        return lambda s: _summary_value(s, name) == wanted
    # BETWEEN
    if len(values) != 2 or name not in _RANGE_FIELDS:
        raise ValidationException(
            f"1 validation error detected: Value at '{where}' failed to satisfy constraint: the BETWEEN operator "
            "takes exactly 2 values of createdAt, updatedAt or DICOMStudyDateAndTime")
    low, high = values[0][name], values[1][name]
    if name == "DICOMStudyDateAndTime":
        low_s, high_s = _study_datetime(low), _study_datetime(high)
        if not high.get("DICOMStudyTime"):
            high_s = high_s[:8] + "235959"
        return lambda s: bool(_summary_value(s, name)) and low_s <= _summary_value(s, name) <= high_s
    return lambda s: low <= (_summary_value(s, name) or 0) <= high


def filter_predicates(criteria: dict[str, Any]) -> list[Predicate]:
    """One predicate per ``searchCriteria.filters`` entry; refuses filters the model's shapes cannot express."""
    return [_filter_predicate(f, i) for i, f in enumerate(criteria.get("filters") or [], start=1)]


def sorted_summaries(rows: list[sqlite3.Row], predicates: list[Predicate], sort: dict[str, Any] | None,
                     aged_now: float, archive_after_days: float) -> list[dict[str, Any]]:
    """The summaries (``ImageSetsMetadataSummary`` members) of ``rows`` that match, in the requested order."""
    items = []
    for r in rows:
        tags = json.loads(r["dicom_tags"])
        summary = {
            "imageSetId": r["id"], "version": r["version"], "createdAt": r["created_at"],
            "updatedAt": r["updated_at"], "isPrimary": bool(r["is_primary"]), "DICOMTags": tags,
            "lastAccessedAt": tiers.last_accessed(r), "storageTier": tiers.tier(r, aged_now, archive_after_days),
        }
        if all(p(summary) for p in predicates):
            items.append(summary)
    field_name = sort["sortField"] if sort else "updatedAt"
    descending = (sort["sortOrder"] == "DESC") if sort else True
    items.sort(key=lambda s: (_sort_value(s, field_name), s["imageSetId"]), reverse=descending)
    return items
