"""The streaming planner (records spilled to SQLite, batches packed along folders) against the in-memory one.

The oracle below is planning as it was before it streamed, built from the same pure functions
(`deduplicate`, `skip_already_imported`, `predict_non_primary`, `pack`, `clean_folder`) over lists. Verdicts
(the plan ledger, byte for byte) and counts must be equal; batches must be equal when nothing is imported in
place, and when folders are, every kept file must still be in exactly one batch, within the limits.
"""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

import pytest
from pydantic import ValidationError

from activities.import_index import ImportIndex
from activities.plan import (
    ImportedIndex,
    PlanActivities,
    clean_folder,
    deduplicate,
    folder_counts,
    pack,
    predict_non_primary,
    skip_already_imported,
)
from activities.plan_folders import FolderPlanner, min_direct_files
from activities.plan_store import FolderStats
from activities.storage import get_bytes, put_ndjson, read_models
from contracts import layout
from contracts.records import (
    ImportedInstance,
    InstanceRecord,
    InventoryEntry,
    LedgerEntry,
    attributes_fingerprint,
)
from contracts.stages import BatchPlan, PlanInput, PlanResult

PAGE = 97  # not a divisor of anything below: pages cut through folders


def record(key: str, study: str, series: str, sop: str, size: int = 1000, content: str | None = None,
           patient: str = "p") -> InstanceRecord:
    return InstanceRecord(key=key, size=size, etag=content or sop, sop_instance_uid=sop, study_instance_uid=study,
                          series_instance_uid=series, transfer_syntax_uid="1.2.840.10008.1.2.1", sop_class_uid="1.2",
                          patient_fingerprint=patient, study_fingerprint="s", series_fingerprint="se",
                          content_id=f"{size}:{content or sop}")


def corpus(seed: int) -> tuple[list[InstanceRecord], list[str]]:
    """A study/series tree like `corpus.synthetic.generate_studies` writes (``p0001/st001/se001/00001.dcm``), with
    studies of many sizes, plus what makes folders unclean or verdicts interesting: identical and conflicting
    copies, a series with another patient, objects that never became records (rejected files), keys with quotes,
    percent signs and non-ASCII letters, and files straight under the source prefix."""
    rng = random.Random(seed)
    records: list[InstanceRecord] = []
    extra: list[str] = []
    for p in range(1, 5):
        for st in range(1, rng.randint(2, 4)):
            study = f"1.2.{seed}.{p}.{st}"
            for se in range(1, rng.randint(2, 6)):
                series = f"{study}.{se}"
                for i in range(1, rng.choice([1, 3, 20, 45, 70]) + 1):
                    patient = "other" if (p, st, se) == (2, 1, 2) and i % 3 == 0 else "p"
                    records.append(record(f"src/p{p:04d}/st{st:03d}/se{se:03d}/{i:05d}.dcm", study, series,
                                          f"{series}.{i}", size=rng.randint(500, 1500), patient=patient))
    originals = list(records)
    for n, orig in enumerate(rng.sample(originals, 12)):
        folder = orig.key.rsplit("/", 1)[0]
        same = n % 2 == 0
        records.append(orig.model_copy(update={
            "key": f"{folder}/copy-{n}.dcm" if n < 6 else f"src/dups/{n}.dcm",
            "content_id": orig.content_id if same else f"{orig.size}:other-{n}"}))
    for n, orig in enumerate(rng.sample(originals, 5)):
        extra.append(f"{orig.key.rsplit('/', 1)[0]}/notes-{n}.txt")
    records += [record(k, "9.9", "9.9.1", f"9.9.1.{n}") for n, k in enumerate(
        ["src/odd/it's 100%.dcm", "src/odd/ünïcode.dcm", "src/top.dcm", "src/odd/a\"b.dcm"])]
    rng.shuffle(records)
    return records, extra


def held_line(inst: InstanceRecord, *, content: str | None = None, patient: str = "p", primary: bool = True,
              image_set: str = "is-earlier") -> ImportedInstance:
    return ImportedInstance(sop_instance_uid=inst.sop_instance_uid, content_id=content or inst.content_id,
                            image_set_id=image_set, is_primary=primary, study_instance_uid=inst.study_instance_uid,
                            series_instance_uid=inst.series_instance_uid,
                            attributes_fingerprint=f"{patient}/s/se", migration_id="mig-earlier", batch=0)


