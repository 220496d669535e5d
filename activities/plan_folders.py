"""Packing batches along source folders, from records streamed in order (planning's second half).

An import job reads its input prefix recursively, so a batch can be imported in place (no staging copy, one S3
request per file fewer) only when it is exactly every object under one folder. Batches of a fixed size almost
never are: a 1,000-file batch cut from a study/series tree starts and ends in the middle of folders. So
planning first looks for folders to import whole, top down: a file goes with its highest folder that

* is clean: every object the source listing found under it is a file this plan imports (no rejected file, no
  duplicate, no stray object that the job would read too);
* fits one job (files and bytes);
* is worth a job of its own: at least 1/32 of a full batch (`min_direct_files`). A job costs a start, polls
  and a review; a staged file costs one copy. Smaller clean folders are staged and packed with others.

A clean parent that fits is one job for all its sub-folders (several series of a study, several small studies
of a day); a parent too big for one job leaves its sub-folders to be taken one by one; a folder too big with
no clean sub-folder that fits is staged and split. Everything not imported in place is packed as before: whole
studies first-fit, a study larger than a batch split by series, then by file (`StreamPacker`, the streaming
form of `activities.plan.pack`: it holds only the last few open batches).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from itertools import groupby

from activities.plan_store import FolderStats, Row, ancestors

# How many of the most recent open batches a unit may still join: full first-fit is quadratic at millions of
# files, and a batch that fell out of the window is final (it is written at once, so memory stays bounded).
OPEN_BATCHES = 8


def min_direct_files(max_files: int) -> int:
    return max(1, -(-max_files // 32))


class FolderPlanner:
    """Which folder, if any, a kept file is imported from in place (see the module's rules)."""

    def __init__(self, stats: Callable[[str], FolderStats], source_prefix: str, max_files: int, max_bytes: int,
                 min_files: int | None = None) -> None:
        self._stats = stats
        self._source = source_prefix
        self._max_files = max_files
        self._max_bytes = max_bytes
        self._min_files = min_direct_files(max_files) if min_files is None else min_files
        # The folders of the current key: keys arrive in order, so a folder's files are consecutive.
        self._cache: dict[str, FolderStats] = {}

    def _folder(self, path: str) -> FolderStats:
        found = self._cache.get(path)
        if found is None:
            if len(self._cache) > 256:
                self._cache.clear()
            found = self._cache[path] = self._stats(path)
        return found

    def direct_folder(self, key: str) -> str | None:
        for folder in ancestors(key):
            # Only inside the source: the bucket's root or a folder above the source prefix holds other things.
            if not folder.startswith(self._source) or not folder:
                continue
            st = self._folder(folder)
            if (st.inventoried == st.kept and self._min_files <= st.kept <= self._max_files
                    and st.bytes <= self._max_bytes):
                return folder
        return None

    def is_clean(self, keys: list[str]) -> str | None:
        """The folder holding exactly ``keys`` and nothing else, when there is one inside the source prefix (a
        staged batch that happens to be a whole folder is imported in place too)."""
        common = os.path.commonprefix(keys)  # noqa: RUF071 - character prefix on purpose; cut at the last "/"
        folder = common[: common.rfind("/") + 1]
        if not folder or not folder.startswith(self._source):
            return None
        return folder if self._folder(folder).inventoried == len(keys) else None


def split_direct(rows: Iterable[Row], planner: FolderPlanner | None,
                 stage: Callable[[list[int]], None]) -> Iterator[tuple[str, list[Row]]]:
    """Yield (folder, its rows) for every folder imported in place, from ``rows`` in key order; every other
    row's seq goes to ``stage`` (in chunks). Without a planner every row is staged."""
    staged: list[int] = []
    folder: str | None = None
    batch: list[Row] = []
    for row in rows:
        target = planner.direct_folder(row.key) if planner is not None else None
        if batch and target != folder:
            assert folder is not None
            yield folder, batch
            batch = []
        if target is None:
            staged.append(row.seq)
            if len(staged) >= 5000:
                stage(staged)
                staged = []
        else:
            folder = target
            batch.append(row)
    if batch:
        assert folder is not None
        yield folder, batch
    if staged:
        stage(staged)


def study_units(rows: Iterable[Row], max_files: int, max_bytes: int) -> Iterator[list[Row]]:
    """From rows ordered by study, series and key: each whole study that fits, else its greedy chunks (the
    units of `activities.plan.pack`; a study that fits is exactly the one chunk greedy cutting leaves)."""
    for _, study in groupby(rows, key=lambda r: r.study):
        chunk: list[Row] = []
        size = 0
        for row in study:
            if chunk and (len(chunk) + 1 > max_files or size + row.size > max_bytes):
                yield chunk
                chunk, size = [], 0
            chunk.append(row)
            size += row.size
        if chunk:
            yield chunk


class StreamPacker:
    """First-fit of units into the last `OPEN_BATCHES` open batches; a batch leaving that window is final and
    handed to ``emit`` at once, in creation order, as `activities.plan.pack` would have numbered it."""

    def __init__(self, max_files: int, max_bytes: int, emit: Callable[[list[Row]], None]) -> None:
        self._max_files = max_files
        self._max_bytes = max_bytes
        self._emit = emit
        self._open: list[tuple[list[Row], list[int]]] = []  # (rows, [bytes])

    def add(self, unit: list[Row]) -> None:
        unit_bytes = sum(r.size for r in unit)
        for rows, size in self._open:
            if len(rows) + len(unit) <= self._max_files and size[0] + unit_bytes <= self._max_bytes:
                rows.extend(unit)
                size[0] += unit_bytes
                return
        self._open.append((list(unit), [unit_bytes]))
        if len(self._open) > OPEN_BATCHES:
            self._emit(self._open.pop(0)[0])

    def close(self) -> None:
        while self._open:
            self._emit(self._open.pop(0)[0])
