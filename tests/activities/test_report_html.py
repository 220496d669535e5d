"""The report's aggregates, its HTML page and its CSV: built from lines we make, checked in headless Chromium."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import ValidationError

from activities.report import build_report, render_summary
from activities.report_aggregate import ReportAggregator
from activities.report_html import STATE_COLORS, csv_lines, image_set_link, render_html
from contracts.common import FileState
from contracts.records import Finding, FindingOrigin, InventoryEntry, LedgerEntry, Severity
from contracts.report import PlanComparison, PlanRow, ReportDocument, VerifyResult
from tests.support.chromium import render

T0 = datetime(2026, 12, 3, 7, 0, tzinfo=UTC)
DS = "d" * 32
HOSTILE = '<script>alert("x")</script>'


def _warn(origin: FindingOrigin, code: str) -> Finding:
    return Finding(code=code, severity=Severity.WARNING, reason=f"{code} found", origin=origin)


def _rows(studies: int = 4, per_series: int = 6) -> list[tuple[LedgerEntry, datetime]]:
    """A migration's lines with their verdict times: every state, both warning origins, one non-primary set."""
    out: list[tuple[LedgerEntry, datetime]] = []
    n = 0
    for st in range(studies):
        for se in range(2):
            for i in range(per_series):
                n += 1
                at = T0 + timedelta(seconds=5 * n)
                study, series = f"1.2.{st}", f"1.2.{st}.{se}"
                image_set = f"{st}{se}".ljust(32, "a")
                common: dict[str, Any] = {"key": f"src/{st}/{se}/{i}.dcm", "size": 1000 + n, "batch": st,
                                          "study_instance_uid": study, "series_instance_uid": series}
                if st == 1 and se == 1:  # a series HealthImaging put in a non-primary image set
                    row = LedgerEntry(state=FileState.IMPORTED, image_set_id="np".ljust(32, "b"), is_primary=False,
                                      **common)
                elif i == 0:
                    row = LedgerEntry(state=FileState.REJECTED, code="invalid_uid", reason="StudyInstanceUID too long",
                                      **common)
                elif i == 1 and st == 0:
                    row = LedgerEntry(state=FileState.FAILED, code="ValidationException", reason="bad offset table",
                                      **common)
                elif i == 2:
                    row = LedgerEntry(state=FileState.IMPORTED_WITH_WARNINGS, image_set_id=image_set, is_primary=True,
                                      reason="himig: PatientID is missing or empty",
                                      findings=[_warn(FindingOrigin.HIMIG, "empty_patient_id"),
                                                _warn(FindingOrigin.HEALTHIMAGING, "InvalidOffsetTable")], **common)
                elif i == 3 and st == 2:
                    row = LedgerEntry(state=FileState.SKIPPED_DUPLICATE, duplicate_of="src/x.dcm",
                                      code="duplicate_sop_instance", reason="identical copy", **common)
                else:
                    row = LedgerEntry(state=FileState.IMPORTED, image_set_id=image_set, is_primary=True, **common)
                out.append((row, at))
    return out


def _document(lines: list[tuple[LedgerEntry, datetime]], table_limit: int = 50,
              **details: Any) -> ReportDocument:
    ledger = [row for row, _ in lines]
    rows, summary = build_report([InventoryEntry(key=r.key, size=r.size) for r in ledger], ledger)
    times = {row.key: at for row, at in lines}
    aggregate = ReportAggregator(DS, table_limit=table_limit)
    for row in rows:
        aggregate.add(row, times[row.key])
    finished = max(times.values()) + timedelta(seconds=3)
    summary["details"] = aggregate.details(T0, finished, "http://127.0.0.1:8400").model_dump(mode="json") | details
    summary |= {"migration_id": "mig-1", "datastore_id": DS, "files_uri": "s3://w/mig-1/report/files.ndjson"}
    return ReportDocument.model_validate_json(json.dumps(summary))


