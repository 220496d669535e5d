"""verify: check a finished migration's imports against HealthImaging, without importing anything.

Expected: every file the migration's report says was imported, with the image set it landed in (report lines) and
its study / series / SOP Instance UIDs (the migration's normalized pages).

Default check, no "touch" (nothing leaves the archive tier): `GetImageSet` for each expected image set (gone?
still primary?) and `SearchImageSets` per study (each set's instance count, and sets in the study the migration
did not make). Deep check: also `GetImageSetMetadata` per set (one touch each) for every SOP instance under its
series and, with ``attributes``, those attributes compared with the source file's header (one ranged GET per
file; names of differing attributes are reported, never values) and, with ``pixels``, the frames of a seeded
sample of the verified instances against the source's (activities/verify_pixels.py; each frame a touch).

`verify_source` does the same for a bare source, with no migration (activities/verify_source.py).
"""

from __future__ import annotations

import io
import json
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pydicom
from botocore.exceptions import ClientError
from pydicom.datadict import keyword_dict
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.dicom_header import register_phi
from activities.errors import classify, error_code
from activities.healthimaging import get_image_set_metadata, search_image_sets, with_local_retries
from activities.heartbeat import keeps_alive
from activities.sources.common import SourceMisconfigured, SourceUnavailable
from activities.sources.dicomweb import DicomwebConnector
from activities.sources.dimse import DimseConnector
from activities.sources.registry import SourceSettings, connector_for
from activities.storage import get_json, iter_ndjson, list_objects, put_bytes, put_json
from activities.verify_listing import list_source
from activities.verify_pixels import Candidate, PixelCheck, sample
from activities.verify_source import SourceInventory, check_counts, check_instances, read_source
from contracts import layout
from contracts.errors import ErrorType
from contracts.report import VerifyResult as ReportVerify
from contracts.s3uri import S3Location, parse_s3_uri
from contracts.verify import (
    DifferenceKind,
    PulledSourceInput,
    SourceVerifyInput,
    VerifyInput,
    VerifyOptions,
    VerifyResult,
    describe_source,
)

EVENT_SOURCE = "himig.migration"
DETAIL_TYPE = "Migration Verified"
HEADER_RANGE = 64 * 1024


@dataclass
class PixelTally:
    compared: int = 0
    touches: int = 0
    differing: int = 0  # instances
    not_comparable: dict[str, int] = field(default_factory=dict)


@dataclass
class ExpectedSet:
    study: str
    primary: bool
    # SOP Instance UID -> (source key, series UID)
    instances: dict[str, tuple[str, str]] = field(default_factory=dict)


def _text(value: Any) -> str:
    """A DICOM value in one comparable form (multi-values joined by a backslash, padding stripped)."""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(_text(v) for v in value)
    return str(value).strip().rstrip("\x00").strip()


