"""The report's join of inventory and ledgers, on local disk (`activities.spill_db`), for any number of files.

`activities.report.build_report` states the rules over lists; this store applies the same rules with SQLite doing
the sorting and joining, so the report activity holds one line at a time (plus the capped aggregates):

* each inventory key in key order, with the last ledger line written for it (``accounted_twice`` counts the
  others); an inventory key listed twice gets its line once;
* then the instances a connector could not pull (receive failures) that the inventory does not hold, the last
  line per key, in key order;
* each line is timed by the ledger object it came from (a receive failure's object, if the key has one, else the
  last ledger object naming it), as the report's timeline wants.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from types import TracebackType

from activities.spill_db import SpillDatabase
from contracts.common import FileState
from contracts.records import InventoryEntry, LedgerEntry

_SCHEMA = """
CREATE TABLE inv (n INTEGER PRIMARY KEY, key TEXT NOT NULL, size INTEGER NOT NULL);
CREATE TABLE led (n INTEGER PRIMARY KEY, key TEXT NOT NULL, obj INTEGER NOT NULL, line TEXT NOT NULL);
CREATE TABLE unr (n INTEGER PRIMARY KEY, key TEXT NOT NULL, obj INTEGER NOT NULL, line TEXT NOT NULL);
CREATE TABLE rows (pos INTEGER PRIMARY KEY, key TEXT NOT NULL, obj INTEGER, line TEXT NOT NULL);
"""
_LAST_OBJ = ("COALESCE((SELECT obj FROM unr WHERE unr.key = {k} ORDER BY n DESC LIMIT 1), "
             "(SELECT obj FROM led WHERE led.key = {k} ORDER BY n DESC LIMIT 1))")


class ReportStore:
    def __init__(self) -> None:
        self._spill = SpillDatabase("report", _SCHEMA)
        self._db = self._spill.db

    def __enter__(self) -> ReportStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._spill.close()

    def add_inventory(self, entries: Iterable[InventoryEntry]) -> None:
        self._db.executemany("INSERT INTO inv (key, size) VALUES (?, ?)", ((e.key, e.size) for e in entries))

    def add_ledger(self, obj: int, entries: Iterable[LedgerEntry]) -> None:
        """Lines of ledger object number ``obj`` (the caller keeps each object's time)."""
        self._db.executemany("INSERT INTO led (key, obj, line) VALUES (?, ?, ?)",
                             ((e.key, obj, e.model_dump_json(exclude_none=True)) for e in entries))

    def add_unreceived(self, obj: int, entries: Iterable[LedgerEntry]) -> None:
        self._db.executemany("INSERT INTO unr (key, obj, line) VALUES (?, ?, ?)",
                             ((e.key, obj, e.model_dump_json(exclude_none=True)) for e in entries))

    def finish_loading(self) -> None:
        for sql in ("CREATE INDEX inv_key ON inv (key, n)", "CREATE INDEX led_key ON led (key, n)",
                    "CREATE INDEX unr_key ON unr (key, n)"):
            self._db.execute(sql)

    def accounted_twice(self) -> int:
        return int(self._db.execute("SELECT COALESCE(SUM(c - 1), 0) FROM (SELECT COUNT(*) AS c FROM led GROUP BY key)"
                                    ).fetchone()[0])

    def outside_inventory(self) -> int:
        """Distinct keys with a ledger line that the inventory does not list."""
        return int(self._db.execute("SELECT COUNT(DISTINCT key) FROM led WHERE key NOT IN (SELECT key FROM inv)"
                                    ).fetchone()[0])

    def build_rows(self, cancelled: bool) -> tuple[int, int]:
        """Write the report's rows in order; returns (unaccounted, not reached before a cancel)."""
        unaccounted = not_reached = 0
        cursor = self._db.execute(
            "SELECT i.key, i.size, CASE WHEN i.k = 1 THEN (SELECT line FROM led WHERE led.key = i.key "
            f"ORDER BY n DESC LIMIT 1) END, {_LAST_OBJ.format(k='i.key')} FROM (SELECT key, size, n, "
            "ROW_NUMBER() OVER (PARTITION BY key ORDER BY n) AS k FROM inv) AS i ORDER BY i.key, i.n")
        out: list[tuple[str, int | None, str]] = []
        while chunk := cursor.fetchmany(2000):
            for key, size, line, obj in chunk:
                if line is None:
                    if cancelled:
                        not_reached += 1
                        line = LedgerEntry(key=key, state=FileState.FAILED, size=size, code="Cancelled",
                                           reason="the migration was cancelled before this file was imported"
                                           ).model_dump_json(exclude_none=True)
                    else:
                        unaccounted += 1
                        line = LedgerEntry(key=key, state=FileState.FAILED, size=size, code="Unaccounted",
                                           reason="no stage recorded an outcome for this file"
                                           ).model_dump_json(exclude_none=True)
                out.append((key, obj, line))
            self._db.executemany("INSERT INTO rows (key, obj, line) VALUES (?, ?, ?)", out)
            out.clear()
        # An instance that failed once and landed on a retry is in the inventory: the inventory wins.
        self._db.execute("INSERT INTO rows (key, obj, line) SELECT key, obj, line FROM unr AS u WHERE "
                         "u.n = (SELECT MAX(n) FROM unr AS x WHERE x.key = u.key) AND "
                         "u.key NOT IN (SELECT key FROM inv) ORDER BY u.key")
        self._db.execute("CREATE INDEX rows_key ON rows (key, pos)")
        return unaccounted, not_reached

    def rows(self) -> Iterator[tuple[LedgerEntry, int | None]]:
        """Every row in order, with the number of the ledger object that timed it (None: timed by the report)."""
        cursor = self._db.execute("SELECT line, obj FROM rows ORDER BY pos")
        while chunk := cursor.fetchmany(2000):
            for line, obj in chunk:
                yield LedgerEntry.model_validate_json(line), obj

    def row(self, key: str) -> LedgerEntry | None:
        """The row of ``key`` (the last, if the inventory listed it twice)."""
        found = self._db.execute("SELECT line FROM rows WHERE key = ? ORDER BY pos DESC LIMIT 1", (key,)).fetchone()
        return None if found is None else LedgerEntry.model_validate_json(found[0])
