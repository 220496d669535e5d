"""structlog set-up: one JSON line per event, with Temporal ids as fields, and no patient data.

Everything goes through one pipeline: structlog loggers, the standard library's loggers (temporalio, botocore,
pydicom) and ``warnings.warn`` (captured into the ``py.warnings`` logger). Each line carries, as fields, the ids
bound by ``worker.log_context`` around an activity (``workflow_id``, ``run_id``, ``activity``, ``attempt``,
``batch``), or those the SDK's workflow and activity loggers attach (``temporal_workflow`` / ``temporal_activity``
in ``extra``, flattened here). ``extra=`` fields of standard-library calls become fields too.

Patient data is kept out twice:
- by key: the value of any key that names a patient-identifying attribute is replaced (:func:`redact_phi`);
- by value: every string in the event, the message and the rendered exception included, is scrubbed of the
  patient values the current activity registered (``activities.phi``) (:func:`scrub_values`).

Exceptions are rendered here, never by the standard library: a pydantic ``ValidationError`` (whose text quotes
the input) becomes its field locations and rules only, and any other traceback is scrubbed. Workflow code logs
inside the Temporal sandbox, where a lazy import or a file read made while formatting fails; the handler formats
outside the sandbox's restrictions (:class:`_Handler`).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from typing import IO, Any

import pydantic
import structlog
from temporalio import workflow

from activities import phi
from contracts.errors import describe_validation_error

PHI_KEYS = re.compile(
    r"(patient.?name|patient.?id|patientsname|birth.?date|patient.?birth|other.?patient|patient.?address|"
    r"patient.?telephone|responsible.?person|accession|institution|physician|referring|operators.?name|"
    r"description|^name$|^mrn$|ssn)",
    re.IGNORECASE,
)
REDACTED = "[redacted]"
# What the SDK's loggers put in ``extra`` -> our field names.
_TEMPORAL_FIELDS = {"workflow_id": "workflow_id", "run_id": "run_id", "workflow_run_id": "run_id",
                    "workflow_type": "workflow_type", "activity_type": "activity", "activity_id": "activity_id",
                    "attempt": "attempt", "update_id": "update_id", "update_name": "update_name"}
# The lowest level each noisy third-party logger may log at, whatever the configured level. The SDK's worker
# internals print whole activity results and task tokens at debug (payloads: possibly patient data, and
# unreadable); ``worker.log_context`` logs each activity's start and end at debug instead.
_QUIET = {"botocore": logging.WARNING, "boto3": logging.WARNING, "urllib3": logging.WARNING,
          "s3transfer": logging.WARNING, "temporalio.worker._activity": logging.INFO,
          "temporalio.worker._workflow": logging.INFO, "temporalio.worker._workflow_instance": logging.INFO}


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


def _scrub(value: Any, pattern_values: frozenset[str], depth: int = 0) -> Any:
    if isinstance(value, str):
        return phi.scrub(value, pattern_values)
    if depth > 5:
        return value
    if isinstance(value, dict):
        return {k: _scrub(v, pattern_values, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v, pattern_values, depth + 1) for v in value]
    return value


def scrub_values(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: replace every patient value the current activity registered, in every string field.

    Runs after the exception is rendered, so a traceback quoting a value is scrubbed too.
    """
    values = phi.current()
    if not values:
        return event_dict
    return {k: _scrub(v, values) for k, v in event_dict.items()}


def _exc_info(value: Any) -> tuple[type[BaseException], BaseException, Any] | None:
    if isinstance(value, BaseException):
        return type(value), value, value.__traceback__
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[1], BaseException):
        return value  # type: ignore[return-value]
    if value is True:
        info = sys.exc_info()
        return info if info[1] is not None else None  # type: ignore[return-value]
    return None


def _validation_error(exc: BaseException | None) -> pydantic.ValidationError | None:
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, pydantic.ValidationError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def render_exception(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: ``exc_info`` -> ``exception`` text, without ever echoing validated input.

    A pydantic ``ValidationError`` anywhere in the chain (e.g. a signal the SDK could not decode) is reduced to
    one ``error`` field naming each field and rule; other exceptions keep their traceback (scrubbed afterwards).
    """
    raw = event_dict.pop("exc_info", None)
    info = _exc_info(raw)
    if info is None:
        return event_dict
    invalid = _validation_error(info[1])
    if invalid is not None:
        event_dict["error"] = f"{invalid.title}: {describe_validation_error(invalid)}"
        return event_dict
    event_dict["exception"] = "".join(traceback.format_exception(*info))
    return event_dict


def flatten_temporal(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: the SDK's ``temporal_workflow`` / ``temporal_activity`` dicts become top-level ids."""
    for key in ("temporal_workflow", "temporal_activity"):
        details = event_dict.pop(key, None)
        if isinstance(details, dict):
            for name, field in _TEMPORAL_FIELDS.items():
                if name in details:
                    event_dict.setdefault(field, details[name])
    return event_dict


def _json_default(value: Any) -> Any:
    # structlog's own fallback imports lazily, which the workflow sandbox refuses; this one imports nothing.
    return repr(value)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that formats outside the workflow sandbox and never prints a record's arguments.

    Workflow code (and the SDK's workflow instance) log from inside the sandbox, where imports are re-done and
    ``os.path`` is restricted; formatting there fails. The standard library's fallback (``handleError``) would
    then print the whole stack and the record's arguments, which may hold input values.
    """

    def format(self, record: logging.LogRecord) -> str:
        if workflow.unsafe.in_sandbox():
            with workflow.unsafe.sandbox_unrestricted(), workflow.unsafe.imports_passed_through():
                return super().format(record)
        return super().format(record)

    def handleError(self, record: logging.LogRecord) -> None:
        try:
            line = json.dumps({"event": "a log line could not be formatted", "level": "error",
                               "logger": record.name, "error": type(sys.exc_info()[1]).__name__})
            self.stream.write(line + self.terminator)
        except Exception:
            pass


def shared_processors() -> list[Any]:
    """What every event goes through, from structlog or the standard library, before it is rendered."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        flatten_temporal,
        redact_phi,
        render_exception,
        scrub_values,
    ]


def configure_logging(level: str = "info", fmt: str = "json", stream: IO[str] | None = None) -> None:
    """Route structlog, stdlib logging (temporalio, botocore, pydicom) and ``warnings`` through one renderer.

    ``stream`` defaults to stderr (tests pass their own).
    """
    renderer: Any = (structlog.processors.JSONRenderer(default=_json_default) if fmt == "json"
                     else structlog.dev.ConsoleRenderer())
    shared = shared_processors()
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = _Handler(stream if stream is not None else sys.stderr)
    # pydicom's lines about a file wait until its patient values are registered (activities/phi.py).
    handler.addFilter(phi.hold_filter)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        # ExtraAdder: standard-library ``extra=`` fields become fields (then redacted like the rest).
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # warnings.warn (pydicom's value warnings among them) -> the ``py.warnings`` logger -> this pipeline.
    logging.captureWarnings(True)
    # The SDK's loggers append their ids to the message as text; here they are fields (see flatten_temporal).
    workflow.logger.workflow_info_on_message = False
    _activity_logger().activity_info_on_message = False
    for name, floor in _QUIET.items():
        logging.getLogger(name).setLevel(max(floor, root.level))


def _activity_logger() -> Any:
    from temporalio import activity

    return activity.logger
