"""Where the pipeline keeps its per-file data in S3, under ``<work_s3_uri>/<migration_id>/``, and where each
data store's import index lives.

One function per artefact so activities, the report and tests agree on the layout.
"""

from __future__ import annotations

import hashlib
import re

from contracts.s3uri import S3Location, parse_s3_uri

# ``.../<migration id>/import-output/batch-00003[-p1]/[<ds>-DicomImport-<job>/]`` (requested or resolved URI).
_IMPORT_OUTPUT = re.compile(
    r"/(?P<migration>[A-Za-z0-9][A-Za-z0-9._-]{0,99})/import-output/batch-(?P<batch>\d{5})(?:-p\d+)?/")


def root(work_s3_uri: str, migration_id: str) -> S3Location:
    return parse_s3_uri(work_s3_uri, field="work_s3_uri").join(migration_id)


# The import index: what each data store already holds, one NDJSON per imported batch. It belongs to the data
# store, not to a migration's work prefix, so a re-run under another work prefix still finds it: it lives under
# HIMIG_IMPORT_INDEX_S3_URI, or else at the root of the work bucket (``_`` never starts a migration id, so the
# root folder cannot collide with a migration's own). Each batch's file sits under a tag of the work prefix and
# the migration id, so "this migration's own earlier batches" (a re-run of the same id and work prefix) stay
# tellable from other migrations'.
IMPORT_INDEX_FOLDER = "_himig-import-index"


def import_index_root(work_s3_uri: str, index_s3_uri: str | None = None) -> S3Location:
    if index_s3_uri:
        return parse_s3_uri(index_s3_uri, field="import_index_s3_uri").as_prefix()
    return S3Location(parse_s3_uri(work_s3_uri, field="work_s3_uri").bucket, f"{IMPORT_INDEX_FOLDER}/")


def work_tag(work_s3_uri: str) -> str:
    """16 hex characters naming a work prefix (``s3://b/w`` and ``s3://b/w/`` are one prefix)."""
    return hashlib.sha256(parse_s3_uri(work_s3_uri, field="work_s3_uri").as_prefix().uri.encode()).hexdigest()[:16]


def imported_index_prefix(work_s3_uri: str, datastore_id: str, index_s3_uri: str | None = None) -> S3Location:
    """Everything any migration imported into one data store (``<root>/datastores/<ds>/imported/``)."""
    return import_index_root(work_s3_uri, index_s3_uri).join("datastores", datastore_id, "imported").as_prefix()


def imported_index_of_migration(work_s3_uri: str, datastore_id: str, migration_id: str,
                                index_s3_uri: str | None = None) -> S3Location:
    """The part of a data store's import index one migration wrote (``.../imported/<work tag>/<id>/``)."""
    return imported_index_prefix(work_s3_uri, datastore_id, index_s3_uri).join(
        work_tag(work_s3_uri), migration_id).as_prefix()


def imported_index(work_s3_uri: str, datastore_id: str, migration_id: str, batch: int,
                   part: int | None = None, index_s3_uri: str | None = None) -> S3Location:
    """``.../imported/<work tag>/<migration>/<batch>.ndjson``: one line per instance a batch imported."""
    return imported_index_of_migration(work_s3_uri, datastore_id, migration_id, index_s3_uri).join(
        f"{batch_name(batch, part)}.ndjson")


def failed_index_prefix(work_s3_uri: str, datastore_id: str, index_s3_uri: str | None = None) -> S3Location:
    """Files whose import into one data store the service failed for a reason that would fail again
    (``<root>/datastores/<ds>/failed/``): a plain re-run does not send them unchanged (activities/failed_before.py)."""
    return import_index_root(work_s3_uri, index_s3_uri).join("datastores", datastore_id, "failed").as_prefix()


def failed_index_of_migration(work_s3_uri: str, datastore_id: str, migration_id: str,
                              index_s3_uri: str | None = None) -> S3Location:
    return failed_index_prefix(work_s3_uri, datastore_id, index_s3_uri).join(
        work_tag(work_s3_uri), migration_id).as_prefix()


def failed_index(work_s3_uri: str, datastore_id: str, migration_id: str, batch: int,
                 part: int | None = None, index_s3_uri: str | None = None) -> S3Location:
    """``.../failed/<work tag>/<migration>/<batch>.ndjson``: one line per file a batch's import failed."""
    return failed_index_of_migration(work_s3_uri, datastore_id, migration_id, index_s3_uri).join(
        f"{batch_name(batch, part)}.ndjson")


