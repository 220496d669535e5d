"""Verify of a bare source (no migration): what the source holds, read from its headers, against a data store.

Expected: every object under the source prefix, header only (one ranged GET of the first 64 KiB, the whole object
only when the header is longer), grouped by study, series and SOP Instance UID. A file without a readable DICOM
header, without the three UIDs or with one HealthImaging's UID pattern refuses (it could not be searched for) is
``unreadable`` (HealthImaging cannot hold it: an empty object, a text file, a UID with letters); a file repeating another's SOP
Instance UID is checked once, under the first key.

Default check, no touch: per study one `SearchImageSets`; per series of the source, the image sets whose
``DICOMSeriesInstanceUID`` is that series. Those summaries count instances per set, so the default check can
prove counts, not instances: a series with no image set is ``missing``; with only non-primary sets,
``moved_to_non_primary``; a primary set with fewer instances than the source has is ``missing`` by count (the
shortfall that non-primary sets of the series hold is ``moved_to_non_primary``), with more, ``extra`` by count;
image sets of the study under series the source does not have are ``extra``. Deep check: `GetImageSetMetadata`
of every image set of the verified studies (one touch each) places each SOP instance: in a primary set of its
series (verified; with attributes, compared with its header), only in a non-primary one
(``moved_to_non_primary``), under another series (``not_in_expected_series``) or nowhere (``missing``);
instances of the source's series that the source does not have are ``extra``.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pydicom
from botocore.exceptions import ClientError
from pydicom.errors import InvalidDicomError

from activities import phi
from activities.dicom_header import register_phi, uid_problem
from activities.errors import classify, error_code
from activities.verify_pixels import Candidate
from contracts.s3uri import S3Location
from contracts.verify import DifferenceKind

HEADER_RANGE = 64 * 1024
READ_CONCURRENCY = 8  # header GETs in flight (as parse's default)
CHUNK = 256  # headers read between heartbeats
UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


@dataclass
class SourceInstance:
    key: str
    attributes: dict[str, str | None] = field(default_factory=dict)  # chosen attributes' values (never reported)


@dataclass
class SourceInventory:
    # study -> series -> SOP Instance UID -> the first file holding it
    studies: dict[str, dict[str, dict[str, SourceInstance]]] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)
    repeated: int = 0  # files repeating another file's SOP Instance UID
    files: int = 0

    @property
    def instances(self) -> int:
        return sum(len(sops) for series in self.studies.values() for sops in series.values())


def text(value: Any) -> str:
    """A DICOM value in one comparable form (multi-values joined by a backslash, padding stripped)."""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(text(v) for v in value)
    return str(value).strip().rstrip("\x00").strip()


def read_header(s3: Any, bucket: str, key: str) -> tuple[pydicom.Dataset | None, int]:
    """The file's header (patient values registered for scrubbing), or None when it is not DICOM; and the GETs
    made (1, or 2 when the header is longer than the first range)."""
    def parse(body: bytes) -> pydicom.Dataset:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(io.BytesIO(body), stop_before_pixels=True)

    try:
        body = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{HEADER_RANGE - 1}")["Body"].read()
    except ClientError as err:
        # A range from byte 0 is unsatisfiable only for an empty object (S3 answers 416): nothing to hold.
        if error_code(err) == "InvalidRange":
            return None, 1
        raise classify(err, "GetObject") from None
    try:
        ds = parse(body)
    except InvalidDicomError:
        return None, 1  # no DICM prefix: reading more cannot help
    except Exception:
        if len(body) < HEADER_RANGE:
            return None, 1  # the whole object was read: it is broken, not long
        try:
            ds = parse(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        except ClientError as err:
            raise classify(err, "GetObject") from None
        except Exception:
            return None, 2
        register_phi(ds)
        return ds, 2
    register_phi(ds)
    return ds, 1


def read_source(s3: Any, prefix: S3Location, attributes: list[str], requests: Counter[str],
                progress: Callable[[], None], concurrency: int = READ_CONCURRENCY) -> SourceInventory:
    inv = SourceInventory()
    # The pool's threads run in a copy of the activity's context, so the patient-value scrub set goes with them.
    read = phi.in_context(lambda key: (key, *read_header(s3, prefix.bucket, key)))
    with ThreadPoolExecutor(concurrency) as pool:
        for chunk in _chunks(_keys(s3, prefix, requests), CHUNK):
            for key, ds, gets in pool.map(read, chunk):
                requests["GetObject"] += gets
                inv.files += 1
                uids = [text(ds.get(name, "")) if ds is not None else "" for name in UIDS]
                if ds is None or not all(uids) or any(_refused(u) for u in uids):
                    inv.unreadable.append(key)
                    continue
                study, series, sop = uids
                sops = inv.studies.setdefault(study, {}).setdefault(series, {})
                if sop in sops:
                    inv.repeated += 1
                    continue
                sops[sop] = SourceInstance(key, {name: (text(ds.get(name)) if ds.get(name) is not None else None)
                                                 for name in attributes})
            progress()
    return inv


def _refused(uid: str) -> bool:
    """HealthImaging's API pattern refuses this UID: no image set has it, and a search for it is itself refused."""
    problem = uid_problem(uid)
    return problem is not None and problem[0] == "invalid_uid"


def _chunks(keys: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for key in keys:
        chunk.append(key)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _keys(s3: Any, prefix: S3Location, requests: Counter[str]) -> Iterator[str]:
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=prefix.bucket, Prefix=prefix.key):
            requests["ListObjectsV2"] += 1
            for obj in page.get("Contents", []):
                if not str(obj["Key"]).endswith("/"):  # a folder marker, not a file
                    yield str(obj["Key"])
    except ClientError as err:
        raise classify(err, "ListObjectsV2") from None


