"""What an import *means*: which image set each instance lands in, and the job's output documents.

The primary / non-primary rule (see "Primary and non-primary image sets" in ``emulator/README.md``): files are
taken in sorted key order; one that agrees with the study's primary sets (or finds none) goes to the primary set
of its series, one whose normalized Patient/Study/Series attributes conflict goes to the non-primary set for that
series and fingerprint. Each set a plan touches gets exactly one new version.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from emulator.medicalimaging.dicom import ParsedInstance
from emulator.medicalimaging.records import FileOutcome, ImportJob, canonical_line, stable_id
from emulator.medicalimaging.search import dicom_tags
from emulator.persistence import canonical
from emulator.store import Store


@dataclass
class _Touched:
    image_set_id: str
    created: bool
    is_primary: bool
    study_uid: str
    series_uid: str
    conflict_key: str
    docs: tuple[dict[str, Any], dict[str, Any], dict[str, Any]]
    sops: dict[str, FileOutcome] = field(default_factory=dict)
    version: int = 1


class ImportPlan:
    """Assigns a job's instances to image sets inside one write transaction, then writes the new versions."""

    def __init__(self, store: Store, conn: sqlite3.Connection, job: ImportJob) -> None:
        self.store = store
        self.conn = conn
        self.job = job
        self.touched: dict[str, _Touched] = {}  # insertion order = order of first touch (manifest order)
        self.assignment: dict[str, str] = {}  # input key -> image set id

    def _existing(self, sql: str, args: tuple[Any, ...]) -> list[sqlite3.Row]:
        return self.conn.execute(sql, args).fetchall()

    def _study_primaries(self, study_uid: str) -> list[tuple[str, dict[str, Any]]]:
        rows = self._existing(
            "SELECT id, series_uid, conflict_key FROM image_sets WHERE datastore_id=? AND study_uid=? "
            "AND is_primary=1 AND state!='DELETED' AND workflow_status!='DELETING'",
            (self.job.datastore_id, study_uid))
        found = [(r["series_uid"], json.loads(r["conflict_key"])) for r in rows]
        found += [(t.series_uid, json.loads(t.conflict_key)) for t in self.touched.values()
                  if t.created and t.is_primary and t.study_uid == study_uid]
        return found

    def _set_row(self, where: str, args: tuple[Any, ...]) -> sqlite3.Row | None:
        return self.conn.execute(f"SELECT * FROM image_sets WHERE {where} AND state!='DELETED' "
                                 "AND workflow_status!='DELETING'", args).fetchone()

    def add(self, outcome: FileOutcome) -> None:
        p = outcome.parsed
        assert p is not None
        key = p.conflict_key()
        ds_id = self.job.datastore_id
        conflict = False
        for _series_uid, other in self._study_primaries(p.study_instance_uid):
            if other["patient"] != key["patient"] or other["study"] != key["study"]:
                conflict = True
            if _series_uid == p.series_instance_uid and other["series"] != key["series"]:
                conflict = True
        key_text = canonical(key)
        if not conflict:
            target = self._find_or_create(
                primary=True, key_text=key_text, parsed=p,
                where="datastore_id=? AND study_uid=? AND series_uid=? AND is_primary=1",
                args=(ds_id, p.study_instance_uid, p.series_instance_uid))
        else:
            target = self._find_or_create(
                primary=False, key_text=key_text, parsed=p,
                where="datastore_id=? AND study_uid=? AND series_uid=? AND is_primary=0 AND conflict_key=?",
                args=(ds_id, p.study_instance_uid, p.series_instance_uid, key_text))
        target.sops[p.sop_instance_uid] = outcome  # a later file with the same SOP overwrites, in key order
        self.assignment[outcome.key] = target.image_set_id

    def _find_or_create(self, primary: bool, key_text: str, parsed: ParsedInstance, where: str,
                        args: tuple[Any, ...]) -> _Touched:
        for t in self.touched.values():
            if (t.is_primary == primary and t.study_uid == parsed.study_instance_uid
                    and t.series_uid == parsed.series_instance_uid and (primary or t.conflict_key == key_text)):
                return t
        row = self._set_row(where, args)
        if row is not None:
            touched = _Touched(row["id"], False, bool(row["is_primary"]), row["study_uid"], row["series_uid"],
                               row["conflict_key"], (parsed.patient, parsed.study, parsed.series))
        else:
            set_id = stable_id(self.job.datastore_id, self.job.id, parsed.study_instance_uid,
                               parsed.series_instance_uid, "primary" if primary else key_text)
            touched = _Touched(set_id, True, primary, parsed.study_instance_uid, parsed.series_instance_uid,
                               key_text, (parsed.patient, parsed.study, parsed.series))
        self.touched[touched.image_set_id] = touched
        return touched

    def commit(self) -> None:
        conn = self.conn
        now = time.time()
        store = self.store
        for t in self.touched.values():
            patient, study, series = t.docs
            if t.created:
                t.version = 1
                conn.execute(
                    "INSERT INTO image_sets (id, seq, datastore_id, study_uid, series_uid, is_primary, conflict_key,"
                    " version, state, workflow_status, created_at, updated_at, dicom_tags) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (t.image_set_id, store.next_seq(conn, "image_sets"), self.job.datastore_id, t.study_uid,
                     t.series_uid, int(t.is_primary), t.conflict_key, 1, "ACTIVE", "CREATED", now, now, "{}"))
                created_at = now
                workflow = "CREATED"
            else:
                row = conn.execute("SELECT version, created_at FROM image_sets WHERE id=?",
                                   (t.image_set_id,)).fetchone()
                prev = conn.execute("SELECT patient, study, series FROM image_set_versions WHERE image_set_id=? "
                                    "AND version=?", (t.image_set_id, row["version"])).fetchone()
                # Keep the set's existing Patient/Study/Series documents; add attributes it did not have yet.
                patient = {**patient, **json.loads(prev["patient"])}
                study = {**study, **json.loads(prev["study"])}
                series = {**series, **json.loads(prev["series"])}
                t.version = row["version"] + 1
                created_at = row["created_at"]
                workflow = "IMPORTED"
                sops = list(t.sops)
                for i in range(0, len(sops), 500):
                    chunk = sops[i:i + 500]
                    conn.execute(
                        f"UPDATE instances SET until_version=? WHERE image_set_id=? AND until_version IS NULL "
                        f"AND sop_uid IN ({','.join('?' * len(chunk))})", (t.version, t.image_set_id, *chunk))
            conn.executemany(
                "INSERT OR REPLACE INTO instances (image_set_id, sop_uid, first_version, until_version, doc, "
                "blob_sha256, size) VALUES (?,?,?,NULL,?,?,?)",
                [(t.image_set_id, sop, t.version, o.parsed.instance_document(), o.parsed.sha256, o.parsed.size)
                 for sop, o in t.sops.items() if o.parsed is not None])
            conn.execute(
                "INSERT INTO image_set_versions (image_set_id, version, job_id, state, workflow_status, is_primary,"
                " created_at, updated_at, patient, study, series) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (t.image_set_id, t.version, self.job.id, "ACTIVE", workflow, int(t.is_primary), created_at, now,
                 json.dumps(patient), json.dumps(study), json.dumps(series)))
            count = conn.execute("SELECT COUNT(*) FROM instances WHERE image_set_id=? AND until_version IS NULL",
                                 (t.image_set_id,)).fetchone()[0]
            conn.execute(
                "UPDATE image_sets SET version=?, updated_at=?, workflow_status=?, dicom_tags=? WHERE id=?",
                (t.version, now, workflow, json.dumps(dicom_tags(patient, study, series, count)), t.image_set_id))


