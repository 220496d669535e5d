"""Batch planning, manifest classification and report accounting (pure functions)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from activities.instance_identity import Sameness
from activities.plan import (
    ImportedIndex,
    clean_folder,
    deduplicate,
    folder_counts,
    pack,
    predict_non_primary,
    skip_already_imported,
)
from activities.report import build_report
from activities.review import JobOutput, check_counters, classify_file
from contracts.common import FileState
from contracts.records import ImportedInstance, InstanceRecord, InventoryEntry, LedgerEntry


def inst(key: str, study: str = "1.1", series: str = "1.1.1", sop: str | None = None, size: int = 10,
         content: str = "c", patient: str = "p") -> InstanceRecord:
    return InstanceRecord(key=key, size=size, etag=content, sop_instance_uid=sop or key, study_instance_uid=study,
                          series_instance_uid=series, transfer_syntax_uid="1.2.840.10008.1.2.1", sop_class_uid="1.2",
                          patient_fingerprint=patient, study_fingerprint="s", series_fingerprint="se",
                          content_id=f"{size}:{content}")


def never_called(first: InstanceRecord, other: InstanceRecord) -> Sameness:
    raise AssertionError("identical bytes need no comparison")


class TestDeduplicate:
    def test_identical_copy_is_skipped_and_points_at_the_original(self) -> None:
        kept, ledger = deduplicate([inst("b", sop="1"), inst("a", sop="1")], never_called)
        assert [k.key for k in kept] == ["a"]
        assert ledger[0].key == "b" and ledger[0].state is FileState.SKIPPED_DUPLICATE and ledger[0].duplicate_of == "a"

    def test_other_bytes_are_judged_against_the_first_by_key(self) -> None:
        seen: list[tuple[str, str]] = []

        def judge(first: InstanceRecord, other: InstanceRecord) -> Sameness:
            seen.append((first.key, other.key))
            return {"b": Sameness(True, other_encoding="transfer syntax 1.2.840.10008.1.2.1 and 1.2.840.10008.1.2.2"),
                    "c": Sameness(False, ("SeriesDescription", "PixelData")),
                    "d": Sameness(False, why="one of the files cannot be read whole as DICOM")}[other.key]

        files = [inst(k, sop="1", content=k) for k in ("d", "c", "b", "a")]
        kept, ledger = deduplicate(files, judge)
        assert [k.key for k in kept] == ["a"] and seen == [("a", "b"), ("a", "c"), ("a", "d")]
        same, conflict, unproven = ledger
        assert (same.state, same.code, same.duplicate_of) == (FileState.SKIPPED_DUPLICATE, "duplicate_sop_instance", "a")
        assert (same.reason or "").startswith("same instance, other encoding (transfer syntax")
        assert (conflict.state, conflict.code) == (FileState.REJECTED, "conflicting_duplicate_sop_instance")
        assert conflict.differing_attributes == ["SeriesDescription", "PixelData"]
        assert "differs in SeriesDescription, PixelData" in (conflict.reason or "")
        assert unproven.state is FileState.REJECTED and unproven.differing_attributes is None
        assert "could not be proven the same (one of the files cannot be read whole" in (unproven.reason or "")


class TestPack:
    def test_studies_stay_whole_when_they_fit(self) -> None:
        files = [inst(f"s{s}-{i}", study=f"1.{s}") for s in range(3) for i in range(3)]
        batches = pack(files, max_files=6, max_bytes=10_000)
        for batch in batches:
            assert len(batch) <= 6
        studies_per_batch = [{f.study_instance_uid for f in b} for b in batches]
        for study in ("1.0", "1.1", "1.2"):
            assert sum(study in s for s in studies_per_batch) == 1
        assert sum(len(b) for b in batches) == 9

    def test_large_study_is_split_within_limits(self) -> None:
        files = [inst(f"f{i}", size=100) for i in range(10)]
        batches = pack(files, max_files=4, max_bytes=250)
        assert all(len(b) <= 4 and sum(f.size for f in b) <= 250 for b in batches)
        assert sorted(f.key for b in batches for f in b) == sorted(f.key for f in files)

    def test_predicts_non_primary_from_conflicting_patient(self) -> None:
        files = [inst("a", patient="p1"), inst("b", patient="p2"), inst("c", patient="p1")]
        assert predict_non_primary(files) == 1
        assert [f.predicted_non_primary for f in files] == [False, True, False]
        assert "earlier file of this series in this source" in (files[1].prediction_reason or "")


def held(sop: str, content: str = "10:c", patient: str = "p", image_set: str = "is1", primary: bool = True,
         series: str = "1.1.1") -> ImportedInstance:
    return ImportedInstance(sop_instance_uid=sop, content_id=content, image_set_id=image_set, is_primary=primary,
                            study_instance_uid="1.1", series_instance_uid=series,
                            attributes_fingerprint=f"{patient}/s/se", migration_id="mig-earlier", batch=0)


class TestAgainstTheDataStore:
    def test_same_content_is_skipped_and_names_the_earlier_migration(self) -> None:
        index = ImportedIndex(instances={"1": held("1")})
        kept, ledger = skip_already_imported([inst("a", sop="1"), inst("b", sop="2")], index)
        assert [k.key for k in kept] == ["b"]
        (entry,) = ledger
        assert (entry.state, entry.code, entry.duplicate_of, entry.image_set_id) == (
            FileState.SKIPPED_DUPLICATE, "already_imported", "mig-earlier", "is1")
        assert "mig-earlier" in (entry.reason or "")

    def test_other_content_under_an_imported_uid_is_rejected(self) -> None:
        index = ImportedIndex(instances={"1": held("1", content="10:old")})
        kept, ledger = skip_already_imported([inst("a", sop="1")], index)
        assert kept == [] and ledger[0].state is FileState.REJECTED
        assert ledger[0].code == "conflicting_already_imported" and "different content" in (ledger[0].reason or "")

    def test_an_index_conflict_says_what_the_fingerprints_tell(self) -> None:
        def reason(line_fp: str | None, file_fp: str) -> str:
            line = held("1", content="10:old").model_copy(update={"dataset_fingerprint": line_fp})
            _, ledger = skip_already_imported([inst("a", sop="1").model_copy(update={"dataset_fingerprint": file_fp})],
                                              ImportedIndex(instances={"1": line}))
            assert ledger[0].code == "conflicting_already_imported"
            return ledger[0].reason or ""

        assert "predates header fingerprints" in reason(None, "f1")  # an index line written before #15
        assert "other header elements" in reason("f0", "f1")
        assert "same header elements but other bytes" in reason("f1", "f1")

    def test_other_bytes_are_compared_with_the_imported_file_when_the_line_says_where(self) -> None:
        line = held("1", content="10:old").model_copy(update={"source_uri": "s3://earlier/x.dcm", "size": 10})
        verdicts = {"a": Sameness(True, other_encoding="transfer syntax 1.2.840.10008.1.2.1 and 1.2.840.10008.1.2.2"),
                    "b": Sameness(False, ("StudyDescription",)),
                    "c": Sameness(False, why="a file changed or disappeared since it was listed")}
        asked: list[tuple[str, str]] = []

        def judge(hit: ImportedInstance, inst: InstanceRecord) -> Sameness:
            asked.append((hit.source_uri or "", inst.key))
            return verdicts[inst.key]

        rows = {}
        for key in verdicts:
            _, (rows[key],) = skip_already_imported([inst(key, sop="1")], ImportedIndex(instances={"1": line}), judge)
        assert asked == [("s3://earlier/x.dcm", k) for k in verdicts]
        assert (rows["a"].state, rows["a"].code, rows["a"].image_set_id) == (FileState.SKIPPED_DUPLICATE,
                                                                             "already_imported", "is1")
        assert "as the same instance in another encoding (transfer syntax" in (rows["a"].reason or "")
        assert rows["b"].differing_attributes == ["StudyDescription"] and "differs in StudyDescription" in (
            rows["b"].reason or "")
        assert rows["c"].state is FileState.REJECTED and "not proven the same: a file changed" in (rows["c"].reason or "")
        # A line without a source location (written before #15) is never compared, and equal bytes never need it.
        old = held("1", content="10:old")
        _, (row,) = skip_already_imported([inst("a", sop="1")], ImportedIndex(instances={"1": old}), judge)
        same = held("1", content="10:c").model_copy(update={"source_uri": "s3://earlier/x.dcm"})
        skip_already_imported([inst("a", sop="1")], ImportedIndex(instances={"1": same}), judge)
        assert row.code == "conflicting_already_imported" and len(asked) == 3

    @pytest.mark.parametrize(("field", "value", "reason"), [
        ("source_uri", "/tmp/x.dcm", "source_uri"), ("source_uri", "s3://bucket/", "names a bucket, not an object"),
        ("source_uri", "s3://b/" + "k" * 1100, "longer than 1024"), ("size", -1, "greater than or equal to 0"),
        ("header_bytes", True, "valid integer"), ("size", "12", "valid integer")])
    def test_a_hostile_index_line_is_refused_naming_the_field(self, field: str, value: object, reason: str) -> None:
        row = {**held("1").model_dump(), field: value}
        with pytest.raises(ValidationError, match=reason) as caught:
            ImportedInstance.model_validate(row)  # as planning reads each line
        assert field in str(caught.value)

    def test_index_lines_written_before_fingerprints_still_read(self) -> None:
        old = {"sop_instance_uid": "1", "content_id": "10:c", "image_set_id": "is1", "is_primary": True,
               "study_instance_uid": "1.1", "series_instance_uid": "1.1.1", "attributes_fingerprint": "p/s/se",
               "migration_id": "m0", "batch": 0}
        line = ImportedInstance.model_validate(old)
        assert line.dataset_fingerprint is None
        kept, ledger = skip_already_imported([inst("a", sop="1")], ImportedIndex(instances={"1": line}))
        assert kept == [] and ledger[0].code == "already_imported"

    def test_a_series_held_with_other_attributes_predicts_every_file_non_primary(self) -> None:
        files = [inst("a", patient="p2"), inst("b", patient="p2"), inst("c", series="1.1.9", patient="p2")]
        assert predict_non_primary(files, {("1.1", "1.1.1"): held("x", patient="p1")}) == 2
        assert [f.predicted_non_primary for f in files] == [True, True, False]
        assert "data store already holds this series" in (files[0].prediction_reason or "")
        assert "p1" not in (files[0].prediction_reason or "") and "p2" not in (files[0].prediction_reason or "")

    def test_a_series_held_with_the_same_attributes_predicts_nothing(self) -> None:
        files = [inst("a", patient="p1")]
        assert predict_non_primary(files, {("1.1", "1.1.1"): held("x", patient="p1")}) == 0


class TestPredictionReport:
    def test_prediction_is_confirmed_or_not_in_the_summary(self) -> None:
        inv = [InventoryEntry(key=k, size=1) for k in ("a", "b", "c", "d")]
        ledger = [
            LedgerEntry(key="a", state=FileState.IMPORTED, image_set_id="p", is_primary=True),
            LedgerEntry(key="b", state=FileState.IMPORTED, image_set_id="n", is_primary=False,
                        predicted_non_primary=True, prediction_reason="r"),
            LedgerEntry(key="c", state=FileState.IMPORTED, image_set_id="n2", is_primary=False),
            LedgerEntry(key="d", state=FileState.SKIPPED_DUPLICATE, code="already_imported", duplicate_of="a",
                        image_set_id="old", is_primary=True),
        ]
        rows, summary = build_report(inv, ledger)
        assert (summary["predicted_non_primary"], summary["predicted_non_primary_confirmed"],
                summary["non_primary_not_predicted"], summary["already_imported"]) == (1, 1, 1, 1)
        # An earlier migration's image set is not counted as this migration's, and "d" is not resolved against
        # a source key that happens to equal the migration id.
        assert summary["image_sets"] == 3
        assert next(r for r in rows if r.key == "d").state is FileState.SKIPPED_DUPLICATE


class TestClassifyFile:
    def test_failure_line_wins_and_keeps_the_service_reason(self) -> None:
        out = JobOutput(summary={}, failure={"k": {"inputFile": "k", "exception": {
            "exceptionType": "ValidationException", "message": "DICOM attribute TransferSyntaxUID does not exist"}}})
        entry = classify_file("k", out, False, None)
        assert entry.state is FileState.FAILED and entry.code == "ValidationException"
        assert "TransferSyntaxUID" in (entry.reason or "")

    def test_unmentioned_file_is_failed_not_lost(self) -> None:
        entry = classify_file("k", JobOutput(summary={}), True, "boom")
        assert entry.state is FileState.FAILED and "boom" in (entry.reason or "")

    def test_warning_line_is_imported_with_warnings(self) -> None:
        out = JobOutput(summary={}, warning={"k": {"importResponse": {"imageSetId": "i" * 32, "isPrimary": True,
                        "warnings": [{"warning_reason_code": 45330, "type": "InvalidOffsetTable", "message": "m"}]}}})
        entry = classify_file("k", out, False, None)
        assert entry.state is FileState.IMPORTED_WITH_WARNINGS and "45330" in (entry.reason or "")

    def test_counter_mismatch_is_reported(self) -> None:
        out = JobOutput(summary={"numberOfScannedFiles": 3, "numberOfImportedFiles": 2,
                                 "numberOfFilesWithCustomerError": 0, "numberOfFilesWithServerError": 0},
                        success={"a": {}, "b": {}})
        assert check_counters(out.summary, 2, out) == ["manifest numberOfScannedFiles=3 but 2 observed"]


class TestBuildReport:
    def test_every_inventory_file_exactly_once(self) -> None:
        inventory = [InventoryEntry(key=k, size=1) for k in ("a", "b", "c")]
        ledger = [LedgerEntry(key="a", state=FileState.IMPORTED, image_set_id="x", is_primary=True),
                  LedgerEntry(key="b", state=FileState.REJECTED, reason="bad")]
        rows, summary = build_report(inventory, ledger)
        assert [r.key for r in rows] == ["a", "b", "c"]
        assert rows[2].state is FileState.FAILED and rows[2].code == "Unaccounted"
        assert summary["unaccounted"] == 1 and summary["files_by_state"]["imported"] == 1

    def test_double_verdict_is_counted(self) -> None:
        inventory = [InventoryEntry(key="a", size=1)]
        ledger = [LedgerEntry(key="a", state=FileState.IMPORTED), LedgerEntry(key="a", state=FileState.FAILED)]
        _, summary = build_report(inventory, ledger)
        assert summary["accounted_twice"] == 1


class TestCleanFolder:
    def test_counts_every_ancestor_folder(self) -> None:
        counts = folder_counts(["s/a/1.dcm", "s/a/2.dcm", "s/b/c/3.dcm", "top.dcm"])
        assert counts == {"s/": 3, "s/a/": 2, "s/b/": 1, "s/b/c/": 1}

    def test_only_a_folder_holding_exactly_the_batch_is_clean(self) -> None:
        counts = folder_counts(["s/a/1.dcm", "s/a/2.dcm", "s/b/1.dcm", "s/b/bad.txt"])
        assert clean_folder(["s/a/1.dcm", "s/a/2.dcm"], counts, "s/") == "s/a/"
        assert clean_folder(["s/b/1.dcm"], counts, "s/") is None  # bad.txt would be imported too
        assert clean_folder(["s/a/1.dcm"], counts, "s/") is None  # half a folder
        assert clean_folder(["s/a/1.dcm", "s/a/2.dcm"], counts, "other/") is None
        assert clean_folder(["x.dcm"], folder_counts(["x.dcm"]), "") is None  # never a whole bucket


class TestDuplicateOfAFailedOriginal:
    def test_copy_shares_the_fate_of_an_original_that_was_not_imported(self) -> None:
        inventory = [InventoryEntry(key=k, size=1) for k in ("a", "b", "c", "d")]
        ledger = [LedgerEntry(key="a", state=FileState.FAILED, reason="InternalServerException: boom"),
                  LedgerEntry(key="b", state=FileState.SKIPPED_DUPLICATE, duplicate_of="a"),
                  LedgerEntry(key="c", state=FileState.IMPORTED),
                  LedgerEntry(key="d", state=FileState.SKIPPED_DUPLICATE, duplicate_of="c")]
        rows, summary = build_report(inventory, ledger)
        by_key = {r.key: r for r in rows}
        assert by_key["b"].state is FileState.FAILED and by_key["b"].code == "DuplicateOfNotImported"
        assert "boom" in (by_key["b"].reason or "")
        assert by_key["d"].state is FileState.SKIPPED_DUPLICATE
        assert summary["files_by_state"]["failed"] == 2
