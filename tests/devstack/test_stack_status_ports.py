"""`himig stack status` names the UI of the Temporal that runs, on the ports it was started with, not the
defaults (status takes no port flags). A real Temporal dev server on random 127.0.0.1 ports."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from devstack.cli import stack_app
from tests.devstack.test_stack import StackFactory, free_ports, stacks  # noqa: F401 (fixture)


def test_status_shows_the_ui_port_the_stack_started_on(stacks: StackFactory, tmp_path: Path,  # noqa: F811
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    state = tmp_path / "ui-state"
    temporal_port, ui_port = free_ports(2)
    stack = stacks(state=state, temporal_port=temporal_port, temporal_ui_port=ui_port)
    assert ui_port != 8233 and stack.up(["temporal"]).healthy

    # Another command on the same state dir, with every port at its default (as an operator types it).
    result = CliRunner().invoke(stack_app, ["status", "--only", "temporal", "--dir", str(state)],
                                env={"HIMIG_STACK_TEMPORAL_UI_PORT": None, "HIMIG_STACK_TEMPORAL_PORT": None})
    assert result.exit_code == 0, result.output
    assert f"Temporal UI: http://127.0.0.1:{ui_port}" in result.output
    assert "8233" not in result.output
