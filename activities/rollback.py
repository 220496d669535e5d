"""rollback: which image sets a finished migration created (and may delete), which it must leave alone, and the
deletions themselves.

The plan reads only the migration's own records (its report's per-file lines, and for non-primary sets its
normalized pages for the series UID) and HealthImaging calls that do not "touch" an image set (`GetImageSet`,
`SearchImageSets`: no move out of the archive tier). An image set is the migration's to delete only when:

- the migration's import made its version 1 (else the migration only added to a set that existed before);
- nobody changed it since (its current version is the last one the migration made);
- for a non-primary set: its series has no primary set that the migration did not create (deleting it then would
  leave a reconciliation with a primary it has nothing to do with: it is reported instead).
"""

from __future__ import annotations

from collections import defaultdict
from functools import partial
from typing import Any

from botocore.exceptions import ClientError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import classify, error_code
from activities.healthimaging import search_image_sets, with_local_retries
from activities.heartbeat import keeps_alive
from activities.storage import get_json, iter_ndjson, list_objects, put_json
from contracts import layout
from contracts.errors import ErrorType
from contracts.rollback import (
    DeleteChunk,
    DeleteOutcome,
    KeepReason,
    RecordInput,
    RollbackInput,
    RollbackPlan,
)
from contracts.s3uri import parse_s3_uri


def plan_location(input: RollbackInput) -> Any:
    return layout.root(input.work_s3_uri, input.migration_id).join("rollback", "plan.json")


def record_location(input: RollbackInput) -> Any:
    return layout.report_prefix(input.work_s3_uri, input.migration_id).join("rollback.json")


