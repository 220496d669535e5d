"""adopt_plan: a migration started from a finished plan (`himig start --from-plan`) takes the plan's inventory,
parse results and rejections instead of reading the source again.

The plan is refused unless it finished (its ``plan.json`` exists), was made for this source, data store, validation
level and source manifest, and the source is unchanged since: every inventoried object still has its size and
ETag, none is gone, and (for a listed prefix) none was added. A changed source makes the whole plan stale, and the
migration fails at once asking for a new plan: re-parsing only the changed files would make the plan's
prediction something other than what the migration then did. The check streams the plan's inventory pages and
the source listing side by side (both are in key order), so it costs one LIST per 1,000 objects and no memory per
file. Then the plan's objects are copied server-side into the migration's own prefix (the layout of
`contracts.layout`); batches are planned afresh by the migration, because the data store may have changed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError
from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import classify
from activities.heartbeat import current, keeps_alive
from activities.storage import get_bytes, is_missing, iter_ndjson, list_objects
from contracts import layout
from contracts.errors import ErrorType, describe_validation_error
from contracts.plan import AdoptInput, AdoptResult, PlanDocument
from contracts.records import InventoryEntry
from contracts.s3uri import S3Location, parse_s3_uri

# What is copied from the plan's prefix (relative folders); parse checkpoints, batch manifests and the plan's
# duplicate ledger are not: the migration plans its batches afresh.
COPIED = ("inventory/", "parsed/page-", "validated/", "normalized/", "ledger/page-", "receive/failures/", "plan/")


class PlanUnusable(Exception):
    """A plan that a migration cannot start from; the message says why (no keys, no patient values)."""

    def __init__(self, message: str, stale: bool = False) -> None:
        super().__init__(message)
        self.stale = stale


@dataclass
class SourceChanges:
    added: int = 0
    removed: int = 0
    changed: int = 0

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def describe(self) -> str:
        return f"{self.added} added, {self.removed} removed, {self.changed} changed (size or ETag)"


def read_plan(s3: Any, work_s3_uri: str, plan_id: str) -> PlanDocument:
    """The finished plan's document; `PlanUnusable` when there is none (unfinished, or no plan by that id)."""
    loc = layout.plan_document(work_s3_uri, plan_id)
    try:
        return PlanDocument.model_validate_json(get_bytes(s3, loc))
    except ClientError as err:
        if is_missing(err):
            raise PlanUnusable(f"plan {plan_id!r} has no plan.json under {work_s3_uri}: it has not finished, or it "
                               "was made with another work prefix") from None
        raise classify(err, "reading the plan") from None
    except ValidationError as err:
        raise PlanUnusable(f"plan {plan_id!r}: plan.json does not read as a plan "
                           f"({describe_validation_error(err)})") from None


def mismatch(doc: PlanDocument, source_s3_uri: str, datastore_id: str, validation_level: str,
             source_manifest_uri: str | None) -> str | None:
    """Why a migration with these settings cannot use the plan, or None."""
    planned = doc.migration
    same = (("data store", planned.datastore_id, datastore_id),
            ("source", _prefix(planned.source_s3_uri), _prefix(source_s3_uri)),
            ("validation level", planned.validation_level.value, str(validation_level)),
            ("source manifest", planned.source_manifest_uri, source_manifest_uri))
    for what, theirs, ours in same:
        if theirs != ours:
            return (f"plan {doc.plan_id!r} was made for {what} {theirs}, this migration's is {ours}: plan again "
                    f"for this {what}")
    return None


def _prefix(uri: str) -> str:
    return parse_s3_uri(uri, field="source_s3_uri").as_prefix().uri


def _planned(s3: Any, work_s3_uri: str, plan_id: str, pages: int) -> Iterator[InventoryEntry]:
    for page in range(pages):
        for row in iter_ndjson(s3, layout.inventory_page(work_s3_uri, plan_id, page)):
            yield InventoryEntry.model_validate(row)


