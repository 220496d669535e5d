"""Planning in waves (patch `planning-waves`) decides exactly what one plan of every page decides.

A migration plans each wave of parsed pages while later pages still parse (`PlanInput.first_page`). Across the
waves, every file must get the verdict a single plan gives it (the ledger lines, byte for byte, as a set), every
kept file must land in exactly one batch, batch numbers must run on without a gap, a folder imported in place
must hold only its batch's files, and no wave may plan a file whose folder is not parsed whole yet.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from activities.plan import PlanActivities
from activities.plan_store import PlanStore, ancestors
from activities.storage import get_bytes, put_ndjson, read_models
from contracts import layout
from contracts.records import InstanceRecord, InventoryEntry, LedgerEntry
from contracts.stages import BatchPlan, PlanInput, PlanResult
from tests.activities.test_plan_streaming import corpus, record, seed_index, write_migration
from workflows.waves import wave_end


def waves_of(pages: int, step: int | None) -> list[int]:
    """Wave ends: the workflow's growing waves (`wave_end`), or waves of ``step`` pages."""
    ends, end = [], 0
    while end < pages:
        end = wave_end(end, pages) if step is None else min(pages, end + step)
        ends.append(end)
    return ends


def plan_in_waves(act: PlanActivities, inp: PlanInput, ends: list[int]) -> list[tuple[PlanInput, PlanResult]]:
    done, first_page, first_batch = [], 0, 0
    for end in ends:
        wave = inp.model_copy(update={"pages": end, "first_page": first_page, "inventory_pages": inp.pages,
                                      "first_batch": first_batch})
        result = act.plan_batches(wave)
        done.append((wave, result))
        first_page, first_batch = end, first_batch + result.batches
    return done


def ledger_lines(s3: Any, inp: PlanInput, wave_first_page: int | None) -> list[str]:
    return get_bytes(s3, layout.ledger_for_plan(inp.work_s3_uri, inp.migration_id, wave_first_page)).decode().splitlines()


def batches(s3: Any, inp: PlanInput, first: int, count: int) -> list[tuple[list[InstanceRecord], BatchPlan]]:
    out = []
    for n in range(first, first + count):
        files = read_models(s3, layout.batch_manifest(inp.work_s3_uri, inp.migration_id, n), InstanceRecord)
        plan = BatchPlan.model_validate_json(get_bytes(s3, layout.batch_meta(inp.work_s3_uri, inp.migration_id, n)))
        out.append((files, plan))
    return out


def inventory(s3: Any, inp: PlanInput) -> list[list[str]]:
    return [[e.key for e in read_models(s3, layout.inventory_page(inp.work_s3_uri, inp.migration_id, p), InventoryEntry)]
            for p in range(inp.pages)]


@pytest.mark.parametrize(("seed", "step", "allow_direct", "max_files", "by_page"),
                         [(1, None, True, 100, False), (2, None, True, 100, False), (1, 1, True, 100, False),
                          (3, 2, True, 100, False), (1, None, False, 100, False), (2, 1, False, 100, False),
                          # Series of 45 and 70 files are larger than a batch of 30: their files are ready by page.
                          (1, None, True, 30, True), (2, 1, True, 30, True), (3, 2, True, 30, True),
                          (2, None, False, 30, True)])
