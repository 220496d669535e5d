"""Zero padding after Pixel Data through the whole pipeline, against the emulator's default and its strict fault.

By default the emulator (like HealthImaging, as far as AWS documents) imports a padded file, and the pipeline
imports it too. Under the ``strict_trailing_padding`` fault the import fails such files; with
HIMIG_IMPORT_REJECTS_TRAILING_PADDING the pipeline predicts that at parse and rejects the file with the reason,
so nothing is discovered in the FAILURE file. Without the setting the same file ends ``failed`` with the
service's own reason: that is what the setting is for.
"""

from __future__ import annotations

import io
import json
import urllib.request
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import pydicom
from temporalio.client import Client
from temporalio.worker import Worker

from contracts.common import FileState
from contracts.migration import MigrationInput
from tests.conftest import emulator_admin
from tests.support.dicom import make_instance, uid
from tests.support.migrations import migrate, report_rows
from worker.runner import build_worker
from worker.settings import Settings

PADDINGS = (1, 8, 4096)


def _ends_at_pixel_data(study: str, series: str) -> bytes:
    """A valid CT whose last element is Pixel Data (CT_small's Data Set Trailing Padding element removed)."""
    ds = pydicom.dcmread(io.BytesIO(make_instance(study, series)))
    del ds[0xFFFCFFFC]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _upload(s3: Any, bucket: str, prefix: str) -> None:
    study, series = uid(), uid()
    s3.put_object(Bucket=bucket, Key=f"{prefix}plain.dcm", Body=_ends_at_pixel_data(study, series))
    for pad in PADDINGS:
        s3.put_object(Bucket=bucket, Key=f"{prefix}padded-{pad}.dcm",
                      Body=_ends_at_pixel_data(study, series) + b"\0" * pad)


@asynccontextmanager
async def _worker(client: Client, settings: Settings) -> AsyncIterator[Worker]:
    with ThreadPoolExecutor(max_workers=settings.max_concurrent_activities) as executor:
        async with build_worker(client, settings, executor) as w:
            yield w


async def _run(client: Client, settings: Settings, buckets: dict[str, Any], datastore_id: str,
               emulator_url: str, *, strict_service: bool) -> dict[str, dict[str, Any]]:
    tag = f"pad-{uuid.uuid4().hex[:8]}"
    _upload(buckets["s3"], buckets["source"], f"{tag}/")
    fault = emulator_admin(emulator_url, "faults", {"kind": "strict_trailing_padding", "file": f"*{tag}/*"}) \
        if strict_service else None
    try:
        async with _worker(client, settings) as worker:
            _, result = await migrate(client, worker, MigrationInput(
                source_s3_uri=f"s3://{buckets['source']}/{tag}/", datastore_id=datastore_id,
                work_s3_uri=f"s3://{buckets['work']}/w/", import_start_interval_seconds=0), prefix=tag)
    finally:
        if fault is not None:
            fault_id = fault["faults"][0]["id"]
            urllib.request.urlopen(urllib.request.Request(f"{emulator_url}/_emulator/faults/{fault_id}",
                                                          method="DELETE"), timeout=30).close()
    return {key.split("/", 1)[1]: row for key, row in report_rows(buckets["s3"], result).items()}


async def test_padding_imports_by_default(client: Client, settings: Settings, buckets: dict[str, Any],
                                          datastore_id: str, emulator_url: str) -> None:
    rows = await _run(client, settings, buckets, datastore_id, emulator_url, strict_service=False)
    assert {name: row["state"] for name, row in rows.items()} == {
        "plain.dcm": FileState.IMPORTED, **{f"padded-{p}.dcm": FileState.IMPORTED for p in PADDINGS}}


async def test_strict_service_predicted_at_parse(client: Client, settings: Settings, buckets: dict[str, Any],
                                                 datastore_id: str, emulator_url: str) -> None:
    strict = settings.model_copy(update={"import_rejects_trailing_padding": True})
    rows = await _run(client, strict, buckets, datastore_id, emulator_url, strict_service=True)
    assert rows["plain.dcm"]["state"] == FileState.IMPORTED
    for pad in PADDINGS:
        row = rows[f"padded-{pad}.dcm"]
        assert (row["state"], row["code"]) == (FileState.REJECTED, "trailing_padding_rejected"), row
        assert row["reason"].startswith(f"{pad} bytes of zero padding follow Pixel Data")
        assert "would fail this file" in row["reason"] and not row.get("job_id"), row  # never sent to the import


async def test_strict_service_without_the_setting_fails_in_the_import(
        client: Client, settings: Settings, buckets: dict[str, Any], datastore_id: str, emulator_url: str) -> None:
    rows = await _run(client, settings, buckets, datastore_id, emulator_url, strict_service=True)
    assert rows["plain.dcm"]["state"] == FileState.IMPORTED
    for pad in PADDINGS:
        row = rows[f"padded-{pad}.dcm"]
        assert row["state"] == FileState.FAILED, row
        assert f"{pad} trailing bytes after element (7FE0,0010)" in json.dumps(row)
