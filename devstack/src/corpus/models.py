"""Manifest models for generated DICOM corpora.

A corpus directory holds DICOM (and deliberately non-DICOM) files plus ``corpus-manifest.json``. The manifest has
one :class:`CorpusEntry` per file, saying where the file came from and what a correct migration pipeline should
conclude about it. All patient values in generated files are synthetic. Real files come from pydicom's anonymised
test data and carry that data's own values.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_NAME = "corpus-manifest.json"
MANIFEST_FORMAT_VERSION = 1


class Origin(StrEnum):
    """Where a corpus file came from."""

    REAL = "real"  # copied unchanged from pydicom / pydicom-data test files
    SYNTHETIC = "synthetic"  # generated multi-patient hierarchy
    MALFORMED = "malformed"  # generated hostile input (or a legal oddity) built from a synthetic base
    NONPRIMARY = "nonprimary"  # pair sharing Study/Series UIDs with conflicting patient values
    DUPLICATE = "duplicate"  # byte-identical copy of another corpus file under another path
    IDENTITY = "identity"  # one SOP instance re-encoded (same instance) or changed (a conflict): instance identity


class Expected(StrEnum):
    """What a correct pipeline should conclude about a file."""

    VALID = "valid"  # import it; it lands in a primary image set
    REJECT = "reject"  # do not submit it; report why (not DICOM, truncated, no identity, bad encoding, ...)
    SERVICE_FAILURE = "service_failure"  # parseable DICOM that HealthImaging's import fails (element length limits)
    NON_PRIMARY = "non_primary"  # imports, but conflicts with an earlier file and lands in a non-primary image set
    DUPLICATE = "duplicate"  # the same instance as another file (identical bytes, or the same dataset and pixels in
    # another encoding or with another file meta group): import once, report the other as a duplicate
    CONFLICT = "conflict"  # same SOP Instance UID as an earlier file, other elements or pixels: the first is
    # imported, this one rejected for review with the differing attributes named (`differs_in`)


class CorpusEntry(BaseModel):
    """One file in a corpus. ``path`` is POSIX-style and relative to the corpus root."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    origin: Origin
    expected: Expected
    defect: str | None = None
    reason: str | None = Field(default=None, description="Why `expected` is what it is, for humans.")
    source: str | None = Field(default=None, description="Upstream name of a real file.")
    related_to: str | None = Field(default=None, description="Corpus path this file duplicates or conflicts with.")
    differs_in: list[str] | None = Field(default=None, description="For a conflict: the attributes (keywords) that "
                                         "differ from `related_to`; names only, never values.")
    # Identity as written into the file. Filled for files a pipeline should be able to identify (everything
    # except `reject`), so tests and reconciliation can match image sets back to corpus files.
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    transfer_syntax_uid: str | None = None

    def with_path(self, path: str) -> CorpusEntry:
        """Copy of this entry re-rooted at ``path`` (used when a generator writes into a sub-directory)."""
        return self.model_copy(update={"path": path})


class CorpusManifest(BaseModel):
    """All files of one corpus, sorted by path."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = MANIFEST_FORMAT_VERSION
    kind: str
    seed: int
    entries: list[CorpusEntry]

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)

    def counts_by_origin(self) -> dict[str, int]:
        return dict(sorted(Counter(e.origin.value for e in self.entries).items()))

    def counts_by_expected(self) -> dict[str, int]:
        return dict(sorted(Counter(e.expected.value for e in self.entries).items()))

    def by_path(self) -> dict[str, CorpusEntry]:
        return {e.path: e for e in self.entries}

    def write(self, dest: Path) -> Path:
        """Write ``corpus-manifest.json`` into directory ``dest``; the output is byte-stable for equal manifests."""
        path = dest / MANIFEST_NAME
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry_for_bytes(path: str, data: bytes, **fields: object) -> CorpusEntry:
    """Build an entry for ``data`` (already written at corpus-relative ``path``)."""
    return CorpusEntry.model_validate({"path": path, "size": len(data), "sha256": sha256_hex(data), **fields})


def make_manifest(kind: str, seed: int, entries: list[CorpusEntry]) -> CorpusManifest:
    """Manifest with entries sorted by path; refuses duplicate paths, which would mean a generator bug."""
    ordered = sorted(entries, key=lambda e: e.path)
    dupes = sorted(p for p, n in Counter(e.path for e in ordered).items() if n > 1)
    if dupes:
        raise ValueError(f"corpus paths generated more than once: {dupes}")
    return CorpusManifest(kind=kind, seed=seed, entries=ordered)


def load_manifest(path: Path) -> CorpusManifest:
    """Load a manifest from ``path`` (the JSON file, or the corpus directory holding it)."""
    if path.is_dir():
        path = path / MANIFEST_NAME
    return CorpusManifest.model_validate_json(path.read_text(encoding="utf-8"))
