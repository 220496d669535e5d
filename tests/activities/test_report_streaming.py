"""The streaming report (join on local disk, lines uploaded in parts) against `build_report` over lists."""

from __future__ import annotations

import csv
import io
import json
import random
import uuid
from typing import Any

import pytest

from activities.report import ReportActivities, build_report
from activities.report_html import csv_lines
from activities.s3_stream import S3StreamWriter
from activities.storage import get_bytes, get_json, put_ndjson
from contracts import layout
from contracts.common import FileState
from contracts.records import InventoryEntry, LedgerEntry
from contracts.s3uri import S3Location
from contracts.stages import ReportInput

SUMMARY_KEYS = ("files_total", "bytes_total", "files_by_state", "reasons", "image_sets", "primary_image_sets",
                "non_primary_image_sets", "jobs", "predicted_non_primary", "predicted_non_primary_confirmed",
                "predicted_non_primary_not_confirmed", "non_primary_not_predicted", "already_imported",
                "unaccounted", "cancelled", "not_reached_before_cancel", "accounted_twice", "outside_inventory")


def entry(key: str, state: FileState, **kw: Any) -> LedgerEntry:
    return LedgerEntry(key=key, state=state, size=len(key), **kw)


def migration(seed: int) -> tuple[list[InventoryEntry], list[list[LedgerEntry]], list[LedgerEntry]]:
    """Inventory pages' entries, ledger objects and receive failures with every case the join distinguishes: a
    file with no line, a file with two lines (the last wins), a line for a file outside the inventory, an
    inventory key listed twice, copies of imported and of rejected originals, a receive failure that later
    landed (the inventory wins) and one that did not, predictions confirmed or not, warnings."""
    rng = random.Random(seed)
    keys = [f"d{d}/s{s}/{i:03d}.dcm" for d in range(3) for s in range(3) for i in range(rng.randint(5, 30))]
    inventory = [InventoryEntry(key=k, size=len(k)) for k in keys] + [InventoryEntry(key=keys[3], size=9)]
    rng.shuffle(inventory)
    lines: list[LedgerEntry] = []
    for n, k in enumerate(keys):
        roll = n % 11
        if roll == 0:
            continue  # never recorded
        if roll == 1:
            lines.append(entry(k, FileState.REJECTED, code="x", reason=f"bad {n % 3}"))
        elif roll == 2:
            lines.append(entry(k, FileState.SKIPPED_DUPLICATE, code="duplicate_sop_instance", duplicate_of=keys[n - 1]))
        elif roll == 3:
            lines.append(entry(k, FileState.SKIPPED_DUPLICATE, code="duplicate_sop_instance", duplicate_of=keys[n - 2]))
        else:
            lines.append(entry(k, FileState.IMPORTED, job_id=f"j{n // 40}", image_set_id=f"is{n // 25}",
                               is_primary=n % 7 != 0, predicted_non_primary=n % 5 == 0,
                               study_instance_uid=f"1.{n // 30}", series_instance_uid=f"1.{n // 30}.{n // 10}"))
    lines.append(entry(keys[5], FileState.FAILED, code="late", reason="second verdict"))
    lines.append(entry("elsewhere/x.dcm", FileState.IMPORTED))
    objects = [lines[i:i + 17] for i in range(0, len(lines), 17)]
    unreceived = [entry(keys[7], FileState.FAILED, code="pull", reason="c-move failed"),
                  entry("pacs/9.dcm", FileState.FAILED, code="pull", reason="c-move failed"),
                  entry("pacs/9.dcm", FileState.FAILED, code="pull", reason="c-move failed again")]
    return inventory, objects, unreceived


