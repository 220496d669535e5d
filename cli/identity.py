"""Who an operator is, for the records a command leaves (operator log, manifest approvals, attested decisions).

Never empty: an explicit ``--by``, else the login name the OS knows (``getpass``: LOGNAME, USER, ..., then the
password database), else the numeric uid (a container user with no name still is someone).
"""

from __future__ import annotations

import getpass
import os


def os_user() -> str:
    """The OS account running this command."""
    try:
        name = getpass.getuser().strip()
    except (OSError, KeyError, ImportError):  # no variable set and the uid has no passwd entry
        name = ""
    if name:
        return name
    uid = getattr(os, "getuid", None)
    return f"uid-{uid()}" if uid is not None else "unknown-user"


def operator(by: str | None) -> str:
    """``by`` when given (it must say something), else `os_user`. `ValueError` names ``--by`` when blank."""
    if by is None:
        return os_user()
    if not by.strip():
        raise ValueError("--by: must not be blank (leave it out to record the OS user)")
    return by.strip()
