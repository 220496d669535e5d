"""A throw-away SQLite database on local disk, for stages that must order or join more records than fit in memory.

Planning (`activities.plan_store`) and reporting (`activities.report_store`) see every file of a migration; in
lists their memory grows with the migration. Spilled here, memory is SQLite's page cache (``cache_mib``) plus
what the caller holds at a time. The database belongs to one activity attempt, in a fresh temporary directory
removed on close: a crash loses it and the retry rebuilds it from S3, so it runs without journal and fsync.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path


class SpillDatabase:
    def __init__(self, name: str, schema: str, cache_mib: int = 16) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix=f"himig-{name}-")
        self.path = Path(self._dir.name) / f"{name}.sqlite"
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "temp_store=FILE", f"cache_size=-{cache_mib * 1024}"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.executescript(schema)
        # One transaction for the database's life: nothing is ever read back after a crash.
        self.db.execute("BEGIN")

    def close(self) -> None:
        self.db.close()
        self._dir.cleanup()
