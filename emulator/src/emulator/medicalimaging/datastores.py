"""Data stores: CreateDatastore / GetDatastore / ListDatastores / DeleteDatastore state, and the ARNs.

A data store is CREATING for ``Settings.datastore_create_seconds`` on the job clock; the first read after that
makes it ACTIVE (and announces it). DeleteDatastore needs every image set DELETED and no job running.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from emulator.errors import ConflictException, ResourceNotFoundException
from emulator.medicalimaging.locks import LockModel
from emulator.medicalimaging.records import ACTIVE_JOB_STATES, Datastore, page, request_hash
from emulator.persistence import new_id, replayed_request


class DatastoreModel(LockModel):
    """Data-store state transitions; the other parts of the backend build on it."""

    # ---- ARNs

    def datastore_arn(self, datastore_id: str) -> str:
        s = self.settings
        return f"arn:aws:medical-imaging:{s.region}:{s.account_id}:datastore/{datastore_id}"

    def image_set_arn(self, datastore_id: str, image_set_id: str) -> str:
        return f"{self.datastore_arn(datastore_id)}/imageset/{image_set_id}"

    # ---- data stores

    def _datastore(self, row: sqlite3.Row) -> Datastore:
        status = row["status"]
        if status == "CREATING" and self.clock.now() >= row["created_clock"] + self.settings.datastore_create_seconds:
            status = "ACTIVE"
            with self.store.write() as conn:
                cur = conn.execute(
                    "UPDATE datastores SET status='ACTIVE', updated_at=? WHERE id=? AND status='CREATING'",
                    (time.time(), row["id"]))
            if cur.rowcount == 1:  # only the caller that made the transition announces it
                self.events.datastore_event("Data Store Created", row["id"], row["name"], "ACTIVE")
        return Datastore(
            id=row["id"], name=row["name"], status=status, kms_key_arn=row["kms_key_arn"],
            lambda_authorizer_arn=row["lambda_authorizer_arn"],
            lossless_storage_format=row["lossless_storage_format"], created_at=row["created_at"],
            updated_at=row["updated_at"], arn=self.datastore_arn(row["id"]),
        )

    def create_datastore(self, params: dict[str, Any]) -> Datastore:
        names = ("datastoreName", "tags", "kmsKeyArn", "lambdaAuthorizerArn", "losslessStorageFormat")
        digest = request_hash(params, names)
        token = params["clientToken"]
        with self.store.write() as conn:
            row = replayed_request(
                conn, "SELECT * FROM datastores WHERE client_token=?", (token,), digest, ConflictException,
                "The clientToken was already used by a CreateDatastore request with different parameters")
            if row is not None:
                created = row
            else:
                now = time.time()
                ds_id = new_id()
                conn.execute(
                    "INSERT INTO datastores (id, seq, name, status, kms_key_arn, lambda_authorizer_arn, "
                    "lossless_storage_format, client_token, request_hash, tags, created_at, updated_at, "
                    "created_clock) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (ds_id, self.store.next_seq(conn, "datastores"), params.get("datastoreName") or ds_id,
                     "CREATING", params.get("kmsKeyArn"), params.get("lambdaAuthorizerArn"),
                     params.get("losslessStorageFormat") or "HTJ2K", token, digest,
                     json.dumps(params.get("tags") or {}), now, now, self.clock.now()),
                )
                created = conn.execute("SELECT * FROM datastores WHERE id=?", (ds_id,)).fetchone()
        if row is None:
            self.events.datastore_event("Data Store Creating", created["id"], created["name"], "CREATING")
        ds = self._datastore(created)
        if row is None:
            ds.status = "CREATING"  # the create call itself always reports CREATING, like AWS
        return ds

    def get_datastore(self, datastore_id: str) -> Datastore:
        with self.store.read() as conn:
            row = conn.execute("SELECT * FROM datastores WHERE id=?", (datastore_id,)).fetchone()
        if row is None:
            raise ResourceNotFoundException(f"Datastore {datastore_id} does not exist")
        return self._datastore(row)

    def list_datastores(self, status: str | None, token: str | None,
                        max_results: int | None) -> tuple[list[Datastore], str | None]:
        with self.store.read() as conn:
            rows = conn.execute("SELECT * FROM datastores ORDER BY seq").fetchall()
        items = [self._datastore(r) for r in rows]
        if status:
            items = [d for d in items if d.status == status]
        return page(items, token, max_results, f"ListDatastores:{status}")

    def delete_datastore(self, datastore_id: str) -> Datastore:
        ds = self.get_datastore(datastore_id)
        self.finalize_locks()  # image sets whose deletion is due count as deleted
        with self.store.write() as conn:
            n = conn.execute("SELECT COUNT(*) FROM image_sets WHERE datastore_id=? AND state!='DELETED'",
                             (datastore_id,)).fetchone()[0]
            if n:
                raise ConflictException(
                    f"Datastore {datastore_id} cannot be deleted because it still contains {n} image set(s); "
                    "delete all image sets first")
            active = conn.execute("SELECT COUNT(*) FROM jobs WHERE datastore_id=? AND status IN (?, ?)",
                                  (datastore_id, *ACTIVE_JOB_STATES)).fetchone()[0]
            if active:
                raise ConflictException(f"Datastore {datastore_id} has import jobs in progress")
            if ds.status in ("DELETING", "DELETED"):
                return ds
            conn.execute("UPDATE datastores SET status='DELETED', updated_at=? WHERE id=?",
                         (time.time(), datastore_id))
        self.events.datastore_event("Data Store Deleting", ds.id, ds.name, "DELETING")
        self.events.datastore_event("Data Store Deleted", ds.id, ds.name, "DELETED")
        ds.status = "DELETING"
        return ds

    def _active_datastore(self, datastore_id: str) -> Datastore:
        ds = self.get_datastore(datastore_id)
        if ds.status != "ACTIVE":
            raise ConflictException(f"Datastore {datastore_id} is {ds.status}, not ACTIVE")
        return ds