def legacy_imported_index_prefix(work_s3_uri: str, datastore_id: str) -> S3Location:
    """Where the import index lived before it belonged to the data store: ``<work>/_datastores/<ds>/imported/``
    (then ``<migration>/<batch>.ndjson``). Still read, and moved to `imported_index_prefix` by planning."""
    return parse_s3_uri(work_s3_uri, field="work_s3_uri").join("_datastores", datastore_id, "imported").as_prefix()


def inventory_page(work_s3_uri: str, migration_id: str, page: int) -> S3Location:
    return root(work_s3_uri, migration_id).join("inventory", f"page-{page:06d}.ndjson")


def inventory_prefix(work_s3_uri: str, migration_id: str) -> S3Location:
    return root(work_s3_uri, migration_id).join("inventory").as_prefix()


def receive_failures_prefix(work_s3_uri: str, migration_id: str) -> S3Location:
    """What a source connector enumerated but could not pull: one NDJSON of failed ledger lines per unit."""
    return root(work_s3_uri, migration_id).join("receive", "failures").as_prefix()


def receive_failures(work_s3_uri: str, migration_id: str, unit: int) -> S3Location:
    return receive_failures_prefix(work_s3_uri, migration_id).join(f"unit-{unit:06d}.ndjson")


def parsed_page(work_s3_uri: str, migration_id: str, page: int) -> S3Location:
    return root(work_s3_uri, migration_id).join("parsed", f"page-{page:06d}.ndjson")


def parsed_checkpoint(work_s3_uri: str, migration_id: str, page: int, chunk: int) -> S3Location:
    """Records of one finished chunk of a page being parsed (what a retried parse reads back)."""
    return root(work_s3_uri, migration_id).join("parsed", "checkpoints", f"page-{page:06d}-{chunk:04d}.ndjson")


def validated_page(work_s3_uri: str, migration_id: str, page: int) -> S3Location:
    return root(work_s3_uri, migration_id).join("validated", f"page-{page:06d}.ndjson")


def normalized_page(work_s3_uri: str, migration_id: str, page: int) -> S3Location:
    return root(work_s3_uri, migration_id).join("normalized", f"page-{page:06d}.ndjson")


def batch_name(batch: int, part: int | None = None) -> str:
    """``batch-00003``, or ``batch-00003-p1`` for a half of a batch retried after its job FAILED."""
    return f"batch-{batch:05d}" + (f"-p{part}" if part else "")


def batch_manifest(work_s3_uri: str, migration_id: str, batch: int, part: int | None = None) -> S3Location:
    return root(work_s3_uri, migration_id).join("batches", f"{batch_name(batch, part)}.ndjson")


def batch_meta(work_s3_uri: str, migration_id: str, batch: int, part: int | None = None) -> S3Location:
    """How the batch is imported: straight from a clean source folder, or staged."""
    return root(work_s3_uri, migration_id).join("batches", f"{batch_name(batch, part)}.meta.json")


def staging_prefix(work_s3_uri: str, migration_id: str, batch: int, part: int | None = None) -> S3Location:
    return root(work_s3_uri, migration_id).join("staging", batch_name(batch, part)).as_prefix()


def job_input_key(input_key_prefix: str, source_key: str) -> str:
    """The key an import job reads for one source object, and names as ``inputFile`` in its output: the source
    key, unchanged, after the batch's staging prefix (``""`` when the job reads the source folder directly)."""
    return input_key_prefix + source_key


def import_output_prefix(work_s3_uri: str, migration_id: str, batch: int, part: int | None = None) -> S3Location:
    return root(work_s3_uri, migration_id).join("import-output", batch_name(batch, part)).as_prefix()


def import_output_batch(output_s3_uri: str) -> tuple[str, int] | None:
    """``(migration id, batch)`` of an `import_output_prefix` (or of the job folder AWS creates in it), or None."""
    match = _IMPORT_OUTPUT.search(output_s3_uri)
    return (match["migration"], int(match["batch"])) if match else None


def ledger_prefix(work_s3_uri: str, migration_id: str) -> S3Location:
    return root(work_s3_uri, migration_id).join("ledger").as_prefix()


