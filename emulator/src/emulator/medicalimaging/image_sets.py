"""Image sets and their versions: GetImageSet, ListImageSetVersions, GetImageSetMetadata, SearchImageSets.

An image set is one ``image_sets`` row (the live state: version, LOCKED/DELETED, primary flag) plus one
``image_set_versions`` row per version (its Patient/Study/Series documents and its own history state) and the
``instances`` rows visible in that version (``first_version <= v < until_version``). Imports
(``import_plan.py``) and mutations (``mutations.py``) write new versions; this module reads them.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
from typing import Any

from emulator.errors import ResourceNotFoundException
from emulator.medicalimaging import frames, tiers
from emulator.medicalimaging.datastores import DatastoreModel
from emulator.medicalimaging.records import ImageSetVersion, page
from emulator.medicalimaging.search import filter_predicates, sorted_summaries
from emulator.persistence import canonical


class ImageSetModel(DatastoreModel):
    """Reads of image sets and their versions (every read first ends the locks that are due)."""

    def image_set_row(self, conn: sqlite3.Connection, datastore_id: str, image_set_id: str) -> sqlite3.Row:
        """The live row of an image set (``ResourceNotFoundException`` for it or its data store)."""
        self.get_datastore(datastore_id)
        row = conn.execute("SELECT * FROM image_sets WHERE id=? AND datastore_id=?",
                           (image_set_id, datastore_id)).fetchone()
        if row is None:
            raise ResourceNotFoundException(f"Image set {image_set_id} does not exist in datastore {datastore_id}")
        return row

    def version_row(self, conn: sqlite3.Connection, image_set_id: str, version: int) -> sqlite3.Row:
        """The history row of one version of an image set (``ResourceNotFoundException`` if there is none)."""
        vrow = conn.execute("SELECT * FROM image_set_versions WHERE image_set_id=? AND version=?",
                            (image_set_id, version)).fetchone()
        if vrow is None:
            raise ResourceNotFoundException(f"Version {version} of image set {image_set_id} does not exist")
        return vrow

    def _version(self, row: sqlite3.Row, vrow: sqlite3.Row) -> ImageSetVersion:
        latest = vrow["version"] == row["version"]
        deleted = row["state"] == "DELETED"
        # The set row carries the live state (LOCKED during a mutation, DELETED, a demotion); history keeps its own.
        return ImageSetVersion(
            image_set_id=row["id"], datastore_id=row["datastore_id"], version=vrow["version"],
            latest_version=row["version"], state="DELETED" if deleted else (row["state"] if latest else vrow["state"]),
            workflow_status=row["workflow_status"] if latest else vrow["workflow_status"],
            is_primary=bool(row["is_primary"] if latest else vrow["is_primary"]), created_at=vrow["created_at"],
            updated_at=vrow["updated_at"], message=vrow["message"],
            arn=self.image_set_arn(row["datastore_id"], row["id"]),
            deleted_at=row["deleted_at"] if deleted else None, forced=bool(vrow["forced"]),
            last_accessed_at=tiers.last_accessed(row),
            storage_tier=tiers.tier(row, self.clock.aged_now(), self.settings.archive_after_days),
        )

    def touch(self, datastore_id: str, image_set_id: str) -> None:
        """Record an access that moves the set (back) to Frequent Access (see tiers.py for which calls touch)."""
        with self.store.write() as conn:
            conn.execute("UPDATE image_sets SET last_accessed_at=? WHERE datastore_id=? AND id=?",
                         (self.clock.aged_now(), datastore_id, image_set_id))

    def get_image_set(self, datastore_id: str, image_set_id: str, version: str | None) -> ImageSetVersion:
        self.finalize_locks()
        with self.store.read() as conn:
            row = self.image_set_row(conn, datastore_id, image_set_id)
            vrow = self.version_row(conn, image_set_id, int(version) if version else row["version"])
        return self._version(row, vrow)

    def list_image_set_versions(self, datastore_id: str, image_set_id: str, token: str | None,
                                max_results: int | None) -> tuple[list[ImageSetVersion], str | None]:
        self.finalize_locks()
        with self.store.read() as conn:
            row = self.image_set_row(conn, datastore_id, image_set_id)
            vrows = conn.execute("SELECT * FROM image_set_versions WHERE image_set_id=? ORDER BY version DESC",
                                 (image_set_id,)).fetchall()
        return page([self._version(row, v) for v in vrows], token, max_results,
                    f"ListImageSetVersions:{image_set_id}")

    def get_image_set_metadata(self, datastore_id: str, image_set_id: str, version: str | None) -> bytes:
        """The gzip-compressed metadata document of one image-set version."""
        self.finalize_locks()
        with self.store.read() as conn:
            row = self.image_set_row(conn, datastore_id, image_set_id)
            if row["state"] == "DELETED":
                raise ResourceNotFoundException(f"Image set {image_set_id} is deleted")
            v = int(version) if version else row["version"]
            vrow = self.version_row(conn, image_set_id, v)
            docs = conn.execute(
                "SELECT sop_uid, doc FROM instances WHERE image_set_id=? AND first_version<=? "
                "AND (until_version IS NULL OR until_version>?) ORDER BY sop_uid", (image_set_id, v, v)).fetchall()
        # The instance documents are stored as JSON text; splice them in instead of re-parsing thousands of them.
        instances = ",".join(f"{json.dumps(r['sop_uid'])}:{r['doc']}" for r in docs)
        # A forced update may have changed the SeriesInstanceUID: each version is keyed by its own.
        series_uid = json.loads(vrow["series"]).get("SeriesInstanceUID") or row["series_uid"]
        series = (f"{json.dumps(series_uid)}:{{\"DICOM\":{vrow['series']},"
                  f"\"Instances\":{{{instances}}}}}")
        text = (f"{{\"SchemaVersion\":\"1.1\",\"DatastoreID\":{json.dumps(datastore_id)},"
                f"\"ImageSetID\":{json.dumps(image_set_id)},\"Patient\":{{\"DICOM\":{vrow['patient']}}},"
                f"\"Study\":{{\"DICOM\":{vrow['study']},\"Series\":{{{series}}}}}}}")
        return gzip.compress(text.encode(), compresslevel=5)

    def get_image_frame(self, datastore_id: str, image_set_id: str, frame_id: str) -> tuple[bytes, str]:
        """One frame of the latest version: (bytes, content type), see ``frames.get_frame``."""
        self.finalize_locks()
        with self.store.read() as conn:
            row = self.image_set_row(conn, datastore_id, image_set_id)
            if row["state"] == "DELETED":
                raise ResourceNotFoundException(f"Image set {image_set_id} is deleted")
            # Frame ids are [0-9a-z]{32} (validated), so a substring search on the stored JSON is exact enough.
            hit = conn.execute(
                "SELECT doc, blob_sha256 FROM instances WHERE image_set_id=? AND until_version IS NULL "
                "AND instr(doc, ?) > 0 LIMIT 1", (image_set_id, f'"ID":"{frame_id}"')).fetchone()
        not_found = ResourceNotFoundException(f"Image frame {frame_id} does not exist in image set {image_set_id}")
        if hit is None:
            raise not_found
        doc = json.loads(hit["doc"])
        ids = [f.get("ID") for f in doc.get("ImageFrames") or []]
        if frame_id not in ids:
            raise not_found
        try:
            # Transcoded frames come from the on-disk cache when present (the P10 file is then not read).
            blob, ctype = frames.get_frame(doc, ids.index(frame_id), frame_id,
                                           lambda: self.store.get_blob(hit["blob_sha256"]), self.store.frame_dir)
        except FileNotFoundError:
            raise ResourceNotFoundException(
                f"Pixel data of image frame {frame_id} is not stored (the emulator runs with "
                "--store-instances false)") from None
        except IndexError:
            raise not_found from None
        return blob, ctype

    def search_image_sets(self, datastore_id: str, criteria: dict[str, Any] | None, token: str | None,
                          max_results: int | None) -> tuple[list[dict[str, Any]], str | None, dict[str, Any] | None]:
        self.get_datastore(datastore_id)
        self.finalize_locks()
        criteria = criteria or {}
        predicates = filter_predicates(criteria)
        with self.store.read() as conn:
            rows = conn.execute("SELECT * FROM image_sets WHERE datastore_id=? AND state!='DELETED' "
                                "AND workflow_status!='DELETING'", (datastore_id,)).fetchall()
        sort = criteria.get("sort")
        items = sorted_summaries(rows, predicates, sort, self.clock.aged_now(), self.settings.archive_after_days)
        chunk, nxt = page(items, token, max_results, f"SearchImageSets:{datastore_id}:{canonical(criteria)}")
        return chunk, nxt, sort