def test_waves_decide_what_one_plan_decides(s3: Any, seed: int, step: int | None, allow_direct: bool,
                                            max_files: int, by_page: bool) -> None:
    records, extra = corpus(seed)
    inp = write_migration(s3, records, extra, allow_direct=allow_direct, max_files=max_files, datastore="ds1")
    inp = inp.model_copy(update={"large_folders_by_page": by_page})
    seed_index(s3, inp, records)
    act = PlanActivities(s3)
    whole = act.plan_batches(inp)
    whole_ledger = ledger_lines(s3, inp, None)
    whole_batches = batches(s3, inp, 0, whole.batches)

    ends = waves_of(inp.pages, step)
    assert len(ends) >= 3
    waves = plan_in_waves(act, inp, ends)
    # The same verdict for every file, each in exactly one wave's ledger.
    wave_ledger = [line for wave, _ in waves for line in ledger_lines(s3, wave, wave.first_page)]
    assert sorted(wave_ledger) == sorted(whole_ledger)
    assert len({LedgerEntry.model_validate_json(line).key for line in wave_ledger}) == len(wave_ledger)
    for field in ("files", "duplicates", "conflicting_duplicates", "predicted_non_primary", "already_imported",
                  "conflicting_already_imported", "failed_before"):
        assert sum(getattr(r, field) for _, r in waves) == getattr(whole, field), field
    # Every kept file, with its prediction, in exactly one batch; batch numbers run on from wave to wave.
    wave_batches = batches(s3, inp, 0, sum(r.batches for _, r in waves))
    assert sorted(f.model_dump_json() for b, _ in wave_batches for f in b) == sorted(
        f.model_dump_json() for b, _ in whole_batches for f in b)
    keys = sorted(k for page in inventory(s3, inp) for k in page)
    under = Counter(folder for k in keys for folder in ancestors(k))  # objects under each folder, recursively
    last_page, page_of = {}, {}
    for p, page in enumerate(inventory(s3, inp)):
        for k in page:
            last_page[k[: k.rfind("/") + 1]] = p
            page_of[k] = p
    streamed = 0
    first_batch = 0
    for wave, result in waves:
        assert wave.first_batch == first_batch
        for files, plan in wave_batches[first_batch:first_batch + result.batches]:
            assert len(files) <= inp.max_files_per_batch and plan.files == len(files)
            if plan.direct_input_s3_uri:
                folder = plan.direct_input_s3_uri.split("/", 3)[3]
                assert sorted(f.key for f in files) == [k for k in keys if k.startswith(folder)]
            # Ready: the folder of every file is parsed whole by this wave (by folder), or its page is; by page
            # also for a folder larger than a batch (never imported in place) when `large_folders_by_page`.
            for f in files:
                folder = f.key[: f.key.rfind("/") + 1]
                assert page_of[f.key] < wave.pages, f.key
                if by_page and under[folder] > inp.max_files_per_batch:
                    assert plan.direct_input_s3_uri is None, f.key
                    streamed += last_page[folder] >= wave.pages  # planned before its folder was parsed whole
                elif allow_direct:
                    assert last_page[folder] < wave.pages, f.key
        first_batch += result.batches
    if not allow_direct:
        assert all(p.direct_input_s3_uri is None for _, p in wave_batches)
    if by_page and allow_direct:
        assert streamed > 0  # the rule changed something in this corpus


def test_a_duplicate_keeps_the_copy_planned_first_in_every_mode(s3: Any) -> None:
    """``src/a/`` is listed across pages 0-2 around ``src/a/b/`` (page 1): the copy in ``src/a/b/`` is ready a
    wave earlier than its smaller-keyed twin in ``src/a/``, so it is the one imported, by waves and by one plan."""
    one = record("src/a/1.dcm", "1", "1.1", "1.1.1")
    twin = one.model_copy(update={"key": "src/a/b/2.dcm"})
    other = record("src/a/z.dcm", "1", "1.1", "1.1.2")
    inp = write_migration(s3, [], [], allow_direct=True, max_files=10)
    for page, rec in enumerate([one, twin, other]):
        put_ndjson(s3, layout.inventory_page(inp.work_s3_uri, inp.migration_id, page),
                   [InventoryEntry(key=rec.key, size=rec.size)])
        put_ndjson(s3, layout.normalized_page(inp.work_s3_uri, inp.migration_id, page), [rec])
    inp = inp.model_copy(update={"pages": 3})
    act = PlanActivities(s3)
    whole = act.plan_batches(inp)
    (entry,) = read_models(s3, layout.ledger_for_plan(inp.work_s3_uri, inp.migration_id), LedgerEntry)
    assert (entry.key, entry.duplicate_of, whole.files) == ("src/a/1.dcm", "src/a/b/2.dcm", 2)

    waves = plan_in_waves(act, inp, [1, 2, 3])
    assert [r.files for _, r in waves] == [0, 1, 1]  # nothing of src/a/ is ready before page 2 is parsed
    assert [r.duplicates for _, r in waves] == [0, 0, 1]
    (wave_entry,) = read_models(s3, layout.ledger_for_plan(inp.work_s3_uri, inp.migration_id, 2), LedgerEntry)
    assert wave_entry == entry
    planned = [f.key for files, _ in batches(s3, inp, 0, 2) for f in files]
    assert sorted(planned) == ["src/a/b/2.dcm", "src/a/z.dcm"]


