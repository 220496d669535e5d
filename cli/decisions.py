"""`himig approve --update LEVEL.KEYWORD=VALUE`: the metadata correction a promote applies first (`update_first`).

The values are what an operator types on purpose (they may be patient data): messages here name the flag, the
level and the keyword, never a value.
"""

from __future__ import annotations

from cli.calls import CommandError
from contracts.reconciliation import UPDATABLE_LEVELS


def update_first(entries: list[str] | None) -> dict[str, dict[str, str]] | None:
    """``["Patient.PatientID=X", "Study.StudyID=Y"]`` → ``{"Patient": {"PatientID": "X"}, "Study": {...}}``."""
    if not entries:
        return None
    out: dict[str, dict[str, str]] = {}
    for n, entry in enumerate(entries, 1):
        target, sep, value = entry.partition("=")
        level, dot, keyword = target.strip().partition(".")
        if not sep or not dot:
            raise CommandError(f"--update #{n}: expected LEVEL.KEYWORD=VALUE, e.g. Patient.PatientID=<value>", 2)
        if level not in UPDATABLE_LEVELS:
            raise CommandError(f"--update #{n}: the level must be one of {', '.join(UPDATABLE_LEVELS)} "
                               "(UpdateImageSetMetadata changes Patient and Study attributes)", 2)
        if not keyword.isidentifier() or len(keyword) > 64:
            raise CommandError(f"--update #{n}: the attribute after {level}. must be a DICOM keyword, "
                               "e.g. PatientID", 2)
        if keyword in out.get(level, {}):
            raise CommandError(f"--update: {level}.{keyword} is given twice", 2)
        out.setdefault(level, {})[keyword] = value
    return out
