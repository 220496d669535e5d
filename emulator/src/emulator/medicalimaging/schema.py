"""HealthImaging's additions to the base SQLite schema (``emulator.store.SCHEMA``): mutation locks and tags.

Additive and idempotent, so a data dir written by an older emulator gains the columns on start-up.
"""

from __future__ import annotations

from emulator.store import Store

IMAGE_SET_COLUMNS = (("lock_until", "REAL"), ("final_state", "TEXT"), ("final_status", "TEXT"),
                     ("lock_version", "INTEGER"), ("deleted_at", "REAL"), ("tags", "TEXT"),
                     ("last_accessed_at", "REAL"))


def migrate(store: Store) -> None:
    with store.write() as conn:
        have = {r["name"] for r in conn.execute("PRAGMA table_info(image_sets)")}
        for name, kind in IMAGE_SET_COLUMNS:
            if name not in have:
                conn.execute(f"ALTER TABLE image_sets ADD COLUMN {name} {kind}")
        if "forced" not in {r["name"] for r in conn.execute("PRAGMA table_info(image_set_versions)")}:
            conn.execute("ALTER TABLE image_set_versions ADD COLUMN forced INTEGER NOT NULL DEFAULT 0")
        conn.execute("CREATE INDEX IF NOT EXISTS image_sets_lock ON image_sets(lock_until)")
