"""The root of the HealthImaging backend: its shared state, and the transient LOCKED states of mutations.

Mutations (``mutations.py``) leave image sets ``LOCKED`` with a transient workflow status for
``Settings.mutation_seconds`` on the job clock, recording the final state in ``image_sets.final_state`` /
``final_status`` / ``lock_until``. :meth:`LockModel.finalize_locks` ends the due ones (a sweeper thread calls it on
time so the final events go out; every read calls it first anyway).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

from emulator.config import Settings
from emulator.events import EventSink
from emulator.medicalimaging.clock import JobClock
from emulator.store import Store


class LockModel:
    """State every part of the backend shares (set by ``MedicalImagingBackend.__init__``), and lock ending."""

    settings: Settings
    store: Store
    clock: JobClock
    events: EventSink
    _sweeper: threading.Thread | None
    _sweeper_lock: threading.Lock

    def image_set_event_args(self, row: sqlite3.Row, detail_type: str,
                             extra: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """(detail type, keyword arguments of ``events.image_set_event``) for an image-set row."""
        return detail_type, {"datastore_id": row["datastore_id"], "image_set_id": row["id"],
                             "version": row["version"], "is_primary": bool(row["is_primary"]),
                             "state": row["state"], "workflow_status": row["workflow_status"], "extra": extra}

    def locks_changed(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Called by a mutation after its commit: publish its events and make sure the locks will end."""
        for detail_type, kwargs in events:
            self.events.image_set_event(detail_type, **kwargs)
        self._ensure_sweeper()

    _FINAL_EVENTS = {"UPDATED": "Image Set Updated", "COPIED": "Image Set Copied", "DELETED": "Image Set Deleted"}

    def finalize_locks(self) -> int:
        """End every lock whose time on the job clock is up (ACTIVE/UPDATED, ACTIVE/COPIED, DELETED/DELETED)."""
        now = self.clock.now()
        with self.store.read() as conn:
            if conn.execute("SELECT 1 FROM image_sets WHERE lock_until IS NOT NULL AND lock_until<=? LIMIT 1",
                            (now,)).fetchone() is None:
                return 0
        events = []
        with self.store.write() as conn:
            rows = conn.execute("SELECT * FROM image_sets WHERE lock_until IS NOT NULL AND lock_until<=?",
                                (now,)).fetchall()
            for r in rows:
                final_state, final_status = r["final_state"], r["final_status"]
                # An import may have added a version meanwhile; its workflow status (IMPORTED) then stays.
                status = final_status if r["version"] == r["lock_version"] else r["workflow_status"]
                conn.execute(
                    "UPDATE image_sets SET state=?, workflow_status=?, lock_until=NULL, final_state=NULL, "
                    "final_status=NULL, deleted_at=? WHERE id=?",
                    (final_state, status, time.time() if final_state == "DELETED" else r["deleted_at"], r["id"]))
                conn.execute("UPDATE image_set_versions SET state=?, workflow_status=? WHERE image_set_id=? AND "
                             "version=?", (final_state, final_status, r["id"], r["lock_version"]))
                kind = self._FINAL_EVENTS.get(final_status)
                if kind:
                    row = conn.execute("SELECT * FROM image_sets WHERE id=?", (r["id"],)).fetchone()
                    events.append(self.image_set_event_args(row, kind))
        for detail_type, kwargs in events:
            self.events.image_set_event(detail_type, **kwargs)
        return len(rows)

    def _ensure_sweeper(self) -> None:
        with self._sweeper_lock:
            if self._sweeper is None and self._locks_pending():
                self._sweeper = threading.Thread(target=self._sweep, name="image-set-locks", daemon=True)
                self._sweeper.start()

    def _locks_pending(self) -> bool:
        with self.store.read() as conn:
            return conn.execute("SELECT 1 FROM image_sets WHERE lock_until IS NOT NULL LIMIT 1").fetchone() is not None

    def _sweep(self) -> None:
        try:
            while True:
                time.sleep(0.05)
                self.finalize_locks()
                with self._sweeper_lock:
                    if not self._locks_pending():
                        self._sweeper = None
                        return
        except Exception:  # the store was closed (shutdown) or reset under us: reads still finalize lazily
            with self._sweeper_lock:
                self._sweeper = None
