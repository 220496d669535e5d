"""Read-only view of the stored image sets for DICOMweb: series (= image sets) and their current instances.

DICOMweb sees the *latest* version of each image set and the instances current in it (``until_version IS
NULL``). Only primary image sets are visible, unless the request names an ``imageSetId``, which selects exactly
that set, primary or not (DG ``dicomweb-retrieve*.html``, ``dicomweb-search.html``).
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass
from typing import Any

from emulator.errors import ResourceNotFoundException
from emulator.medicalimaging.models import MedicalImagingBackend

IMAGE_SET_ID_RE = re.compile(r"[0-9a-z]{32}")


@dataclass
class SeriesRecord:
    """One image set as a DICOM series: its Patient/Study/Series documents and instance count."""

    image_set_id: str
    is_primary: bool
    updated_at: float
    study_uid: str
    series_uid: str
    patient: dict[str, Any]
    study: dict[str, Any]
    series: dict[str, Any]
    instance_count: int


@dataclass
class InstanceRecord:
    series: SeriesRecord
    sop_uid: str
    doc: dict[str, Any]  # {"DICOM": {...}, "DICOMVRs": {...}, "StoredTransferSyntaxUID": ..., "ImageFrames": [...]}
    blob_sha256: str
    size: int

    @property
    def transfer_syntax(self) -> str:
        """The syntax of the stored P10 file: its file meta, kept in the instance's DICOM attributes.

        ``StoredTransferSyntaxUID`` may name lossless JPEG 2000 instead, the syntax GetImageFrame transcodes to.
        """
        dicom = self.doc.get("DICOM") or {}
        return str(dicom.get("TransferSyntaxUID") or self.doc.get("StoredTransferSyntaxUID") or "")

    @property
    def vrs(self) -> dict[str, str]:
        vrs: dict[str, str] = self.doc.get("DICOMVRs") or {}
        return vrs


class Catalog:
    def __init__(self, backend: MedicalImagingBackend) -> None:
        self.backend = backend

    def check_datastore(self, datastore_id: str) -> None:
        """404 for an unknown (or deleted) data store, without echoing anything but the id's shape."""
        ds = self.backend.get_datastore(datastore_id)
        if ds.status in ("DELETING", "DELETED"):
            raise ResourceNotFoundException(f"Datastore {datastore_id} does not exist")

    def series(self, datastore_id: str, image_set_id: str | None = None, study_uid: str | None = None,
               series_uid: str | None = None) -> list[SeriesRecord]:
        """Visible series of a data store, optionally narrowed to one study / series / image set."""
        sql = ("SELECT s.id, s.is_primary, s.updated_at, s.study_uid, s.series_uid, v.patient, v.study, v.series, "
               "(SELECT COUNT(*) FROM instances i WHERE i.image_set_id=s.id AND i.until_version IS NULL) AS n "
               "FROM image_sets s JOIN image_set_versions v ON v.image_set_id=s.id AND v.version=s.version "
               "WHERE s.datastore_id=? AND s.state!='DELETED' AND s.workflow_status!='DELETING'")
        args: list[Any] = [datastore_id]
        if image_set_id is not None:
            sql += " AND s.id=?"
            args.append(image_set_id)
        else:
            sql += " AND s.is_primary=1"
        if study_uid is not None:
            sql += " AND s.study_uid=?"
            args.append(study_uid)
        if series_uid is not None:
            sql += " AND s.series_uid=?"
            args.append(series_uid)
        with self.backend.store.read() as conn:
            rows = conn.execute(sql, args).fetchall()
        if image_set_id is not None and not rows:
            self._check_image_set(datastore_id, image_set_id)
        return [_series(r) for r in rows]

    def _check_image_set(self, datastore_id: str, image_set_id: str) -> None:
        with self.backend.store.read() as conn:
            row = conn.execute("SELECT 1 FROM image_sets WHERE id=? AND datastore_id=? AND state!='DELETED'",
                               (image_set_id, datastore_id)).fetchone()
        if row is None:
            raise ResourceNotFoundException(f"Image set {image_set_id} does not exist in datastore {datastore_id}")

    def instances(self, record: SeriesRecord, sop_uid: str | None = None) -> list[InstanceRecord]:
        sql = ("SELECT sop_uid, doc, blob_sha256, size FROM instances WHERE image_set_id=? "
               "AND until_version IS NULL")
        args: list[Any] = [record.image_set_id]
        if sop_uid is not None:
            sql += " AND sop_uid=?"
            args.append(sop_uid)
        with self.backend.store.read() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [InstanceRecord(record, r["sop_uid"], json.loads(r["doc"]), r["blob_sha256"], r["size"])
                for r in rows]

    def one_series(self, datastore_id: str, study_uid: str, series_uid: str,
                   image_set_id: str | None) -> SeriesRecord:
        found = self.series(datastore_id, image_set_id, study_uid, series_uid)
        if not found:
            raise ResourceNotFoundException(
                f"Series {series_uid} of study {study_uid} does not exist in datastore {datastore_id}")
        return found[0]

    def one_instance(self, datastore_id: str, study_uid: str, series_uid: str, sop_uid: str,
                     image_set_id: str | None) -> InstanceRecord:
        record = self.one_series(datastore_id, study_uid, series_uid, image_set_id)
        found = self.instances(record, sop_uid)
        if not found:
            raise ResourceNotFoundException(
                f"Instance {sop_uid} of series {series_uid} does not exist in datastore {datastore_id}")
        return found[0]


def _series(r: sqlite3.Row) -> SeriesRecord:
    return SeriesRecord(
        image_set_id=r["id"], is_primary=bool(r["is_primary"]), updated_at=r["updated_at"],
        study_uid=r["study_uid"], series_uid=r["series_uid"], patient=json.loads(r["patient"]),
        study=json.loads(r["study"]), series=json.loads(r["series"]), instance_count=r["n"],
    )
