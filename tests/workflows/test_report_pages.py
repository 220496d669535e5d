"""A real migration's report: warnings of both origins reach it, and its HTML page and CSV are written next to the
JSON (by the worker) and by `himig report --html/--csv` (through the real Temporal dev server, moto and the
emulator), and the page renders in headless Chromium."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from contracts import layout
from contracts.common import FileState
from contracts.migration import MigrationInput
from contracts.report import ReportDocument
from tests.emulator.resilience_support import admin
from tests.support.chromium import render
from tests.support.dicom import make_instance, uid
from tests.support.migrations import migrate, report_rows, report_summary


async def test_warnings_reach_the_report_and_its_pages(client: Client, worker: Worker, buckets: dict[str, Any],
                                                       datastore_id: str, emulator_url: str, temporal_env: Any,
                                                       monkeypatch: pytest.MonkeyPatch, moto_url: str,
                                                       tmp_path: Path) -> None:
    s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
    run = uuid.uuid4().hex[:8]
    study, series = uid(), uid()
    files = {f"{run}/clean/{i}.dcm": make_instance(study, series) for i in range(3)}
    files[f"{run}/warn/no-patient-id.dcm"] = make_instance(study, series, patient_id="")
    files[f"{run}/warn/service.dcm"] = make_instance(study, series)
    files[f"{run}/bad.txt"] = b"not DICOM"
    for key, body in files.items():
        s3.put_object(Bucket=src, Key=key, Body=body)
    # HealthImaging's own warning for one file (the emulator's injectable fault; the shape AWS documents).
    admin(emulator_url, "POST", "faults", {"kind": "file_warning", "file": f"*{run}/warn/service.dcm", "count": 1})
    wid, result = await migrate(client, worker, MigrationInput(
        source_s3_uri=f"s3://{src}/{run}/", datastore_id=datastore_id, work_s3_uri=f"s3://{work}/w/",
        import_start_interval_seconds=0))

    rows = report_rows(s3, result)
    ours, theirs = rows[f"{run}/warn/no-patient-id.dcm"], rows[f"{run}/warn/service.dcm"]
    assert ours["state"] == theirs["state"] == FileState.IMPORTED_WITH_WARNINGS
    assert {(f["origin"], f["code"]) for f in ours["findings"]} == {("himig", "empty_patient_id")}
    assert [(f["origin"], f["code"]) for f in theirs["findings"]] == [("healthimaging", "InvalidOffsetTable")]
    assert "himig: PatientID is missing or empty" in ours["reason"]
    assert all(rows[k]["state"] == FileState.IMPORTED and "findings" not in rows[k] for k in files if "/clean/" in k)
    assert result.files_by_state[FileState.IMPORTED_WITH_WARNINGS] == 2  # counted by the workflows too
    assert result.files_by_state[FileState.IMPORTED] == 3 and result.files_by_state[FileState.REJECTED] == 1

    summary = report_summary(s3, result)
    doc = ReportDocument.model_validate_json(s3.get_object(
        Bucket=work, Key=layout.report_document(f"s3://{work}/w/", wid).key)["Body"].read())
    assert {(w.origin.value, w.code, w.files) for w in doc.details.warnings} == {
        ("himig", "empty_patient_id", 1), ("healthimaging", "InvalidOffsetTable", 1)}
    assert [(s.study_instance_uid, s.files) for s in doc.details.studies] == [(study, 5)]
    # The file without a PatientID differs from its series in patient attributes: HealthImaging puts it in a
    # non-primary image set, whose reconciliation `himig report` asks about.
    assert [(s.files, s.series_instance_uid) for s in doc.details.non_primary] == [(1, series)]
    assert ours["is_primary"] is False
    assert sum(sum(b.files_by_state.values()) for b in doc.details.timeline) == 6
    # The worker's page and CSV, next to the JSON.
    page = s3.get_object(Bucket=work, Key=layout.report_html(f"s3://{work}/w/", wid).key)
    assert page["ContentType"].startswith("text/html")
    html = page["Body"].read().decode()
    assert wid in html and "InvalidOffsetTable" in html and "SYNTH" not in html  # no patient values
    worker_csv = s3.get_object(Bucket=work, Key=layout.report_csv(f"s3://{work}/w/", wid).key)["Body"].read().decode()
    assert summary["csv_uri"].endswith("/report/files.csv")
    assert summary["verify_uri"].endswith(f"/{wid}/report/verify.json") and doc.details.verify is None

    # `himig report --html --csv`, against the same stack.
    from typer.testing import CliRunner

    from cli.app import app

    monkeypatch.setenv("HIMIG_TEMPORAL_ADDRESS", temporal_env.client.service_client.config.target_host)
    monkeypatch.setenv("HIMIG_TASK_QUEUE", worker.task_queue)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_url)
    out_html, out_csv = tmp_path / "report.html", tmp_path / "files.csv"
    done = await asyncio.to_thread(CliRunner().invoke, app, ["report", wid, "--html", str(out_html),
                                                             "--csv", str(out_csv)])
    assert done.exit_code == 0, done.output
    assert out_csv.read_bytes().decode() == worker_csv
    lines = list(csv.DictReader(io.StringIO(worker_csv, newline="")))
    assert sorted(r["key"] for r in lines) == sorted(files)
    assert next(r for r in lines if r["key"].endswith("service.dcm"))["warnings"] == "healthimaging:InvalidOffsetTable"
    assert "SYNTH" not in out_csv.read_text(encoding="utf-8")
    shown = render(out_html, tmp_path / "report.png", height=1800)
    assert shown.console == []
    page_now = out_html.read_text(encoding="utf-8")  # the reconciliation's state, asked just now
    assert "not asked" not in page_now and ("awaiting_decision" in page_now or "describing" in page_now)

    missing_dir = tmp_path / "no-such-dir" / "r.html"
    done = await asyncio.to_thread(CliRunner().invoke, app, ["report", wid, "--html", str(missing_dir)])
    assert done.exit_code == 1 and "--html" in done.output and "No such file or directory" in done.output
