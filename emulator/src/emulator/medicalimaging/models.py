"""HealthImaging state and logic (moto's ``models.py`` role; no HTTP here): the :class:`MedicalImagingBackend`.

The backend is one object composed of one class per concern, each in its own module:

* ``locks.py``: shared state, and ending the transient LOCKED states mutations leave;
* ``datastores.py``: data stores and ARNs;
* ``import_jobs.py``: import jobs and applying them (``import_plan.py`` decides which image set an instance lands
  in and writes the job's output documents);
* ``image_sets.py``: reading image sets, their versions and frames, SearchImageSets (filters in ``search.py``);
* ``tags.py``: tags of data stores and image sets;
* ``schema.py``: the columns this service adds to the base schema;
* ``records.py``: the records it returns.

The mutating image-set operations are ``mutations.py``, on top of this backend.
Everything lives in SQLite (``emulator.store``), so every method is safe to call from any thread and state
survives restarts; every write is one transaction.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from emulator.config import Settings
from emulator.events import EventSink
from emulator.medicalimaging import schema
from emulator.medicalimaging.clock import JobClock
from emulator.medicalimaging.image_sets import ImageSetModel
from emulator.medicalimaging.import_jobs import ImportJobModel
from emulator.medicalimaging.tags import TagModel
from emulator.store import Store


class MedicalImagingBackend(ImportJobModel, ImageSetModel, TagModel):
    """All HealthImaging state transitions. Thread-safe; every write is one SQLite transaction."""

    def __init__(self, settings: Settings, store: Store, clock: JobClock) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        # The notification hook: state changes call self.events.emit(detail_type, detail, resources) or one of its
        # helpers (datastore_event / job_event / image_set_event, emulator/events.py). A no-op until app.build
        # installs the EventBridge publisher.
        self.events = EventSink()
        # Mutations (mutations.py) leave image sets LOCKED for settings.mutation_seconds; a sweeper thread ends
        # those locks on time (so their events go out), and every read ends the due ones first anyway.
        self._sweeper = None
        self._sweeper_lock = threading.Lock()
        schema.migrate(store)
        self._ensure_sweeper()

    # ---- admin API (emulator/admin.py)

    def reset(self) -> None:
        self.store.wipe()

    def state(self) -> dict[str, Any]:
        with self.store.read() as conn:
            stores = conn.execute("SELECT id, name, status FROM datastores ORDER BY seq").fetchall()
            jobs = conn.execute("SELECT id, datastore_id, status, applied, message, input_owner FROM jobs "
                                "ORDER BY seq").fetchall()
            sets = conn.execute(
                "SELECT s.id, s.datastore_id, s.version, s.is_primary, s.state, "
                "(SELECT COUNT(*) FROM instances i WHERE i.image_set_id=s.id AND i.until_version IS NULL) AS n "
                "FROM image_sets s ORDER BY s.seq").fetchall()
        return {
            "clock": {"mode": self.clock.mode, "now": self.clock.now()},
            "datastores": [{"datastoreId": r["id"], "status": r["status"],
                            "imageSets": sum(1 for s in sets if s["datastore_id"] == r["id"]),
                            "jobs": sum(1 for j in jobs if j["datastore_id"] == r["id"])} for r in stores],
            "jobs": [{"jobId": j["id"], "datastoreId": j["datastore_id"], "jobStatus": j["status"],
                      "applied": bool(j["applied"]), "message": j["message"],
                      "inputOwnerAccountId": j["input_owner"]} for j in jobs],
            "imageSets": [{"imageSetId": s["id"], "datastoreId": s["datastore_id"], "version": s["version"],
                           "isPrimary": bool(s["is_primary"]), "state": s["state"], "instances": s["n"]}
                          for s in sets],
            "counts": {"datastores": len(stores), "jobs": len(jobs), "imageSets": len(sets)},
        }

    def stats(self, job_id: str | None = None) -> dict[str, Any]:
        sql = "SELECT id, datastore_id, status, stats FROM jobs"
        args: tuple[Any, ...] = ()
        if job_id:
            sql += " WHERE id=?"
            args = (job_id,)
        with self.store.read() as conn:
            rows = conn.execute(sql + " ORDER BY seq", args).fetchall()
        jobs = [{"jobId": r["id"], "datastoreId": r["datastore_id"], "jobStatus": r["status"],
                 **(json.loads(r["stats"]) if r["stats"] else {})} for r in rows]
        totals: dict[str, float] = {}
        for j in jobs:
            for k, v in j.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    totals[k] = totals.get(k, 0) + v
        return {"jobs": jobs, "totals": totals}

