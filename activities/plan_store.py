"""Planning's working set on local disk: every normalized record of a migration in one SQLite file.

Planning needs three orders over the same records (by SOP Instance UID to find duplicates, by key to find
source folders, by study and series to predict non-primary image sets and to pack), plus lookups into the
import index. Held in lists, that is the worker's peak memory at a million files; here it is a temporary
SQLite database with one index per order, so memory is SQLite's page cache plus one group (one SOP Instance
UID's copies, one series' first record, one batch) at a time. Why SQLite rather than an external sort of the
pages: three orders would mean three sorts and a merge-join with the index; SQLite does the sorting, joining
and spilling, ships with Python and needs nothing to be cleaned up but one directory.

The file belongs to one activity attempt (`activities.spill_db`): a retry, on this worker or another, rebuilds it
from the pages in S3, so nothing here must survive a crash.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, groupby
from types import TracebackType

from activities.spill_db import SpillDatabase
from contracts.common import FileState
from contracts.records import InstanceRecord, LedgerEntry, attributes_fingerprint

# dropped.state; OTHER_WAVE: planned by an earlier wave or left to a later one (never in this call's ledger)
DUPLICATE, HELD, FAILED_BEFORE, OTHER_WAVE = 1, 2, 3, 4
_KEPT = "NOT EXISTS (SELECT 1 FROM dropped WHERE dropped.seq = inst.seq)"
# Ledger phases, written in this order (as planning always wrote them): duplicates within the source, then
# files the data store already holds, then files held back because they failed before (activities.failed_before).
PHASE_DUPLICATES, PHASE_HELD, PHASE_FAILED_BEFORE = 0, 1, 2

_SCHEMA = """
CREATE TABLE inst (
    seq INTEGER PRIMARY KEY,          -- reading order (page, line): the tie-break of equal keys
    key TEXT NOT NULL, sop TEXT NOT NULL, study TEXT NOT NULL, series TEXT NOT NULL,
    size INTEGER NOT NULL, afp TEXT NOT NULL,
    record TEXT NOT NULL,             -- the validated InstanceRecord as JSON (exclude_none), as manifests hold it
    predicted INTEGER NOT NULL DEFAULT 0, -- the record arrived predicted non-primary already
    page INTEGER NOT NULL DEFAULT 0,  -- the inventory page it was parsed from
    ready INTEGER NOT NULL DEFAULT 0  -- the wave that plans it is the first to have parsed page `ready` (set_ready)
);
-- Verdicts go into tables of their own: SQLite leaves undefined what a running SELECT sees of rows the same
-- connection updates, and every verdict is written while a SELECT over inst is running.
CREATE TABLE dropped (seq INTEGER PRIMARY KEY, state INTEGER NOT NULL);  -- DUPLICATE or HELD: in the ledger
CREATE TABLE prediction (seq INTEGER PRIMARY KEY, reason TEXT NOT NULL);  -- predicted non-primary by this plan
CREATE TABLE staged (seq INTEGER PRIMARY KEY);  -- packed into staged batches, not imported in place
CREATE TABLE hit (sop TEXT PRIMARY KEY, image_set TEXT NOT NULL, record TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE held_series (study TEXT NOT NULL, series TEXT NOT NULL, image_set TEXT NOT NULL, record TEXT NOT NULL,
                          PRIMARY KEY (study, series)) WITHOUT ROWID;
CREATE TABLE idx (n INTEGER PRIMARY KEY, sop TEXT, study TEXT, series TEXT, is_primary INTEGER, image_set TEXT,
                  record TEXT);
CREATE TABLE ledger (id INTEGER PRIMARY KEY, phase INTEGER NOT NULL, key TEXT NOT NULL, rejected INTEGER NOT NULL,
                     line TEXT NOT NULL);
-- last: the last inventory page listing an object directly in this folder (-1: none; "" is the source's root)
-- inv, inv_bytes: objects and bytes under the folder in the source listing (recursively)
CREATE TABLE folder (path TEXT PRIMARY KEY, inv INTEGER NOT NULL DEFAULT 0, kept INTEGER NOT NULL DEFAULT 0,
                     bytes INTEGER NOT NULL DEFAULT 0, last INTEGER NOT NULL DEFAULT -1,
                     inv_bytes INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
"""
_CHUNK = 2000
_ROW = ("SELECT inst.seq, key, size, study, series, record, prediction.reason FROM inst "
        "LEFT JOIN prediction ON prediction.seq = inst.seq")


@dataclass(frozen=True, slots=True)
class Row:
    """One kept record on its way into a batch."""

    seq: int
    key: str
    size: int
    study: str
    series: str
    record: str
    reason: str | None  # set: planning predicted it non-primary, and the record must say so

    def manifest_line(self) -> str:
        if self.reason is None:
            return self.record
        inst = InstanceRecord.model_validate_json(self.record)
        inst.predicted_non_primary = True
        inst.prediction_reason = self.reason
        return inst.model_dump_json(exclude_none=True)


@dataclass(frozen=True, slots=True)
class FolderStats:
    inventoried: int  # objects under the folder in the source listing (recursively)
    kept: int  # of them, files this plan imports
    bytes: int  # their bytes


def ancestors(key: str) -> Iterator[str]:
    """Every folder of ``key``, shortest first: ``a/``, ``a/b/`` for ``a/b/c.dcm``."""
    end = key.find("/")
    while end != -1:
        yield key[: end + 1]
        end = key.find("/", end + 1)


class PlanStore:
    """``with PlanStore() as store:`` a fresh database in a fresh temporary directory, removed on exit."""

    def __init__(self, cache_mib: int = 16) -> None:
        self._spill = SpillDatabase("plan", _SCHEMA, cache_mib)
        self._db = self._spill.db

    def __enter__(self) -> PlanStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._spill.close()

    # -- loading -------------------------------------------------------------------------------------------

    def add_records(self, records: Iterable[InstanceRecord], page: int = 0) -> int:
        rows = [(r.key, r.sop_instance_uid, r.study_instance_uid, r.series_instance_uid, r.size,
                 attributes_fingerprint(r), r.model_dump_json(exclude_none=True), int(r.predicted_non_primary), page)
                for r in records]
        self._db.executemany("INSERT INTO inst (key, sop, study, series, size, afp, record, predicted, page) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return len(rows)

    def finish_loading(self) -> None:
        """Build the three orders once every record is in (faster than keeping indexes up while inserting)."""
        self._db.execute("CREATE INDEX inst_sop ON inst (sop)")
        self._db.execute("CREATE INDEX inst_key ON inst (key, seq)")
        self._db.execute("CREATE INDEX inst_series ON inst (study, series, key, seq)")

    def records(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM inst").fetchone()[0])

    # -- waves ---------------------------------------------------------------------------------------------

    def set_ready(self, by_folder: bool, fits: tuple[int, int] | None = None) -> None:
        """Each record's readiness: by folder, the last inventory page listing anything directly in its folder
        (so a folder is planned whole, by the first wave to have parsed all of it, and can still be imported in
        place); otherwise its own page. Needs `add_inventory` of every page first when ``by_folder``.

        ``fits`` (max files, max bytes of a batch): a file whose folder, with everything under it, is larger
        than that is ready at its own page. No folder above it is smaller, so it can never be imported in place
        and nothing is gained by waiting for the rest of the folder (a flat prefix of a whole archive, a series
        of thousands of files)."""
        if not by_folder:
            self._db.execute("UPDATE inst SET ready = page")
            return
        # rtrim(key, key without its slashes) is the key up to and including its last "/": its folder.
        folder = "SELECT {} FROM folder WHERE folder.path = rtrim(inst.key, replace(inst.key, '/', ''))"
        whole = f"MAX(page, COALESCE(({folder.format('last')}), -1))"
        if fits is None:
            self._db.execute(f"UPDATE inst SET ready = {whole}")
            return
        too_big = f"COALESCE(({folder.format('inv > ? OR inv_bytes > ?')}), 0)"
        self._db.execute(f"UPDATE inst SET ready = CASE WHEN {too_big} THEN page ELSE {whole} END", fits)

    def keep_wave(self, first_page: int, pages: int, complete: bool) -> None:
        """Set aside (`OTHER_WAVE`) what this wave does not plan: records an earlier wave planned (ready before
        ``first_page``) and, unless ``complete``, records whose folder is not parsed whole yet (ready at
        ``pages`` or later). They still take part in `duplicate_groups`."""
        later = "" if complete else " OR ready >= ?"
        args = (first_page,) if complete else (first_page, pages)
        self._db.execute(f"INSERT INTO dropped (seq, state) SELECT seq, {OTHER_WAVE} FROM inst "
                         f"WHERE ready < ?{later}", args)

    # -- the import index ----------------------------------------------------------------------------------

    def add_index_rows(self, rows: Iterable[tuple[str, str, str, bool, str, str]]) -> None:
        """One index object's rows (sop, study, series, is_primary, image set, line JSON), in their order: kept
        where they meet this source, a later line replacing an earlier one of the same instance or series."""
        self._db.executemany("INSERT INTO idx (sop, study, series, is_primary, image_set, record) "
                             "VALUES (?, ?, ?, ?, ?, ?)", rows)
        # Only where it meets the files this call plans (a wave's: `keep_wave` runs first).
        self._db.execute("INSERT OR REPLACE INTO hit (sop, image_set, record) SELECT sop, image_set, record FROM idx "
                         f"WHERE sop IN (SELECT sop FROM inst WHERE {_KEPT}) ORDER BY n")
        self._db.execute("INSERT OR REPLACE INTO held_series (study, series, image_set, record) "
                         "SELECT study, series, image_set, record FROM idx WHERE is_primary AND EXISTS "
                         f"(SELECT 1 FROM inst WHERE inst.study = idx.study AND inst.series = idx.series AND {_KEPT}) "
                         "ORDER BY n")
        self._db.execute("DELETE FROM idx")

    def indexed_image_sets(self) -> Iterator[str]:
        for (image_set,) in self._db.execute("SELECT image_set FROM hit UNION SELECT image_set FROM held_series "
                                             "ORDER BY 1"):
            yield image_set

    def forget_image_sets(self, gone: Iterable[str]) -> None:
        """Index lines pointing into image sets that no longer exist: their files are imported again."""
        rows = [(g,) for g in gone]
        self._db.executemany("DELETE FROM hit WHERE image_set = ?", rows)
        self._db.executemany("DELETE FROM held_series WHERE image_set = ?", rows)

    def index_hits(self) -> Iterator[str]:
        """SOP Instance UIDs of this source the import index holds (after `forget_image_sets`)."""
        for (sop,) in self._db.execute("SELECT sop FROM hit ORDER BY sop"):
            yield sop

    def held_series_keys(self) -> Iterator[tuple[str, str]]:
        yield from self._db.execute("SELECT study, series FROM held_series ORDER BY study, series")

    def held_series(self, study: str, series: str) -> str | None:
        found = self._db.execute("SELECT record FROM held_series WHERE study = ? AND series = ?",
                                 (study, series)).fetchone()
        return None if found is None else str(found[0])

    # -- verdicts ------------------------------------------------------------------------------------------

    def duplicate_groups(self) -> Iterator[list[tuple[int, str, int]]]:
        """(seq, record JSON, ready) of every SOP Instance UID found more than once, one group at a time, in
        planning order: by readiness, then key (the first is the copy every wave keeps)."""
        cursor = self._db.execute(
            "SELECT sop, seq, record, ready FROM inst WHERE sop IN "
            "(SELECT sop FROM inst GROUP BY sop HAVING COUNT(*) > 1) ORDER BY sop, ready, key, seq")
        for _, group in groupby(cursor, key=lambda r: r[0]):
            yield [(seq, record, ready) for _, seq, record, ready in group]

    def kept_with_hits(self) -> Iterator[list[tuple[int, str, str]]]:
        """(seq, record, index line) of kept files whose SOP Instance UID the index holds, by key, in chunks."""
        cursor = self._db.execute("SELECT inst.seq, inst.record, hit.record FROM inst JOIN hit ON hit.sop = inst.sop "
                                  f"WHERE {_KEPT} ORDER BY inst.key, inst.seq")
        while chunk := cursor.fetchmany(_CHUNK):
            yield [(int(seq), str(record), str(line)) for seq, record, line in chunk]

    def drop(self, seqs: Iterable[int], state: int) -> None:
        self._db.executemany("INSERT INTO dropped (seq, state) VALUES (?, ?)", [(s, state) for s in seqs])

    def add_ledger(self, phase: int, entries: Iterable[LedgerEntry]) -> None:
        self._db.executemany("INSERT INTO ledger (phase, key, rejected, line) VALUES (?, ?, ?, ?)",
                             [(phase, e.key, int(e.state is FileState.REJECTED), e.model_dump_json(exclude_none=True))
                              for e in entries])

    def ledger_lines(self) -> Iterator[str]:
        for (line,) in self._db.execute("SELECT line FROM ledger ORDER BY phase, key, id"):
            yield line

    def ledger_counts(self, phase: int | None = None) -> tuple[int, int]:
        """(entries, rejected entries), of one phase or of all."""
        where, args = ("WHERE phase = ?", (phase,)) if phase is not None else ("", ())
        total, rejected = self._db.execute(f"SELECT COUNT(*), COALESCE(SUM(rejected), 0) FROM ledger {where}",
                                           args).fetchone()
        return int(total), int(rejected)

    # -- prediction ----------------------------------------------------------------------------------------

    def kept_by_series(self) -> Iterator[tuple[int, str, str, str]]:
        """(seq, study, series, attributes fingerprint) of kept files by study, series and key."""
        yield from self._db.execute(f"SELECT seq, study, series, afp FROM inst WHERE {_KEPT} "
                                    "ORDER BY study, series, key, seq")

    def set_predicted(self, reasons: Iterable[tuple[int, str]]) -> None:
        self._db.executemany("INSERT INTO prediction (seq, reason) VALUES (?, ?)", reasons)

    def predicted(self) -> int:
        """Kept files predicted non-primary: by this plan, or already on arrival."""
        return int(self._db.execute(f"SELECT COUNT(*) FROM inst WHERE {_KEPT} AND (predicted OR EXISTS "
                                    "(SELECT 1 FROM prediction WHERE prediction.seq = inst.seq))").fetchone()[0])

    def kept(self) -> int:
        return int(self._db.execute(f"SELECT COUNT(*) FROM inst WHERE {_KEPT}").fetchone()[0])

    # -- folders -------------------------------------------------------------------------------------------

    def add_inventory(self, objects: Iterable[tuple[str, int]], page: int = 0) -> None:
        """One inventory page's (key, size) pairs: every folder above each counts it and its bytes (summed per
        page, then stored), and the folder each is directly in notes ``page`` as the last page listing it so far
        (pages come in order)."""
        counts: dict[str, list[int]] = {}
        leaves: set[str] = set()
        for key, size in objects:
            # "" (the bucket's root) too: a source of a whole bucket may hold its files there.
            for folder in chain(("",), ancestors(key)):
                c = counts.setdefault(folder, [0, 0])
                c[0] += 1
                c[1] += size
            leaves.add(key[: key.rfind("/") + 1])
        self._db.executemany("INSERT INTO folder (path, inv, inv_bytes) VALUES (?, ?, ?) ON CONFLICT (path) "
                             "DO UPDATE SET inv = inv + excluded.inv, inv_bytes = inv_bytes + excluded.inv_bytes",
                             [(path, n, b) for path, (n, b) in counts.items()])
        self._db.executemany("INSERT INTO folder (path, last) VALUES (?, ?) "
                             "ON CONFLICT (path) DO UPDATE SET last = MAX(last, excluded.last)",
                             [(leaf, page) for leaf in leaves])

    def count_kept_folders(self) -> None:
        """Files and bytes this plan imports under every folder (recursively)."""
        counts: dict[str, list[int]] = {}

        def flush() -> None:
            self._db.executemany("INSERT INTO folder (path, kept, bytes) VALUES (?, ?, ?) ON CONFLICT (path) "
                                 "DO UPDATE SET kept = kept + excluded.kept, bytes = bytes + excluded.bytes",
                                 [(p, n, b) for p, (n, b) in counts.items()])
            counts.clear()

        for key, size in self._db.execute(f"SELECT key, size FROM inst WHERE {_KEPT} ORDER BY key, seq"):
            for folder in ancestors(key):
                c = counts.setdefault(folder, [0, 0])
                c[0] += 1
                c[1] += size
            if len(counts) >= 50_000:
                flush()
        flush()

    def folder(self, path: str) -> FolderStats:
        found = self._db.execute("SELECT inv, kept, bytes FROM folder WHERE path = ?", (path,)).fetchone()
        return FolderStats(*found) if found else FolderStats(0, 0, 0)

    # -- packing -------------------------------------------------------------------------------------------

    def _rows(self, sql: str) -> Iterator[Row]:
        cursor = self._db.execute(sql)
        while chunk := cursor.fetchmany(_CHUNK):
            for seq, key, size, study, series, record, reason in chunk:
                yield Row(seq, key, size, study, series, record, reason)

    def kept_by_key(self) -> Iterator[Row]:
        return self._rows(f"{_ROW} WHERE {_KEPT} ORDER BY key, inst.seq")

    def set_staged(self, seqs: Iterable[int]) -> None:
        self._db.executemany("INSERT INTO staged (seq) VALUES (?)", [(s,) for s in seqs])

    def stage_all(self) -> None:
        self._db.execute(f"INSERT INTO staged (seq) SELECT seq FROM inst WHERE {_KEPT}")

    def staged_by_study(self) -> Iterator[Row]:
        return self._rows(f"{_ROW} JOIN staged ON staged.seq = inst.seq WHERE {_KEPT} "
                          "ORDER BY study, series, key, inst.seq")
