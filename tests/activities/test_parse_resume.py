"""A retried parse resumes after its last checkpoint (real moto S3; the activity run as a worker would)."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment

from activities.parse import ParseActivities
from activities.storage import put_ndjson, read_models
from contracts import layout
from contracts.records import Finding, InventoryEntry, ParsedRecord, Severity
from contracts.stages import PageInput, ParseResult
from tests.support.dicom import make_instance, uid
from tests.support.settings import FINGERPRINT_KEY


class _Killed(Exception):
    """Stands for the worker dying right after a heartbeat."""


def _page(s3: Any, files: int) -> tuple[PageInput, list[str]]:
    src, work = f"src-{uuid.uuid4().hex[:8]}", f"work-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=src)
    s3.create_bucket(Bucket=work)
    study, series = uid(), uid()
    keys, entries = [], []
    for i in range(files):
        body = make_instance(study, series)
        key = f"p/{i:02d}.dcm"
        etag = s3.put_object(Bucket=src, Key=key, Body=body)["ETag"].strip('"')
        keys.append(key)
        entries.append(InventoryEntry(key=key, size=len(body), etag=etag))
    page = PageInput(migration_id="m1", work_s3_uri=f"s3://{work}/w/", page=0, source_s3_uri=f"s3://{src}/p/")
    put_ndjson(s3, layout.inventory_page(page.work_s3_uri, page.migration_id, 0), entries)
    return page, keys


def _run(s3: Any, page: PageInput, details: Any = None, die_after: int | None = None,
         gets: list[str] | None = None) -> tuple[ParseResult | None, list[Any]]:
    beats: list[Any] = []
    env = ActivityEnvironment()
    if details is not None:
        env.info = dataclasses.replace(env.info, heartbeat_details=[details], attempt=2)

    def on_heartbeat(*args: Any) -> None:
        beats.append(args[0])
        if die_after is not None and len(beats) >= die_after:
            raise _Killed()

    env.on_heartbeat = on_heartbeat

    def count(params: dict[str, Any], **_: Any) -> None:
        if gets is not None and params.get("Key", "").startswith("p/"):
            gets.append(params["Key"])

    s3.meta.events.register("before-parameter-build.s3.GetObject", count)
    try:
        return env.run(ParseActivities(s3, 2, fingerprint_key=FINGERPRINT_KEY.encode(), checkpoint_every=3).parse_headers, page), beats
    except _Killed:
        return None, beats
    finally:
        s3.meta.events.unregister("before-parameter-build.s3.GetObject", count)


def test_a_retry_reads_finished_chunks_back_and_parses_only_the_rest(s3: Any) -> None:
    page, keys = _page(s3, 8)  # chunks of 3: [0-2] [3-5] checkpointed, [6-7] written with the page
    result, beats = _run(s3, page, die_after=2)
    assert result is None and [b["chunks"] for b in beats] == [1, 2]
    # Mark a checkpointed record: if the retry parsed that file again, the mark would be gone.
    first = layout.parsed_checkpoint(page.work_s3_uri, page.migration_id, 0, 0)
    records = read_models(s3, first, ParsedRecord)
    records[0].findings.append(Finding(code="from_checkpoint", severity=Severity.INFO, reason="mark"))
    put_ndjson(s3, first, records)

    gets: list[str] = []
    result, _ = _run(s3, page, details=beats[-1], gets=gets)
    assert result is not None and result.files == 8 and result.parsed == 8
    assert sorted(set(gets)) == keys[6:]  # only the unfinished chunk was read from the source
    assert result.s3_requests == beats[-1]["requests"] + len(gets)  # the first attempt's GETs still count
    parsed = read_models(s3, layout.parsed_page(page.work_s3_uri, page.migration_id, 0), ParsedRecord)
    assert [r.key for r in parsed] == keys
    assert [f.code for f in parsed[0].findings] == ["from_checkpoint"]


def test_a_missing_checkpoint_restarts_from_that_chunk(s3: Any) -> None:
    page, keys = _page(s3, 8)
    _, beats = _run(s3, page, die_after=2)
    s3.delete_object(Bucket=page.work_s3_uri[5:].split("/")[0],
                     Key=layout.parsed_checkpoint(page.work_s3_uri, page.migration_id, 0, 1).key)
    gets: list[str] = []
    result, _ = _run(s3, page, details=beats[-1], gets=gets)
    assert result is not None and result.files == 8
    assert sorted(set(gets)) == keys[3:]  # chunk 1 is parsed again, chunk 0 is not


@pytest.mark.parametrize("details", [17, "x", {"chunks": "many"}, {"chunks": -1}, None])
def test_foreign_heartbeat_details_mean_a_fresh_start(s3: Any, details: Any) -> None:
    page, keys = _page(s3, 4)
    gets: list[str] = []
    result, _ = _run(s3, page, details=details, gets=gets)
    assert result is not None and result.files == 4 and sorted(set(gets)) == keys
