"""Enums and the strict base model that every part of the pipeline's contracts uses."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import AllowInfNan, BaseModel, ConfigDict, StrictBool, StrictInt
from pydantic import Strict as _StrictMode

# The number types of everything a caller can send (workflow inputs, signals, updates): JSON `true` is not 1,
# 1.0 and "5" are not integers, 1 and "yes" are not booleans, and NaN / Infinity (or 1e309) are not numbers.
# pydantic's lax mode would coerce all of these silently (`"max_files_per_batch": true` planned 1-file batches).
Int = StrictInt
Bool = StrictBool
Float = Annotated[float, _StrictMode(), AllowInfNan(False)]


class ValidationLevel(StrEnum):
    """How strictly files are checked before import (names follow HealthLake's validation levels)."""

    STRICT = "strict"
    STRUCTURE_ONLY = "structure-only"
    MINIMAL = "minimal"


class FileState(StrEnum):
    """The terminal state of one source file. Every file ends in exactly one."""

    IMPORTED = "imported"
    IMPORTED_WITH_WARNINGS = "imported_with_warnings"
    REJECTED = "rejected"
    FAILED = "failed"
    SKIPPED_DUPLICATE = "skipped_duplicate"


class Strict(BaseModel):
    """Base for inputs that operators type: unknown keys are an error, not silently ignored; numbers and
    booleans are declared with `Int`, `Bool` and `Float` so that none is coerced."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Closed(BaseModel):
    """Base for what a caller can send that is not typed by operators, or that the workflow carries and mutates
    (signals, carried state): unknown keys are an error, but the model is not frozen."""

    model_config = ConfigDict(extra="forbid")
