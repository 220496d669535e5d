"""`himig start` has a flag for every field of the JSON input: walks `MigrationInput` and the command's parser.

No Temporal: `--dry-run` prints the input the flags make, so each flag is seen arriving in its field.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from cli.app import app
from cli.start_flags import FLAGS, NOT_FLAGS
from contracts.migration import MigrationInput

REQUIRED = ["--source", "s3://src-bucket/in/", "--datastore-id", "a" * 32, "--work", "s3://work-bucket/w/"]

# A valid value for each field that differs from its default (what the flag is given, what the JSON must hold).
SAMPLES: dict[str, tuple[list[str], Any]] = {
    "source_s3_uri": (["s3://other-src/x/"], "s3://other-src/x/"),
    "datastore_id": (["b" * 32], "b" * 32),
    "work_s3_uri": (["s3://other-work/y/"], "s3://other-work/y/"),
    "validation_level": (["strict"], "strict"),
    "data_access_role_arn": (["arn:aws:iam::123456789012:role/R"], "arn:aws:iam::123456789012:role/R"),
    "source_owner_account_id": (["111122223333"], "111122223333"),
    "source_manifest_uri": (["s3://src-bucket/in/manifest.ndjson"], "s3://src-bucket/in/manifest.ndjson"),
    "max_files_per_batch": (["17"], 17),
    "max_bytes_per_batch": (["12345"], 12345),
    "inventory_page_size": (["33"], 33),
    "max_concurrent_jobs": (["9"], 9),
    "max_parallel_pages": (["7"], 7),
    "import_start_interval_seconds": (["2.5"], 2.5),
    "manual_review": ([], True),
    "healthlake_datastore_id": (["HL123"], "HL123"),
    "fhir_validation_level": (["minimal"], "minimal"),
    "fhir_validate_first": ([], True),
    "dicomweb_spot_check": (["5"], 5),
    "from_plan": (["plan-abc"], "plan-abc"),
}


def _start_params() -> dict[str, Any]:
    group: Any = typer.main.get_command(app)
    command = group.commands["start"]
    return {opt: p for p in command.params for opt in p.opts}


def _dry_run(args: list[str]) -> Any:
    result = CliRunner().invoke(app, ["start", *args, "--dry-run"])
    return result


class TestEveryFieldHasAFlag:
    def test_the_table_covers_the_model_exactly(self) -> None:
        fields = set(MigrationInput.model_fields)
        assert set(FLAGS) | set(NOT_FLAGS) == fields, "a MigrationInput field has no `himig start` flag"
        assert not set(FLAGS) & set(NOT_FLAGS)
        assert set(SAMPLES) == set(FLAGS), "a new flag needs a sample in this test"

    def test_every_flag_is_in_the_parser_and_leaves_the_default_to_the_model(self) -> None:
        params = _start_params()
        for field, flag in FLAGS.items():
            assert flag in params, f"{field}: `himig start` has no {flag}"
            param = params[flag]
            if not MigrationInput.model_fields[field].is_required():
                # Not sent unless given: the workflow's default is the one default there is.
                assert param.default is None, f"{flag} has its own default {param.default!r}"
            assert f"JSON: {field}" in (getattr(param, "help", "") or ""), f"{flag}: help does not name {field}"

    @pytest.mark.parametrize("field", sorted(FLAGS))
    def test_each_flag_reaches_its_field(self, field: str) -> None:
        values, expected = SAMPLES[field]
        args = list(REQUIRED)
        flag = FLAGS[field]
        if flag in args:
            args[args.index(flag) + 1] = values[0]
        else:
            args += [flag, *values]
        if field == "fhir_validate_first":
            args += ["--healthlake-datastore-id", "HL1"]
        result = _dry_run(args)
        assert result.exit_code == 0, result.output
        sent = json.loads(result.output)
        assert sent[field] == expected
        assert "continued" not in sent

    def test_flags_left_out_send_the_models_defaults(self) -> None:
        result = _dry_run(REQUIRED)
        assert result.exit_code == 0, result.output
        sent = json.loads(result.output)
        defaults = MigrationInput.model_validate({"source_s3_uri": "s3://src-bucket/in/", "datastore_id": "a" * 32,
                                                  "work_s3_uri": "s3://work-bucket/w/"})
        assert sent == json.loads(defaults.model_dump_json(exclude_none=True))


class TestHostileFlags:
    @pytest.mark.parametrize("args,needle", [
        (["--max-parallel-pages", "0"], "max_parallel_pages (--max-parallel-pages)"),
        (["--max-parallel-pages", "51"], "max_parallel_pages (--max-parallel-pages)"),
        (["--inventory-page-size", "10001"], "inventory_page_size (--inventory-page-size)"),
        (["--source-manifest-uri", "http://evil/x"], "source_manifest_uri (--source-manifest-uri)"),
        (["--source-manifest-uri", "s3://src-bucket/in/m.ndjson", "--source-dir", "/tmp"], "exclusive"),
        (["--fhir-validate-first"], "fhir_validate_first needs healthlake_datastore_id"),
        (["--import-start-interval", "-1"], "import_start_interval_seconds"),
    ])
    def test_bad_values_name_the_field_and_the_flag(self, args: list[str], needle: str) -> None:
        result = _dry_run([*REQUIRED, *args])
        assert result.exit_code == 2, result.output
        assert needle in " ".join(result.output.split())
        assert "Traceback" not in result.output

    @pytest.mark.parametrize("args", [
        ["--max-parallel-pages", "true"],  # no bool-as-int
        ["--inventory-page-size", "1.5"],  # no silent truncation
        ["--max-concurrent-jobs", ""],
        ["--manual-review", "yes"],  # a switch takes no value: "yes" is a stray argument
        ["--validation-level", "lenient"],
        ["--continued", "{}"],  # internal state is not settable
    ])
    def test_values_of_the_wrong_type_are_usage_errors(self, args: list[str]) -> None:
        result = _dry_run([*REQUIRED, *args])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
