"""structlog set-up with a PHI-redacting processor.

Patient-identifying DICOM attributes must never reach a log line, whatever code logs them: the processor
below replaces the value of any key that names one, at any nesting depth.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

PHI_KEYS = re.compile(
    r"(patient.?name|patient.?id|patientsname|birth.?date|patient.?birth|other.?patient|patient.?address|"
    r"patient.?telephone|responsible.?person|accession|^name$|^mrn$|ssn)",
    re.IGNORECASE,
)
REDACTED = "[redacted]"


def _redact(value: Any, depth: int = 0) -> Any:
    if depth > 5:
        return value
    if isinstance(value, dict):
        return {k: REDACTED if isinstance(k, str) and PHI_KEYS.search(k) else _redact(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact(v, depth + 1) for v in value)
    return value


def redact_phi(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: redact values whose key names a patient-identifying attribute."""
    return _redact(event_dict)  # type: ignore[no-any-return]


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Route both structlog and stdlib logging (temporalio, botocore) through one JSON renderer."""
    renderer: Any = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_phi,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=[
        structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
