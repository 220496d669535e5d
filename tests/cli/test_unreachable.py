"""Every `himig` command against a Temporal that accepts connections and never answers: one line naming the
address and the setting, exit code 1, no traceback, within the configured time limit."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app
from tests.support.silent_server import silent_server

COMMANDS = [
    ["status", "m-1"], ["status", "m-1", "--watch"], ["status", "m-1", "--json"], ["report", "m-1"],
    ["pause", "m-1"], ["resume", "m-1"], ["cancel", "m-1", "--reason", "r"], ["list"], ["list", "--all"],
    ["approve", "recon-x", "--action", "keep"], ["approve-manifest", "m-1.batch-00000", "--approve"],
    ["start", "--source", "s3://src-bucket/in/", "--datastore-id", "a" * 32, "--work", "s3://work-bucket/w/"],
]


@pytest.fixture(scope="module")
def hung() -> Iterator[str]:
    with silent_server() as address:
        yield address


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_a_hung_temporal_is_one_line_and_exit_1(hung: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIMIG_TEMPORAL_ADDRESS", hung)
    monkeypatch.setenv("HIMIG_CLI_TIMEOUT_SECONDS", "1")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no exception escaped the command
    flat = " ".join(result.output.split())
    assert f"cannot reach Temporal at {hung}" in flat and "HIMIG_CLI_TIMEOUT_SECONDS" in flat, flat


def test_the_installed_command_prints_no_traceback(hung: str, tmp_path: Path) -> None:
    himig = Path(sys.executable).parent / "himig"
    env = {**os.environ, "HIMIG_TEMPORAL_ADDRESS": hung, "HIMIG_CLI_TIMEOUT_SECONDS": "1", "COLUMNS": "300"}
    for args in (["status", "m-1", "--watch"], ["approve", "recon-x", "--action", "promote"]):
        done = subprocess.run([str(himig), *args], capture_output=True, text=True, timeout=60, env=env,
                              cwd=tmp_path)
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr + done.stdout
        assert done.stderr.strip().startswith("error: cannot reach Temporal at"), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize("value", ["0", "-1", "abc", "601"])
def test_a_bad_time_limit_names_the_variable(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIMIG_CLI_TIMEOUT_SECONDS", value)
    result = CliRunner().invoke(app, ["status", "m-1"])
    assert result.exit_code == 2 and "HIMIG_CLI_TIMEOUT_SECONDS" in result.output
