"""Headless Chromium (Debian's `chromium`) for looking at an HTML page: its console messages and a screenshot.

Console messages are read from Chromium's own log (``--enable-logging=stderr``), where every console message
(errors, Content-Security-Policy refusals, uncaught exceptions) appears as an ``INFO:CONSOLE`` line. Each run
gets a new, empty profile directory and everything that would reach the network in the background is off.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

_CONSOLE = re.compile(r":CONSOLE[:(]\d*\)?\]\s*(.*)")


@dataclass
class Rendered:
    console: list[str]
    screenshot: Path


def chromium_or_skip() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("chromium is not installed (`make test` installs it: tests/support/ensure_test_packages.sh)")
    return path


def render(page: Path, screenshot: Path, width: int = 1280, height: int = 4200) -> Rendered:
    """Load ``page`` (a file) in headless Chromium, write a ``width`` x ``height`` screenshot, return its console."""
    binary = chromium_or_skip()
    with tempfile.TemporaryDirectory(prefix="himig-chromium-") as profile:
        run = subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
             f"--window-size={width},{height}", f"--screenshot={screenshot}", page.resolve().as_uri()],
            capture_output=True, text=True, timeout=180, check=False)
    if run.returncode != 0 or not screenshot.exists():
        raise AssertionError(f"chromium exited {run.returncode} without a screenshot:\n{run.stderr[-3000:]}")
    console = [m.group(1) for line in run.stderr.splitlines() if (m := _CONSOLE.search(line))]
    return Rendered(console=console, screenshot=screenshot)