def _listed(s3: Any, source_s3_uri: str) -> Iterator[InventoryEntry]:
    source = parse_s3_uri(source_s3_uri, field="source_s3_uri").as_prefix()
    for obj in list_objects(s3, source):
        if not obj["Key"].endswith("/"):  # folder placeholders are not files (as receive_inventory)
            yield InventoryEntry(key=obj["Key"], size=int(obj["Size"]), etag=obj.get("ETag", "").strip('"'))


def source_changes(s3: Any, doc: PlanDocument, work_s3_uri: str) -> SourceChanges:
    """How the source differs from the plan's inventory: a merge of two key-ordered streams. A plan over a source
    manifest inventoried only the objects it names, so objects beside them are not counted as added."""
    changes = SourceChanges()
    manifest = doc.migration.source_manifest_uri is not None
    planned = _planned(s3, work_s3_uri, doc.plan_id, doc.inventory_pages)
    listed = _listed(s3, doc.migration.source_s3_uri)
    p, n = next(planned, None), next(listed, None)
    seen = 0
    while p is not None or n is not None:
        if n is None or (p is not None and p.key < n.key):
            changes.removed += 1
            p = next(planned, None)
        elif p is None or n.key < p.key:
            changes.added += not manifest
            n = next(listed, None)
        else:
            changes.changed += (p.size, p.etag) != (n.size, n.etag)
            p, n = next(planned, None), next(listed, None)
        seen += 1
        if seen % 1000 == 0 and (keep := current()):
            keep.record(seen)  # a count, never a key
    return changes


def check_plan(s3: Any, input: AdoptInput) -> PlanDocument:
    """The plan, when this migration may start from it; `PlanUnusable` saying why not."""
    if input.plan_id == input.migration_id:
        raise PlanUnusable(f"from_plan: {input.plan_id!r} is this migration's own id; name the plan's id")
    doc = read_plan(s3, input.work_s3_uri, input.plan_id)
    if why := mismatch(doc, input.source_s3_uri, input.datastore_id, input.validation_level.value,
                       input.source_manifest_uri):
        raise PlanUnusable(why)
    try:
        changes = source_changes(s3, doc, input.work_s3_uri)
    except ClientError as err:
        raise classify(err, "comparing the source with the plan's inventory") from None
    if changes:
        raise PlanUnusable(f"plan {input.plan_id!r} is stale: since it listed the source, {changes.describe()}; "
                           "plan again (`himig plan`)", stale=True)
    return doc


class AdoptActivities:
    def __init__(self, s3: Any) -> None:
        self._s3 = s3

    def _copy(self, plan_root: S3Location, migration_root: S3Location) -> tuple[int, int]:
        """Copy the plan's reusable objects; (objects copied, rejected files in the copied page ledgers)."""
        copied = rejected = 0
        for obj in list_objects(self._s3, plan_root):
            relative = obj["Key"][len(plan_root.key):]
            if not relative.startswith(COPIED) or "/checkpoints/" in relative:
                continue
            target = migration_root.join(relative)
            self._s3.copy_object(Bucket=target.bucket, Key=target.key,
                                 CopySource={"Bucket": plan_root.bucket, "Key": obj["Key"]})
            if relative.startswith("ledger/page-"):
                rejected += sum(1 for _ in iter_ndjson(self._s3, target))
            copied += 1
            if keep := current():
                keep.record(copied)
        return copied, rejected

    @activity.defn(name="adopt_plan")
    @keeps_alive
    def adopt_plan(self, input: AdoptInput) -> AdoptResult:
        try:
            doc = check_plan(self._s3, input)
        except PlanUnusable as err:
            raise ApplicationError(str(err), type=ErrorType.PLAN_STALE if err.stale else ErrorType.PLAN_REFUSED,
                                   non_retryable=True) from None
        plan_root = layout.root(input.work_s3_uri, input.plan_id).as_prefix()
        migration_root = layout.root(input.work_s3_uri, input.migration_id).as_prefix()
        try:
            copied, rejected = self._copy(plan_root, migration_root)
        except ClientError as err:
            raise classify(err, "copying the plan's inventory and parse results") from None
        activity.logger.info("plan adopted", extra={"objects_copied": copied})
        return AdoptResult(pages=doc.inventory_pages, files=doc.files, bytes=doc.bytes,
                           source_failures=doc.source_failures, rejected=rejected, objects_copied=copied)