class RollbackActivities:
    def __init__(self, s3: Any, medical_imaging: Any) -> None:
        self._s3 = s3
        self._mi = medical_imaging

    def _get(self, datastore_id: str, image_set_id: str) -> dict[str, Any] | None:
        """GetImageSet (not a touch); None when the set does not exist."""
        try:
            got: dict[str, Any] = with_local_retries(
                lambda: self._mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id))
            return got
        except ClientError as err:
            if error_code(err) == ErrorType.RESOURCE_NOT_FOUND:
                return None
            raise classify(err, "GetImageSet") from None

    def _report_rows(self, input: RollbackInput) -> Any:
        report = layout.report_document(input.work_s3_uri, input.migration_id)
        try:
            doc = get_json(self._s3, report)
        except ClientError as err:
            if error_code(err) in ("NoSuchKey", "404"):
                raise activity_error(f"migration {input.migration_id} has no report under {input.work_s3_uri}: "
                                     "only a finished migration can be rolled back") from None
            raise classify(err, "GetObject") from None
        if doc.get("datastore_id") not in (None, input.datastore_id):
            raise activity_error(f"migration {input.migration_id} imported into another data store, not "
                                 f"{input.datastore_id}")
        return iter_ndjson(self._s3, layout.report_files(input.work_s3_uri, input.migration_id))

    def _series_of(self, input: RollbackInput, keys: set[str]) -> dict[str, str]:
        """SeriesInstanceUID of the given source keys, from the migration's normalized pages."""
        found: dict[str, str] = {}
        prefix = layout.root(input.work_s3_uri, input.migration_id).join("normalized").as_prefix()
        for obj in list_objects(self._s3, prefix):
            loc = parse_s3_uri(f"s3://{prefix.bucket}/{obj['Key']}")
            for record in iter_ndjson(self._s3, loc):
                if record.get("key") in keys:
                    found[record["key"]] = record["series_instance_uid"]
            if len(found) == len(keys):
                break
        return found

    @activity.defn(name="plan_rollback")
    @keeps_alive
    def plan_rollback(self, input: RollbackInput) -> RollbackPlan:
        versions: dict[str, set[int]] = defaultdict(set)
        primary: dict[str, bool] = {}
        key_of_set: dict[str, str] = {}
        for row in self._report_rows(input):
            image_set, version = row.get("image_set_id"), row.get("image_set_version")
            # A skipped duplicate names an earlier migration's image set: never this migration's to delete.
            if not image_set or row.get("state") not in ("imported", "imported_with_warnings"):
                continue
            if version is not None:
                versions[image_set].add(int(version))
            primary[image_set] = bool(row.get("is_primary"))
            key_of_set.setdefault(image_set, row["key"])
        kept: dict[KeepReason, list[str]] = defaultdict(list)
        candidates: list[str] = []
        for image_set in sorted(primary):
            mine = versions.get(image_set, set())
            props = self._get(input.datastore_id, image_set)
            activity.heartbeat()
            if props is None or props.get("imageSetState") == "DELETED" or \
                    props.get("imageSetWorkflowStatus") == "DELETING":
                kept[KeepReason.ALREADY_DELETED].append(image_set)
            elif 1 not in mine:
                kept[KeepReason.EXISTED_BEFORE].append(image_set)
            elif int(props.get("versionId", 0)) > max(mine):
                kept[KeepReason.CHANGED_AFTER].append(image_set)
            else:
                candidates.append(image_set)
        created = set(candidates)
        non_primary = [s for s in candidates if not primary[s]]
        series = self._series_of(input, {key_of_set[s] for s in non_primary}) if non_primary else {}
        to_delete = []
        for image_set in candidates:
            if not primary[image_set]:
                uid = series.get(key_of_set[image_set])
                criteria = {"filters": [{"operator": "EQUAL", "values": [{"DICOMSeriesInstanceUID": uid}]}]}
                try:
                    sets = with_local_retries(partial(search_image_sets, self._mi, input.datastore_id, criteria))
                except ClientError as err:
                    raise classify(err, "SearchImageSets") from None
                others = {s["imageSetId"] for s in sets if s.get("isPrimary")} - created
                if uid is None or others:
                    kept[KeepReason.PRIMARY_PREDATES].append(image_set)
                    continue
            to_delete.append(image_set)
        loc = plan_location(input)
        put_json(self._s3, loc, {"migration_id": input.migration_id, "datastore_id": input.datastore_id,
                                 "delete": to_delete, "kept": {k.value: v for k, v in kept.items()}})
        return RollbackPlan(to_delete=len(to_delete), kept={k: len(v) for k, v in kept.items()}, plan_uri=loc.uri)

    @activity.defn(name="delete_image_sets")
    @keeps_alive
    def delete_image_sets(self, input: DeleteChunk) -> DeleteOutcome:
        """DeleteImageSet for one chunk of the plan; a set already deleting, deleted or gone counts as done, so a
        retried chunk (or a second rollback) deletes nothing twice."""
        plan = get_json(self._s3, parse_s3_uri(input.plan_uri, field="plan_uri"))
        if plan.get("datastore_id") != input.datastore_id:
            raise activity_error("the rollback plan belongs to another data store")
        outcome = DeleteOutcome()
        for image_set in plan["delete"][input.start:input.start + input.count]:
            try:
                got: dict[str, Any] = with_local_retries(
                    partial(self._mi.delete_image_set, datastoreId=input.datastore_id, imageSetId=image_set))
            except ClientError as err:
                code = error_code(err)
                props = self._get(input.datastore_id, image_set) if code == ErrorType.CONFLICT else None
                if code == ErrorType.RESOURCE_NOT_FOUND or (props is not None and (
                        props.get("imageSetState") == "DELETED" or props.get("imageSetWorkflowStatus") == "DELETING")):
                    outcome.already_deleted += 1
                    continue
                raise classify(err, "DeleteImageSet") from None
            if got.get("imageSetState") == "DELETED":
                outcome.already_deleted += 1
            else:
                outcome.deleted += 1
            activity.heartbeat()
        return outcome

    @activity.defn(name="record_rollback")
    def record_rollback(self, input: RecordInput) -> str:
        """``report/rollback.json`` next to the migration's report, and a ``rollback`` entry in report.json."""
        loc = record_location(input.input)
        put_json(self._s3, loc, {"migration_id": input.input.migration_id, **input.progress.model_dump(mode="json")})
        report = layout.report_document(input.input.work_s3_uri, input.input.migration_id)
        doc = get_json(self._s3, report)
        doc["rollback"] = {"phase": input.progress.phase.value, "deleted": input.progress.deleted,
                           "already_deleted": input.progress.already_deleted,
                           "confirmed_by": input.progress.confirmed_by, "record_uri": loc.uri}
        put_json(self._s3, report, doc)
        return str(loc.uri)


def activity_error(message: str) -> ApplicationError:
    return ApplicationError(message, type=ErrorType.ROLLBACK_REFUSED, non_retryable=True)
