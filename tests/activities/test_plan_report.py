"""The plan's own logic apart from the stages it reuses: the import schedule of the estimate, the attribute names
of predicted non-primary series, the staleness check against a real (moto) S3, the refusals of an unusable plan,
and the per-file agreement rule of plan against actual."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from activities.dicom_header import PATIENT_ATTRS, SERIES_ATTRS, STUDY_ATTRS
from activities.plan_adopt import PlanUnusable, check_plan, mismatch, read_plan, source_changes
from activities.plan_compare import compare, open_comparison
from activities.plan_report import EstimateRates, PlannedBatch, import_seconds, non_primary_series
from activities.storage import put_ndjson
from contracts import layout
from contracts.common import FileState
from contracts.migration import MigrationInput
from contracts.plan import (
    AdoptInput,
    BatchSummary,
    PlanDocument,
    PlanEstimate,
    PredictedFile,
    PredictedOutcome,
    agrees,
)
from contracts.records import InstanceRecord, InventoryEntry, LedgerEntry
from tests.conftest import make_s3

RATES = EstimateRates(import_files_per_second=10.0, staging_copies_per_second=20.0, job_overhead_seconds=5.0,
                      job_slots_cap=100, start_tps=1.0)


class TestImportSchedule:
    def test_one_slot_runs_jobs_back_to_back(self) -> None:
        batches = [PlannedBatch(files=100, bytes=1, staged=False)] * 3  # 10 s of files + 5 s overhead each
        assert import_seconds(batches, 1, 1.0, RATES) == pytest.approx(45.0)

    def test_slots_overlap_jobs_but_starts_are_paced(self) -> None:
        batches = [PlannedBatch(files=100, bytes=1, staged=False)] * 3
        # Three slots: starts at 0, 2, 4 (one every 2 s); the last ends at 4 + 15.
        assert import_seconds(batches, 3, 2.0, RATES) == pytest.approx(19.0)

    def test_a_staged_batch_also_waits_for_its_copies(self) -> None:
        staged = import_seconds([PlannedBatch(files=100, bytes=1, staged=True)], 1, 1.0, RATES)
        direct = import_seconds([PlannedBatch(files=100, bytes=1, staged=False)], 1, 1.0, RATES)
        assert staged - direct == pytest.approx(100 / 20.0)

    def test_no_batches_take_no_time(self) -> None:
        assert import_seconds([], 4, 1.0, RATES) == 0.0


def _rec(key: str, series: str = "1.2.3", patient: str = "p", study_fp: str = "s", series_fp: str = "x",
         predicted: bool = False, reason: str | None = None) -> InstanceRecord:
    return InstanceRecord(key=key, size=1, etag="e", sop_instance_uid=f"9.{key}", study_instance_uid="1.2",
                          series_instance_uid=series, transfer_syntax_uid="1.2.840.10008.1.2.1", sop_class_uid="1",
                          patient_fingerprint=patient, study_fingerprint=study_fp, series_fingerprint=series_fp,
                          content_id=key, predicted_non_primary=predicted, prediction_reason=reason)


class TestNonPrimarySeries:
    def test_names_the_groups_that_differ_from_the_first_file(self) -> None:
        records = [_rec("a"), _rec("b", patient="q", predicted=True), _rec("c", series_fp="y", predicted=True)]
        (series,) = non_primary_series(records)
        assert series.files == 2 and series.against == "this source"
        assert series.attributes == [*PATIENT_ATTRS, *SERIES_ATTRS]
        assert not set(STUDY_ATTRS) & set(series.attributes)

    def test_a_series_the_data_store_holds_names_no_attributes(self) -> None:
        held = "the data store already holds this series (image set x, migration m) with other attributes"
        (series,) = non_primary_series([_rec("a", predicted=True, reason=held)])
        assert (series.against, series.attributes) == ("the data store", [])

    def test_series_without_predictions_are_left_out(self) -> None:
        assert non_primary_series([_rec("a"), _rec("b", series="7.7")]) == []


class TestAgreement:
    @pytest.mark.parametrize("state,code,ok", [
        (FileState.IMPORTED, None, True), (FileState.IMPORTED_WITH_WARNINGS, None, True),
        (FileState.FAILED, "InvalidPixelData", True),  # the import job's verdict: a plan cannot know it
        (FileState.FAILED, "Cancelled", False), (FileState.FAILED, "SourceChanged", False),
        (FileState.REJECTED, "missing_sop_instance_uid", False), (FileState.SKIPPED_DUPLICATE, None, False)])
    def test_import(self, state: FileState, code: str | None, ok: bool) -> None:
        assert agrees(PredictedFile(key="k", outcome=PredictedOutcome.IMPORT), state, code) is ok

    def test_a_rejection_agrees_only_with_its_own_code(self) -> None:
        guess = PredictedFile(key="k", outcome=PredictedOutcome.REJECTED, code="not_dicom")
        assert agrees(guess, FileState.REJECTED, "not_dicom")
        assert not agrees(guess, FileState.REJECTED, "truncated")
        assert not agrees(guess, FileState.IMPORTED, None)


# ---- against S3

@pytest.fixture
def s3(moto_url: str) -> Any:
    return make_s3(moto_url)


@pytest.fixture
def plan(s3: Any) -> tuple[PlanDocument, str]:
    """A finished plan of three source objects (plan.json and its inventory page, as write_plan leaves them)."""
    suffix = uuid.uuid4().hex[:8]
    src, work = f"src-{suffix}", f"work-{suffix}"
    for bucket in (src, work):
        s3.create_bucket(Bucket=bucket)
    entries = []
    for name in ("a.dcm", "b.dcm", "c.dcm"):
        s3.put_object(Bucket=src, Key=f"in/{name}", Body=name.encode() * 10)
        head = s3.head_object(Bucket=src, Key=f"in/{name}")
        entries.append(InventoryEntry(key=f"in/{name}", size=head["ContentLength"], etag=head["ETag"].strip('"')))
    migration = MigrationInput(source_s3_uri=f"s3://{src}/in/", datastore_id="a" * 32, work_s3_uri=f"s3://{work}/w/")
    put_ndjson(s3, layout.inventory_page(migration.work_s3_uri, "plan-1", 0), entries)
    doc = PlanDocument(
        plan_id="plan-1", migration=migration, inventory_pages=1, files=3, bytes=1, planned_at=datetime.now(UTC),
        source_failures=0, rejected_files=0, rejected_by_code={}, duplicates_in_source=0,
        conflicting_duplicates_in_source=0, already_imported=0, conflicting_already_imported=0,
        predicted_non_primary_files=0, predicted_non_primary_series_total=0, predicted_non_primary_series=[],
        batches=BatchSummary(batches=1, import_jobs=1, direct_batches=1, files_to_import=3, bytes_to_import=1,
                             staged_files=0, largest_batch_files=3, largest_batch_bytes=1),
        s3_requests={}, estimate=PlanEstimate(
            receive_seconds=1, parse_seconds=1, plan_seconds=1, import_seconds=1, total_seconds=4,
            total_from_plan_seconds=2, job_slots=1, start_interval_seconds=1, import_files_per_second=1,
            staging_copies_per_second=1, job_overhead_seconds=1),
        predicted_by_outcome={PredictedOutcome.IMPORT: 3}, files_uri="s3://x/y")
    loc = layout.plan_document(migration.work_s3_uri, "plan-1")
    s3.put_object(Bucket=loc.bucket, Key=loc.key, Body=doc.model_dump_json().encode())
    return doc, src


class TestStaleness:
    def test_an_unchanged_source_is_not_stale(self, s3: Any, plan: tuple[PlanDocument, str]) -> None:
        doc, _ = plan
        assert not source_changes(s3, doc, doc.migration.work_s3_uri)

    def test_added_removed_and_rewritten_objects_are_counted(self, s3: Any, plan: tuple[PlanDocument, str]) -> None:
        doc, src = plan
        s3.delete_object(Bucket=src, Key="in/a.dcm")
        s3.put_object(Bucket=src, Key="in/b.dcm", Body=b"rewritten")
        s3.put_object(Bucket=src, Key="in/d.dcm", Body=b"new")
        s3.put_object(Bucket=src, Key="in/sub/", Body=b"")  # a folder placeholder is not a file
        changes = source_changes(s3, doc, doc.migration.work_s3_uri)
        assert (changes.added, changes.removed, changes.changed) == (1, 1, 1)

    def test_a_manifest_plan_ignores_objects_beside_its_list(self, s3: Any, plan: tuple[PlanDocument, str]) -> None:
        doc, src = plan
        manifest = doc.model_copy(update={"migration": doc.migration.model_copy(
            update={"source_manifest_uri": f"s3://{src}/in/list.ndjson"})})
        s3.put_object(Bucket=src, Key="in/d.dcm", Body=b"new")
        assert not source_changes(s3, manifest, doc.migration.work_s3_uri)

    def test_check_plan_refuses_a_stale_plan_naming_counts_never_keys(self, s3: Any,
                                                                    plan: tuple[PlanDocument, str]) -> None:
        doc, src = plan
        s3.put_object(Bucket=src, Key="in/SYNTH^PATIENT.dcm", Body=b"new")
        m = doc.migration
        with pytest.raises(PlanUnusable, match=r"is stale.*1 added, 0 removed, 0 changed") as refused:
            check_plan(s3, AdoptInput(migration_id="mig-1", plan_id="plan-1", source_s3_uri=m.source_s3_uri,
                                      work_s3_uri=m.work_s3_uri, datastore_id=m.datastore_id,
                                      validation_level=m.validation_level))
        assert refused.value.stale and "SYNTH" not in str(refused.value)


class TestUnusablePlans:
    def test_no_plan_json(self, s3: Any, plan: tuple[PlanDocument, str]) -> None:
        doc, _ = plan
        with pytest.raises(PlanUnusable, match=r"'plan-2' has no plan\.json"):
            read_plan(s3, doc.migration.work_s3_uri, "plan-2")

    def test_a_damaged_plan_json_names_the_field(self, s3: Any, plan: tuple[PlanDocument, str]) -> None:
        doc, _ = plan
        loc = layout.plan_document(doc.migration.work_s3_uri, "plan-1")
        s3.put_object(Bucket=loc.bucket, Key=loc.key, Body=b'{"plan_id": 5}')
        with pytest.raises(PlanUnusable, match="plan_id"):
            read_plan(s3, doc.migration.work_s3_uri, "plan-1")

    @pytest.mark.parametrize("what,change", [
        ("data store", {"datastore_id": "b" * 32}), ("source", {"source_s3_uri": "s3://elsewhere/in/"}),
        ("validation level", {"validation_level": "strict"}),
        ("source manifest", {"source_manifest_uri": "s3://x/in/m.ndjson"})])
    def test_another_migration_is_refused(self, plan: tuple[PlanDocument, str], what: str,
                                          change: dict[str, str]) -> None:
        doc, _ = plan
        m = doc.migration.model_dump() | change
        why = mismatch(doc, m["source_s3_uri"], m["datastore_id"], str(m["validation_level"]),
                       m["source_manifest_uri"])
        assert why is not None and f"was made for {what}" in why

    def test_a_source_uri_without_its_trailing_slash_is_the_same_source(self, plan: tuple[PlanDocument, str]) -> None:
        doc, _ = plan
        m = doc.migration
        assert mismatch(doc, m.source_s3_uri.rstrip("/"), m.datastore_id, m.validation_level.value, None) is None

    def test_its_own_id(self, s3: Any, plan: tuple[PlanDocument, str]) -> None:
        doc, _ = plan
        m = doc.migration
        with pytest.raises(PlanUnusable, match="this migration's own id"):
            check_plan(s3, AdoptInput(migration_id="plan-1", plan_id="plan-1", source_s3_uri=m.source_s3_uri,
                                      work_s3_uri=m.work_s3_uri, datastore_id=m.datastore_id,
                                      validation_level=m.validation_level))


class TestComparison:
    def test_rows_name_each_figure_and_list_what_differs(self, plan: tuple[PlanDocument, str]) -> None:
        doc, _ = plan
        predictions = {k: PredictedFile(key=k, outcome=o, code=c) for k, o, c in (
            ("a", PredictedOutcome.IMPORT, None), ("b", PredictedOutcome.REJECTED, "not_dicom"),
            ("c", PredictedOutcome.IMPORT, None))}
        rows = [LedgerEntry(key="a", state=FileState.IMPORTED, batch=0, is_primary=True),
                LedgerEntry(key="b", state=FileState.REJECTED, code="truncated"),
                LedgerEntry(key="c", state=FileState.FAILED, code="InvalidDICOM", batch=0)]
        comparison, differ = compare(doc, predictions, rows, jobs=1, seconds=12.5)
        assert differ == [{"key": "b", "predicted": "rejected", "predicted_code": "not_dicom", "state": "rejected",
                           "code": "truncated"}]
        by = {r.label: (r.planned, r.actual) for r in comparison.rows}
        assert by["files with the predicted outcome"] == (3.0, 2.0)
        assert by["files sent to import jobs"] == (3.0, 2.0)
        assert by["failed by the import"] == (None, 1.0)  # nothing a plan can predict
        assert by["wall time, seconds (estimate for a migration from the plan)"] == (2.0, 12.5)

    def test_a_migration_without_a_plan_gets_no_comparison(self, s3: Any, plan: tuple[PlanDocument, str]) -> None:
        doc, _ = plan
        assert open_comparison(s3, doc.migration.work_s3_uri, "mig-x") is None

    def test_a_damaged_plan_copy_leaves_the_report_alone(self, s3: Any, plan: tuple[PlanDocument, str]) -> None:
        doc, _ = plan
        loc = layout.plan_document(doc.migration.work_s3_uri, "mig-y")
        s3.put_object(Bucket=loc.bucket, Key=loc.key, Body=b'{"plan_id": []}')
        assert open_comparison(s3, doc.migration.work_s3_uri, "mig-y") is None
