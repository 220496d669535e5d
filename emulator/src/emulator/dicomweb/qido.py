"""QIDO-RS: SearchDICOMStudies, SearchDICOMSeries, SearchDICOMAllSeries, SearchDICOMInstances.

Matching follows PS3.4 C.2.2.2 as far as a DICOMweb client would notice: single-value matching (exact; PN
case-insensitive), wildcards ``*`` and ``?`` on text attributes, UID list matching (``a,b`` or ``a\\b``), range
matching on DA/TM/DT (``20200101-20201231``, ``20200101-``, ``-20201231``), universal matching for an empty
value (the attribute is then only added to the response). A key that lives below the searched level
(``Modality`` on a study search, ``SOPInstanceUID`` on a series search) matches when any child matches.

Results: studies ordered by last update (latest first), series by SeriesNumber, instances by InstanceNumber
(DG ``dicomweb-search.html``); at most 10,000 records are reachable through ``limit``/``offset``. An empty result
is ``200 []`` (see README: dicomweb-client accepts both that and 204).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag

from emulator.dicomweb.catalog import Catalog, SeriesRecord
from emulator.dicomweb.dicomjson import JsonObject, tag_of, to_dicom_json
from emulator.errors import BadRequestException
from emulator.medicalimaging.dicom import PATIENT_LEVEL, SERIES_LEVEL, STUDY_LEVEL

MAX_RESULTS = 10_000
RESERVED_PARAMS = frozenset({"limit", "offset", "includefield", "fuzzymatching", "imageSetId", "imagesetid"})
# A presigned request's SigV4 parameters (verified by auth.py) are not search keys.
PRESIGN_PARAMS = frozenset({"X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
                            "X-Amz-SignedHeaders", "X-Amz-Signature", "X-Amz-Security-Token"})

STUDY_DEFAULT = ("SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability",
                 "ModalitiesInStudy", "ReferringPhysicianName", "TimezoneOffsetFromUTC", "RetrieveURL",
                 "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
                 "StudyDescription", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
SERIES_DEFAULT = ("SpecificCharacterSet", "Modality", "TimezoneOffsetFromUTC", "SeriesDescription", "RetrieveURL",
                  "StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber", "NumberOfSeriesRelatedInstances",
                  "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "BodyPartExamined")
INSTANCE_DEFAULT = ("SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceAvailability",
                    "TimezoneOffsetFromUTC", "RetrieveURL", "InstanceNumber", "Rows", "Columns", "BitsAllocated",
                    "NumberOfFrames", "StudyInstanceUID", "SeriesInstanceUID")

STUDY_OWN = PATIENT_LEVEL | STUDY_LEVEL | {"ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                                           "NumberOfStudyRelatedInstances", "InstanceAvailability", "RetrieveURL"}
SERIES_OWN = STUDY_OWN | SERIES_LEVEL | {"NumberOfSeriesRelatedInstances"}


@dataclass
class Record:
    """One search result candidate: its attributes (keyword → stored value) and lazily its children."""

    attrs: dict[str, Any]
    vrs: dict[str, str]
    sort_key: tuple[Any, ...]
    own: frozenset[str] = frozenset()  # keywords of this level and above: never looked up in the children
    children: Callable[[], list[Record]] | None = None
    _kids: list[Record] | None = field(default=None, repr=False)

    def kids(self) -> list[Record]:
        if self._kids is None:
            self._kids = self.children() if self.children else []
        return self._kids


@dataclass
class Matcher:
    keyword: str
    vr: str
    raw: list[str]

    def universal(self) -> bool:
        return all(v in ("", "*") for v in self.raw)

    def matches(self, record: Record) -> bool:
        if self.universal():
            return True
        if self.keyword not in record.own and self.keyword not in record.attrs:
            # An attribute of a lower level: match through the children (study → series → instances).
            return any(self.matches(kid) for kid in record.kids())
        values = _values(record.attrs.get(self.keyword))
        return any(self._one(q, v) for q in self.raw for v in values)

    def _one(self, query: str, value: str) -> bool:
        if self.vr == "UI":
            return value in {u.strip() for u in re.split(r"[,\\]", query) if u.strip()}
        if self.vr in ("DA", "TM", "DT") and "-" in query:
            return _in_range(query, value)
        if "*" in query or "?" in query:
            pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in query)
            return re.fullmatch(pattern, value, re.IGNORECASE if self.vr == "PN" else 0) is not None
        if self.vr == "PN":
            return value.lower() == query.lower()
        return value == query


def _in_range(query: str, value: str) -> bool:
    low, _, high = query.partition("-")
    value = value.replace(":", "").strip()
    low, high = low.replace(":", "").strip(), high.replace(":", "").strip()
    if not value:
        return False
    if low and value[:len(low)] < low:
        return False
    return not (high and value[:len(high)] > high)


def _values(value: Any) -> list[str]:
    if value is None:
        return [""]
    if isinstance(value, list):
        return [str(v) for v in value if not isinstance(v, dict)] or [""]
    return [str(value)]


@dataclass
class Query:
    matchers: list[Matcher]
    include: set[str] | None  # None = includefield=all
    limit: int
    offset: int


def parse_query(params: dict[str, list[str]]) -> Query:
    matchers: list[Matcher] = []
    for key, values in params.items():
        if key in RESERVED_PARAMS or key in PRESIGN_PARAMS:
            continue
        keyword = _keyword(key)
        if keyword is None:
            raise BadRequestException("Unsupported search query parameter: the attribute name is not a DICOM "
                                      "keyword or tag")
        tag = tag_of(keyword)
        assert tag is not None
        vr = dictionary_VR(tag).split(" or ")[0]
        matchers.append(Matcher(keyword, vr, values))
    include: set[str] | None = set()
    for value in params.get("includefield", []):
        for item in value.split(","):
            item = item.strip()
            if item.lower() == "all":
                include = None
            elif include is not None and item:
                kw = _keyword(item)
                if kw:  # best effort: unknown names are ignored, as PS3.18 allows
                    include.add(kw)
    limit = _int_param(params, "limit", MAX_RESULTS)
    offset = _int_param(params, "offset", 0)
    if limit < 1:
        raise BadRequestException("limit must be a positive integer")
    return Query(matchers, include, min(limit, MAX_RESULTS), offset)


def _int_param(params: dict[str, list[str]], name: str, default: int) -> int:
    if name not in params:
        return default
    text = params[name][-1].strip()
    if not re.fullmatch(r"\d{1,9}", text):
        raise BadRequestException(f"{name} must be a non-negative integer")
    return int(text)


def _keyword(key: str) -> str | None:
    tag = tag_of(key)
    if tag is None or (tag >> 16) % 2 == 1:
        return None
    kw = keyword_for_tag(tag)
    try:
        dictionary_VR(tag)
    except KeyError:
        return None
    return kw or None


# ---------------------------------------------------------------------------------------------------- records


class Searcher:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def studies(self, ds: str, query: Query, image_set_id: str | None, base_url: str) -> list[JsonObject]:
        records = self._study_records(ds, self.catalog.series(ds, image_set_id), image_set_id, base_url)
        return _answer(records, query, STUDY_DEFAULT)

    def series(self, ds: str, query: Query, image_set_id: str | None, base_url: str,
               study_uid: str | None) -> list[JsonObject]:
        found = self.catalog.series(ds, image_set_id, study_uid)
        records = [self._series_record(s, base_url) for s in found if s.instance_count]
        defaults = SERIES_DEFAULT if study_uid else SERIES_DEFAULT + STUDY_DEFAULT
        return _answer(records, query, defaults)

    def instances(self, ds: str, query: Query, image_set_id: str | None, base_url: str, study_uid: str,
                  series_uid: str) -> list[JsonObject]:
        found = self.catalog.series(ds, image_set_id, study_uid, series_uid)
        records = [r for s in found for r in self._instance_records(s, base_url)]
        return _answer(records, query, INSTANCE_DEFAULT)

    # ---- building records

    def _study_records(self, ds: str, series: list[SeriesRecord], image_set_id: str | None,
                       base_url: str) -> list[Record]:
        by_study: dict[str, list[SeriesRecord]] = {}
        for s in series:
            if s.instance_count:
                by_study.setdefault(s.study_uid, []).append(s)
        out = []
        for study_uid, members in by_study.items():
            members.sort(key=lambda s: -s.updated_at)
            latest = members[0]
            attrs: dict[str, Any] = {**latest.patient, **latest.study}
            modalities = sorted({str(m.series.get("Modality")) for m in members if m.series.get("Modality")})
            attrs.update({
                "StudyInstanceUID": study_uid,
                "ModalitiesInStudy": modalities or None,
                "NumberOfStudyRelatedSeries": len(members),
                "NumberOfStudyRelatedInstances": sum(m.instance_count for m in members),
                "InstanceAvailability": "ONLINE",
                "RetrieveURL": f"{base_url}/studies/{study_uid}",
            })

            def kids(members: list[SeriesRecord] = members) -> list[Record]:
                return [self._series_record(m, base_url) for m in members]

            out.append(Record(attrs, {}, (-max(m.updated_at for m in members), study_uid), STUDY_OWN, kids))
        return out

    def _series_record(self, s: SeriesRecord, base_url: str) -> Record:
        attrs: dict[str, Any] = {**s.patient, **s.study, **s.series}
        attrs.update({
            "StudyInstanceUID": s.study_uid,
            "SeriesInstanceUID": s.series_uid,
            "NumberOfSeriesRelatedInstances": s.instance_count,
            "InstanceAvailability": "ONLINE",
            "RetrieveURL": f"{base_url}/studies/{s.study_uid}/series/{s.series_uid}",
        })
        number = _as_int(s.series.get("SeriesNumber"))
        return Record(attrs, {}, (number is None, number or 0, s.series_uid), SERIES_OWN,
                      lambda: self._instance_records(s, base_url))

    def _instance_records(self, s: SeriesRecord, base_url: str) -> list[Record]:
        out = []
        for inst in self.catalog.instances(s):
            dicom = {k: v for k, v in (inst.doc.get("DICOM") or {}).items() if not _is_meta(k)}
            attrs: dict[str, Any] = {**s.patient, **s.study, **s.series, **dicom}
            attrs.update({
                "StudyInstanceUID": s.study_uid,
                "SeriesInstanceUID": s.series_uid,
                "SOPInstanceUID": inst.sop_uid,
                "InstanceAvailability": "ONLINE",
                "RetrieveURL": f"{base_url}/studies/{s.study_uid}/series/{s.series_uid}/instances/{inst.sop_uid}",
            })
            number = _as_int(dicom.get("InstanceNumber"))
            out.append(Record(attrs, inst.vrs, (number is None, number or 0, inst.sop_uid)))
        return out


def _is_meta(key: str) -> bool:
    tag = tag_of(key)
    return tag is not None and tag >> 16 == 0x0002


def _as_int(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _answer(records: Iterable[Record], query: Query, defaults: tuple[str, ...]) -> list[JsonObject]:
    matched = [r for r in records if all(m.matches(r) for m in query.matchers)]
    matched.sort(key=lambda r: r.sort_key)
    window = matched[:MAX_RESULTS][query.offset:query.offset + query.limit]
    wanted = set(defaults) | {m.keyword for m in query.matchers}
    out = []
    for r in window:
        if query.include is None:
            attrs = r.attrs
        else:
            names = wanted | query.include
            attrs = {k: v for k, v in r.attrs.items() if k in names}
        # Bulk (binary) values never appear in search results.
        out.append(to_dicom_json(attrs, r.vrs, skip_groups=frozenset({0x0002}), omit_binary=True))
    return out
