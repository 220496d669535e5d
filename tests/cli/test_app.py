"""The `himig` CLI: bad flags are refused before anything is sent, and errors name what is wrong."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.app import app

GOOD = ["--source", "s3://src-bucket/in/", "--datastore-id", "a" * 32, "--work", "s3://work-bucket/w/"]


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    # Nothing listens here: any attempt to reach Temporal fails fast and visibly.
    monkeypatch.setenv("HIMIG_TEMPORAL_ADDRESS", "127.0.0.1:1")
    return CliRunner()


def _flat(result: Any) -> str:
    return " ".join(result.output.split())


class TestStartValidation:
    @pytest.mark.parametrize("flag,value,needle", [
        ("--source", "not-a-uri", "source_s3_uri"),
        ("--work", "s3://src-bucket/in/sub/", "must not overlap"),
        ("--datastore-id", "UPPER", "datastore_id"),
        ("--max-files-per-batch", "0", "max_files_per_batch"),
        ("--max-files-per-batch", "9999", "max_files_per_batch"),
        ("--max-concurrent-jobs", "1000", "max_concurrent_jobs"),
        ("--data-access-role-arn", "role", "data_access_role_arn"),
        ("--source-owner-account", "12345", "source_owner_account_id"),
        ("--source-owner-account", "21098765432a", "source_owner_account_id"),
    ])
    def test_bad_value_names_the_field(self, runner: CliRunner, flag: str, value: str, needle: str) -> None:
        args = list(GOOD)
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
        result = runner.invoke(app, ["start", *args])
        assert result.exit_code == 2, result.output
        assert needle in _flat(result)

    def test_bad_validation_level_is_a_usage_error(self, runner: CliRunner) -> None:
        result = runner.invoke(app, ["start", *GOOD, "--validation-level", "lenient"])
        assert result.exit_code == 2 and "lenient" in _flat(result)

    def test_bad_workflow_id(self, runner: CliRunner) -> None:
        result = runner.invoke(app, ["start", *GOOD, "--id", "../etc/passwd"])
        assert result.exit_code == 2 and "--id" in _flat(result)

    def test_unreachable_temporal_is_a_clear_error(self, runner: CliRunner) -> None:
        result = runner.invoke(app, ["start", *GOOD, "--id", f"m-{uuid.uuid4().hex[:6]}"])
        assert result.exit_code == 1
        assert "cannot reach Temporal" in _flat(result) and "HIMIG_TEMPORAL_ADDRESS" in _flat(result)

    def test_status_unreachable(self, runner: CliRunner) -> None:
        result = runner.invoke(app, ["status", "nope"])
        assert result.exit_code == 1 and "cannot reach Temporal" in _flat(result)

    def test_bad_settings_in_environment(self, runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HIMIG_TEMPORAL_ADDRESS", "no-port-here")
        result = runner.invoke(app, ["status", "x"])
        assert result.exit_code == 2 and "HIMIG_TEMPORAL_ADDRESS: " in _flat(result)