def job_outputs(job: ImportJob, outcomes: list[FileOutcome], plan: ImportPlan | None) -> dict[str, str]:
    """The four output documents of a job (``plan`` None: the job failed before applying anything)."""
    success: list[str] = []
    failure: list[str] = []
    warning: list[str] = []
    customer_errors = server_errors = 0
    for o in sorted(outcomes, key=lambda o: o.key):
        if o.parsed is not None and plan is not None and o.warnings:
            # Imported with warnings (injected, emulator/faults.py): reported in warning.ndjson instead.
            info = plan.touched[plan.assignment[o.key]]
            warning.append(canonical_line({"inputFile": o.key, "importResponse": {
                "imageSetId": info.image_set_id, "imageSetVersion": info.version, "isPrimary": info.is_primary,
                "warnings": o.warnings}}))
        elif o.parsed is not None and plan is not None:
            set_id = plan.assignment[o.key]
            info = plan.touched[set_id]
            success.append(canonical_line({
                "inputFile": o.key,
                "importResponse": {"imageSetId": set_id, "imageSetVersion": info.version,
                                   "isPrimary": info.is_primary},
            }))
        else:
            if o.server_error:
                server_errors += 1
            else:
                customer_errors += 1
            failure.append(canonical_line({
                "inputFile": o.key,
                "exception": {"exceptionType": "InternalServerException" if o.server_error
                              else "ValidationException", "message": o.error or "Import failed"},
            }))
    base = job.resolved_output_uri
    summaries = [] if plan is None else [
        {"imageSetId": set_id, "imageSetVersion": info.version, "isPrimary": info.is_primary,
         "numberOfMatchedSOPInstances": len(info.sops)}
        for set_id, info in plan.touched.items()
    ]
    manifest = {"jobSummary": {
        "jobId": job.id,
        "datastoreId": job.datastore_id,
        "inputS3Uri": job.input_uri,
        "outputS3Uri": base,
        "successOutputS3Uri": base + "SUCCESS/",
        "failureOutputS3Uri": base + "FAILURE/",
        "warningsOutputS3Uri": base + "WARNING/",
        "numberOfScannedFiles": len(outcomes),
        "numberOfImportedFiles": len(success) + len(warning),
        "numberOfFilesWithCustomerError": customer_errors,
        "numberOfFilesWithServerError": server_errors,
        "numberOfGeneratedImageSets": len(summaries),
        "imageSetsSummary": summaries,
    }}
    return {
        "job-output-manifest.json": json.dumps(manifest, indent=2),
        "SUCCESS/success.ndjson": "".join(line + "\n" for line in success),
        "FAILURE/failure.ndjson": "".join(line + "\n" for line in failure),
        "WARNING/warning.ndjson": "".join(line + "\n" for line in warning),
    }
