"""`himig start` flags that name a source connector, turned into `MigrationInput.source_connector` JSON."""

from __future__ import annotations

import os
from typing import Any


class SourceFlagError(ValueError):
    """A connector flag is missing, repeated or malformed; the message names the flag."""


# The PACS search and retrieval flags: JSON field -> flag, and the fields only a DIMSE source has.
PACS_FLAGS = {"study_date_from": "--study-date-from", "study_date_to": "--study-date-to", "modalities": "--modality",
              "result_cap": "--result-cap", "retrieve": "--retrieve", "parallel": "--parallel"}
DIMSE_ONLY = ("retrieve", "parallel")


def connector_from_flags(source_dir: str | None, dicomweb: str | None, dimse: str | None, called_ae: str | None,
                         calling_ae: str | None, study_uids: list[str] | None,
                         pacs: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The connector JSON for the flags given (None: migrate the S3 prefix as it is). ``pacs`` holds the PACS
    search/retrieval flags by JSON field (see ``PACS_FLAGS``); unset ones are None or empty."""
    given = {k: v for k, v in (pacs or {}).items() if v is not None and v != []}
    if given and dicomweb is None and dimse is None:
        raise SourceFlagError(f"{', '.join(PACS_FLAGS[k] for k in given)}: only with --source-dicomweb or "
                              "--source-dimse")
    if dimse is None and (only := [PACS_FLAGS[k] for k in DIMSE_ONLY if k in given]):
        raise SourceFlagError(f"{', '.join(only)}: only with --source-dimse")
    chosen = [flag for flag, value in (("--source-dir", source_dir), ("--source-dicomweb", dicomweb),
                                       ("--source-dimse", dimse)) if value is not None]
    if len(chosen) > 1:
        raise SourceFlagError(f"{' and '.join(chosen)}: give at most one source connector")
    if dimse is None and (called_ae or calling_ae):
        raise SourceFlagError("--called-ae/--calling-ae: only with --source-dimse")
    if study_uids and dicomweb is None and dimse is None:
        raise SourceFlagError("--study-uid: only with --source-dicomweb or --source-dimse")
    uids = {"study_uids": study_uids} if study_uids else {}
    if source_dir is not None:
        # The local stack's worker shares this file system; a relative path means "from here".
        return {"kind": "local", "path": os.path.abspath(source_dir) if source_dir else source_dir}
    if dicomweb is not None:
        return {"kind": "dicomweb", "url": dicomweb, **uids, **given}
    if dimse is not None:
        host, sep, port = dimse.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise SourceFlagError(f"--source-dimse: expected HOST:PORT, got {dimse!r}")
        if not called_ae:
            raise SourceFlagError("--called-ae: required with --source-dimse (the PACS's AE title)")
        return {"kind": "dimse", "host": host.strip("[]"), "port": int(port), "called_ae": called_ae,
                "calling_ae": calling_ae or "HIMIG", **uids, **given}
    return None
