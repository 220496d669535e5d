"""Tagging of data stores and image sets: TagResource, UntagResource, ListTagsForResource.

Tags live with their resource's row (``datastores.tags``, ``image_sets.tags``; CreateDatastore's tags included).
An ARN of another region or account, or of an unknown, DELETED or other-data-store resource, is not found.
"""

from __future__ import annotations

import json
import re
import sqlite3

from emulator.errors import ResourceNotFoundException, ValidationException
from emulator.medicalimaging.datastores import DatastoreModel

MAX_TAGS = 50  # per resource, the usual AWS tagging limit
ARN_RE = re.compile(r"arn:(?P<partition>aws[a-z-]*):medical-imaging:(?P<region>[a-z0-9-]+):(?P<account>[0-9]{12}):"
                    r"datastore/(?P<ds>[0-9a-z]{32})(?:/imageset/(?P<set>[0-9a-z]{32}))?")


class TagModel(DatastoreModel):
    """Tags of the data stores and image sets named by ARN."""

    def _resource(self, conn: sqlite3.Connection, arn: str) -> tuple[str, str]:
        """(table, id) holding the tags of the data store or image set named by ``arn``."""
        m = ARN_RE.fullmatch(arn)
        settings = self.settings
        missing = ResourceNotFoundException(f"Resource {arn} does not exist")
        if m is None or m["region"] != settings.region or m["account"] != settings.account_id:
            raise missing
        ds = conn.execute("SELECT status FROM datastores WHERE id=?", (m["ds"],)).fetchone()
        if ds is None or ds["status"] == "DELETED":
            raise missing
        if m["set"] is None:
            return "datastores", m["ds"]
        row = conn.execute("SELECT state FROM image_sets WHERE id=? AND datastore_id=?",
                           (m["set"], m["ds"])).fetchone()
        if row is None or row["state"] == "DELETED":
            raise missing
        return "image_sets", m["set"]

    def _tags(self, conn: sqlite3.Connection, table: str, rid: str) -> dict[str, str]:
        raw = conn.execute(f"SELECT tags FROM {table} WHERE id=?", (rid,)).fetchone()["tags"]
        tags: dict[str, str] = json.loads(raw) if raw else {}
        return tags

    def tag_resource(self, arn: str, new_tags: dict[str, str]) -> None:
        with self.store.write() as conn:
            table, rid = self._resource(conn, arn)
            tags = {**self._tags(conn, table, rid), **new_tags}
            if len(tags) > MAX_TAGS:
                raise ValidationException(f"A resource can have at most {MAX_TAGS} tags; this request would give "
                                          f"it {len(tags)}")
            conn.execute(f"UPDATE {table} SET tags=? WHERE id=?", (json.dumps(tags), rid))

    def untag_resource(self, arn: str, keys: list[str]) -> None:
        with self.store.write() as conn:
            table, rid = self._resource(conn, arn)
            tags = self._tags(conn, table, rid)
            for key in keys:
                tags.pop(key, None)
            conn.execute(f"UPDATE {table} SET tags=? WHERE id=?", (json.dumps(tags), rid))

    def list_tags_for_resource(self, arn: str) -> dict[str, str]:
        with self.store.read() as conn:
            table, rid = self._resource(conn, arn)
            return self._tags(conn, table, rid)
