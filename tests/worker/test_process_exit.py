"""Ending without interpreter finalization must still deliver every byte written and the right status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.process_exit import exit_code

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(("code", "status", "printed"), [
    (None, 0, ""), (0, 0, ""), (3, 3, ""), ("no such migration", 1, "no such migration\n")])
def test_exit_code_of_a_system_exit(capsys: pytest.CaptureFixture[str], code: object, status: int,
                                    printed: str) -> None:
    assert exit_code(SystemExit(code)) == status
    assert capsys.readouterr().err == printed


def test_buffered_output_through_a_pipe_is_flushed_before_exit() -> None:
    # A pipe makes stdout block-buffered: without the flush in exit_now what is still buffered is lost.
    script = ("from worker.process_exit import exit_now\n"
              "import logging, sys\n"
              "logging.basicConfig(stream=sys.stderr)\n"
              "print('x' * 100, end='')\n"
              "logging.getLogger('t').warning('last words')\n"
              "exit_now(7)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered, as in a container without it
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 7
    assert done.stdout == "x" * 100
    assert "last words" in done.stderr


@pytest.mark.parametrize(("args", "status"), [(["--help"], 0), (["no-such-command"], 2)])
def test_himig_console_script_keeps_typer_exit_statuses(args: list[str], status: int) -> None:
    done = subprocess.run([str(BIN / "himig"), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == status, done.stderr
    assert ("Durable DICOM" in done.stdout) if status == 0 else ("No such command" in done.stderr)


@pytest.mark.parametrize(("body", "status", "said"), [
    ("print('done')", 0, ""),
    ("raise SystemExit(0)", 0, ""),
    ("raise SystemExit('the checks failed')", 1, "FAILED: the checks failed"),
    ("raise ValueError('unexpected')", 1, "ValueError: unexpected"),
])
def test_a_script_run_then_exit_ends_with_its_outcome(body: str, status: int, said: str) -> None:
    src = f"from worker.process_exit import run_then_exit\ndef main():\n    {body}\nrun_then_exit(main)\n"
    done = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, timeout=60)
    assert done.returncode == status
    assert said in done.stderr
    if status == 0:
        assert done.stderr == ""