def write_migration(s3: Any, records: list[InstanceRecord], extra: list[str], *, allow_direct: bool,
                    max_files: int, datastore: str | None = None) -> PlanInput:
    bucket = f"plan-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    inp = PlanInput(migration_id="m1", source_s3_uri=f"s3://{bucket}/src/", work_s3_uri=f"s3://{bucket}/w/",
                    allow_direct=allow_direct, pages=0, max_files_per_batch=max_files,
                    max_bytes_per_batch=max_files * 900, datastore_id=datastore)
    inventory = sorted([InventoryEntry(key=r.key, size=r.size) for r in records]
                       + [InventoryEntry(key=k, size=3) for k in extra], key=lambda e: e.key)
    by_key = {r.key: r for r in records}
    pages = 0
    for start in range(0, len(inventory), PAGE):
        page = inventory[start:start + PAGE]
        put_ndjson(s3, layout.inventory_page(inp.work_s3_uri, inp.migration_id, pages), page)
        put_ndjson(s3, layout.normalized_page(inp.work_s3_uri, inp.migration_id, pages),
                   [by_key[e.key] for e in page if e.key in by_key])
        pages += 1
    return inp.model_copy(update={"pages": pages})


def old_plan(s3: Any, act: PlanActivities, inp: PlanInput) -> tuple[bytes, list[list[str]], list[str | None], PlanResult]:
    """Planning as it was: every list in memory (the oracle)."""
    instances: list[InstanceRecord] = []
    for page in range(inp.pages):
        instances += read_models(s3, layout.normalized_page(inp.work_s3_uri, inp.migration_id, page), InstanceRecord)
    index = ImportedIndex()
    if inp.datastore_id:
        for loc in ImportIndex(s3).earlier(inp.work_s3_uri, inp.datastore_id, inp.migration_id):
            for entry in read_models(s3, loc, ImportedInstance):
                if entry.sop_instance_uid in {i.sop_instance_uid for i in instances}:
                    index.instances[entry.sop_instance_uid] = entry
                key = (entry.study_instance_uid, entry.series_instance_uid)
                if entry.is_primary and key in {(i.study_instance_uid, i.series_instance_uid) for i in instances}:
                    index.series[key] = entry
    kept, ledger = deduplicate(instances, act._comparer(inp))
    kept, held = skip_already_imported(kept, index, act._imported_comparer(inp))
    ledger += held
    predicted = predict_non_primary(kept, index.series)
    batches = pack(kept, inp.max_files_per_batch, inp.max_bytes_per_batch)
    inventory = [e.key for p in range(inp.pages) for e in read_models(
        s3, layout.inventory_page(inp.work_s3_uri, inp.migration_id, p), InventoryEntry)]
    counts = folder_counts(inventory)
    direct = [clean_folder([i.key for i in b], counts, "src/") if inp.allow_direct else None for b in batches]
    body = "".join(e.model_dump_json(exclude_none=True) + "\n" for e in ledger).encode()
    conflicting = sum(1 for e in ledger if e.state == "rejected")
    held_conflicting = sum(1 for e in held if e.state == "rejected")
    result = PlanResult(batches=len(batches), direct_batches=sum(d is not None for d in direct), files=len(kept),
                        duplicates=len(ledger) - conflicting, conflicting_duplicates=conflicting,
                        predicted_non_primary=predicted, already_imported=len(held) - held_conflicting,
                        conflicting_already_imported=held_conflicting)
    manifests = [[i.model_dump_json(exclude_none=True) for i in b] for b in batches]
    return body, manifests, direct, result


def new_batches(s3: Any, inp: PlanInput, result: PlanResult) -> tuple[list[list[str]], list[BatchPlan]]:
    manifests, plans = [], []
    for n in range(result.batches):
        body = get_bytes(s3, layout.batch_manifest(inp.work_s3_uri, inp.migration_id, n)).decode()
        manifests.append(body.splitlines())
        plans.append(BatchPlan.model_validate_json(get_bytes(s3, layout.batch_meta(inp.work_s3_uri, inp.migration_id, n))))
    return manifests, plans


def seed_index(s3: Any, inp: PlanInput, records: list[InstanceRecord]) -> None:
    """An earlier migration imported some of these files: same content, other content, and a series with
    other attributes (its files are predicted non-primary); a later line replaces an earlier one."""
    assert inp.datastore_id
    ordered = sorted(records, key=lambda r: r.key)
    lines = [held_line(r) for r in ordered[:15]]
    lines += [held_line(r, content="1:old") for r in ordered[15:20]]
    lines.append(held_line(ordered[40], patient="someone-else"))
    other = "other-work"
    put_ndjson(s3, layout.imported_index(f"s3://{parse_bucket(inp)}/{other}/", inp.datastore_id, "mig-earlier", 0), lines)
    put_ndjson(s3, layout.imported_index(f"s3://{parse_bucket(inp)}/{other}/", inp.datastore_id, "mig-later", 0),
               [held_line(ordered[16])])  # the same content after all: the later line wins


