"""`SourceVerifyWorkflow` / `himig verify --source` and the deep pixel check on the real stack: a bare source
(no migration) is checked against a data store; the default check touches nothing and counts per series; deep
places every instance; ``pixels`` compares a seeded sample of frames through GetImageFrame, each a touch; hostile
use (unknown or unreadable data store, a source that does not exist) ends in one clear line."""

from __future__ import annotations

import io
import json
import urllib.request
import uuid
from datetime import timedelta
from typing import Any

import pydicom
import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.worker import Worker

from contracts.migration import MigrationInput
from contracts.verify import (
    DifferenceKind,
    SourceVerifyInput,
    VerifyInput,
    VerifyResult,
    source_verify_workflow_id,
)
from tests.conftest import emulator_admin
from tests.support.cli import invoke
from tests.support.dicom import make_instance, uid
from tests.support.migrations import migrate_small_source
from tests.workflows.conftest import active_datastore
from workflows.verify import SourceVerifyWorkflow, VerifyWorkflow


@pytest.fixture
def own_datastore(emulator_url: str) -> str:
    return active_datastore(emulator_url, f"vsrc-{uuid.uuid4().hex[:8]}")


async def _migrated_source(client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str,
                           studies: int = 2, per_series: int = 3) -> tuple[str, str, MigrationInput]:
    mid, prefix, _, payload = await migrate_small_source(client, worker, buckets, datastore_id, studies, per_series,
                                                         tag="vs")
    return mid, prefix, payload


def _source_input(payload: MigrationInput, **extra: Any) -> SourceVerifyInput:
    return SourceVerifyInput(source_s3_uri=payload.source_s3_uri, datastore_id=payload.datastore_id,
                             work_s3_uri=payload.work_s3_uri, **extra)


async def _run(client: Client, worker: Worker, payload: SourceVerifyInput | VerifyInput) -> VerifyResult:
    run = SourceVerifyWorkflow.run if isinstance(payload, SourceVerifyInput) else VerifyWorkflow.run
    result: VerifyResult = await client.execute_workflow(
        run, payload, id=f"vs-t-{uuid.uuid4().hex[:8]}", task_queue=worker.task_queue,
        execution_timeout=timedelta(seconds=90))
    return result


def _sets(mi: Any, ds: str) -> dict[str, Any]:
    pages = mi.get_paginator("search_image_sets").paginate(datastoreId=ds, searchCriteria={})
    return {s["imageSetId"]: mi.get_image_set(datastoreId=ds, imageSetId=s["imageSetId"])["lastAccessedAt"]
            for p in pages for s in p["imageSetsMetadataSummaries"]}


def _lines(s3: Any, uri: str) -> list[dict[str, Any]]:
    bucket, key = uri[5:].split("/", 1)
    return [json.loads(x) for x in s3.get_object(Bucket=bucket, Key=key)["Body"].read().splitlines()]


def _other_pixels(data: bytes) -> bytes:
    """The same instance (all UIDs kept) with other pixel values."""
    ds = pydicom.dcmread(io.BytesIO(data))
    raw = bytearray(ds.PixelData)
    raw[:64] = bytes((b + 1) % 256 for b in raw[:64])
    ds.PixelData = bytes(raw)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


async def test_a_bare_source_checks_clean_and_costs_no_touch(
        client: Client, worker: Worker, buckets: dict[str, Any], own_datastore: str, medical_imaging: Any) -> None:
    _, prefix, payload = await _migrated_source(client, worker, buckets, own_datastore)
    before = _sets(medical_imaging, own_datastore)
    result = await _run(client, worker, _source_input(payload))
    assert result.clean and (result.instances_expected, result.instances_verified) == (6, 6)
    assert result.migration_id is None and result.source_s3_uri == payload.source_s3_uri
    assert result.touches == 0 and result.touches_for_deep == 2 and result.image_sets_checked == 2
    assert set(result.requests) == {"GetDatastore", "ListObjectsV2", "GetObject", "SearchImageSets"}
    assert result.requests["GetObject"] == 6 and result.requests["SearchImageSets"] == 2
    assert any("no-touch" in n for n in result.notes)
    assert _sets(medical_imaging, own_datastore) == before  # nothing touched

    # The source grows: a file that is not DICOM, a series never imported, one more instance of a known series.
    s3, src = buckets["s3"], buckets["source"]
    s3.put_object(Bucket=src, Key=f"{prefix}/notes.txt", Body=b"not dicom")
    s3.put_object(Bucket=src, Key=f"{prefix}/new/0.dcm", Body=make_instance(uid(), uid()))
    first = pydicom.dcmread(io.BytesIO(s3.get_object(Bucket=src, Key=f"{prefix}/s0/0.dcm")["Body"].read()),
                            stop_before_pixels=True)
    s3.put_object(Bucket=src, Key=f"{prefix}/s0/9.dcm",
                  Body=make_instance(first.StudyInstanceUID, first.SeriesInstanceUID))
    grown = await _run(client, worker, _source_input(payload))
    assert grown.differences == {DifferenceKind.UNREADABLE: 1, DifferenceKind.MISSING: 2}
    assert grown.instances_verified == 6 and grown.instances_expected == 8
    lines = _lines(s3, grown.differences_uri)
    assert next(x for x in lines if x["kind"] == "unreadable")["keys"] == [f"{prefix}/notes.txt"]
    assert {x.get("note", "")[:8] for x in lines if x["kind"] == "missing"} == {"no image", "by count"}

    deep = await _run(client, worker, _source_input(payload, deep=True, attributes=["Modality"]))
    assert deep.differences == {DifferenceKind.UNREADABLE: 1, DifferenceKind.MISSING: 2}
    assert deep.touches == 2 and deep.requests["GetImageSetMetadata"] == 2
    named = sorted(x["key"] for x in _lines(s3, deep.differences_uri) if x["kind"] == "missing")
    assert named == [f"{prefix}/new/0.dcm", f"{prefix}/s0/9.dcm"]  # deep names each instance


