"""A data store's import index: one NDJSON of `ImportedInstance` rows per batch that imported into it.

Review writes a batch's rows, planning reads every other migration's rows to skip what the data store already
holds, and FHIR routing reads a batch's own rows back. The index belongs to the data store
(`contracts.layout.imported_index_prefix`), so re-running a source under another work prefix finds what the
first run imported. Indexes written before that lived under the work prefix (`legacy_imported_index_prefix`):
planning copies them into place before it reads (idempotent: a copy already in place is left alone), and a
batch's rows are still found there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from botocore.exceptions import ClientError

from activities.storage import is_missing, list_objects, put_ndjson, read_models
from contracts import layout
from contracts.batch import BatchInput
from contracts.records import ImportedInstance
from contracts.s3uri import S3Location


class ImportIndex:
    """The import index as seen from one worker (``index_s3_uri``: HIMIG_IMPORT_INDEX_S3_URI, or None for the
    root of each work bucket)."""

    def __init__(self, s3: Any, index_s3_uri: str | None = None) -> None:
        self._s3 = s3
        self._uri = index_s3_uri

    def batch_location(self, batch: BatchInput) -> S3Location:
        return layout.imported_index(batch.work_s3_uri, batch.datastore_id, batch.migration_id, batch.batch,
                                     batch.part, self._uri)

    def write_batch(self, batch: BatchInput, rows: list[ImportedInstance]) -> None:
        """Rewritten whole on every attempt, so a retried review never records an instance twice."""
        put_ndjson(self._s3, self.batch_location(batch), rows)

    def read_batch(self, batch: BatchInput) -> list[ImportedInstance]:
        """The rows a batch's review wrote (where a review before the move wrote them, if not in place)."""
        try:
            return read_models(self._s3, self.batch_location(batch), ImportedInstance)
        except ClientError as err:
            if not is_missing(err):
                raise
        legacy = layout.legacy_imported_index_prefix(batch.work_s3_uri, batch.datastore_id).join(
            batch.migration_id, f"{layout.batch_name(batch.batch, batch.part)}.ndjson")
        return read_models(self._s3, legacy, ImportedInstance)

    def adopt_legacy(self, work_s3_uri: str, datastore_id: str) -> int:
        """Copy the index files this work prefix holds from before the move into place; returns how many."""
        legacy = layout.legacy_imported_index_prefix(work_s3_uri, datastore_id)
        target = layout.imported_index_prefix(work_s3_uri, datastore_id, self._uri).join(
            layout.work_tag(work_s3_uri))
        present = {o["Key"] for o in list_objects(self._s3, target.as_prefix())}
        copied = 0
        for obj in list_objects(self._s3, legacy):
            key = f"{target.key}/{obj['Key'][len(legacy.key):]}"
            if key not in present:
                self._s3.copy_object(Bucket=target.bucket, Key=key,
                                     CopySource={"Bucket": legacy.bucket, "Key": obj["Key"]})
                copied += 1
        return copied

    def earlier(self, work_s3_uri: str, datastore_id: str, migration_id: str) -> Iterator[S3Location]:
        """Every index file of the data store except this migration's own (a re-run of the same id under the
        same work prefix): what other migrations imported, wherever they kept their work."""
        prefix = layout.imported_index_prefix(work_s3_uri, datastore_id, self._uri)
        own = layout.imported_index_of_migration(work_s3_uri, datastore_id, migration_id, self._uri).key
        for obj in list_objects(self._s3, prefix):
            if not obj["Key"].startswith(own):
                yield S3Location(prefix.bucket, obj["Key"])
