"""`himig --version` prints the installed distribution's version and exits, before any setting is read."""

from __future__ import annotations

from importlib.metadata import version

import pytest
from typer.testing import CliRunner

from cli.app import app


def test_version_is_the_installed_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIMIG_TEMPORAL_ADDRESS", "no-port-here")  # broken settings must not matter
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"himig {version('himig')}"