def write(s3: Any, inventory: list[InventoryEntry], objects: list[list[LedgerEntry]],
          unreceived: list[LedgerEntry]) -> ReportInput:
    bucket = f"rep-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    work = f"s3://{bucket}/w/"
    for n in range(0, len(inventory), 23):
        put_ndjson(s3, layout.inventory_page(work, "m", n // 23), inventory[n:n + 23])
    for n, obj in enumerate(objects):
        put_ndjson(s3, layout.ledger_for_batch(work, "m", n), obj)
    put_ndjson(s3, layout.receive_failures_prefix(work, "m").join("pull-0.ndjson"), unreceived)
    return ReportInput(migration_id="m", work_s3_uri=work, datastore_id="ds",
                       inventory_pages=-(-len(inventory) // 23))


@pytest.mark.parametrize("cancelled", [False, True])
@pytest.mark.parametrize("seed", [1, 2])
def test_the_streamed_report_equals_the_one_built_in_memory(s3: Any, seed: int, cancelled: bool) -> None:
    inventory, objects, unreceived = migration(seed)
    inp = write(s3, inventory, objects, unreceived).model_copy(update={"cancelled": cancelled})
    ledger = [e for obj in objects for e in obj]
    rows, summary = build_report(inventory, ledger, cancelled, unreceived)
    result = ReportActivities(s3).write_report(inp)
    got = get_bytes(s3, layout.report_files(inp.work_s3_uri, "m")).decode()
    assert got == "".join(r.model_dump_json(exclude_none=True) + "\n" for r in rows)
    assert get_bytes(s3, layout.report_csv(inp.work_s3_uri, "m")).decode() == "".join(csv_lines(rows))
    doc = get_json(s3, layout.report_document(inp.work_s3_uri, "m"))
    assert {k: doc[k] for k in SUMMARY_KEYS} == {k: summary[k] for k in SUMMARY_KEYS}
    assert summary["accounted_twice"] == 1 and summary["outside_inventory"] == 1
    assert summary["unaccounted" if not cancelled else "not_reached_before_cancel"] > 1
    assert any(r.code == "DuplicateOfNotImported" for r in rows)
    assert result.files_total == len(rows) and doc["details"]["studies_total"] > 1


def test_lines_are_uploaded_in_parts_and_a_failure_leaves_nothing(s3: Any) -> None:
    bucket = f"mp-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    loc = S3Location(bucket, "r/files.ndjson")
    line = json.dumps({"key": "x" * 200}).encode() + b"\n"
    count = (12 * 1024 * 1024) // len(line)
    with S3StreamWriter(s3, loc, "application/x-ndjson", part_bytes=5 * 1024 * 1024) as out:
        for _ in range(count):
            out.write(line)
    head = s3.head_object(Bucket=bucket, Key=loc.key)
    assert head["ContentLength"] == count * len(line) and head["ETag"].endswith('-3"')  # three parts
    broken = S3Location(bucket, "r/broken.ndjson")
    with pytest.raises(RuntimeError), S3StreamWriter(s3, broken, "text/plain", part_bytes=5 * 1024 * 1024) as out:
        out.write(line * ((6 * 1024 * 1024) // len(line)))
        raise RuntimeError("the activity failed half way")
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="r/broken")
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    with pytest.raises(ValueError, match="part_bytes must be at least 5 MiB"):
        S3StreamWriter(s3, loc, "text/plain", part_bytes=1024)


def test_a_hostile_ledger_line_is_refused_naming_the_field(s3: Any) -> None:
    inventory, objects, unreceived = migration(3)
    inp = write(s3, inventory, objects, unreceived)
    loc = layout.ledger_for_batch(inp.work_s3_uri, "m", 0)
    s3.put_object(Bucket=loc.bucket, Key=loc.key, Body=b'{"key": "a", "state": "teleported", "size": 1}\n')
    with pytest.raises(ValueError, match="state"):
        ReportActivities(s3).write_report(inp)


def test_csv_of_the_streamed_report_reads_back(s3: Any) -> None:
    inventory, objects, unreceived = migration(4)
    inp = write(s3, inventory, objects, unreceived)
    ReportActivities(s3).write_report(inp)
    table = list(csv.reader(io.StringIO(get_bytes(s3, layout.report_csv(inp.work_s3_uri, "m")).decode())))
    assert len(table) - 1 == get_json(s3, layout.report_document(inp.work_s3_uri, "m"))["files_total"]
