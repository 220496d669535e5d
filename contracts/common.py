"""Enums and the strict base model that every part of the pipeline's contracts uses."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict


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
    """Base for inputs that operators type: unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)