class TestAggregates:
    def test_the_timeline_adds_up_to_the_totals(self) -> None:
        doc = _document(_rows())
        per_state: dict[FileState, int] = {}
        for bucket in doc.details.timeline:
            for state, n in bucket.files_by_state.items():
                per_state[state] = per_state.get(state, 0) + n
        assert per_state == {s: n for s, n in doc.files_by_state.items() if n}
        assert sum(b.bytes for b in doc.details.timeline) == doc.bytes_total
        assert doc.details.timeline[0].start == T0 and len(doc.details.timeline) == 48

    def test_tables_are_capped_with_the_groups_that_need_attention_first(self) -> None:
        doc = _document(_rows(studies=6), table_limit=3)
        d = doc.details
        assert (d.studies_total, len(d.studies), d.series_total, len(d.series)) == (6, 3, 12, 3)
        assert d.studies[0].study_instance_uid == "1.2.0"  # a rejected and a failed file per series
        assert all(a.problems >= b.problems for a, b in zip(d.studies, d.studies[1:], strict=False))
        assert sum(d.studies[0].files_by_state.values()) == d.studies[0].files == 12

    def test_non_primary_sets_and_warnings_by_origin(self) -> None:
        d = _document(_rows()).details
        assert [(s.image_set_id, s.files, s.reconciliation_id) for s in d.non_primary] == [
            ("np".ljust(32, "b"), 6, f"recon-{DS}-{'np'.ljust(32, 'b')}")]
        assert d.non_primary[0].series_instance_uid == "1.2.1.1"
        assert {(w.origin, w.code, w.files) for w in d.warnings} == {
            (FindingOrigin.HIMIG, "empty_patient_id", 7), (FindingOrigin.HEALTHIMAGING, "InvalidOffsetTable", 7)}

    def test_a_file_counts_once_per_warning_code(self) -> None:
        row = LedgerEntry(key="k", state=FileState.IMPORTED_WITH_WARNINGS, findings=[
            _warn(FindingOrigin.HIMIG, "bad_date"), _warn(FindingOrigin.HIMIG, "bad_date")])
        aggregate = ReportAggregator(DS)
        aggregate.add(row, T0)
        assert [w.files for w in aggregate.details(T0, T0, None).warnings] == [1]


class TestDocument:
    @pytest.mark.parametrize("field,value", [("files_total", True), ("files_total", "3"), ("files_total", -1),
                                             ("files_by_state", {"exported": 1}), ("migration_id", 5)])
    def test_a_bad_value_is_refused_naming_the_field(self, field: str, value: Any) -> None:
        doc = json.loads(_document(_rows(studies=1)).model_dump_json())
        doc[field] = value
        with pytest.raises(ValidationError, match=field):
            ReportDocument.model_validate_json(json.dumps(doc))

    def test_a_bad_timeline_bucket_names_its_place(self) -> None:
        doc = json.loads(_document(_rows(studies=1)).model_dump_json())
        doc["details"]["timeline"][3]["bytes"] = 1.5
        with pytest.raises(ValidationError, match=r"details\.timeline\.3\.bytes"):
            ReportDocument.model_validate_json(json.dumps(doc))


class TestHtml:
    def test_every_value_is_escaped(self) -> None:
        lines = _rows(studies=1)
        row, at = lines[0]
        lines[0] = (row.model_copy(update={"study_instance_uid": HOSTILE, "reason": HOSTILE + "' onload='x",
                                           "key": '"><img src=x onerror=alert(1)>'}), at)
        doc = _document(lines).model_copy(update={"migration_id": "<b>mig</b>", "datastore_id": "\"'><i>"})
        page = render_html(doc)
        for raw in ("<script", "<img", "<b>mig", "<i>", "onload='x"):
            assert raw not in page
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page

    def test_nothing_is_fetched_when_viewed(self) -> None:
        page = render_html(_document(_rows()))
        assert "default-src 'none'" in page and "<script" not in page
        assert " src=" not in page and "url(" not in page and "@import" not in page

    @pytest.mark.parametrize("base", ["javascript:alert(1)//", "data:text/html,x", "", "file:///etc/passwd"])
    def test_image_set_links_only_to_an_http_dicomweb_base(self, base: str) -> None:
        doc = _document(_rows(studies=1))
        doc = doc.model_copy(update={"details": doc.details.model_copy(update={"dicomweb_url": base})})
        assert "<a " not in image_set_link(doc, "a" * 32, "1.2", "1.2.3")

    def test_an_image_set_links_to_its_instances_through_dicomweb(self) -> None:
        link = image_set_link(_document(_rows(studies=1)), "a" * 32, "1.2&3", "4")
        assert (f'href="http://127.0.0.1:8400/datastore/{DS}/studies/1.2%263/series/4/instances?imageSetId='
                f'{"a" * 32}"') in link

    def test_steps_that_did_not_run_say_so(self) -> None:
        page = render_html(_document(_rows()))
        assert "No dry run (himig plan) was recorded" in page and "No verification (himig verify) ran" in page

    def test_plan_and_verify_sections_when_they_exist(self) -> None:
        plan = PlanComparison(rows=[PlanRow(label="import jobs", planned=4, actual=5)])
        verify = VerifyResult(passed=False, counts={"checked": 10}, problems=[HOSTILE])
        page = render_html(_document(_rows(), plan=plan.model_dump(mode="json"), verify=verify.model_dump(mode="json")))
        assert "import jobs" in page and "Verification <b class=\"bad\">failed</b>" in page
        assert "No dry run" not in page and "&lt;script&gt;" in page

    def test_capped_tables_say_how_many_more(self) -> None:
        page = render_html(_document(_rows(studies=5), table_limit=2))
        assert "and 3 more studies" in page and "and 8 more series" in page


