"""Batch planning (the first half of the import stage): de-duplicate and pack instances into import jobs.

Clean source folders are imported in place whole (`activities.plan_folders`); the rest is packed keeping a study
in one batch whenever it fits, because HealthImaging builds image sets per series and a study split across jobs
costs more jobs and more chances of partial failure. Limits are the job quotas.

The functions over lists (`deduplicate`, `skip_already_imported`, `predict_non_primary`, `pack`) state each rule;
`plan_batches` applies the first two to one group at a time and the streaming forms of the last two
(`predict_streaming`, `activities.plan_folders.StreamPacker`) to records spilled to disk (`activities.plan_store`),
so its memory does not grow with the migration. The tests hold both to the same verdicts and batches.

A migration plans in waves while later pages still parse (workflows/migration.py): each call plans the files that
became *ready* since the previous wave. A file is ready once the last inventory page listing anything directly in
its folder is parsed (its own page when folders do not matter: an explicit object list), so a folder is planned
whole by one wave and can still be imported in place; a wave never plans a file twice, and every wave keeps the
same copy of a duplicated SOP Instance UID (the first by readiness, then key). Pages are listed in key order, so
that is the first by key in practice, as a plan of every page at once has it. With `large_folders_by_page` (patch
`large-folders-by-page`), a file whose folder is larger than a batch is ready at its own page: it is staged
whatever happens, so a flat prefix or a series of thousands of files no longer waits for its last page. Every
wave of one migration uses the same rule (the workflow fixes it when the first wave is planned): were the rule to
change between waves, a file an earlier wave left for later could count as planned already.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from botocore.exceptions import ClientError
from temporalio import activity

from activities.errors import classify, error_code
from activities.failed_before import held_entry, read_failed_before
from activities.failed_index import FailedIndex
from activities.healthimaging import with_local_retries
from activities.heartbeat import current, keeps_alive
from activities.import_index import ImportIndex
from activities.instance_identity import Fetch, Sameness, compare
from activities.ledger import source_changed_keys
from activities.plan_folders import FolderPlanner, StreamPacker, split_direct, study_units
from activities.plan_store import (
    DUPLICATE,
    FAILED_BEFORE,
    HELD,
    PHASE_DUPLICATES,
    PHASE_FAILED_BEFORE,
    PHASE_HELD,
    PlanStore,
    Row,
)
from activities.s3_stream import S3StreamWriter
from activities.storage import is_missing, iter_ndjson, put_bytes, put_ndjson, read_models
from contracts import layout
from contracts.batch import BatchInput
from contracts.common import FileState
from contracts.errors import ErrorType
from contracts.records import (
    ImportedInstance,
    InstanceRecord,
    InventoryEntry,
    LedgerEntry,
    attributes_fingerprint,
)
from contracts.s3uri import S3Location, parse_s3_uri
from contracts.stages import BatchPlan, PlanInput, PlanResult

Compare = Callable[[InstanceRecord, InstanceRecord], Sameness]


def deduplicate(instances: list[InstanceRecord], compare: Compare, *, in_order: bool = False,
                ) -> tuple[list[InstanceRecord], list[LedgerEntry]]:
    """Keep the first file (by key, or as given when ``in_order``: planning's order) of each SOP Instance UID.

    Identical bytes are ``skipped_duplicate`` at once. Other bytes are judged by ``compare`` (see
    :mod:`activities.instance_identity`): the same dataset and pixels in another encoding or with another file meta
    group is the same instance, also ``skipped_duplicate``; a real difference is ``rejected`` with the differing
    attributes named (importing both would silently overwrite one with the other in the image set).
    """
    first: dict[str, InstanceRecord] = {}
    kept: list[InstanceRecord] = []
    ledger: list[LedgerEntry] = []
    for inst in (instances if in_order else sorted(instances, key=lambda i: i.key)):
        original = first.get(inst.sop_instance_uid)
        if original is None:
            first[inst.sop_instance_uid] = inst
            kept.append(inst)
        elif original.content_id == inst.content_id:
            ledger.append(_placed(LedgerEntry(key=inst.key, state=FileState.SKIPPED_DUPLICATE, size=inst.size,
                                      code="duplicate_sop_instance", duplicate_of=original.key,
                                      reason="identical copy of another source file; imported once"), inst))
        else:
            ledger.append(_placed(_judged(inst, original, compare(original, inst)), inst))
    return kept, ledger


def _placed(entry: LedgerEntry, inst: InstanceRecord) -> LedgerEntry:
    """``entry`` with the study and series it belongs to (for the report's per-study and per-series tables)."""
    return entry.model_copy(update={"study_instance_uid": inst.study_instance_uid,
                                    "series_instance_uid": inst.series_instance_uid})


def _judged(inst: InstanceRecord, original: InstanceRecord, verdict: Sameness) -> LedgerEntry:
    if verdict.same:
        return LedgerEntry(key=inst.key, state=FileState.SKIPPED_DUPLICATE, size=inst.size,
                           code="duplicate_sop_instance", duplicate_of=original.key,
                           reason=f"same instance, other encoding ({verdict.other_encoding}): its elements and "
                                  "decoded pixel data equal another source file's; imported once")
    names = list(verdict.attributes)
    if names:
        what = f"differs in {', '.join(names)}"
        if verdict.why:
            what += f" ({verdict.why})"
    else:
        what = f"could not be proven the same ({verdict.why})"
    return LedgerEntry(key=inst.key, state=FileState.REJECTED, size=inst.size,
                       code="conflicting_duplicate_sop_instance", duplicate_of=original.key,
                       differing_attributes=names or None,
                       reason=f"another source file has the same SOP Instance UID but {what}; the first (by key) "
                              "is imported, this one needs review")


@dataclass
class ImportedIndex:
    """What the data store already holds from earlier migrations, restricted to this migration's instances.

    Only SOP Instance UIDs and series present in this source are kept, so memory follows this migration's
    size, not the data store's.
    """

    instances: dict[str, ImportedInstance] = field(default_factory=dict)  # sop uid -> where it was imported
    series: dict[tuple[str, str], ImportedInstance] = field(default_factory=dict)  # a primary instance per series


CompareImported = Callable[[ImportedInstance, InstanceRecord], Sameness]


def skip_already_imported(instances: list[InstanceRecord], index: ImportedIndex,
                          compare_imported: CompareImported | None = None,
                          ) -> tuple[list[InstanceRecord], list[LedgerEntry]]:
    """Instances the data store already holds: the same content is ``skipped_duplicate``; other content under an
    already imported SOP Instance UID is compared with the file that was imported (``compare_imported``, when the
    index line says where it was read from): the same instance in another encoding is ``skipped_duplicate`` too,
    anything else ``rejected`` (importing it would silently replace the earlier instance in its image set, so a
    person decides)."""
    kept: list[InstanceRecord] = []
    ledger: list[LedgerEntry] = []
    for inst in instances:
        hit = index.instances.get(inst.sop_instance_uid)
        if hit is None:
            kept.append(inst)
            continue
        verdict = None
        if hit.content_id != inst.content_id and hit.source_uri and compare_imported is not None:
            verdict = compare_imported(hit, inst)
        if hit.content_id == inst.content_id or (verdict is not None and verdict.same):
            how = "unchanged" if verdict is None else f"as the same instance in another encoding " \
                                                     f"({verdict.other_encoding})"
            ledger.append(_placed(LedgerEntry(
                key=inst.key, state=FileState.SKIPPED_DUPLICATE, size=inst.size, code="already_imported",
                duplicate_of=hit.migration_id, image_set_id=hit.image_set_id, is_primary=hit.is_primary,
                reason=f"already imported {how} by migration {hit.migration_id} into image set "
                       f"{hit.image_set_id}; not imported again"), inst))
        else:
            ledger.append(_placed(LedgerEntry(
                key=inst.key, state=FileState.REJECTED, size=inst.size, code="conflicting_already_imported",
                duplicate_of=hit.migration_id,
                differing_attributes=list(verdict.attributes) if verdict is not None and verdict.attributes else None,
                reason=f"migration {hit.migration_id} already imported this SOP Instance UID with different "
                       f"content ({_index_difference(hit, inst, verdict)}; image set {hit.image_set_id}); importing "
                       "it would replace that instance, so it needs review"), inst))
    return kept, ledger


def _index_difference(hit: ImportedInstance, inst: InstanceRecord, verdict: Sameness | None) -> str:
    """What is known about the difference: from comparing the files, else from the index line alone."""
    if verdict is not None and verdict.attributes:
        return f"differs in {', '.join(verdict.attributes)}" + (f": {verdict.why}" if verdict.why else "")
    if verdict is not None:
        return f"not proven the same: {verdict.why}"
    if not hit.dataset_fingerprint or not inst.dataset_fingerprint:
        return "other bytes; the index line predates header fingerprints"
    if hit.dataset_fingerprint != inst.dataset_fingerprint:
        return "other header elements"
    return "the same header elements but other bytes; the imported copy's pixel data is not compared"


def _held_elsewhere(earlier: ImportedInstance) -> str:
    return (f"the data store already holds this series (image set {earlier.image_set_id}, "
            f"migration {earlier.migration_id}) with other patient/study/series attributes")


_EARLIER_IN_SOURCE = "an earlier file of this series in this source has other patient/study/series attributes"


def predict_non_primary(instances: list[InstanceRecord], held: dict[tuple[str, str], ImportedInstance] | None = None) -> int:
    """Mark, per file, whether it is expected to land in a non-primary image set; return how many are.

    A series the data store already holds (``held``, from the import index) keeps its attributes; within this
    source the first file of a series (by key) sets them. A file whose patient/study/series attributes differ
    from those is predicted non-primary, with the reason on the file.
    """
    held = held or {}
    seen: dict[tuple[str, str], str] = {}
    count = 0
    for inst in sorted(instances, key=lambda i: i.key):
        fp = attributes_fingerprint(inst)
        series = (inst.study_instance_uid, inst.series_instance_uid)
        earlier = held.get(series)
        if earlier is not None and earlier.attributes_fingerprint != fp:
            inst.predicted_non_primary = True
            inst.prediction_reason = _held_elsewhere(earlier)
        elif earlier is None and seen.setdefault(series, fp) != fp:
            inst.predicted_non_primary = True
            inst.prediction_reason = _EARLIER_IN_SOURCE
        count += inst.predicted_non_primary
    return count


def predict_streaming(store: PlanStore) -> int:
    """`predict_non_primary` over the kept files of ``store``, one series at a time (the same verdicts: the
    files arrive by series and key, so a series' first file by key comes first); returns how many are."""
    reasons: list[tuple[int, str]] = []
    series: tuple[str, str] | None = None
    first = ""
    earlier: ImportedInstance | None = None
    for seq, study, series_uid, fp in store.kept_by_series():
        if (study, series_uid) != series:
            series, first = (study, series_uid), fp
            line = store.held_series(study, series_uid)
            earlier = ImportedInstance.model_validate_json(line) if line is not None else None
        if earlier is not None and earlier.attributes_fingerprint != fp:
            reasons.append((seq, _held_elsewhere(earlier)))
        elif earlier is None and first != fp:
            reasons.append((seq, _EARLIER_IN_SOURCE))
        if len(reasons) >= 5000:
            store.set_predicted(reasons)
            reasons = []
    store.set_predicted(reasons)
    return store.predicted()


def pack(instances: list[InstanceRecord], max_files: int, max_bytes: int) -> list[list[InstanceRecord]]:
    """First-fit packing of whole studies; a study larger than one batch is split by series, then by file."""
    studies: dict[str, list[InstanceRecord]] = defaultdict(list)
    for inst in instances:
        studies[inst.study_instance_uid].append(inst)
    units: list[list[InstanceRecord]] = []
    for study_uid in sorted(studies):
        files = sorted(studies[study_uid], key=lambda i: (i.series_instance_uid, i.key))
        if len(files) <= max_files and sum(f.size for f in files) <= max_bytes:
            units.append(files)
            continue
        chunk: list[InstanceRecord] = []
        for f in files:
            if chunk and (len(chunk) + 1 > max_files or sum(c.size for c in chunk) + f.size > max_bytes):
                units.append(chunk)
                chunk = []
            chunk.append(f)
        if chunk:
            units.append(chunk)
    batches: list[list[InstanceRecord]] = []
    sizes: list[int] = []
    for unit in units:
        unit_bytes = sum(f.size for f in unit)
        # Only the last few open batches are tried: full first-fit is quadratic at millions of files.
        for i in range(max(0, len(batches) - 8), len(batches)):
            batch = batches[i]
            if len(batch) + len(unit) <= max_files and sizes[i] + unit_bytes <= max_bytes:
                batch.extend(unit)
                sizes[i] += unit_bytes
                break
        else:
            batches.append(list(unit))
            sizes.append(unit_bytes)
    return batches


def folder_counts(keys: list[str]) -> dict[str, int]:
    """Number of objects under every folder (recursively), e.g. ``a/`` and ``a/b/`` for ``a/b/c.dcm``."""
    counts: dict[str, int] = defaultdict(int)
    for key in keys:
        end = key.find("/")
        while end != -1:
            counts[key[: end + 1]] += 1
            end = key.find("/", end + 1)
    return counts


def clean_folder(keys: list[str], counts: dict[str, int], source_prefix: str) -> str | None:
    """The folder holding exactly ``keys`` and nothing else, when there is one inside the source prefix.

    An import job reads its input prefix recursively, so only such a folder can be imported in place.
    """
    common = os.path.commonprefix(keys)  # noqa: RUF071 - character prefix on purpose; cut at the last "/" below
    folder = common[: common.rfind("/") + 1]
    if not folder or not folder.startswith(source_prefix):
        return None
    return folder if counts.get(folder, 0) == len(keys) else None


def halves(files: list[InstanceRecord]) -> tuple[list[InstanceRecord], list[InstanceRecord]]:
    """Split a batch in two, keeping a study in one half when the split point allows it."""
    ordered = sorted(files, key=lambda i: (i.study_instance_uid, i.series_instance_uid, i.key))
    middle = len(ordered) // 2
    # Move the cut to the nearest study boundary, if there is one not too far from the middle.
    for offset in range(0, max(1, len(ordered) // 4)):
        for cut in (middle - offset, middle + offset):
            if 0 < cut < len(ordered) and ordered[cut - 1].study_instance_uid != ordered[cut].study_instance_uid:
                return ordered[:cut], ordered[cut:]
    return ordered[:middle], ordered[middle:]


class PlanActivities:
    def __init__(self, s3: Any, medical_imaging: Any = None, import_index_s3_uri: str | None = None) -> None:
        self._s3 = s3
        self._mi = medical_imaging
        self._index = ImportIndex(s3, import_index_s3_uri)
        self._failed = FailedIndex(s3, import_index_s3_uri)

    def _read_index(self, input: PlanInput, store: PlanStore) -> None:
        """The data store's import index, one object at a time, kept (in ``store``) only where it meets this
        source, minus lines whose image set no longer exists."""
        if not input.datastore_id:
            return
        try:
            self._index.adopt_legacy(input.work_s3_uri, input.datastore_id)
            # This migration's own batches (a re-run) are not "earlier"; every other migration's are, wherever
            # it kept its work.
            for loc in self._index.earlier(input.work_s3_uri, input.datastore_id, input.migration_id):
                rows = (ImportedInstance.model_validate(row) for row in iter_ndjson(self._s3, loc))
                store.add_index_rows((e.sop_instance_uid, e.study_instance_uid, e.series_instance_uid, e.is_primary,
                                      e.image_set_id, e.model_dump_json(exclude_none=True)) for e in rows)
                if keep := current():
                    keep.record(loc.key)
        except ClientError as err:
            raise classify(err, "reading the data store's import index") from None
        store.forget_image_sets(self._missing_image_sets(input.datastore_id, store.indexed_image_sets()))

    def _fetcher(self, bucket: str, if_match: str | None = None) -> Fetch:
        """Ranged or whole reads of files to compare, only for files with one SOP Instance UID and other bytes
        (rare), never for the rest of the source. ``if_match``: the ETag the file must still have."""
        def fetch(key: str, size: int, want: int | None) -> bytes | None:
            extra: dict[str, str] = {"Range": f"bytes=0-{want - 1}"} if want is not None else {}
            if if_match:
                extra["IfMatch"] = if_match
            try:
                body: bytes = self._s3.get_object(Bucket=bucket, Key=key, **extra)["Body"].read()
            except ClientError as err:
                if is_missing(err) or error_code(err) in ("InvalidRange", "PreconditionFailed", "412"):
                    return None  # gone or rewritten since: no verdict of sameness
                raise classify(err, "reading two files with one SOP Instance UID to compare them") from None
            return body  # (the background heartbeat keeps the activity alive; a key is never put in its details)
        return fetch

    def _comparer(self, input: PlanInput) -> Compare:
        """``compare`` of two files of this source."""
        fetch = self._fetcher(parse_s3_uri(input.source_s3_uri, field="source_s3_uri").bucket)
        return lambda first, other: compare(first, other, fetch)

    def _imported_comparer(self, input: PlanInput) -> CompareImported:
        """``compare`` of a file of this source with the one an earlier migration imported, read where the index
        line says (and only while it still has the ETag it had then)."""
        fetch = self._fetcher(parse_s3_uri(input.source_s3_uri, field="source_s3_uri").bucket)

        def compare_imported(hit: ImportedInstance, inst: InstanceRecord) -> Sameness:
            where = parse_s3_uri(hit.source_uri or "", field="source_uri")
            earlier = InstanceRecord(
                key=where.key, size=hit.size or 0, etag=hit.source_etag or "", sop_instance_uid=hit.sop_instance_uid,
                study_instance_uid=hit.study_instance_uid, series_instance_uid=hit.series_instance_uid,
                transfer_syntax_uid=hit.transfer_syntax_uid or "", sop_class_uid="", patient_fingerprint="",
                study_fingerprint="", series_fingerprint="", content_id=hit.content_id,
                dataset_fingerprint=hit.dataset_fingerprint or "", header_bytes=hit.header_bytes or 0)
            return compare(earlier, inst, fetch, fetch_first=self._fetcher(where.bucket, hit.source_etag))
        return compare_imported

    def _missing_image_sets(self, datastore_id: str, image_set_ids: Iterable[str]) -> set[str]:
        """Image sets the index names that no longer exist (e.g. discarded in reconciliation): their files are
        imported again. One GetImageSet per distinct image set; a throttled call is retried here a few times
        before the activity is handed back to Temporal's retry (which would re-read the whole index)."""
        gone: set[str] = set()
        if self._mi is None:
            return gone
        for image_set_id in sorted(image_set_ids):
            try:
                props = with_local_retries(partial(self._mi.get_image_set, datastoreId=datastore_id,
                                                   imageSetId=image_set_id))
            except ClientError as err:
                if error_code(err) == ErrorType.RESOURCE_NOT_FOUND:
                    gone.add(image_set_id)
                    continue
                raise classify(err, "checking image sets of the import index") from None
            if props.get("imageSetState") == "DELETED":
                gone.add(image_set_id)
        return gone

    def _held_failed_before(self, input: PlanInput, store: PlanStore) -> int:
        """Hold back files an earlier migration's import into this data store failed for good, unchanged since:
        not sent again unless this migration resends them (`himig retry`); see activities/failed_before.py.
        Returns how many were held."""
        if not input.datastore_id or input.resend_failed:
            return 0
        try:
            failed = read_failed_before(self._s3, self._failed, input.work_s3_uri, input.datastore_id,
                                        input.migration_id)
        except ClientError as err:
            raise classify(err, "reading the data store's failed index") from None
        if not failed:
            return 0
        held: list[tuple[int, LedgerEntry]] = []
        # Collected, then dropped: the kept set must not change under the running SELECT.
        for row in store.kept_by_key():
            inst = InstanceRecord.model_validate_json(row.record)
            earlier = failed.get(inst.content_id)
            if earlier is not None:
                held.append((row.seq, held_entry(inst, earlier)))
        store.drop([seq for seq, _ in held], FAILED_BEFORE)
        store.add_ledger(PHASE_FAILED_BEFORE, [entry for _, entry in held])
        return len(held)

    @activity.defn(name="split_batch")
    @keeps_alive
    def split_batch(self, batch: BatchInput) -> list[int]:
        """Write the two halves of a batch whose import job FAILED (always staged: a half is never a whole folder)."""
        files = read_models(self._s3, layout.batch_manifest(batch.work_s3_uri, batch.migration_id, batch.batch),
                            InstanceRecord)
        # Files already reported SourceChanged while staging the whole batch stay out of the halves.
        changed = source_changed_keys(self._s3, batch)
        files = [f for f in files if f.key not in changed]
        sizes = []
        for part, half in enumerate(halves(files), start=1):
            put_ndjson(self._s3, layout.batch_manifest(batch.work_s3_uri, batch.migration_id, batch.batch, part), half)
            plan = BatchPlan(files=len(half), bytes=sum(i.size for i in half),
                             studies=len({i.study_instance_uid for i in half}))
            put_bytes(self._s3, layout.batch_meta(batch.work_s3_uri, batch.migration_id, batch.batch, part),
                      plan.model_dump_json().encode(), "application/json")
            sizes.append(len(half))
        return sizes

    @activity.defn(name="plan_batches")
    @keeps_alive
    def plan_batches(self, input: PlanInput) -> PlanResult:
        """Dedupe, check the import index, predict non-primary sets and pack, with every record spilled to a
        local `PlanStore` rather than held in lists: memory stays flat from thousands to millions of files.
        A retry rebuilds the store from the pages; manifests, batch plans and the plan ledger are rewritten whole.

        In waves (``input.inventory_pages`` set) it plans only the files that became ready since
        ``input.first_page`` (module docstring) and judges their duplicates against every parsed copy."""
        waved = input.inventory_pages is not None
        total = input.inventory_pages if input.inventory_pages is not None else input.pages
        with PlanStore() as store:
            if input.allow_direct:
                # Every page, parsed yet or not: folder counts decide in-place imports, and a folder is ready only
                # once its last page is parsed.
                for page in range(total):
                    store.add_inventory(((e.key, e.size) for e in read_models(
                        self._s3, layout.inventory_page(input.work_s3_uri, input.migration_id, page),
                        InventoryEntry)), page)
            for page in range(input.pages):
                store.add_records(read_models(
                    self._s3, layout.normalized_page(input.work_s3_uri, input.migration_id, page), InstanceRecord),
                    page)
                if keep := current():
                    keep.record(page)
            store.finish_loading()
            store.set_ready(by_folder=input.allow_direct, fits=(input.max_files_per_batch, input.max_bytes_per_batch)
                            if input.large_folders_by_page else None)
            store.keep_wave(input.first_page, input.pages, complete=input.complete or input.pages >= total)
            self._read_index(input, store)
            self._deduplicate(input, store)
            self._skip_already_imported(input, store)
            failed_before = self._held_failed_before(input, store)
            predicted = predict_streaming(store)
            batches, direct = self._pack(input, store)
            ledger = layout.ledger_for_plan(input.work_s3_uri, input.migration_id,
                                            input.first_page if waved else None)
            with S3StreamWriter(self._s3, ledger, "application/x-ndjson") as out:
                out.write_lines(store.ledger_lines())
            entries, conflicting = store.ledger_counts()
            entries -= failed_before  # failed, not duplicates (never rejected either)
            held, held_conflicting = store.ledger_counts(PHASE_HELD)
            return PlanResult(batches=batches, direct_batches=direct, files=store.kept(),
                              duplicates=entries - conflicting, conflicting_duplicates=conflicting,
                              predicted_non_primary=predicted, already_imported=held - held_conflicting,
                              conflicting_already_imported=held_conflicting, failed_before=failed_before)

    def _deduplicate(self, input: PlanInput, store: PlanStore) -> None:
        """`deduplicate` over each SOP Instance UID found more than once, one group at a time, in planning order.

        The copy kept is the first by (readiness, key) of all copies parsed so far: every wave finds the same one,
        since a copy ready earlier was parsed by every wave that sees a later one. Only this wave's copies are
        judged against it (an earlier wave judged its own; a later wave will judge copies not ready yet), so no
        file is judged twice and no comparison is fetched again."""
        compare = self._comparer(input)
        complete = input.complete or input.pages >= (input.inventory_pages or input.pages)
        for group in store.duplicate_groups():
            ready = [g for g in group if complete or g[2] < input.pages]
            judged = ready[:1] + [g for g in ready[1:] if g[2] >= input.first_page]
            if len(judged) < 2:
                continue  # none of this wave's copies, or only the one kept
            records = [InstanceRecord.model_validate_json(record) for _, record, _ in judged]
            _, entries = deduplicate(records, compare, in_order=True)
            store.drop([seq for seq, _, _ in judged[1:]], DUPLICATE)
            store.add_ledger(PHASE_DUPLICATES, entries)

    def _skip_already_imported(self, input: PlanInput, store: PlanStore) -> None:
        """`skip_already_imported` over the kept files the import index holds, a chunk at a time."""
        compare_imported = self._imported_comparer(input)
        for chunk in store.kept_with_hits():
            records = [InstanceRecord.model_validate_json(record) for _, record, _ in chunk]
            index = ImportedIndex(instances={r.sop_instance_uid: ImportedInstance.model_validate_json(line)
                                             for r, (_, _, line) in zip(records, chunk, strict=True)})
            _, entries = skip_already_imported(records, index, compare_imported)
            store.drop([seq for seq, _, _ in chunk], HELD)
            store.add_ledger(PHASE_HELD, entries)

    def _pack(self, input: PlanInput, store: PlanStore) -> tuple[int, int]:
        """Write every batch's manifest and plan: clean source folders imported in place first, then the rest
        packed by study (see `activities.plan_folders`); returns (batches, of them imported in place)."""
        source = parse_s3_uri(input.source_s3_uri, field="source_s3_uri").as_prefix()
        planner: FolderPlanner | None = None
        if input.allow_direct:  # (the inventory's folder counts are in the store already)
            store.count_kept_folders()
            planner = FolderPlanner(store.folder, source.key, input.max_files_per_batch, input.max_bytes_per_batch)
        written = [0, 0]

        def write(rows: list[Row], folder: str | None) -> None:
            n = input.first_batch + written[0]
            put_bytes(self._s3, layout.batch_manifest(input.work_s3_uri, input.migration_id, n),
                      ("\n".join(r.manifest_line() for r in rows) + "\n").encode(), "application/x-ndjson")
            plan = BatchPlan(files=len(rows), bytes=sum(r.size for r in rows), studies=len({r.study for r in rows}),
                             direct_input_s3_uri=S3Location(source.bucket, folder).uri if folder else None)
            put_bytes(self._s3, layout.batch_meta(input.work_s3_uri, input.migration_id, n),
                      plan.model_dump_json().encode(), "application/json")
            written[0] += 1
            written[1] += folder is not None
            if keep := current():
                keep.record("batches", written[0])

        for folder, rows in split_direct(store.kept_by_key(), planner, store.set_staged):
            write(rows, folder)
        packer = StreamPacker(input.max_files_per_batch, input.max_bytes_per_batch,
                              lambda rows: write(rows, planner.is_clean([r.key for r in rows]) if planner else None))
        for unit in study_units(store.staged_by_study(), input.max_files_per_batch, input.max_bytes_per_batch):
            packer.add(unit)
        packer.close()
        return written[0], written[1]
