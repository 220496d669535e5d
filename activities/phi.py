"""The patient values met by the current activity execution, so that logs and errors can be scrubbed of them.

Redacting by key name (``worker.logs``) misses PHI inside a message: a pydicom warning that quotes an element,
an exception text, a third-party log line. So every place that reads a file's patient-identifying attributes
registers their values here; the log pipeline (``worker.logs.scrub_values``) and the activity interceptor
(``worker.log_context``) replace any occurrence of them, case-insensitively, before a line or a failure leaves the
process.

The set lives in a context variable that the interceptor binds around each activity execution; a thread the
activity starts sees it when it runs in a copy of the activity's context (:func:`in_context`). Outside an
activity nothing is registered (there is nothing to scrub against).

Values shorter than :data:`MIN_LENGTH` characters are never registered: scrubbing every "M" or "12" would mangle
every line while protecting nothing (a value that short does not identify anyone on its own). Values shorter than
:data:`WORD_LENGTH` are matched as whole words only, so a description "HEAD" scrubs "HEAD" but not "header".
"""

from __future__ import annotations

import contextvars
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

# Registered values shorter than this are ignored (see the module docstring).
MIN_LENGTH = 4
# A bound on one activity's set (values past it are not scrubbed): a parse page of 1,000 files of distinct
# patients registers some 30 strings per file (values and their printed forms); values files share count once.
MAX_VALUES = 50_000
# Registered values shorter than this match only where no letter or digit touches them.
WORD_LENGTH = 8
REPLACEMENT = "[phi]"

# The DICOM attributes whose values identify a patient or carry free text about them (PS3.15 Annex E, the ones
# the service can meet in a header it reads).
PHI_KEYWORDS: tuple[str, ...] = (
    "PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName",
    "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers", "IssuerOfPatientID",
    "AccessionNumber", "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "ReferringPhysicianName", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord",
    "RequestingPhysician", "OperatorsName", "StudyDescription", "SeriesDescription",
    "PerformedProcedureStepDescription", "RequestedProcedureDescription", "AdmittingDiagnosesDescription",
    "PatientComments", "ImageComments", "StudyComments", "AdditionalPatientHistory", "StationName",
)

_values: contextvars.ContextVar[set[str] | None] = contextvars.ContextVar("himig_phi_values", default=None)
_stats: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("himig_phi_stats", default=None)
_SEPARATORS = re.compile(r"[\^=\\]+")

T = TypeVar("T")


@contextmanager
def collecting() -> Iterator[set[str]]:
    """Start an empty set of values for one activity execution (nested calls keep the outer set)."""
    if _values.get() is not None:
        yield _values.get()  # type: ignore[misc]
        return
    token, stats_token = _values.set(set()), _stats.set([0])
    try:
        yield _values.get()  # type: ignore[misc]
    finally:
        _values.reset(token)
        _stats.reset(stats_token)


def variants(value: str) -> set[str]:
    """``value`` and the forms it is commonly printed in: a PN with ``^`` as spaces, each component, each value
    of a multi-valued string; only those of at least MIN_LENGTH characters."""
    value = value.strip(" \0")
    out = {value, " ".join(value.replace("^", " ").split())}
    out |= {part.strip() for part in _SEPARATORS.split(value)}
    return {v for v in out if len(v) >= MIN_LENGTH}


def register(*values: Any) -> None:
    """Add values (str or bytes; others ignored) to the current activity's scrub set."""
    current = _values.get()
    if current is None or len(current) >= MAX_VALUES:
        return
    for value in values:
        if isinstance(value, bytes | bytearray):
            # Raw element bytes: as UTF-8 and as Latin-1 (ISO_IR 100, the commonest other character set).
            texts = [bytes(value).decode("utf-8", "replace"), bytes(value).decode("latin-1")]
        elif isinstance(value, str):
            texts = [value]
        else:
            texts = [str(value)] if value is not None and type(value).__name__ == "PersonName" else []
        for text in texts:
            current |= variants(text)


def register_mapping(values: Iterable[tuple[str, Any]]) -> None:
    """Register the values of the PHI attributes among ``(keyword, value)`` pairs (e.g. HealthImaging metadata)."""
    for name, value in values:
        if name in PHI_KEYWORDS:
            register(*_flatten(value))


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _flatten(v)]
    if isinstance(value, list | tuple):
        return [x for v in value for x in _flatten(v)]
    return [value]


def current() -> frozenset[str]:
    """The values registered so far in this activity execution (empty outside one)."""
    values = _values.get()
    return frozenset(values) if values else frozenset()


def scrub(text: str, values: Iterable[str] | None = None) -> str:
    """``text`` with every occurrence of a registered value (case-insensitive) replaced."""
    pattern = _pattern(frozenset(values) if values is not None else current())
    return pattern.sub(REPLACEMENT, text) if pattern is not None else text


_cache: dict[frozenset[str], re.Pattern[str] | None] = {}


def _pattern(values: frozenset[str]) -> re.Pattern[str] | None:
    if not values:
        return None
    found = _cache.get(values)
    if found is None and values not in _cache:
        # Longest first, so a full name is replaced whole before one of its components.
        alternatives = (re.escape(v) if len(v) >= WORD_LENGTH else rf"(?<![^\W_]){re.escape(v)}(?![^\W_])"
                        for v in sorted(values, key=len, reverse=True))
        found = re.compile("|".join(alternatives), re.IGNORECASE)
        if len(_cache) > 64:
            _cache.clear()
        _cache[values] = found
    return found


_held: contextvars.ContextVar[list[logging.LogRecord] | None] = contextvars.ContextVar("himig_held_logs",
                                                                                    default=None)
# Third-party loggers whose lines are held while a header is read (``warnings.warn`` arrives as ``py.warnings``).
HELD_LOGGERS = ("pydicom", "py.warnings")


@contextmanager
def holding_third_party_logs() -> Iterator[list[logging.LogRecord]]:
    """Hold pydicom's log lines and warnings while a file is read, until its patient values are registered.

    pydicom warns while parsing, before the caller knows the values it must scrub (a warning about a malformed
    PatientName quotes it). The held records are released at the end, at debug level (one per file and value
    would drown the log; the file's findings already say why it was rejected); the caller gets the list, e.g. to
    count them.
    """
    held: list[logging.LogRecord] = []
    token = _held.set(held)
    try:
        yield held
    finally:
        _held.reset(token)
        stats = _stats.get()
        if stats is not None:
            stats[0] += len(held)
        for record in held:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            # The root's level decides (pydicom sets its own logger to WARNING when imported).
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                logging.getLogger(record.name).handle(record)


def held_count() -> int:
    """How many third-party lines this activity execution held (and released at debug level) so far."""
    stats = _stats.get()
    return stats[0] if stats else 0


def hold_filter(record: logging.LogRecord) -> bool:
    """A logging filter: False (and the record kept for later) while :func:`holding_third_party_logs` holds it."""
    held = _held.get()
    if held is not None and record.name.split(".")[0] in HELD_LOGGERS:
        held.append(record)
        return False
    return True


def in_context(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` run in a copy of the caller's context: threads an activity starts keep its log ids and scrub set."""
    ctx = contextvars.copy_context()

    def run(*args: Any, **kwargs: Any) -> T:
        return ctx.copy().run(fn, *args, **kwargs)

    return run
