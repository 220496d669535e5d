"""ingest: write the arrivals of one `IngestWorkflow` flush as a source manifest (NDJSON of {key, size, etag}).

The manifest is the claim check a child `MigrationWorkflow` reads through ``source_manifest_uri``.
"""

from __future__ import annotations

import re
from typing import Any

from botocore.exceptions import ClientError
from temporalio import activity

from activities.errors import classify
from contracts import layout
from contracts.ingest import IngestManifest, IngestManifestInput
from contracts.s3uri import S3Location

_FLUSH_KEY = re.compile(r"flush-(\d+)\.ndjson$")
_WRITER = "himig-writer"


class IngestActivities:
    def __init__(self, s3: Any) -> None:
        self._s3 = s3

    def _last_manifest(self, prefix: S3Location) -> int:
        last = 0
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=prefix.bucket, Prefix=prefix.key):
            for obj in page.get("Contents", []):
                match = _FLUSH_KEY.search(obj["Key"])
                if match:
                    last = max(last, int(match.group(1)))
        return last

    @activity.defn(name="write_ingest_manifest")
    def write_ingest_manifest(self, input: IngestManifestInput) -> IngestManifest:
        """Write the manifest and return its flush number and URI.

        A workflow id is reused by later runs (a new arrival after the previous run completed), and each run
        counts flushes from 1, so the number is chosen here: after every manifest already under the ingest
        prefix. A retried attempt of the same activity finds its own manifest (tagged with the run and activity
        id) and returns it, so a retry never burns a number or starts a second migration.
        """
        writer = "unknown"
        if activity.in_activity():
            info = activity.info()
            writer = f"{info.workflow_run_id}/{info.activity_id}"
        prefix = layout.ingest_manifests_prefix(input.work_s3_uri, input.ingest_id)
        # Duplicate keys cannot reach here (the workflow dedupes), but the manifest stays unique regardless.
        entries = sorted({a.key: a.entry() for a in input.arrivals}.values(), key=lambda e: e.key)
        try:
            last = self._last_manifest(prefix)
            flush = max(input.flush_hint, last + 1)
            if last:
                loc = layout.ingest_manifest(input.work_s3_uri, input.ingest_id, last)
                head = self._s3.head_object(Bucket=loc.bucket, Key=loc.key)
                if head.get("Metadata", {}).get(_WRITER) == writer:
                    flush = last
            loc = layout.ingest_manifest(input.work_s3_uri, input.ingest_id, flush)
            body = ("\n".join(e.model_dump_json() for e in entries) + "\n").encode() if entries else b""
            # put_ndjson has no metadata parameter; the writer tag is what makes retries idempotent.
            self._s3.put_object(Bucket=loc.bucket, Key=loc.key, Body=body, ContentType="application/x-ndjson",
                                Metadata={_WRITER: writer})
        except ClientError as err:
            raise classify(err, "writing the ingest manifest") from None
        return IngestManifest(flush=flush, manifest_uri=loc.uri, files=len(entries), bytes=sum(e.size for e in entries))

