"""receive: inventory the source S3 prefix into NDJSON pages under the work prefix (claim check).

With a source connector (a local directory, a DICOMweb or DIMSE PACS) the source is first pulled into the
landing prefix (`source_s3_uri`, see `activities.sources`), then that prefix is listed as usual.

The listing is paginated and resumable: the heartbeat carries the number of inventory pages written (and
counts), never an object key (a local directory's keys often hold patient names in folder names, and heartbeat
details are stored in Temporal's history). A retried activity reads the last key of its last written inventory
page from S3 and lists on after it, instead of listing from scratch.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel, ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import classify
from activities.heartbeat import current, keeps_alive
from activities.sources.common import Landing, PullCursor, pull_all
from activities.sources.registry import SourceSettings, connector_for
from activities.storage import iter_ndjson, put_ndjson
from contracts import layout
from contracts.errors import ErrorType, describe_validation_error
from contracts.records import InventoryEntry
from contracts.s3uri import S3Location, parse_s3_uri
from contracts.stages import ReceiveInput, ReceiveResult


class _Cursor(BaseModel):
    """Heartbeat details: counts only (an older attempt's extra fields, e.g. a key, are ignored)."""

    pages: int = 0
    files: int = 0
    bytes: int = 0
    # With a source connector: the pull into the landing prefix, which runs before the listing.
    pull: PullCursor | None = None


class ReceiveActivities:
    def __init__(self, s3: Any, sources: SourceSettings | None = None) -> None:
        self._s3 = s3
        self._sources = sources or SourceSettings()

    def _pull(self, input: ReceiveInput, source: S3Location, cursor: _Cursor) -> None:
        """Pull the connector's source into the landing prefix (``source``, the parsed ``source_s3_uri``),
        resuming from ``cursor``."""
        assert input.source_connector is not None
        if cursor.pull is None:
            cursor.pull = PullCursor()
        if cursor.pull.done:
            return
        landing = Landing(self._s3, source)

        def save(_: PullCursor) -> None:
            if keep := current():
                keep.record(cursor.model_dump())

        pull_all(self._s3, connector_for(input.source_connector, self._sources), landing, input.work_s3_uri,
                 input.migration_id, cursor.pull, save, self._sources.unit_attempts, self._sources.unit_backoff_seconds)
        activity.logger.info("source pulled", extra={"objects": landing.objects, "bytes": landing.bytes_written,
                                                     "s3_requests": landing.requests})

    def _last_listed(self, input: ReceiveInput, pages: int) -> str | None:
        """The last key of inventory page ``pages - 1`` (where a resumed listing continues), None for none."""
        if pages == 0:
            return None
        rows = list(iter_ndjson(self._s3, layout.inventory_page(input.work_s3_uri, input.migration_id, pages - 1)))
        if not rows:
            raise ApplicationError(f"receive: inventory page {pages - 1} is empty", type=ErrorType.CORRUPT_INVENTORY)
        return str(rows[-1]["key"])

    def _from_manifest(self, input: ReceiveInput) -> ReceiveResult:
        """Inventory from a given list of objects (event-driven ingestion) instead of a listing."""
        source = parse_s3_uri(input.source_s3_uri, field="source_s3_uri").as_prefix()
        manifest = parse_s3_uri(input.source_manifest_uri or "", field="source_manifest_uri")
        try:
            entries = [InventoryEntry.model_validate(row) for row in iter_ndjson(self._s3, manifest)]
        except ClientError as err:
            raise classify(err, "reading the source manifest") from None
        except ValueError as err:
            # Never the validation error's own text: it quotes the row, whose key may name a patient.
            why = describe_validation_error(err) if isinstance(err, ValidationError) else "a line is not JSON"
            raise ApplicationError(f"source_manifest_uri: not an NDJSON list of {{key, size, etag}}: {why}",
                                   type=ErrorType.INVALID_SOURCE_MANIFEST, non_retryable=True) from None
        outside = [e.key for e in entries if not e.key.startswith(source.key)]
        if outside:
            raise ApplicationError(f"source_manifest_uri: {len(outside)} keys are outside source_s3_uri",
                                   type=ErrorType.INVALID_SOURCE_MANIFEST, non_retryable=True)
        unique = sorted({e.key: e for e in entries}.values(), key=lambda e: e.key)
        pages = 0
        for start in range(0, len(unique), input.page_size):
            put_ndjson(self._s3, layout.inventory_page(input.work_s3_uri, input.migration_id, pages),
                       unique[start : start + input.page_size])
            pages += 1
        prefix = layout.inventory_prefix(input.work_s3_uri, input.migration_id)
        return ReceiveResult(files=len(unique), bytes=sum(e.size for e in unique), pages=pages,
                             inventory_prefix_uri=prefix.uri)

    @activity.defn(name="receive_inventory")
    @keeps_alive
    def receive_inventory(self, input: ReceiveInput) -> ReceiveResult:
        if input.source_manifest_uri:
            return self._from_manifest(input)
        source = parse_s3_uri(input.source_s3_uri, field="source_s3_uri").as_prefix()
        details = activity.info().heartbeat_details if activity.in_activity() else ()
        cursor = _Cursor.model_validate(details[0]) if details else _Cursor()
        if input.source_connector is not None:
            self._pull(input, source, cursor)
        buffer: list[InventoryEntry] = []
        token: str | None = None
        try:
            start_after = self._last_listed(input, cursor.pages)
            while True:
                kwargs: dict[str, Any] = {"Bucket": source.bucket, "Prefix": source.key, "MaxKeys": 1000}
                if token:
                    kwargs["ContinuationToken"] = token
                elif start_after:
                    kwargs["StartAfter"] = start_after
                resp = self._s3.list_objects_v2(**kwargs)
                for obj in resp.get("Contents", []):
                    if obj["Key"].endswith("/"):  # folder placeholder objects are not files
                        continue
                    buffer.append(InventoryEntry(key=obj["Key"], size=int(obj["Size"]), etag=obj.get("ETag", "").strip('"')))
                token = resp.get("NextContinuationToken") if resp.get("IsTruncated") else None
                # Only whole pages are written, so a resumed attempt never writes a page twice with other content.
                while len(buffer) >= input.page_size or (token is None and buffer):
                    page, buffer = buffer[: input.page_size], buffer[input.page_size :]
                    put_ndjson(self._s3, layout.inventory_page(input.work_s3_uri, input.migration_id, cursor.pages), page)
                    cursor.pages += 1
                    cursor.files += len(page)
                    cursor.bytes += sum(e.size for e in page)
                    if keep := current():
                        keep.record(cursor.model_dump())
                if token is None:
                    break
                # A partial page stays in memory; on resume we restart listing after the last written key.
        except ClientError as err:
            raise classify(err, "listing the source prefix") from None
        prefix = layout.inventory_prefix(input.work_s3_uri, input.migration_id)
        return ReceiveResult(files=cursor.files, bytes=cursor.bytes, pages=cursor.pages, inventory_prefix_uri=prefix.uri,
                             source_failures=cursor.pull.source_failures if cursor.pull else 0)
