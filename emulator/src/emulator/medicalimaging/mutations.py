"""Image-set mutations: UpdateImageSetMetadata, CopyImageSet, DeleteImageSet, as state changes.

Every mutation is one SQLite write transaction (checks and writes together, so concurrent requests serialize and
a failed check changes nothing). A mutation writes its result at once (a new version, or the DELETING mark) and
leaves the affected image sets ``LOCKED`` with a transient workflow status (UPDATING, COPYING, DELETING...) for
``Settings.mutation_seconds`` on the job clock; :meth:`~emulator.medicalimaging.locks.LockModel.finalize_locks`
then makes them ACTIVE/UPDATED, ACTIVE/COPIED or DELETED. While LOCKED, other mutations answer
``ConflictException``.

What an edit may change is decided in ``metadata_edits.py``. The operations take plain arguments and return
:class:`ImageSetStatus` values; ``handlers.py`` turns those into AWS's response members.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from emulator.errors import ConflictException, ValidationException
from emulator.medicalimaging.metadata_edits import (
    Content,
    Instance,
    apply_edit,
    differing,
    parse_copiable,
    parse_dicom_updates,
)
from emulator.medicalimaging.models import MedicalImagingBackend
from emulator.medicalimaging.search import dicom_tags
from emulator.persistence import canonical, new_id


@dataclass
class ImageSetStatus:
    """Where an image set stands right after a mutation: its live row, not one of its versions."""

    datastore_id: str
    image_set_id: str
    version: int
    state: str
    workflow_status: str
    created_at: float
    updated_at: float
    arn: str


@dataclass
class CopyResult:
    source: ImageSetStatus
    destination: ImageSetStatus


@dataclass
class _Lock:
    """A transient state: ``workflow`` now, ``final_state``/``final_status`` after ``mutation_seconds``."""

    workflow: str
    final_state: str
    final_status: str


class ImageSetMutations:
    """The mutating image-set operations, on top of the backend's store and its lock handling."""

    def __init__(self, backend: MedicalImagingBackend) -> None:
        self.backend = backend
        self.store = backend.store

    # ---- helpers

    def _row(self, conn: sqlite3.Connection, datastore_id: str, image_set_id: str) -> sqlite3.Row:
        return self.backend.image_set_row(conn, datastore_id, image_set_id)

    @staticmethod
    def _check_writable(row: sqlite3.Row) -> None:
        if row["state"] == "DELETED" or row["workflow_status"] == "DELETING":
            raise ConflictException(f"Image set {row['id']} is deleted and cannot be modified")
        if row["state"] == "LOCKED":
            raise ConflictException(
                f"Image set {row['id']} is LOCKED ({row['workflow_status']}); retry when it is ACTIVE")

    @staticmethod
    def _check_version(row: sqlite3.Row, given: str, what: str) -> None:
        if str(row["version"]) != given:
            raise ConflictException(f"{what} {given} is not the latest version of image set {row['id']} "
                                    f"(latest is {row['version']})")

    def _load(self, conn: sqlite3.Connection, row: sqlite3.Row, version: int) -> Content:
        vrow = self.backend.version_row(conn, row["id"], version)
        rows = conn.execute(
            "SELECT sop_uid, first_version, until_version, doc, blob_sha256, size FROM instances "
            "WHERE image_set_id=? AND first_version<=? AND (until_version IS NULL OR until_version>?)",
            (row["id"], version, version)).fetchall()
        instances = {
            r["sop_uid"]: Instance(r["sop_uid"], r["doc"], r["blob_sha256"], r["size"],
                                   (row["id"], r["sop_uid"], r["first_version"])
                                   if r["until_version"] is None else None)
            for r in rows}
        return Content(json.loads(vrow["patient"]), json.loads(vrow["study"]), json.loads(vrow["series"]),
                       instances)

    def _write_version(self, conn: sqlite3.Connection, row: sqlite3.Row, content: Content, lock: _Lock, *,
                       is_primary: bool, forced: bool, message: str | None = None) -> int:
        """Store ``content`` as the next version of ``row``'s image set and lock the set. Returns the version."""
        set_id = row["id"]
        version = row["version"] + 1
        now = time.time()
        current = {r["sop_uid"]: r["first_version"] for r in conn.execute(
            "SELECT sop_uid, first_version FROM instances WHERE image_set_id=? AND until_version IS NULL",
            (set_id,))}
        keep = {sop for sop, inst in content.instances.items()
                if not inst.dirty and inst.origin == (set_id, sop, current.get(sop))}
        close = [sop for sop in current if sop not in keep]
        for i in range(0, len(close), 500):
            chunk = close[i:i + 500]
            conn.execute(f"UPDATE instances SET until_version=? WHERE image_set_id=? AND until_version IS NULL "
                         f"AND sop_uid IN ({','.join('?' * len(chunk))})", (version, set_id, *chunk))
        conn.executemany(
            "INSERT OR REPLACE INTO instances (image_set_id, sop_uid, first_version, until_version, doc, "
            "blob_sha256, size) VALUES (?,?,?,NULL,?,?,?)",
            [(set_id, sop, version, inst.text, inst.sha256, inst.size)
             for sop, inst in content.instances.items() if sop not in keep])
        conn.execute(
            "INSERT INTO image_set_versions (image_set_id, version, job_id, state, workflow_status, is_primary, "
            "message, created_at, updated_at, patient, study, series, forced) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (set_id, version, None, "LOCKED", lock.workflow, int(is_primary), message, row["created_at"], now,
             json.dumps(content.patient), json.dumps(content.study), json.dumps(content.series), int(forced)))
        tags = dicom_tags(content.patient, content.study, content.series, len(content.instances))
        conn.execute(
            "UPDATE image_sets SET version=?, study_uid=?, series_uid=?, is_primary=?, conflict_key=?, "
            "dicom_tags=?, updated_at=? WHERE id=?",
            (version, content.study_uid or row["study_uid"], content.series_uid or row["series_uid"],
             int(is_primary), canonical(content.conflict_key()), json.dumps(tags), now, set_id))
        self._lock(conn, set_id, version, lock)
        return version

    def _lock(self, conn: sqlite3.Connection, set_id: str, version: int, lock: _Lock) -> None:
        conn.execute(
            "UPDATE image_sets SET state='LOCKED', workflow_status=?, lock_until=?, final_state=?, final_status=?, "
            "lock_version=? WHERE id=?",
            (lock.workflow, self.backend.clock.now() + self.backend.settings.mutation_seconds, lock.final_state,
             lock.final_status, version, set_id))

    def _new_set(self, conn: sqlite3.Connection, datastore_id: str, content: Content,
                 is_primary: bool) -> sqlite3.Row:
        set_id = new_id()
        now = time.time()
        conn.execute(
            "INSERT INTO image_sets (id, seq, datastore_id, study_uid, series_uid, is_primary, conflict_key, "
            "version, state, workflow_status, created_at, updated_at, dicom_tags) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (set_id, self.store.next_seq(conn, "image_sets"), datastore_id, content.study_uid, content.series_uid,
             int(is_primary), canonical(content.conflict_key()), 0, "LOCKED", "COPYING", now, now, "{}"))
        row: sqlite3.Row = conn.execute("SELECT * FROM image_sets WHERE id=?", (set_id,)).fetchone()
        return row

    def _event(self, conn: sqlite3.Connection, set_id: str, kind: str,
               extra: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """An image-set event to publish after the commit: (detail type, ``events.image_set_event`` kwargs)."""
        row = conn.execute("SELECT * FROM image_sets WHERE id=?", (set_id,)).fetchone()
        return self.backend.image_set_event_args(row, kind, extra)

    def _status(self, conn: sqlite3.Connection, set_id: str) -> ImageSetStatus:
        return self._status_of(conn.execute("SELECT * FROM image_sets WHERE id=?", (set_id,)).fetchone())

    def _status_of(self, row: sqlite3.Row) -> ImageSetStatus:
        return ImageSetStatus(
            datastore_id=row["datastore_id"], image_set_id=row["id"], version=row["version"], state=row["state"],
            workflow_status=row["workflow_status"], created_at=row["created_at"], updated_at=row["updated_at"],
            arn=self.backend.image_set_arn(row["datastore_id"], row["id"]))

    # ---- UpdateImageSetMetadata

    def update_image_set_metadata(self, ds_id: str, set_id: str, latest_version: str, *,
                                  updatable: bytes | None = None, removable: bytes | None = None,
                                  revert: str | None = None, include: bool = False,
                                  force: bool = False) -> ImageSetStatus:
        """Write the next version of ``set_id`` (and, with ``include``, of the study's other primary sets).

        Either ``updatable`` / ``removable`` (the ``DICOMUpdates`` documents) or ``revert`` (a version id to
        restore) is given. Returns the updated set as it stands after the commit (LOCKED/UPDATING).
        """
        if revert is not None and include:
            raise ValidationException("includeStudyImageSets cannot be combined with revertToVersionId")
        edit = None if revert is not None else parse_dicom_updates(updatable, removable)
        self.backend.finalize_locks()
        events = []
        with self.store.write() as conn:
            row = self._row(conn, ds_id, set_id)
            self._check_writable(row)
            self._check_version(row, latest_version, "latestVersionId")
            targets: list[tuple[sqlite3.Row, Content, str]] = []
            if revert is not None:
                wanted = int(revert)
                if not 1 <= wanted <= row["version"]:
                    raise ValidationException(f"revertToVersionId {wanted} is not a version of image set {set_id}")
                targets.append((row, self._load(conn, row, wanted), "UPDATING"))
            else:
                assert edit is not None
                primary = bool(row["is_primary"])
                current = self._load(conn, row, row["version"])
                targets.append((row, apply_edit(current, edit, primary=primary, force=force, strict=True),
                                "UPDATING"))
                if include:
                    others = conn.execute(
                        "SELECT * FROM image_sets WHERE datastore_id=? AND study_uid=? AND is_primary=1 AND id!=? "
                        "AND state!='DELETED' AND workflow_status!='DELETING' ORDER BY seq",
                        (ds_id, row["study_uid"], set_id)).fetchall()
                    for other in others:
                        self._check_writable(other)
                        content = self._load(conn, other, other["version"])
                        targets.append((other, apply_edit(content, edit, primary=True, force=force, strict=False),
                                        "UPDATING_FOR_STUDY_CONSISTENCY"))
            for target, content, status in targets:
                self._write_version(conn, target, content, _Lock(status, "ACTIVE", "UPDATED"),
                                    is_primary=bool(target["is_primary"]), forced=force)
                events.append(self._event(conn, target["id"], "Image Set Updating"))
            result = self._status(conn, set_id)
        self.backend.locks_changed(events)
        return result

    # ---- CopyImageSet

    def copy_image_set(self, ds_id: str, source_id: str, source_version: str, *, copiable: str | None = None,
                       dest_id: str | None = None, dest_version: str | None = None, force: bool = False,
                       promote: bool = False) -> CopyResult:
        """Copy all of ``source_id`` (or the ``copiable`` selection) into ``dest_id`` or a new image set.

        ``dest_version`` goes with ``dest_id``. Returns both sets as they stand after the commit.
        """
        selection = parse_copiable(copiable) if copiable is not None else None
        if dest_id is not None and dest_id == source_id:
            raise ValidationException("The destination image set must differ from the source image set")
        self.backend.finalize_locks()
        events = []
        with self.store.write() as conn:
            source = self._row(conn, ds_id, source_id)
            self._check_writable(source)
            self._check_version(source, source_version, "sourceImageSet.latestVersionId")
            copied = self._select(self._load(conn, source, source["version"]), selection)
            for inst in copied.instances.values():
                inst.origin = None  # always a new row in the destination
            if dest_id is not None:
                assert dest_version is not None
                dest = self._row(conn, ds_id, dest_id)
                self._check_writable(dest)
                self._check_version(dest, dest_version, "destinationImageSet.latestVersionId")
                if promote and not dest["is_primary"]:
                    raise ValidationException("promoteToPrimary with a destinationImageSet needs a primary "
                                              "destination image set; omit destinationImageSet to create one")
                target = self._load(conn, dest, dest["version"])
                if (copied.study_uid, copied.series_uid) != (target.study_uid, target.series_uid):
                    raise ValidationException(
                        "The source and destination image sets hold different StudyInstanceUID or "
                        "SeriesInstanceUID; this emulator keeps one series per image set")
                diffs = differing(copied.conflict_key(), target.conflict_key(), ("patient", "study", "series"))
                if diffs and not force:
                    raise ValidationException(
                        "The source and destination image sets have inconsistent Patient, Study or Series level "
                        f"attributes ({', '.join(diffs)}); set force=true to copy anyway")
                # The destination keeps its own Patient/Study/Series documents; the copied instances join it.
                target.instances.update(copied.instances)
                self._write_version(conn, dest, target, _Lock("COPYING", "ACTIVE", "COPIED"),
                                    is_primary=bool(dest["is_primary"]), forced=bool(diffs))
                target_id = dest["id"]
            else:
                forced = False
                if promote:
                    forced = self._promote_checks(conn, ds_id, source_id, copied, force)
                    existing = conn.execute(
                        "SELECT * FROM image_sets WHERE datastore_id=? AND study_uid=? AND series_uid=? "
                        "AND is_primary=1 AND state!='DELETED' AND workflow_status!='DELETING'",
                        (ds_id, copied.study_uid, copied.series_uid)).fetchone()
                    if existing is not None and existing["id"] != source_id:
                        # One primary set per series: the new primary set takes over the old one's instances (the
                        # copied ones win), and the old set is demoted to non-primary (it keeps its data).
                        self._check_writable(existing)
                        old = self._load(conn, existing, existing["version"])
                        merged = {sop: Instance(i.sop, i.text, i.sha256, i.size, None)
                                  for sop, i in old.instances.items()}
                        merged.update(copied.instances)
                        copied.instances = merged
                        self._write_version(conn, existing, old, _Lock("UPDATING", "ACTIVE", "UPDATED"),
                                            is_primary=False, forced=False,
                                            message="Demoted to non-primary by a promoteToPrimary copy")
                        events.append(self._event(conn, existing["id"], "Image Set Updating"))
                new_row = self._new_set(conn, ds_id, copied, promote)
                self._write_version(conn, new_row, copied, _Lock("COPYING", "ACTIVE", "COPIED"),
                                    is_primary=promote, forced=forced)
                target_id = new_row["id"]
            self._lock(conn, source_id, source["version"],
                       _Lock("COPYING_WITH_READ_ONLY_ACCESS", "ACTIVE", source["workflow_status"]))
            if promote and dest_id is None and source["is_primary"]:
                # Promoting a copy of the primary set itself: the copy takes over, the source is demoted.
                conn.execute("UPDATE image_sets SET is_primary=0 WHERE id=?", (source_id,))
            events.append(self._event(conn, target_id, "Image Set Copying",
                                      {"sourceImageSetArn": self.backend.image_set_arn(ds_id, source_id)}))
            result = CopyResult(self._status(conn, source_id), self._status(conn, target_id))
        self.backend.locks_changed(events)
        return result

    def _select(self, content: Content, selection: dict[str, set[str] | None] | None) -> Content:
        out = content.clone()
        if selection is None:
            return out
        for uid, sops in selection.items():
            if uid != content.series_uid:
                raise ValidationException("copiableAttributes selects a Series that is not in the source image set")
            if sops is None:
                continue
            missing = sops - set(content.instances)
            if missing:
                raise ValidationException(
                    f"copiableAttributes selects {len(missing)} SOP instance(s) that are not in the source image set")
            out.instances = {sop: inst for sop, inst in out.instances.items() if sop in sops}
        return out

    def _promote_checks(self, conn: sqlite3.Connection, ds_id: str, source_id: str, content: Content,
                        force: bool) -> bool:
        """Refuse to promote data that disagrees with the study's primary sets (unless forced). Returns forced."""
        key = content.conflict_key()
        rows = conn.execute(
            "SELECT id, series_uid, conflict_key FROM image_sets WHERE datastore_id=? AND study_uid=? "
            "AND is_primary=1 AND state!='DELETED' AND workflow_status!='DELETING' AND id!=?",
            (ds_id, content.study_uid, source_id)).fetchall()
        diffs: list[str] = []
        for r in rows:
            other = json.loads(r["conflict_key"])
            levels = ("patient", "study", "series") if r["series_uid"] == content.series_uid else ("patient", "study")
            diffs += [d for d in differing(key, other, levels) if d not in diffs]
        if diffs and not force:
            raise ValidationException(
                f"The image set disagrees with the primary image sets of its study on {', '.join(diffs)}; "
                "update its metadata first, or set force=true to promote it anyway")
        return bool(diffs)

    # ---- DeleteImageSet

    def delete_image_set(self, ds_id: str, set_id: str) -> ImageSetStatus:
        """Mark ``set_id`` DELETING (LOCKED until ``mutation_seconds`` pass); returns where the deletion stands."""
        self.backend.finalize_locks()
        events = []
        with self.store.write() as conn:
            row = self._row(conn, ds_id, set_id)
            if row["state"] == "DELETED" or row["workflow_status"] == "DELETING":
                # Idempotent (the model marks DeleteImageSet idempotent): report where the deletion stands.
                return self._status_of(row)
            self._check_writable(row)
            self._lock(conn, set_id, row["version"], _Lock("DELETING", "DELETED", "DELETED"))
            events.append(self._event(conn, set_id, "Image Set Deleting"))
            result = self._status(conn, set_id)
        self.backend.locks_changed(events)
        return result
