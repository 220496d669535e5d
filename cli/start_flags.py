"""`himig start`'s flags and the `MigrationInput` fields they set: one table, so no JSON field lacks a flag.

Every field of `MigrationInput` is either in `FLAGS` or in `NOT_FLAGS` with the reason (tests/cli/test_start_flags.py
walks the model and the command's parser against this table). A flag left out sends nothing for its field, so the
model's default applies: the CLI never keeps a second copy of a default that could drift.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from cli.calls import CommandError
from contracts.migration import MigrationInput

# field → flag of `himig start`
FLAGS: dict[str, str] = {
    "source_s3_uri": "--source",
    "datastore_id": "--datastore-id",
    "work_s3_uri": "--work",
    "validation_level": "--validation-level",
    "data_access_role_arn": "--data-access-role-arn",
    "source_owner_account_id": "--source-owner-account",
    "source_manifest_uri": "--source-manifest-uri",
    "max_files_per_batch": "--max-files-per-batch",
    "max_bytes_per_batch": "--max-bytes-per-batch",
    "inventory_page_size": "--inventory-page-size",
    "max_concurrent_jobs": "--max-concurrent-jobs",
    "max_parallel_pages": "--max-parallel-pages",
    "import_start_interval_seconds": "--import-start-interval",
    "manual_review": "--manual-review",
    "healthlake_datastore_id": "--healthlake-datastore-id",
    "fhir_validation_level": "--fhir-validation-level",
    "fhir_validate_first": "--fhir-validate-first",
    "dicomweb_spot_check": "--dicomweb-spot-check",
    "from_plan": "--from-plan",
}

# field → why no flag sets it directly
NOT_FLAGS: dict[str, str] = {
    "source_connector": "built from --source-dir, --source-dicomweb or --source-dimse (cli.sources)",
    "continued": "the state a run carries across continue-as-new: set by the workflow only",
    "resend_failed": "set by `himig retry`, which re-sends files whose import failed; a plain start never does",
}


def field_help(field: str, extra: str = "") -> str:
    """The flag's help: the model's own description of the field (and its default), plus ``extra``."""
    info = MigrationInput.model_fields[field]
    text = info.description or field.replace("_", " ")
    if not info.is_required():
        default = info.get_default()
        shown = getattr(default, "value", default)
        text += f" [default: {shown if shown is not None else 'unset'}]"
    return f"{text} {extra}".strip() + f" (JSON: {field})"


def validation_message(err: ValidationError, what: str = "migration input") -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "input"
        flag = FLAGS.get(field)
        lines.append(f"  {field}{f' ({flag})' if flag else ''}: {e['msg']}")
    return f"invalid {what}:\n" + "\n".join(lines)


def migration_input(flags: dict[str, Any], connector: dict[str, Any] | None) -> MigrationInput:
    """The input for the flags given (a field whose flag was left out is not sent: the model's default)."""
    unknown = set(flags) - set(FLAGS)
    if unknown:  # a programming error: a flag in the command that the table does not know
        raise CommandError(f"internal: flags without a MigrationInput field: {sorted(unknown)}")
    payload = {field: value for field, value in flags.items() if value is not None}
    if connector is not None:
        payload["source_connector"] = connector
    try:
        return MigrationInput.model_validate(payload)
    except ValidationError as err:
        raise CommandError(validation_message(err), 2) from None
