"""`himig report --html/--csv` pieces: a report.json that does not fit is refused naming the field, the CSV comes
from the report's own CSV or, for reports written before there was one, from its NDJSON (on a real moto S3)."""

from __future__ import annotations

import csv
import io
import uuid
from pathlib import Path
from typing import Any

import pytest

from activities.report_html import csv_lines, render_html
from cli.report_export import ReportExportError, document_of, write_csv
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