async def test_files_healthimaging_cannot_hold_are_unreadable_not_a_failed_check(
        client: Client, worker: Worker, buckets: dict[str, Any], own_datastore: str) -> None:
    # S3 refuses a ranged GET of an empty object (InvalidRange), and SearchImageSets a UID outside its pattern
    # (ValidationException): each such file is a difference found, never the end of the check.
    _, prefix, payload = await _migrated_source(client, worker, buckets, own_datastore, studies=1, per_series=2)
    s3, src = buckets["s3"], buckets["source"]
    hostile = {f"{prefix}/empty.dcm": b"", f"{prefix}/s0/also-empty": b"",
               f"{prefix}/letters.dcm": make_instance("1.2.840.abc", uid()),
               f"{prefix}/long.dcm": make_instance("1." + "2" * 70, uid()),
               f"{prefix}/sop.dcm": make_instance(uid(), uid(), sop="1.2.3 4")}
    for key, body in hostile.items():
        s3.put_object(Bucket=src, Key=key, Body=body)
    # The pattern lets a leading zero through (HealthImaging holds such a UID): searched for, found missing.
    s3.put_object(Bucket=src, Key=f"{prefix}/zero.dcm", Body=make_instance("1.2.0123", uid()))
    for deep in (False, True):
        result = await _run(client, worker, _source_input(payload, deep=deep))
        assert result.differences == {DifferenceKind.UNREADABLE: 5, DifferenceKind.MISSING: 1}, (deep, result)
        assert (result.instances_expected, result.instances_verified) == (3, 2)
        assert result.requests["GetObject"] == 8  # one ranged GET each, the empty ones included
        unreadable = next(x for x in _lines(s3, result.differences_uri) if x["kind"] == "unreadable")
        assert unreadable["keys"] == sorted(hostile)


async def test_deep_pixels_compare_a_seeded_sample_and_find_changed_pixels(
        client: Client, worker: Worker, buckets: dict[str, Any], own_datastore: str) -> None:
    mid, prefix, payload = await _migrated_source(client, worker, buckets, own_datastore, studies=1, per_series=4)
    ok = await _run(client, worker, _source_input(payload, deep=True, pixels=3, pixel_seed=7))
    assert ok.clean and ok.frames_compared == 3 and ok.frames_not_comparable == {}
    assert ok.requests["GetImageFrame"] == 3 and ok.touches == 1 + 3  # one metadata read, three frames
    # The migration's own verify takes the same option.
    migration = await _run(client, worker, VerifyInput(
        migration_id=mid, datastore_id=own_datastore, work_s3_uri=payload.work_s3_uri,
        source_s3_uri=payload.source_s3_uri, deep=True, pixels=4))
    assert migration.clean and migration.frames_compared == 4 and migration.touches == 5

    # Every source file's pixels change (same UIDs): whichever instances the sample picks, they differ.
    s3, src = buckets["s3"], buckets["source"]
    for i in range(4):
        key = f"{prefix}/s0/{i}.dcm"
        s3.put_object(Bucket=src, Key=key, Body=_other_pixels(s3.get_object(Bucket=src, Key=key)["Body"].read()))
    bad = await _run(client, worker, _source_input(payload, deep=True, pixels=2, pixel_seed=7))
    assert bad.differences == {DifferenceKind.PIXELS_DIFFER: 2} and bad.frames_compared == 0
    assert bad.instances_verified == 2
    differing = [x for x in _lines(s3, bad.differences_uri) if x["kind"] == "pixels_differ"]
    assert all(x["frames"] == [1] for x in differing)


