"""Local directory connector: every regular file under the directory is uploaded to ``landing + relative path``.

Keys keep the relative path so operators can trace a file back. Symlinks are followed only when they stay
inside the directory; one that leaves it (a file that cannot be read or named in S3, or a subdirectory that
cannot be listed) becomes a failed report line, never a silent skip. Files are streamed, never read whole into
memory. A worker reads no directory at all until ``HIMIG_SOURCE_DIR_ROOTS`` lists where sources may be.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from activities.sources.common import (
    Landing,
    SourceMisconfigured,
    SourceUnavailable,
    UnitOutcome,
    marker,
    parse_marker,
)
from contracts import layout
from contracts.sources import LocalSource

MAX_KEY_BYTES = 1024  # S3's key length limit


class LocalConnector:
    def __init__(self, config: LocalSource, allowed_roots: tuple[str, ...] = ()) -> None:
        self._root = Path(config.path)
        # Resolved once; the source directory is resolved on first use and again only when a file of it cannot be.
        self._allowed = tuple(Path(a).resolve() for a in allowed_roots)
        self._resolved: Path | None = None

    def describe(self) -> str:
        return "local directory source"

    def _real_root(self, enumerated: bool = False) -> Path:
        """The resolved source directory. ``enumerated``: it was listed before, so its disappearing now (an
        unmounted share) is worth retrying, while a directory missing from the start is a configuration error."""
        if not self._allowed:
            # Deny by default: otherwise whoever can start a migration can upload e.g. /run/secrets.
            raise SourceMisconfigured("path: this worker reads no local directories until HIMIG_SOURCE_DIR_ROOTS "
                                      "lists the directories sources may be under")
        problem = SourceUnavailable if enumerated else SourceMisconfigured
        try:
            root = self._root.resolve(strict=True)
        except (OSError, RuntimeError) as err:
            raise problem(f"path: cannot open the directory ({type(err).__name__})") from None
        if not root.is_dir():
            raise problem("path: is not a directory")
        if not any(root.is_relative_to(a) for a in self._allowed):
            # Workflow input must not turn the worker into a reader of arbitrary files (keys, configs).
            raise SourceMisconfigured("path: is outside the directories this worker may read (HIMIG_SOURCE_DIR_ROOTS)")
        self._resolved = root
        return root

    def probe(self) -> None:
        self._real_root(enumerated=True)

    def unit_key(self, unit: str, landing: Landing) -> str:
        return self._key(unit, landing)[0]

    @staticmethod
    def _key(unit: str, landing: Landing) -> tuple[str, str | None]:
        """``(landing + unit, None)`` when that is a valid S3 key, else a stand-in key and why: a hex name for a
        name that is not valid UTF-8 (``UnrepresentableName``), a truncated key for one over S3's key limit
        (``KeyTooLong``)."""
        key = layout.landed_object(landing.prefix, unit).key
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            # Named by a position-free hex of the name instead.
            hexed = unit.encode("utf-8", "surrogateescape").hex()[:200]
            return layout.landed_object(landing.prefix, hexed).key, "UnrepresentableName"
        if len(key.encode()) > MAX_KEY_BYTES:
            return key[: MAX_KEY_BYTES // 4], "KeyTooLong"
        return key, None

    def units(self) -> Iterator[str]:
        """Relative POSIX paths of every entry that is not a directory, sorted (a stable, resumable order); a
        subdirectory that cannot be listed becomes an ``unreadable-dir`` marker unit (a failure row later)."""
        root = self._real_root()
        unreadable: list[str] = []

        def onerror(err: OSError) -> None:
            # Unreadable, or removed while we walked: os.walk would otherwise skip it without a word.
            where = Path(err.filename) if err.filename else None
            if where is None or where == root or not where.is_relative_to(root):
                raise SourceMisconfigured(f"path: the directory could not be listed ({type(err).__name__})")
            unreadable.append(where.relative_to(root).as_posix())

        for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=onerror):
            dirnames.sort()
            for rel in unreadable:
                yield marker("unreadable-dir", rel)
            unreadable.clear()
            base = Path(dirpath)
            # Symlinked directories are not descended (os.walk lists them in dirnames); report them as entries.
            entries = sorted(filenames + [d for d in dirnames if (base / d).is_symlink()])
            for name in entries:
                yield (base / name).relative_to(root).as_posix()
        for rel in unreadable:
            yield marker("unreadable-dir", rel)

    def pull(self, unit: str, landing: Landing) -> UnitOutcome:
        out = UnitOutcome()
        if found := parse_marker(unit):
            out.fail(self._key(found[1].rstrip("/") + "/", landing)[0], "SourceUnreadable",
                     "a subdirectory could not be listed (permissions, or removed during the listing); "
                     "its files were not pulled")
            return out
        root = self._resolved or self._real_root(enumerated=True)
        key, problem = self._key(unit, landing)
        if problem == "UnrepresentableName":
            out.fail(key, problem, "the file name is not valid UTF-8 and cannot become an S3 key")
            return out
        if problem == "KeyTooLong":
            out.fail(key, problem, "landing prefix + relative path exceed S3's 1024-byte key limit")
            return out
        try:
            real = (root / unit).resolve(strict=True)
        except (OSError, RuntimeError):
            self._real_root(enumerated=True)  # raises when the whole directory is gone (an unmounted share)
            out.fail(key, "SourceUnreadable", "the file vanished or is a broken symlink")
            return out
        if not real.is_relative_to(root):
            out.fail(key, "SymlinkOutsideSource", "a symlink pointing outside the source directory was not followed")
            return out
        if real.is_dir():
            return out  # a link to a directory inside the source: its files are pulled under their real path
        if not real.is_file():
            out.fail(key, "NotAFile", "not a regular file (directory link, device, socket or pipe)")
            return out
        try:
            with open(real, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                landing.put(key, f, size)
        except OSError as err:
            out.fail(key, "SourceUnreadable", f"the file could not be read ({type(err).__name__})")
            return out
        out.pulled = 1
        return out