Differ = Callable[..., None]


def _count(summary: dict[str, Any]) -> int:
    return int((summary.get("DICOMTags") or {}).get("DICOMNumberOfStudyRelatedInstances", 0) or 0)


def _series(summary: dict[str, Any]) -> str:
    return str((summary.get("DICOMTags") or {}).get("DICOMSeriesInstanceUID") or "")


def check_counts(study_series: dict[str, dict[str, SourceInstance]], summaries: list[dict[str, Any]],
                 differ: Differ) -> int:
    """The default (no-touch) check of one study; returns the instances proven present by count."""
    verified = 0
    for series_uid, sops in sorted(study_series.items()):
        sets = [s for s in summaries if _series(s) == series_uid]
        want = len(sops)
        keys = sorted(i.key for i in sops.values())
        primary = sum(_count(s) for s in sets if s.get("isPrimary"))
        elsewhere = sum(_count(s) for s in sets if not s.get("isPrimary"))
        if not sets:
            differ(DifferenceKind.MISSING, want, series_instance_uid=series_uid, keys=keys,
                   note="no image set holds this series")
            continue
        if not any(s.get("isPrimary") for s in sets):
            differ(DifferenceKind.MOVED_TO_NON_PRIMARY, want, series_instance_uid=series_uid, keys=keys,
                   image_sets=sorted(s["imageSetId"] for s in sets), note="the series is only in non-primary image sets")
            continue
        verified += min(primary, want)
        short = max(0, want - primary)
        moved = min(short, elsewhere)
        if moved:
            differ(DifferenceKind.MOVED_TO_NON_PRIMARY, moved, series_instance_uid=series_uid,
                   note="by count: the primary image set holds fewer instances than the source; non-primary sets "
                        "of the series hold these (--deep names them)")
        if short - moved:
            differ(DifferenceKind.MISSING, short - moved, series_instance_uid=series_uid,
                   note="by count: fewer instances in the series' image sets than in the source (--deep names them)")
        if primary > want:
            differ(DifferenceKind.EXTRA, primary - want, series_instance_uid=series_uid,
                   note="by count: the series' primary image set holds instances the source does not have")
    extra = sorted(s["imageSetId"] for s in summaries if _series(s) not in study_series)
    if extra:
        differ(DifferenceKind.EXTRA, len(extra), image_sets=extra,
               note="image sets of a verified study under series the source does not have")
    return verified


@dataclass
class Placed:
    image_set_id: str
    primary: bool
    series_instance_uid: str
    instance: dict[str, Any]
    levels: list[dict[str, Any]]  # instance, series, study, patient DICOM levels (for attribute comparison)


def place(docs: dict[str, tuple[bool, dict[str, Any]]]) -> dict[str, list[Placed]]:
    """SOP Instance UID -> every place it is in the given image sets' metadata (set id -> (isPrimary, doc))."""
    where: dict[str, list[Placed]] = {}
    for image_set_id, (primary, doc) in sorted(docs.items()):
        study = doc.get("Study") or {}
        patient = (doc.get("Patient") or {}).get("DICOM") or {}
        for series_uid, series in (study.get("Series") or {}).items():
            for sop, inst in (series.get("Instances") or {}).items():
                levels = [inst.get("DICOM") or {}, series.get("DICOM") or {}, study.get("DICOM") or {}, patient]
                where.setdefault(sop, []).append(Placed(image_set_id, primary, series_uid, inst, levels))
    return where


def differing_attributes(mine: SourceInstance, placed: Placed) -> list[str]:
    out = []
    for name, original in mine.attributes.items():
        stored = next((lvl[name] for lvl in placed.levels if name in lvl), None)
        theirs = text(stored) if stored is not None else None
        if (original or None) != (theirs or None):
            out.append(name)
    return out


def check_instances(study_series: dict[str, dict[str, SourceInstance]], docs: dict[str, tuple[bool, dict[str, Any]]],
                    differ: Differ, candidates: list[Candidate]) -> int:
    """The deep check of one study (every image set's metadata in ``docs``); returns the instances verified and
    adds each verified instance to ``candidates`` (the pixel sample is drawn from them)."""
    where = place(docs)
    verified = 0
    ours: set[str] = set()
    for series_uid, sops in sorted(study_series.items()):
        for sop, mine in sorted(sops.items(), key=lambda kv: kv[1].key):
            ours.add(sop)
            spots = where.get(sop, [])
            here = [p for p in spots if p.series_instance_uid == series_uid]
            primary = next((p for p in here if p.primary), None)
            if primary is None:
                if here:
                    differ(DifferenceKind.MOVED_TO_NON_PRIMARY, key=mine.key,
                           image_set_id=here[0].image_set_id)
                elif spots:
                    differ(DifferenceKind.NOT_IN_EXPECTED_SERIES, key=mine.key, image_set_id=spots[0].image_set_id)
                else:
                    differ(DifferenceKind.MISSING, key=mine.key)
                continue
            names = differing_attributes(mine, primary)
            if names:
                differ(DifferenceKind.METADATA_DIFFERS, key=mine.key, image_set_id=primary.image_set_id,
                       attributes=names)
                continue
            verified += 1
            candidates.append(Candidate(sop, mine.key, primary.image_set_id, primary.instance))
    extra: Counter[str] = Counter()
    for sop, spots in where.items():
        if sop in ours:
            continue
        for p in spots:
            if p.series_instance_uid in study_series:
                extra[p.image_set_id] += 1
    for image_set_id, n in sorted(extra.items()):
        differ(DifferenceKind.EXTRA, n, image_set_id=image_set_id,
               note="instances of a source series that the source does not have")
    return verified