async def test_hostile_sources_and_data_stores(client: Client, worker: Worker, buckets: dict[str, Any],
                                               own_datastore: str, emulator_url: str) -> None:
    s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
    s3.put_object(Bucket=src, Key="h/0.dcm", Body=make_instance(uid(), uid()))
    base = SourceVerifyInput(source_s3_uri=f"s3://{src}/h/", datastore_id=own_datastore,
                             work_s3_uri=f"s3://{work}/w/")

    async def refused(payload: SourceVerifyInput) -> str:
        with pytest.raises(WorkflowFailureError) as failed:
            await _run(client, worker, payload)
        return str(failed.value.cause.cause)

    assert "no data store" in await refused(base.model_copy(update={"datastore_id": "f" * 32}))
    assert "no object under" in await refused(base.model_copy(update={"source_s3_uri": f"s3://{src}/nothing/"}))
    assert "NoSuchBucket" in await refused(base.model_copy(update={"source_s3_uri": "s3://no-such-bucket-x1/p/"}))
    fault = emulator_admin(emulator_url, "faults", {"kind": "access_denied", "operation": "GetDatastore",
                                                    "datastoreId": own_datastore})
    try:
        assert "may not read data store" in await refused(base)
    finally:
        fid = fault["faults"][0]["id"]
        urllib.request.urlopen(urllib.request.Request(f"{emulator_url}/_emulator/faults/{fid}", method="DELETE"))


@pytest.mark.parametrize("fields, where", [
    ({"pixels": 3}, "pixels"),  # without deep
    ({"deep": True, "pixels": 1001}, "pixels"),
    ({"deep": True, "pixels": True}, "pixels"),
    ({"deep": True, "pixels": "3"}, "pixels"),
    ({"pixel_seed": -1}, "pixel_seed"),
    ({"source_s3_uri": "file:///etc/"}, "source_s3_uri"),
    ({"work_s3_uri": "s3://Bad_Bucket/w/"}, "work_s3_uri"),
    ({"datastore_id": "../x"}, "datastore_id"),
    ({"attributes": ["lower"]}, "attributes"),
    ({"surprise": 1}, "surprise"),
])
def test_source_verify_input_is_strict(fields: dict[str, Any], where: str) -> None:
    from pydantic import ValidationError

    base = {"source_s3_uri": "s3://bkt/s/", "datastore_id": "a" * 32, "work_s3_uri": "s3://bkt/w/"}
    with pytest.raises(ValidationError) as err:
        SourceVerifyInput(**{**base, **fields})
    assert where in str(err.value)


class TestVerifySourceCommand:
    async def test_once_and_refusals(self, himig_cli: Any, client: Client, worker: Worker,
                                     buckets: dict[str, Any], own_datastore: str) -> None:
        _, _, payload = await _migrated_source(client, worker, buckets, own_datastore, studies=1,
                                                    per_series=2)
        flags = ["--source", payload.source_s3_uri, "--datastore-id", own_datastore, "--work", payload.work_s3_uri]
        once = await invoke(himig_cli, "verify", *flags)
        assert once.exit_code == 0, once.flat
        assert "2 of 2 instances of the source found" in once.flat and "no differences" in once.flat
        assert "touches made 0; a deep check would touch 1 image set(s)" in once.flat
        deep = await invoke(himig_cli, "verify", *flags, "--deep", "--pixels", "1")
        assert deep.exit_code == 0 and "pixels: 1 frame(s) equal to the source" in deep.flat, deep.flat
        scheduled = await invoke(himig_cli, "verify", *flags, "--every", "6h")
        schedule_id = source_verify_workflow_id(payload.source_s3_uri, own_datastore)
        assert scheduled.exit_code == 0 and f"schedule {schedule_id}" in scheduled.flat, scheduled.flat
        desc = await client.get_schedule_handle(schedule_id).describe()
        assert desc.schedule.action.workflow == "SourceVerifyWorkflow"  # type: ignore[union-attr]
        stopped = await invoke(himig_cli, "verify", *flags, "--every", "off")
        assert stopped.exit_code == 0 and "deleted" in stopped.flat

        both = await invoke(himig_cli, "verify", "some-migration", *flags)
        assert both.exit_code == 2 and "not both" in both.flat
        neither = await invoke(himig_cli, "verify")
        assert neither.exit_code == 2 and "--source" in neither.flat
        shallow = await invoke(himig_cli, "verify", *flags, "--pixels", "2")
        assert shallow.exit_code == 2 and "--pixels needs --deep" in shallow.flat
        no_work = await invoke(himig_cli, "verify", "--source", payload.source_s3_uri, "--datastore-id", own_datastore)
        assert no_work.exit_code == 2 and "--work" in no_work.flat
        bad_uri = await invoke(himig_cli, "verify", "--source", "/etc/passwd", "--datastore-id", own_datastore,
                               "--work", payload.work_s3_uri)
        assert bad_uri.exit_code != 0 and "source_s3_uri" in bad_uri.flat and "Traceback" not in bad_uri.flat
        unknown = await invoke(himig_cli, "verify", "--source", payload.source_s3_uri, "--datastore-id", "e" * 32,
                               "--work", payload.work_s3_uri)
        assert unknown.exit_code == 1 and "no data store" in unknown.flat and "Traceback" not in unknown.flat
        missing = await invoke(himig_cli, "verify", "--source", f"{payload.source_s3_uri}nothing/",
                               "--datastore-id", own_datastore, "--work", payload.work_s3_uri)
        assert missing.exit_code == 1 and "no object under" in missing.flat