def test_a_complete_wave_plans_what_is_parsed_even_if_its_folder_is_not_whole(s3: Any) -> None:
    """The last wave of a cancelled migration: pages after it are never parsed, so nothing waits for them."""
    recs = [record(f"src/s/{i}.dcm", "1", "1.1", f"1.1.{i}") for i in range(6)]
    inp = write_migration(s3, recs, [], allow_direct=True, max_files=10)
    assert inp.pages == 1
    # Three pages of two files in one folder.
    for page in range(3):
        part = recs[2 * page:2 * page + 2]
        put_ndjson(s3, layout.inventory_page(inp.work_s3_uri, inp.migration_id, page),
                   [InventoryEntry(key=r.key, size=r.size) for r in part])
        put_ndjson(s3, layout.normalized_page(inp.work_s3_uri, inp.migration_id, page), part)
    act = PlanActivities(s3)
    waiting = act.plan_batches(inp.model_copy(update={"pages": 2, "inventory_pages": 3}))
    assert (waiting.files, waiting.batches) == (0, 0)
    cancelled = act.plan_batches(inp.model_copy(update={"pages": 2, "inventory_pages": 3, "complete": True}))
    assert (cancelled.files, cancelled.batches, cancelled.direct_batches) == (4, 1, 0)  # the folder is not whole
    (files, plan), = batches(s3, inp, 0, 1)
    assert sorted(f.key for f in files) == [r.key for r in recs[:4]] and plan.direct_input_s3_uri is None


@pytest.mark.parametrize("by_page", [False, True])
def test_a_flat_prefix_larger_than_a_batch_is_planned_as_its_pages_are_parsed(s3: Any, by_page: bool) -> None:
    """Ten files straight under the source prefix (a flat export), pages of two, batches of four: the prefix can
    never be imported in place, so with `large_folders_by_page` each wave plans its own page instead of all of
    them waiting for the last page. A folder that fits (``src/small/``, across two pages) still waits to be whole,
    and is imported in place."""
    flat = [record(f"src/{i:02d}.dcm", "1", "1.1", f"1.1.{i}") for i in range(10)]
    small = [record(f"src/small/{i}.dcm", "2", "2.1", f"2.1.{i}") for i in range(3)]
    inp = write_migration(s3, [], [], allow_direct=True, max_files=4)
    keys = sorted(flat + small, key=lambda r: r.key)
    pages = [keys[i:i + 2] for i in range(0, len(keys), 2)]
    for page, part in enumerate(pages):
        put_ndjson(s3, layout.inventory_page(inp.work_s3_uri, inp.migration_id, page),
                   [InventoryEntry(key=r.key, size=r.size) for r in part])
        put_ndjson(s3, layout.normalized_page(inp.work_s3_uri, inp.migration_id, page), part)
    inp = inp.model_copy(update={"pages": len(pages), "large_folders_by_page": by_page})
    act = PlanActivities(s3)
    whole = act.plan_batches(inp)
    waves = plan_in_waves(act, inp, list(range(1, len(pages) + 1)))
    planned = [r.files for _, r in waves]
    # src/00..09.dcm sort before src/small/: pages 0-4 are flat (the last listing anything straight in src/ is
    # page 4), 5 and 6 hold src/small/ (whole at page 6).
    assert planned == ([2, 2, 2, 2, 2, 0, 3] if by_page else [0, 0, 0, 0, 10, 0, 3])
    assert sum(planned) == whole.files == 13
    in_place = [(files, plan) for files, plan in batches(s3, inp, 0, sum(r.batches for _, r in waves))
                if plan.direct_input_s3_uri]
    assert [sorted(f.key for f in files) for files, _ in in_place] == [[r.key for r in small]]


@pytest.mark.parametrize(("fits", "ready_at_page_0"), [
    (None, ["d/e.dcm"]),  # by whole folder: the root is listed on page 1 too
    ((10, 100), ["d/e.dcm"]),  # the root (4 objects, 35 bytes) fits a batch: it waits to be whole
    ((3, 100), ["a.dcm", "b.dcm", "d/e.dcm"]),  # 4 objects under the root: more files than a batch
    ((10, 34), ["a.dcm", "b.dcm", "d/e.dcm"]),  # 35 bytes under the root: more bytes than a batch
])
def test_readiness_of_a_folder_larger_than_a_batch(fits: tuple[int, int] | None, ready_at_page_0: list[str]) -> None:
    """Counts and bytes are the inventory's, recursive (a folder's sub-folders are imported with it), and the
    bucket's root counts like any folder (a source of a whole bucket)."""
    with PlanStore() as store:
        store.add_inventory([("a.dcm", 10), ("b.dcm", 10), ("d/e.dcm", 5)], page=0)
        store.add_inventory([("c.dcm", 10)], page=1)
        for page, keys in enumerate([["a.dcm", "b.dcm", "d/e.dcm"], ["c.dcm"]]):
            store.add_records([record(k, "1", "1.1", f"1.1.{k}", size=5 if k.startswith("d/") else 10)
                               for k in keys], page)
        store.finish_loading()
        store.set_ready(by_folder=True, fits=fits)
        store.keep_wave(0, 1, complete=False)
        assert [row.key for row in store.kept_by_key()] == ready_at_page_0
