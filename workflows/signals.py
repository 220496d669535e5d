"""Signals whose input is validated in the workflow, so that bad input is recorded instead of dropped.

A signal the SDK cannot decode into its declared type is dropped before any handler runs, with only a worker log
line; nothing in the workflow's state says it came. Handlers that take their input raw (``RawValue``) and
:func:`decode` it here see every signal, record a rejected one with the fields and rules at fault, and log it
in one line that never quotes the values (which may be patient data, or anything a caller typed).
"""

from __future__ import annotations

from typing import Any, TypeVar

from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.common import RawValue

with workflow.unsafe.imports_passed_through():
    import pydantic

    from contracts.errors import describe_validation_error

M = TypeVar("M", bound=pydantic.BaseModel)

# The default of a raw signal parameter: the signal was sent without input (`temporal workflow signal` bare).
NO_INPUT = RawValue(Payload())


def read_json(raw: RawValue, expected: str = "a JSON object") -> tuple[Any, str | None]:
    """``(the input's JSON value, None)``, or ``(None, why there is none)`` (``expected`` says what was wanted)."""
    if raw is NO_INPUT:
        return None, f"no input: expected {expected}"
    try:
        return workflow.payload_converter().from_payload(raw.payload), None
    except Exception:
        return None, "input is not JSON"


def decode(raw: RawValue, model: type[M], optional: bool = False) -> tuple[M | None, str | None]:
    """``(value, None)``, or ``(None, why it was rejected)``; with ``optional``, no input or ``null`` is
    ``(None, None)``."""
    if raw is NO_INPUT and optional:
        return None, None
    value, error = read_json(raw)
    if error is not None:
        return None, error
    if value is None and optional:
        return None, None
    try:
        return model.model_validate(value), None
    except pydantic.ValidationError as err:
        return None, describe_validation_error(err)


def log_rejected(signal: str, error: str) -> None:
    """One structured line: which signal, and the fields and rules at fault (never the values)."""
    workflow.logger.warning("signal rejected", extra={"signal": signal, "error": error})