def parse_bucket(inp: PlanInput) -> str:
    return inp.work_s3_uri.split("/")[2]


class TestSameVerdictsAsInMemory:
    @pytest.mark.parametrize("seed", [1, 2])
    @pytest.mark.parametrize("with_index", [False, True])
    def test_staged_plan_is_identical(self, s3: Any, seed: int, with_index: bool) -> None:
        records, extra = corpus(seed)
        inp = write_migration(s3, records, extra, allow_direct=False, max_files=50,
                              datastore="ds1" if with_index else None)
        if with_index:
            seed_index(s3, inp, records)
        act = PlanActivities(s3)
        ledger, manifests, _, expected = old_plan(s3, act, inp)
        result = act.plan_batches(inp)
        assert result == expected
        assert get_bytes(s3, layout.ledger_for_plan(inp.work_s3_uri, inp.migration_id)) == ledger
        got, plans = new_batches(s3, inp, result)
        assert got == manifests
        assert all(p.direct_input_s3_uri is None for p in plans)
        assert expected.batches > 8 and expected.duplicates and expected.conflicting_duplicates
        assert expected.predicted_non_primary
        if with_index:
            assert expected.already_imported and expected.conflicting_already_imported

    @pytest.mark.parametrize("seed", [1, 2, 3])
    def test_folder_plan_has_the_same_verdicts_and_places_every_file_once(self, s3: Any, seed: int) -> None:
        records, extra = corpus(seed)
        inp = write_migration(s3, records, extra, allow_direct=True, max_files=100, datastore="ds1")
        seed_index(s3, inp, records)
        act = PlanActivities(s3)
        ledger, old_manifests, old_direct, expected = old_plan(s3, act, inp)
        result = act.plan_batches(inp)
        assert get_bytes(s3, layout.ledger_for_plan(inp.work_s3_uri, inp.migration_id)) == ledger
        assert result.model_dump(exclude={"batches", "direct_batches"}) == expected.model_dump(
            exclude={"batches", "direct_batches"})
        manifests, plans = new_batches(s3, inp, result)
        # Every kept file, with its prediction, in exactly one batch.
        assert sorted(line for m in manifests for line in m) == sorted(line for m in old_manifests for line in m)
        inventory = sorted([r.key for r in records] + extra)
        for lines, plan in zip(manifests, plans, strict=True):
            files = [InstanceRecord.model_validate_json(line) for line in lines]
            assert len(files) <= inp.max_files_per_batch and sum(f.size for f in files) <= inp.max_bytes_per_batch
            assert plan.files == len(files) and plan.bytes == sum(f.size for f in files)
            assert plan.studies == len({f.study_instance_uid for f in files})
            if plan.direct_input_s3_uri:
                folder = plan.direct_input_s3_uri.split("/", 3)[3]
                # Imported in place: the folder holds exactly this batch's files and nothing else.
                assert sorted(f.key for f in files) == [k for k in inventory if k.startswith(folder)]
        direct_files = sum(p.files for p in plans if p.direct_input_s3_uri)
        old_direct_files = sum(len(m) for m, d in zip(old_manifests, old_direct, strict=True) if d)
        assert result.direct_batches == sum(1 for p in plans if p.direct_input_s3_uri)
        assert direct_files > old_direct_files
        # Every file under a folder that qualifies (clean, fits, big enough; counted here from the lists) is
        # imported in place with the highest such folder, and no other file is.
        kept = [InstanceRecord.model_validate_json(line) for m in manifests for line in m]
        inv, files, size = folder_counts(inventory), folder_counts([f.key for f in kept]), dict[str, int]()
        for f in kept:
            for folder in (f.key[: i + 1] for i, c in enumerate(f.key) if c == "/"):
                size[folder] = size.get(folder, 0) + f.size
        minimum = min_direct_files(inp.max_files_per_batch)

        def qualifies(folder: str) -> bool:
            return (folder.startswith("src/") and inv[folder] == files[folder]
                    and minimum <= files[folder] <= inp.max_files_per_batch
                    and size[folder] <= inp.max_bytes_per_batch)

        where = {InstanceRecord.model_validate_json(line).key: plan.direct_input_s3_uri
                 for m, plan in zip(manifests, plans, strict=True) for line in m}
        for f in kept:
            expected_folder = next((d for d in (f.key[: i + 1] for i, c in enumerate(f.key) if c == "/")
                                    if qualifies(d)), None)
            if expected_folder is not None:
                assert where[f.key] == f"s3://{parse_bucket(inp)}/{expected_folder}"

    def test_a_clean_study_series_tree_is_imported_in_place(self, s3: Any) -> None:
        """Studies of 120 files (4 series of 30) against 100-file batches: the old packing cut every study in
        the middle of a series, so no batch was a folder; now every series folder is imported in place."""
        records = [record(f"src/p{p}/st1/se{se}/{i:03d}.dcm", f"1.{p}", f"1.{p}.{se}", f"1.{p}.{se}.{i}")
                   for p in range(6) for se in range(4) for i in range(30)]
        inp = write_migration(s3, records, [], allow_direct=True, max_files=100)
        act = PlanActivities(s3)
        _, _, old_direct, _ = old_plan(s3, act, inp)
        result = act.plan_batches(inp)
        assert not any(old_direct)
        assert (result.batches, result.direct_batches, result.files) == (24, 24, 720)

    def test_a_retry_rewrites_the_same_plan(self, s3: Any) -> None:
        records, extra = corpus(4)
        inp = write_migration(s3, records, extra, allow_direct=True, max_files=100)
        act = PlanActivities(s3)
        first = act.plan_batches(inp)
        before = new_batches(s3, inp, first)
        assert act.plan_batches(inp) == first and new_batches(s3, inp, first) == before


