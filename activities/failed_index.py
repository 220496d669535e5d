"""A data store's failed index: the files whose import into it the service failed for a reason that would fail
again, one NDJSON per reviewed batch (`contracts.layout.failed_index`), next to the import index.

Review writes a batch's lines (rewritten whole on every attempt, so a retried review never records a file twice);
planning reads every other migration's lines so that a plain re-run does not send such a file again unchanged
(activities/failed_before.py). Which failures belong here is `fails_again`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from activities.storage import list_objects, put_ndjson
from contracts import layout
from contracts.batch import BatchInput
from contracts.errors import BACKOFF
from contracts.records import FailedFile
from contracts.s3uri import S3Location


def fails_again(exception_type: str) -> bool:
    """Whether the service's per-file FAILURE says something about the file itself.

    A transient fault on the service side (InternalServerException, throttling, an outage: the `BACKOFF` codes)
    may pass on the next try; any other exception type in ``failure.ndjson`` (ValidationException: a missing UID,
    a truncated file, an unsupported syntax...) is the service's verdict on those bytes, and the same bytes get it
    again.
    """
    return bool(exception_type) and exception_type not in {str(code) for code in BACKOFF}


class FailedIndex:
    """The failed index as seen from one worker (``index_s3_uri``: HIMIG_IMPORT_INDEX_S3_URI, as the import index)."""

    def __init__(self, s3: Any, index_s3_uri: str | None = None) -> None:
        self._s3 = s3
        self._uri = index_s3_uri

    def write_batch(self, batch: BatchInput, rows: list[FailedFile]) -> None:
        """An empty batch writes nothing (most batches), and leaves an earlier attempt's lines alone only when there
        were none: a retried review of the same output finds the same failures."""
        loc = layout.failed_index(batch.work_s3_uri, batch.datastore_id, batch.migration_id, batch.batch,
                                  batch.part, self._uri)
        if rows:
            put_ndjson(self._s3, loc, rows)

    def earlier(self, work_s3_uri: str, datastore_id: str, migration_id: str) -> Iterator[S3Location]:
        """Every failed-index file of the data store except this migration's own (a re-run of the same id under the
        same work prefix)."""
        prefix = layout.failed_index_prefix(work_s3_uri, datastore_id, self._uri)
        own = layout.failed_index_of_migration(work_s3_uri, datastore_id, migration_id, self._uri).key
        for obj in list_objects(self._s3, prefix):
            if not obj["Key"].startswith(own):
                yield S3Location(prefix.bucket, obj["Key"])