def ledger_for_page(work_s3_uri: str, migration_id: str, page: int) -> S3Location:
    """Rejected files of one inventory page (decided before any batch exists)."""
    return ledger_prefix(work_s3_uri, migration_id).join(f"page-{page:06d}.ndjson")


def ledger_for_plan(work_s3_uri: str, migration_id: str, wave_first_page: int | None = None) -> S3Location:
    """Duplicates (and files held back) found while planning batches: one object for a plan of every page, one
    per wave (named by the wave's first page) for a migration planning in waves."""
    name = "plan.ndjson" if wave_first_page is None else f"plan-{wave_first_page:06d}.ndjson"
    return ledger_prefix(work_s3_uri, migration_id).join(name)


def ledger_for_batch(work_s3_uri: str, migration_id: str, batch: int, part: int | None = None) -> S3Location:
    return ledger_prefix(work_s3_uri, migration_id).join(f"{batch_name(batch, part)}.ndjson")


def ledgers_of_batch(work_s3_uri: str, migration_id: str, batch: int) -> S3Location:
    """The key prefix every ledger of one batch starts with (whole, halves, source-changed, unfinished); it also
    matches longer batch numbers (``batch-00001`` is a prefix of ``batch-000010``), so callers check the rest."""
    return ledger_prefix(work_s3_uri, migration_id).join(batch_name(batch))


def ledger_for_unfinished(work_s3_uri: str, migration_id: str, batch: int) -> S3Location:
    """Files of a batch whose workflow could not finish that no other ledger of the batch accounts for."""
    return ledger_prefix(work_s3_uri, migration_id).join(f"{batch_name(batch)}-unfinished.ndjson")


def ledger_for_source_changed(work_s3_uri: str, migration_id: str, batch: int, part: int | None = None) -> S3Location:
    """Files of a batch whose source object changed after it was validated (found while staging)."""
    return ledger_prefix(work_s3_uri, migration_id).join(f"{batch_name(batch, part)}-source-changed.ndjson")


def report_prefix(work_s3_uri: str, migration_id: str) -> S3Location:
    return root(work_s3_uri, migration_id).join("report").as_prefix()


def report_files(work_s3_uri: str, migration_id: str) -> S3Location:
    """One NDJSON line per source file with its terminal state."""
    return report_prefix(work_s3_uri, migration_id).join("files.ndjson")


def report_document(work_s3_uri: str, migration_id: str) -> S3Location:
    """The report's counts and problems as JSON."""
    return report_prefix(work_s3_uri, migration_id).join("report.json")


def report_summary(work_s3_uri: str, migration_id: str) -> S3Location:
    """The report as plain text for people."""
    return report_prefix(work_s3_uri, migration_id).join("summary.txt")


def report_html(work_s3_uri: str, migration_id: str) -> S3Location:
    """The report as one self-contained HTML page (charts and tables; no network needed to view it)."""
    return report_prefix(work_s3_uri, migration_id).join("report.html")


def report_plan(work_s3_uri: str, migration_id: str) -> S3Location:
    """A dry run's prediction for this migration (`contracts.report.PlanComparison`), shown by the report."""
    return report_prefix(work_s3_uri, migration_id).join("plan.json")


def plan_document(work_s3_uri: str, migration_id: str) -> S3Location:
    """A dry run's ``plan.json`` (`contracts.plan.PlanDocument`), under the plan's id; a migration started from
    the plan keeps a copy under its own id."""
    return root(work_s3_uri, migration_id).join("plan", "plan.json")


def plan_files(work_s3_uri: str, migration_id: str) -> S3Location:
    """A dry run's per-file predictions (`contracts.plan.PredictedFile`), next to its ``plan.json``."""
    return root(work_s3_uri, migration_id).join("plan", "files.ndjson")


def report_verify(work_s3_uri: str, migration_id: str) -> S3Location:
    """The verification of this migration (`contracts.report.VerifyResult`), shown by the report."""
    return report_prefix(work_s3_uri, migration_id).join("verify.json")


def report_csv(work_s3_uri: str, migration_id: str) -> S3Location:
    """The per-file lines as CSV, for spreadsheets."""
    return report_prefix(work_s3_uri, migration_id).join("files.csv")