class TestFolderRules:
    def stats(self, table: dict[str, tuple[int, int, int]]) -> FolderPlanner:
        return FolderPlanner(lambda p: FolderStats(*table.get(p, (0, 0, 0))), "src/", max_files=100, max_bytes=10**6)

    def test_the_highest_clean_folder_that_fits_wins(self) -> None:
        planner = self.stats({"src/": (300, 300, 3000), "src/a/": (90, 90, 900), "src/a/b/": (40, 40, 400)})
        assert planner.direct_folder("src/a/b/1.dcm") == "src/a/"

    def test_an_unclean_parent_leaves_its_clean_children(self) -> None:
        planner = self.stats({"src/": (91, 90, 900), "src/a/": (41, 40, 400), "src/a/b/": (40, 40, 400)})
        assert planner.direct_folder("src/a/b/1.dcm") == "src/a/b/"
        assert planner.direct_folder("src/a/x.dcm") is None

    def test_folders_too_small_or_too_big_or_outside_the_source_are_staged(self) -> None:
        assert min_direct_files(100) == 4 and min_direct_files(3) == 1 and min_direct_files(1000) == 32
        planner = self.stats({"src/": (500, 500, 5000), "src/a/": (3, 3, 30), "src/b/": (101, 101, 1010)})
        assert planner.direct_folder("src/a/1.dcm") is None
        assert planner.direct_folder("src/b/1.dcm") is None
        outside = FolderPlanner(lambda p: FolderStats(5, 5, 50), "src/", max_files=100, max_bytes=10**6)
        assert outside.direct_folder("elsewhere/1.dcm") is None

    def test_bytes_limit_counts(self) -> None:
        planner = FolderPlanner(lambda p: FolderStats(50, 50, 2 * 10**6), "src/", max_files=100, max_bytes=10**6)
        assert planner.direct_folder("src/a/1.dcm") is None


class TestHostileInput:
    def test_a_malformed_normalized_line_is_refused_naming_the_field(self, s3: Any) -> None:
        records, _ = corpus(5)
        inp = write_migration(s3, records[:10], [], allow_direct=True, max_files=100)
        loc = layout.normalized_page(inp.work_s3_uri, inp.migration_id, 0)
        line = json.loads(get_bytes(s3, loc).splitlines()[0]) | {"size": "many"}
        s3.put_object(Bucket=loc.bucket, Key=loc.key, Body=json.dumps(line).encode())
        with pytest.raises(ValidationError, match="size"):
            PlanActivities(s3).plan_batches(inp)

    def test_the_same_key_twice_is_one_file_and_one_duplicate(self, s3: Any) -> None:
        one = record("src/a/1.dcm", "1", "1.1", "1.1.1")
        inp = write_migration(s3, [one], [], allow_direct=True, max_files=10)
        put_ndjson(s3, layout.normalized_page(inp.work_s3_uri, inp.migration_id, 0), [one, one])
        result = PlanActivities(s3).plan_batches(inp)
        assert (result.files, result.duplicates, result.batches) == (1, 1, 1)
        (entry,) = read_models(s3, layout.ledger_for_plan(inp.work_s3_uri, inp.migration_id), LedgerEntry)
        assert entry.duplicate_of == "src/a/1.dcm"

    def test_fingerprints_come_from_one_definition(self) -> None:
        assert attributes_fingerprint(record("k", "1", "2", "3", patient="x")) == "x/s/se"