class VerifyActivities:
    def __init__(self, s3: Any, medical_imaging: Any, events: Any = None, event_bus_name: str | None = None,
                 sources: SourceSettings | None = None) -> None:
        self._s3 = s3
        self._sources = sources or SourceSettings()
        self._mi = medical_imaging
        self._events = events
        self._bus = event_bus_name

    # ---- what the migration says it imported

    def _expected(self, input: VerifyInput) -> dict[str, ExpectedSet]:
        try:
            get_json(self._s3, layout.report_document(input.work_s3_uri, input.migration_id))
        except ClientError as err:
            if error_code(err) in ("NoSuchKey", "404"):
                raise ApplicationError(f"migration {input.migration_id} has no report under {input.work_s3_uri}: "
                                       "only a finished migration can be verified",
                                       type=ErrorType.VALIDATION_ERROR, non_retryable=True) from None
            raise classify(err, "GetObject") from None
        landed: dict[str, tuple[str, bool]] = {}
        for row in iter_ndjson(self._s3, layout.report_files(input.work_s3_uri, input.migration_id)):
            if row.get("state") in ("imported", "imported_with_warnings") and row.get("image_set_id"):
                landed[row["key"]] = (row["image_set_id"], bool(row.get("is_primary")))
        sets: dict[str, ExpectedSet] = {}
        prefix = layout.root(input.work_s3_uri, input.migration_id).join("normalized").as_prefix()
        for obj in list_objects(self._s3, prefix):
            for record in iter_ndjson(self._s3, parse_s3_uri(f"s3://{prefix.bucket}/{obj['Key']}")):
                where = landed.get(record.get("key", ""))
                if where is None:
                    continue
                expected = sets.setdefault(where[0], ExpectedSet(record["study_instance_uid"], where[1]))
                expected.instances[record["sop_instance_uid"]] = (record["key"], record["series_instance_uid"])
            activity.heartbeat()
        return sets

    # ---- HealthImaging reads

    def _get(self, datastore_id: str, image_set_id: str, requests: Counter[str]) -> dict[str, Any] | None:
        requests["GetImageSet"] += 1
        try:
            got: dict[str, Any] = with_local_retries(
                partial(self._mi.get_image_set, datastoreId=datastore_id, imageSetId=image_set_id))
            return got
        except ClientError as err:
            if error_code(err) == ErrorType.RESOURCE_NOT_FOUND:
                return None
            raise classify(err, "GetImageSet") from None

    def _study_sets(self, datastore_id: str, study: str, requests: Counter[str]) -> list[dict[str, Any]]:
        requests["SearchImageSets"] += 1
        criteria = {"filters": [{"operator": "EQUAL", "values": [{"DICOMStudyInstanceUID": study}]}]}
        try:
            return with_local_retries(partial(search_image_sets, self._mi, datastore_id, criteria))
        except ClientError as err:
            raise classify(err, "SearchImageSets") from None

    def _source_header(self, input: VerifyInput, key: str, requests: Counter[str]) -> pydicom.Dataset:
        bucket = parse_s3_uri(input.source_s3_uri).bucket
        requests["GetObject"] += 1
        body = self._s3.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{HEADER_RANGE - 1}")["Body"].read()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(io.BytesIO(body), stop_before_pixels=True)
            except Exception:  # a header longer than the first range: read the object whole
                requests["GetObject"] += 1
                body = self._s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                ds = pydicom.dcmread(io.BytesIO(body), stop_before_pixels=True)
        register_phi(ds)
        return ds

    # ---- the check

    @activity.defn(name="verify_migration")
    @keeps_alive
    def verify_migration(self, input: VerifyInput) -> VerifyResult:
        unknown = [a for a in input.attributes if a not in keyword_dict]
        if unknown:
            raise ApplicationError(f"attributes: not DICOM keywords: {', '.join(unknown)}",
                                   type=ErrorType.VALIDATION_ERROR, non_retryable=True)
        expected = self._expected(input)
        requests: Counter[str] = Counter()
        diffs: list[dict[str, Any]] = []
        found: Counter[DifferenceKind] = Counter()
        verified = touches = 0
        candidates: list[Candidate] = []

        def differ(kind: DifferenceKind, count: int = 1, **detail: Any) -> None:
            found[kind] += count
            diffs.append({"kind": kind.value, "count": count, **detail})

        for image_set_id, exp in sorted(expected.items()):
            props = self._get(input.datastore_id, image_set_id, requests)
            activity.heartbeat()
            keys = sorted(k for k, _ in exp.instances.values())
            if props is None or props.get("imageSetState") == "DELETED":
                differ(DifferenceKind.IMAGE_SET_GONE, len(keys), image_set_id=image_set_id, keys=keys)
                continue
            if exp.primary and not props.get("isPrimary"):
                differ(DifferenceKind.MOVED_TO_NON_PRIMARY, len(keys), image_set_id=image_set_id, keys=keys)
                continue
            if input.deep:
                verified += self._deep(input, image_set_id, exp, requests, differ, candidates)
                touches += 1
            else:
                verified += len(keys)
        # Per study: each expected set's instance count, and the sets the migration did not make.
        by_study: dict[str, list[str]] = defaultdict(list)
        for image_set_id, exp in expected.items():
            by_study[exp.study].append(image_set_id)
        gone = {d["image_set_id"] for d in diffs if d["kind"] == DifferenceKind.IMAGE_SET_GONE.value}
        for study, set_ids in sorted(by_study.items()):
            summaries = {s["imageSetId"]: s for s in self._study_sets(input.datastore_id, study, requests)}
            for image_set_id in sorted(set_ids):
                if image_set_id in gone or input.deep:
                    continue  # the deep check counted instance by instance
                have = int((summaries.get(image_set_id) or {}).get("DICOMTags", {}).get(
                    "DICOMNumberOfStudyRelatedInstances", 0))
                want = len(expected[image_set_id].instances)
                if have < want:
                    differ(DifferenceKind.MISSING, want - have, image_set_id=image_set_id)
                    verified -= want - have
            extra = sorted(set(summaries) - set(set_ids))
            if extra:
                differ(DifferenceKind.EXTRA, len(extra), image_sets=extra,
                       note="image sets in a verified study that this migration did not import")
        pixels = self._pixels(input, input.datastore_id, parse_s3_uri(input.source_s3_uri).bucket, candidates,
                              requests, differ)
        out = layout.root(input.work_s3_uri, input.migration_id).join(
            "verify", activity.info().workflow_run_id or "run")
        instances = sum(len(e.instances) for e in expected.values())
        result = VerifyResult(migration_id=input.migration_id, deep=input.deep, instances_expected=instances,
                              instances_verified=max(0, verified - pixels.differing), image_sets_checked=len(expected),
                              differences=dict(found), differences_uri=out.join("differences.ndjson").uri,
                              touches=touches + pixels.touches, touches_for_deep=len(expected) - len(gone),
                              requests=dict(requests), frames_compared=pixels.compared,
                              frames_not_comparable=pixels.not_comparable)
        self._write(out, diffs, result)
        # The latest outcome, where the report page (`himig report --html`) shows it.
        put_json(self._s3, layout.report_verify(input.work_s3_uri, input.migration_id), ReportVerify(
            verified_at=datetime.now(UTC), passed=result.clean,
            counts={"instances_expected": instances, "instances_verified": result.instances_verified,
                    "image_sets_checked": len(expected), "touches": touches,
                    **{f"difference_{k.value}": v for k, v in found.items()}},
            problems=[f"{k.value}: {v} ({'deep' if input.deep else 'no-touch'} check)" for k, v in sorted(found.items())],
        ).model_dump(mode="json"))
        if input.publish and self._events is not None and self._bus:
            self._publish(input, result)
            result.published = True
        return result

    def _deep(self, input: VerifyInput, image_set_id: str, exp: ExpectedSet, requests: Counter[str],
              differ: Any, candidates: list[Candidate]) -> int:
        """Every SOP instance of the set under its series, and the chosen attributes; returns those verified."""
        requests["GetImageSetMetadata"] += 1
        try:
            doc = with_local_retries(partial(get_image_set_metadata, self._mi, input.datastore_id, image_set_id))
        except ClientError as err:
            raise classify(err, "GetImageSetMetadata") from None
        study = doc.get("Study") or {}
        where: dict[str, tuple[str, dict[str, Any]]] = {}
        for series_uid, series in (study.get("Series") or {}).items():
            for sop, inst in (series.get("Instances") or {}).items():
                where[sop] = (series_uid, inst)
        verified = 0
        for sop, (key, series_uid) in sorted(exp.instances.items(), key=lambda kv: kv[1][0]):
            got = where.pop(sop, None)
            if got is None:
                differ(DifferenceKind.MISSING, key=key, image_set_id=image_set_id)
                continue
            if got[0] != series_uid:
                differ(DifferenceKind.NOT_IN_EXPECTED_SERIES, key=key, image_set_id=image_set_id)
                continue
            if input.attributes:
                levels = [(got[1].get("DICOM") or {}),
                          ((study.get("Series") or {}).get(series_uid) or {}).get("DICOM") or {},
                          study.get("DICOM") or {}, (doc.get("Patient") or {}).get("DICOM") or {}]
                source = self._source_header(input, key, requests)
                differing = []
                for name in input.attributes:
                    stored = next((lvl[name] for lvl in levels if name in lvl), None)
                    original = source.get(name)  # by keyword: the value
                    mine = _text(original) if original is not None else None
                    theirs = _text(stored) if stored is not None else None
                    if (mine or None) != (theirs or None):
                        differing.append(name)
                if differing:
                    differ(DifferenceKind.METADATA_DIFFERS, key=key, image_set_id=image_set_id, attributes=differing)
                    continue
            verified += 1
            candidates.append(Candidate(sop, key, image_set_id, got[1]))
            activity.heartbeat()
        if where:
            differ(DifferenceKind.EXTRA, len(where), image_set_id=image_set_id,
                   note="instances in the image set that this migration did not import")
        return verified

    def _write(self, out: Any, diffs: list[dict[str, Any]], result: VerifyResult) -> None:
        put_bytes(self._s3, out.join("differences.ndjson"),
                  "".join(json.dumps(d, sort_keys=True) + "\n" for d in diffs).encode(), "application/x-ndjson")
        put_json(self._s3, out.join("result.json"), result.model_dump(mode="json"))

    def _pixels(self, options: VerifyOptions, datastore_id: str, source_bucket: str, candidates: list[Candidate],
                requests: Counter[str], differ: Any) -> PixelTally:
        """The pixel check of a seeded sample of ``candidates`` (verified instances); differences go to ``differ``."""
        if not (options.deep and options.pixels):
            return PixelTally()
        outcome = PixelCheck(self._s3, self._mi, datastore_id, source_bucket, requests).run(
            sample(candidates, options.pixels, options.pixel_seed))
        for cand, frames in outcome.differing:
            differ(DifferenceKind.PIXELS_DIFFER, key=cand.key, image_set_id=cand.image_set_id,
                   frames=frames or "the number of frames differs")
        return PixelTally(outcome.compared, outcome.touches, len(outcome.differing), dict(outcome.not_comparable))

    def _datastore(self, datastore_id: str, requests: Counter[str]) -> None:
        """Refuse, in one clear line, a data store that does not exist or that this worker may not read."""
        requests["GetDatastore"] += 1
        try:
            with_local_retries(partial(self._mi.get_datastore, datastoreId=datastore_id))
        except ClientError as err:
            code = error_code(err)
            if code == ErrorType.RESOURCE_NOT_FOUND:
                raise ApplicationError(f"datastore_id: no data store {datastore_id}",
                                       type=ErrorType.VALIDATION_ERROR, non_retryable=True) from None
            if code == ErrorType.ACCESS_DENIED:
                raise ApplicationError(f"datastore_id: the worker may not read data store {datastore_id} "
                                       "(AccessDeniedException: medical-imaging:GetDatastore)",
                                       type=ErrorType.ACCESS_DENIED, non_retryable=True) from None
            raise classify(err, "GetDatastore") from None

    @activity.defn(name="verify_source")
    @keeps_alive
    def verify_source(self, input: SourceVerifyInput) -> VerifyResult:
        """A bare source (every object under its prefix) against a data store; see activities/verify_source.py."""
        source = parse_s3_uri(input.source_s3_uri or "", field="source_s3_uri").as_prefix()
        return self._check_prefix(input, source, [], activity.info().workflow_run_id or "run")

    @activity.defn(name="verify_pulled_source")
    @keeps_alive
    def verify_pulled_source(self, input: PulledSourceInput) -> VerifyResult:
        """A connector source, pulled by `receive_inventory` into ``landing_s3_uri``, checked as an S3 source; every
        study or file the pull could not deliver (its failure rows) is a ``not_pulled`` difference, never a pass."""
        run = activity.info().workflow_run_id or "run"
        failures_prefix = layout.receive_failures_prefix(input.request.work_s3_uri, input.pull_id)
        rows: list[dict[str, Any]] = []
        try:
            for obj in list_objects(self._s3, failures_prefix):
                rows.extend(iter_ndjson(self._s3, parse_s3_uri(f"s3://{failures_prefix.bucket}/{obj['Key']}")))
        except ClientError as err:
            raise classify(err, "reading the pull's failure rows") from None
        found = [{"kind": DifferenceKind.NOT_PULLED.value, "count": 1, "key": r["key"], "code": r.get("code"),
                  "note": r.get("reason")} for r in rows]
        landing = parse_s3_uri(input.landing_s3_uri, field="landing_s3_uri").as_prefix()
        return self._check_prefix(input.request, landing, found, run, allow_empty=bool(found))

    def _check_prefix(self, input: SourceVerifyInput, source: S3Location, found_before: list[dict[str, Any]],
                      run: str, allow_empty: bool = False) -> VerifyResult:
        """Every object under ``source`` against the data store; ``found_before``: differences already known (a
        pull's undelivered units), listed first. ``allow_empty``: an empty prefix is a finding, not an error."""
        requests = self._start(input)
        inv = read_source(self._s3, source, input.attributes, requests, activity.heartbeat)
        if not inv.files and not allow_empty:
            where = describe_source(input) if input.source_connector is not None else source.uri
            raise ApplicationError(f"{'source_connector' if input.source_connector else 'source_s3_uri'}: "
                                   f"no object under {where}", type=ErrorType.VALIDATION_ERROR, non_retryable=True)
        notes = []
        if input.source_connector is not None:
            notes.append(f"the source was pulled into {source.uri} ({inv.files} object(s)); differences name keys "
                         "there; delete the prefix when you no longer need it")
        return self._check(input, inv, found_before, run, requests, source, notes)

    @activity.defn(name="verify_listed_source")
    @keeps_alive
    def verify_listed_source(self, input: SourceVerifyInput) -> VerifyResult:
        """A PACS by its listing alone (QIDO-RS or C-FIND), nothing pulled; see activities/verify_listing.py."""
        assert input.source_connector is not None and input.source_connector.kind != "local"
        requests = self._start(input)
        connector = connector_for(input.source_connector, self._sources)
        assert isinstance(connector, DicomwebConnector | DimseConnector)
        try:
            connector.probe()
            inv, found = list_source(connector, activity.heartbeat)
        except SourceUnavailable as err:
            raise ApplicationError(f"{connector.describe()}: {err}", type=ErrorType.SOURCE_UNAVAILABLE) from None
        except SourceMisconfigured as err:
            raise ApplicationError(f"{connector.describe()}: {err}", type=ErrorType.INVALID_SOURCE_CONNECTOR,
                                   non_retryable=True) from None
        studies = len(inv.studies) + sum(1 for d in found if d.get("code") == "StudyNotFound")
        requests[f"{connector.SEARCH} instance searches"] += studies
        notes = [f"listed, not pulled: {connector.SEARCH} named {inv.files} instance(s) in {studies} study(ies); "
                 "this proves what the PACS lists is in the data store, not that each file would import (--pull "
                 "pulls every file and checks what lands)"]
        return self._check(input, inv, found, activity.info().workflow_run_id or "run", requests, None, notes)

    @activity.defn(name="check_verify_target")
    def check_verify_target(self, input: SourceVerifyInput) -> bool:
        """Before a source is pulled (which may move a whole PACS): the attribute keywords and the data store."""
        self._start(input)
        return True

    def _start(self, input: SourceVerifyInput) -> Counter[str]:
        """Refuse unknown attribute keywords and a data store that cannot be read, before reading any source."""
        unknown = [a for a in input.attributes if a not in keyword_dict]
        if unknown:
            raise ApplicationError(f"attributes: not DICOM keywords: {', '.join(unknown)}",
                                   type=ErrorType.VALIDATION_ERROR, non_retryable=True)
        requests: Counter[str] = Counter()
        self._datastore(input.datastore_id, requests)
        return requests

    def _check(self, input: SourceVerifyInput, inv: SourceInventory, found_before: list[dict[str, Any]], run: str,
               requests: Counter[str], source: S3Location | None, notes: list[str]) -> VerifyResult:
        """The source's inventory against the data store; ``found_before``: differences already known (what a
        pull or a listing could not deliver), listed first; ``source``: where the files are (None: listed only)."""
        diffs: list[dict[str, Any]] = list(found_before)
        found: Counter[DifferenceKind] = Counter(DifferenceKind(d["kind"]) for d in found_before)

        def differ(kind: DifferenceKind, count: int = 1, **detail: Any) -> None:
            found[kind] += count
            diffs.append({"kind": kind.value, "count": count, **detail})

        if inv.unreadable:
            differ(DifferenceKind.UNREADABLE, len(inv.unreadable), keys=sorted(inv.unreadable),
                   note="no readable DICOM header with Study, Series and SOP Instance UIDs that HealthImaging "
                        "accepts")
        verified = sets_seen = touches = 0
        candidates: list[Candidate] = []
        for study, series in sorted(inv.studies.items()):
            summaries = self._study_sets(input.datastore_id, study, requests)
            sets_seen += len(summaries)
            activity.heartbeat()
            if not input.deep:
                verified += check_counts(series, summaries, differ)
                continue
            docs = {}
            for summary in summaries:
                requests["GetImageSetMetadata"] += 1
                touches += 1
                try:
                    docs[summary["imageSetId"]] = (bool(summary.get("isPrimary")), with_local_retries(
                        partial(get_image_set_metadata, self._mi, input.datastore_id, summary["imageSetId"])))
                except ClientError as err:
                    if error_code(err) == ErrorType.RESOURCE_NOT_FOUND:
                        continue  # deleted since the search: its instances are not there
                    raise classify(err, "GetImageSetMetadata") from None
            verified += check_instances(series, docs, differ, candidates)
        pixels = (self._pixels(input, input.datastore_id, source.bucket, candidates, requests, differ)
                  if source is not None else PixelTally())
        if not input.deep:
            notes.append("no-touch check: instances are counted per series from SearchImageSets, not found one by "
                         "one; --deep reads each image set's metadata (touches_for_deep) to place every instance")
        if inv.repeated:
            notes.append(f"{inv.repeated} file(s) repeat the SOP Instance UID of another file and were checked once")
        out = parse_s3_uri(input.work_s3_uri, field="work_s3_uri").join("verify-source", run)
        result = VerifyResult(
            source_s3_uri=input.source_s3_uri or (source.uri if source is not None else None),
            source_connector=describe_source(input) if input.source_connector is not None else None,
            deep=input.deep, instances_expected=inv.instances,
            instances_verified=max(0, verified - pixels.differing), image_sets_checked=sets_seen,
            differences=dict(found), differences_uri=out.join("differences.ndjson").uri,
            touches=touches + pixels.touches, touches_for_deep=sets_seen, requests=dict(requests),
            frames_compared=pixels.compared, frames_not_comparable=pixels.not_comparable, notes=notes)
        self._write(out, diffs, result)
        if input.publish and self._events is not None and self._bus:
            self._publish_source(input, result)
            result.published = True
        return result

    def _publish_source(self, input: SourceVerifyInput, result: VerifyResult) -> None:
        self._put_event({"sourceS3Uri": result.source_s3_uri, "sourceConnector": result.source_connector,
                         "datastoreId": input.datastore_id,
                         "deep": result.deep, "instancesExpected": result.instances_expected,
                         "instancesVerified": result.instances_verified,
                         "differences": {k.value: v for k, v in result.differences.items()},
                         "differencesUri": result.differences_uri})

    def _publish(self, input: VerifyInput, result: VerifyResult) -> None:
        detail = {"migrationId": input.migration_id, "datastoreId": input.datastore_id, "deep": result.deep,
                  "instancesExpected": result.instances_expected, "instancesVerified": result.instances_verified,
                  "differences": {k.value: v for k, v in result.differences.items()},
                  "differencesUri": result.differences_uri}
        self._put_event(detail)

    def _put_event(self, detail: dict[str, Any]) -> None:
        try:
            resp = self._events.put_events(Entries=[{"Source": EVENT_SOURCE, "DetailType": DETAIL_TYPE,
                                                     "EventBusName": self._bus, "Detail": json.dumps(detail)}])
        except ClientError as err:
            raise classify(err, "PutEvents") from None
        if resp.get("FailedEntryCount"):
            raise ApplicationError("PutEvents did not accept the verification event", type=ErrorType.PUT_EVENTS_FAILED)
