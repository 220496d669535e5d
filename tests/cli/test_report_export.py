"""`himig report --html/--csv` pieces: a report.json that does not fit is refused naming the field, the CSV comes
from the report's own CSV or, for reports written before there was one, from its NDJSON (on a real moto S3)."""

from __future__ import annotations

import csv
import io
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from activities.report_html import csv_lines, render_html
from cli.report_export import ReportExportError, document_of, with_sections, write_csv
from contracts.common import FileState
from contracts.records import LedgerEntry
from tests.conftest import make_s3

SUMMARY: dict[str, Any] = {"migration_id": "m", "files_total": 2, "bytes_total": 3,
                           "files_by_state": {"imported": 1, "rejected": 1}}
ROWS = [LedgerEntry(key="a.dcm", state=FileState.IMPORTED, size=2, image_set_id="i" * 32, is_primary=True),
        LedgerEntry(key="=b.txt", state=FileState.REJECTED, size=1, code="not_dicom", reason="not DICOM")]


@pytest.fixture
def bucket(moto_url: str) -> tuple[Any, str]:
    s3 = make_s3(moto_url)
    name = f"rep-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    return s3, name


class TestDocument:
    def test_a_report_from_before_the_details_still_renders(self) -> None:
        page = render_html(document_of(SUMMARY))
        assert "No file reached a terminal state" in page and "No dry run" in page

    @pytest.mark.parametrize("field,value,where", [("files_total", True, "files_total"),
                                                   ("files_by_state", {"imported": "1"}, "files_by_state.imported"),
                                                   ("details", {"timeline": [{"start": "x"}]}, "details.timeline.0")])
    def test_a_report_that_does_not_fit_names_the_field(self, field: str, value: Any, where: str) -> None:
        with pytest.raises(ReportExportError, match=rf"report\.json cannot be shown: {where}"):
            document_of(SUMMARY | {field: value})


class TestCsv:
    def test_the_reports_own_csv_is_copied_byte_for_byte(self, bucket: tuple[Any, str], tmp_path: Path) -> None:
        s3, name = bucket
        body = "".join(csv_lines(ROWS)).encode()
        s3.put_object(Bucket=name, Key="m/report/files.csv", Body=body)
        write_csv(s3, SUMMARY | {"csv_uri": f"s3://{name}/m/report/files.csv"}, tmp_path / "f.csv")
        assert (tmp_path / "f.csv").read_bytes() == body

    def test_an_older_report_gets_its_csv_from_the_ndjson(self, bucket: tuple[Any, str], tmp_path: Path) -> None:
        s3, name = bucket
        s3.put_object(Bucket=name, Key="m/report/files.ndjson",
                      Body="".join(r.model_dump_json(exclude_none=True) + "\n" for r in ROWS).encode())
        write_csv(s3, SUMMARY | {"files_uri": f"s3://{name}/m/report/files.ndjson"}, tmp_path / "f.csv")
        read = list(csv.DictReader(io.StringIO((tmp_path / "f.csv").read_text(encoding="utf-8"))))
        assert [(r["key"], r["state"]) for r in read] == [("a.dcm", "imported"), ("'=b.txt", "rejected")]


class TestSections:
    def _doc(self, name: str) -> Any:
        return document_of(SUMMARY | {"plan_uri": f"s3://{name}/m/report/plan.json",
                                      "verify_uri": f"s3://{name}/m/report/verify.json"})

    def test_no_plan_and_no_verification_say_so(self, bucket: tuple[Any, str]) -> None:
        s3, name = bucket
        doc = with_sections(s3, self._doc(name))
        assert (doc.details.plan, doc.details.verify, doc.details.section_problems) == (None, None, [])
        page = render_html(doc)
        assert "No dry run (himig plan) was recorded" in page and "No verification (himig verify) ran" in page

    def test_a_verification_written_after_the_report_is_shown(self, bucket: tuple[Any, str]) -> None:
        s3, name = bucket
        s3.put_object(Bucket=name, Key="m/report/verify.json",
                      Body=json.dumps({"passed": True, "counts": {"instances checked": 2}}).encode())
        doc = with_sections(s3, self._doc(name))
        assert doc.details.verify is not None and doc.details.verify.passed
        assert "instances checked" in render_html(doc)

    @pytest.mark.parametrize("body,where", [
        ({"rows": [{"label": "jobs", "planned": True}]}, "rows.0.planned"),
        ({"rows": [{"label": "jobs", "planned": "3"}]}, "rows.0.planned"),
        ({"planned_at": "yesterday", "rows": []}, "planned_at"),
        ([1, 2], "the document"),
    ])
    def test_a_plan_that_does_not_fit_is_a_problem_naming_the_field(self, bucket: tuple[Any, str], body: Any,
                                                                     where: str) -> None:
        s3, name = bucket
        s3.put_object(Bucket=name, Key="m/report/plan.json", Body=json.dumps(body).encode())
        doc = with_sections(s3, self._doc(name))
        assert doc.details.plan is None
        [problem] = doc.details.section_problems
        assert problem.startswith(f"plan.json cannot be shown: {where}: ")
        assert "plan.json cannot be shown" in render_html(doc)