class TestCsv:
    def test_one_line_per_file_readable_by_a_csv_reader(self) -> None:
        rows = [row for row, _ in _rows()]
        text = "".join(csv_lines(rows))
        read = list(csv.DictReader(io.StringIO(text)))
        assert [r["key"] for r in read] == [r.key for r in rows]
        warned = next(r for r in read if r["state"] == "imported_with_warnings")
        assert warned["warnings"] == "himig:empty_patient_id; healthimaging:InvalidOffsetTable"

    def test_a_formula_is_never_a_formula_in_a_spreadsheet(self) -> None:
        rows = [LedgerEntry(key="=HYPERLINK(\"http://x\")", state=FileState.REJECTED, reason="+1", code="@SUM(A1)"),
                LedgerEntry(key="a,\"b\"\nc", state=FileState.FAILED, reason="-2", size=0)]
        read = list(csv.DictReader(io.StringIO("".join(csv_lines(rows)))))
        assert [(r["key"], r["reason"], r["code"]) for r in read] == [
            ("'=HYPERLINK(\"http://x\")", "'+1", "'@SUM(A1)"), ("a,\"b\"\nc", "'-2", "")]
        assert read[1]["size"] == "0"


def _colour_pixels(png: Path) -> dict[FileState, int]:
    with Image.open(png) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
    wanted = {tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)): s for s, c in STATE_COLORS.items()}
    found: dict[FileState, int] = {}
    for count, rgb in colours:
        if rgb in wanted:
            found[wanted[rgb]] = count
    return found


class TestInChromium:
    def test_the_page_renders_without_console_messages_and_shows_its_charts(self, tmp_path: Path) -> None:
        page = tmp_path / "report.html"
        page.write_text(render_html(_document(_rows(studies=8))), encoding="utf-8")
        shown = render(page, tmp_path / "report.png")
        assert shown.console == []
        # Every state is drawn in the charts (the stacked areas and bars fill thousands of pixels each).
        pixels = _colour_pixels(shown.screenshot)
        assert set(pixels) == set(FileState), pixels
        assert all(n > 2000 for n in pixels.values()), pixels

    def test_a_page_with_a_console_error_is_noticed(self, tmp_path: Path) -> None:
        # The check above can fail: a page that tries to run a script or fetch an image is reported.
        page = tmp_path / "bad.html"
        html = render_html(_document(_rows(studies=1)))
        page.write_text(html.replace("</body>", "<script>console.log(1)</script><img src='http://127.0.0.1:9/x'></body>"),
                        encoding="utf-8")
        shown = render(page, tmp_path / "bad.png", height=600)
        assert len(shown.console) == 2 and all("Content Security Policy" in m for m in shown.console), shown.console


class TestTimeline:
    def test_a_short_migration_has_buckets_of_at_least_a_second(self) -> None:
        aggregate = ReportAggregator(DS)
        for i in range(10):
            aggregate.add(LedgerEntry(key=str(i), state=FileState.IMPORTED, size=1), T0 + timedelta(seconds=i % 4))
        timeline = aggregate.timeline(T0)
        assert len(timeline) == 3 and [sum(b.files_by_state.values()) for b in timeline] == [3, 3, 4]

    def test_no_verdict_no_timeline(self) -> None:
        assert ReportAggregator(DS).timeline(T0) == []


class TestPlacement:
    def test_files_without_a_study_are_counted_and_said(self) -> None:
        lines = _rows(studies=1)
        lines.append((LedgerEntry(key="readme.txt", state=FileState.REJECTED, code="not_dicom", reason="not DICOM"), T0))
        doc = _document(lines)
        assert doc.details.unplaced_files == 1 and sum(s.files for s in doc.details.studies) == doc.files_total - 1
        assert "1 file in no study" in render_html(doc)

    def test_a_huge_hostile_uid_is_cut_on_the_page(self) -> None:
        lines = _rows(studies=1)
        row, at = lines[0]
        lines[0] = (row.model_copy(update={"study_instance_uid": "9" * 20_000}), at)
        page = render_html(_document(lines))
        assert "9" * 99 + "…" in page and "9" * 101 not in page


class TestTextSummary:
    def test_the_text_summary_names_the_warnings_by_origin(self) -> None:
        doc = _document(_rows())
        text = render_summary("mig-1", json.loads(doc.model_dump_json()))
        assert "  warnings of imported files: healthimaging: InvalidOffsetTable 7; himig: empty_patient_id 7\n" in text