def fhir_prefix(work_s3_uri: str, migration_id: str) -> S3Location:
    """Every batch's HealthLake input folder, start record and reviewed result."""
    return root(work_s3_uri, migration_id).join("fhir").as_prefix()


def fhir_name(batch: int, part: int | None = None, routing_round: int = 1) -> str:
    """``batch-00003`` (or ``-p1``), plus ``-r2`` for a second routing round after the study changed meanwhile."""
    return batch_name(batch, part) + (f"-r{routing_round}" if routing_round > 1 else "")


def fhir_input_prefix(work_s3_uri: str, migration_id: str, batch: int, part: int | None = None,
                      routing_round: int = 1) -> S3Location:
    """The HealthLake import job's input folder for one batch (AWS documents a prefix as InputDataConfig)."""
    return root(work_s3_uri, migration_id).join("fhir", fhir_name(batch, part, routing_round)).as_prefix()


def fhir_input(work_s3_uri: str, migration_id: str, batch: int, part: int | None = None, routing_round: int = 1) -> S3Location:
    """The batch's Endpoint and ImagingStudy NDJSON, alone in its input folder (it holds patient ids)."""
    return fhir_input_prefix(work_s3_uri, migration_id, batch, part, routing_round).join("imaging-studies.ndjson")


def fhir_summary(work_s3_uri: str, migration_id: str, batch: int, part: int | None = None, routing_round: int = 1) -> S3Location:
    """The reviewed outcome of one batch's HealthLake import (counts, ids, issue codes), read by the report."""
    return root(work_s3_uri, migration_id).join("fhir", f"{fhir_name(batch, part, routing_round)}.result.json")


def fhir_start_record(work_s3_uri: str, migration_id: str, batch: int, part: int | None = None,
                      routing_round: int = 1) -> S3Location:
    """What ``start_fhir_import`` built for one batch (counts, refused resources), kept next to its input folder."""
    return root(work_s3_uri, migration_id).join("fhir", f"{fhir_name(batch, part, routing_round)}.start.json")


def fhir_output_prefix(work_s3_uri: str, migration_id: str, batch: int, part: int | None = None,
                       routing_round: int = 1) -> S3Location:
    return root(work_s3_uri, migration_id).join("fhir-output", fhir_name(batch, part, routing_round)).as_prefix()


def fhir_job_output(output_s3_uri: str, datastore_id: str, job_id: str) -> S3Location:
    """The folder HealthLake writes one import job's ``manifest.json``, ``SUCCESS/`` and ``FAILURE/`` into, under
    the output prefix it was given."""
    return parse_s3_uri(output_s3_uri).as_prefix().join(f"{datastore_id}-FHIR_IMPORT-{job_id}").as_prefix()


def receive_units_page(work_s3_uri: str, migration_id: str, page: int) -> S3Location:
    """One page of a source connector's enumeration (``receive/units/page-N.ndjson``), written once per pull."""
    return root(work_s3_uri, migration_id).join("receive", "units", f"page-{page:06d}.ndjson")


def ingest_manifests_prefix(work_s3_uri: str, ingest_id: str) -> S3Location:
    """Manifests an ingestion flushed, each migrated as one migration (``<ingest id>/manifests/``)."""
    return root(work_s3_uri, ingest_id).join("manifests").as_prefix()


def ingest_manifest(work_s3_uri: str, ingest_id: str, flush: int) -> S3Location:
    return ingest_manifests_prefix(work_s3_uri, ingest_id).join(f"flush-{flush:05d}.ndjson")


# ---- the landing prefix: where a source connector puts what it pulls (in the source bucket, not the work one) ----


def landed_object(landing: S3Location, relative_key: str) -> S3Location:
    """``relative_key`` appended as is to the landing prefix (a connector's own path, or a report stand-in)."""
    return S3Location(landing.bucket, landing.key + relative_key)


def landed_instance(landing: S3Location, study: str, series: str, sop: str) -> S3Location:
    """``<landing>/<study>/<series>/<sop>.dcm`` from path-safe UID segments: a re-pull overwrites the same key."""
    return landed_object(landing, f"{study}/{series}/{sop}.dcm")


def landed_study(landing: S3Location, study: str) -> S3Location:
    """``<landing>/<study>/``: the folder of one pulled study (from a path-safe UID segment)."""
    return landed_object(landing, f"{study}/")
