"""The S3 layout: the keys stay what the stages wrote before they asked `contracts.layout` for them."""

from __future__ import annotations

from contracts import layout
from contracts.s3uri import S3Location

WORK = "s3://work-b/w/"


class TestWorkPrefix:
    def test_report_inventory_and_fhir_folders(self) -> None:
        assert layout.inventory_prefix(WORK, "m").uri == "s3://work-b/w/m/inventory/"
        assert layout.fhir_prefix(WORK, "m").uri == "s3://work-b/w/m/fhir/"
        assert [loc.uri for loc in (layout.report_files(WORK, "m"), layout.report_document(WORK, "m"),
                                    layout.report_summary(WORK, "m"))] == [
            "s3://work-b/w/m/report/files.ndjson", "s3://work-b/w/m/report/report.json",
            "s3://work-b/w/m/report/summary.txt"]

    def test_batch_ledgers(self) -> None:
        assert layout.ledgers_of_batch(WORK, "m", 3).key == "w/m/ledger/batch-00003"
        assert layout.ledger_for_unfinished(WORK, "m", 3).key == "w/m/ledger/batch-00003-unfinished.ndjson"

    def test_import_index_of_one_migration(self) -> None:
        ds = "0" * 32
        own = layout.imported_index_of_migration(WORK, ds, "m")
        assert own.key == f"_himig-import-index/datastores/{ds}/imported/{layout.work_tag(WORK)}/m/"
        assert layout.imported_index(WORK, ds, "m", 1).key.startswith(own.key)
        assert layout.legacy_imported_index_prefix(WORK, ds).key == f"w/_datastores/{ds}/imported/"

    def test_the_import_index_belongs_to_the_data_store_not_the_work_prefix(self) -> None:
        ds = "0" * 32
        other = "s3://work-b/elsewhere/deeper/"
        assert layout.imported_index_prefix(WORK, ds) == layout.imported_index_prefix(other, ds)
        assert layout.imported_index_prefix(WORK, ds).uri == f"s3://work-b/_himig-import-index/datastores/{ds}/imported/"
        # The same migration id under two work prefixes is two migrations: neither is the other's "own".
        assert (layout.imported_index_of_migration(WORK, ds, "m").key
                != layout.imported_index_of_migration(other, ds, "m").key)
        assert layout.work_tag("s3://work-b/w") == layout.work_tag(WORK)
        # HIMIG_IMPORT_INDEX_S3_URI: one index for every work bucket.
        shared = "s3://index-b/idx"
        assert layout.imported_index_prefix(WORK, ds, shared).uri == f"s3://index-b/idx/datastores/{ds}/imported/"
        assert layout.imported_index_prefix("s3://other-b/x/", ds, shared) == layout.imported_index_prefix(WORK, ds, shared)

    def test_job_input_key_is_the_source_key_after_the_prefix(self) -> None:
        staging = layout.staging_prefix(WORK, "m", 2, 1)
        assert layout.job_input_key(staging.key, "src//odd/a.dcm") == "w/m/staging/batch-00002-p1/src//odd/a.dcm"
        assert layout.job_input_key("", "src/a.dcm") == "src/a.dcm"  # a job reading the source folder directly

    def test_import_output_batch_reads_back_import_output_prefix(self) -> None:
        out = layout.import_output_prefix(WORK, "mig-1", 7, 2)
        assert layout.import_output_batch(out.uri) == ("mig-1", 7)
        assert layout.import_output_batch(out.join("a" * 32 + "-DicomImport-" + "b" * 32).as_prefix().uri) == ("mig-1", 7)
        assert layout.import_output_batch("s3://work-b/w/mig-1/elsewhere/batch-00007/") is None

    def test_fhir_job_output_and_ingest_manifests(self) -> None:
        assert layout.fhir_job_output("s3://work-b/w/m/fhir-output/batch-00000", "ds", "j1").key == \
            "w/m/fhir-output/batch-00000/ds-FHIR_IMPORT-j1/"
        assert layout.ingest_manifest(WORK, "ing", 4).uri == "s3://work-b/w/ing/manifests/flush-00004.ndjson"
        assert layout.ingest_manifests_prefix(WORK, "ing").key == "w/ing/manifests/"


class TestLanding:
    def test_keys_append_to_the_landing_prefix_as_is(self) -> None:
        landing = S3Location("src-b", "landing/")
        assert layout.landed_instance(landing, "1.2", "1.2.3", "1.2.3.4").key == "landing/1.2/1.2.3/1.2.3.4.dcm"
        assert layout.landed_study(landing, "1.2").key == "landing/1.2/"
        assert layout.landed_object(landing, "dir//x.dcm").key == "landing/dir//x.dcm"
        assert layout.landed_object(S3Location("src-b", ""), "x.dcm").key == "x.dcm"
