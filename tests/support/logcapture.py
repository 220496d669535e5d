"""Capturing everything the process logs, through the worker's own pipeline (worker/logs.py), as JSON lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog

from worker.logs import configure_logging


class Captured:
    def __init__(self) -> None:
        self.stream = io.StringIO()

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict[str, Any]]:
        """Every line, parsed; fails the test on a line that is not a JSON object."""
        out = []
        for raw in self.text.splitlines():
            line = json.loads(raw)
            assert isinstance(line, dict), raw
            out.append(line)
        return out


@contextmanager
def captured_logs(level: str = "debug") -> Iterator[Captured]:
    """configure_logging into a buffer; the root logger's handlers and level are put back afterwards."""
    root = logging.getLogger()
    handlers, root_level = root.handlers[:], root.level
    captured = Captured()
    configure_logging(level, "json", stream=captured.stream)
    try:
        yield captured
    finally:
        root.handlers[:] = handlers
        root.setLevel(root_level)
        logging.captureWarnings(False)
        structlog.reset_defaults()
