"""Where the pipeline keeps its per-file data in S3, under ``<work_s3_uri>/<migration_id>/``.

One function per artefact so activities, the report and tests agree on the layout.
"""

from __future__ import annotations

from contracts.s3uri import S3Location, parse_s3_uri


def root(work_s3_uri: str, migration_id: str) -> S3Location:
    return parse_s3_uri(work_s3_uri, field="work_s3_uri").join(migration_id)


def imported_index_prefix(work_s3_uri: str, datastore_id: str) -> S3Location:
    """What every migration through this work prefix imported into one data store (``_`` never starts a
    migration id, so this cannot collide with a migration's own folder)."""
    return parse_s3_uri(work_s3_uri, field="work_s3_uri").join("_datastores", datastore_id, "imported").as_prefix()


def imported_index(work_s3_uri: str, datastore_id: str, migration_id: str, batch: int,
                   part: int | None = None) -> S3Location:
    """``_datastores/<ds>/imported/<migration>/<batch>.ndjson``: one line per instance a batch imported."""
    return imported_index_prefix(work_s3_uri, datastore_id).join(migration_id, f"{batch_name(batch, part)}.ndjson")


def inventory_page(work_s3_uri: str, migration_id: str, page: int) -> S3Location:
    return root(work_s3_uri, migration_id).join("inventory", f"page-{page:06d}.ndjson")


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


def import_output_prefix(work_s3_uri: str, migration_id: str, batch: int, part: int | None = None) -> S3Location:
    return root(work_s3_uri, migration_id).join("import-output", batch_name(batch, part)).as_prefix()


def ledger_prefix(work_s3_uri: str, migration_id: str) -> S3Location:
    return root(work_s3_uri, migration_id).join("ledger").as_prefix()


def ledger_for_page(work_s3_uri: str, migration_id: str, page: int) -> S3Location:
    """Rejected files of one inventory page (decided before any batch exists)."""
    return ledger_prefix(work_s3_uri, migration_id).join(f"page-{page:06d}.ndjson")


def ledger_for_plan(work_s3_uri: str, migration_id: str) -> S3Location:
    """Duplicates found while planning batches."""
    return ledger_prefix(work_s3_uri, migration_id).join("plan.ndjson")


def ledger_for_batch(work_s3_uri: str, migration_id: str, batch: int, part: int | None = None) -> S3Location:
    return ledger_prefix(work_s3_uri, migration_id).join(f"{batch_name(batch, part)}.ndjson")


def ledger_for_source_changed(work_s3_uri: str, migration_id: str, batch: int, part: int | None = None) -> S3Location:
    """Files of a batch whose source object changed after it was validated (found while staging)."""
    return ledger_prefix(work_s3_uri, migration_id).join(f"{batch_name(batch, part)}-source-changed.ndjson")


def report_prefix(work_s3_uri: str, migration_id: str) -> S3Location:
    return root(work_s3_uri, migration_id).join("report").as_prefix()


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


def receive_units_page(work_s3_uri: str, migration_id: str, page: int) -> S3Location:
    """One page of a source connector's enumeration (``receive/units/page-N.ndjson``), written once per pull."""
    return root(work_s3_uri, migration_id).join("receive", "units", f"page-{page:06d}.ndjson")
