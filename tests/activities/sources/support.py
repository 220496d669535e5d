"""Helpers shared by the source-connector tests: run `receive_inventory` as a real activity, read what landed."""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

from temporalio.testing import ActivityEnvironment

from activities.receive import ReceiveActivities
from activities.sources.common import Landing
from activities.sources.registry import SourceSettings
from activities.storage import iter_ndjson, list_objects
from contracts import layout
from contracts.s3uri import S3Location, parse_s3_uri
from contracts.sources import SourceConnector
from contracts.stages import ReceiveInput, ReceiveResult


class Interrupted(Exception):
    """Raised from the heartbeat callback: the worker 'dies' right after recording progress."""


def buckets(s3: Any) -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:10]
    names = (f"land-{suffix}", f"work-{suffix}")
    for name in names:
        s3.create_bucket(Bucket=name)
    return names


def receive_input(landing: str, work: str, connector: SourceConnector, page_size: int = 1000,
                  migration_id: str | None = None) -> ReceiveInput:
    return ReceiveInput(migration_id=migration_id or f"m-{uuid.uuid4().hex[:8]}",
                        source_s3_uri=f"s3://{landing}/landed/", work_s3_uri=f"s3://{work}/runs/",
                        page_size=page_size, source_connector=connector)


def run_receive(s3: Any, input: ReceiveInput, details: Any = None, stop_after_heartbeats: int | None = None,
                settings: SourceSettings | None = None) -> tuple[ReceiveResult | None, list[Any]]:
    """Run the activity like a worker would; optionally resume from ``details`` or die after N heartbeats."""
    beats: list[Any] = []
    env = ActivityEnvironment()
    if details is not None:
        env.info = dataclasses.replace(env.info, heartbeat_details=[details], attempt=2)

    def on_heartbeat(*args: Any) -> None:
        beats.append(json.loads(json.dumps(args[0])))
        if stop_after_heartbeats is not None and len(beats) >= stop_after_heartbeats:
            raise Interrupted()

    env.on_heartbeat = on_heartbeat
    try:
        result = env.run(ReceiveActivities(s3, settings or SourceSettings(unit_backoff_seconds=0.0)).receive_inventory,
                         input)
    except Interrupted:
        return None, beats
    return result, beats


def ndjson_files(s3: Any, prefix: S3Location) -> dict[str, list[dict[str, Any]]]:
    """The rows of every NDJSON object under ``prefix``, by key (in key order)."""
    return {obj["Key"]: list(iter_ndjson(s3, S3Location(prefix.bucket, obj["Key"])))
            for obj in list_objects(s3, prefix)}


def ndjson_rows(s3: Any, prefix: S3Location) -> list[dict[str, Any]]:
    """Every row of every NDJSON object under ``prefix``, in key order."""
    return [row for rows in ndjson_files(s3, prefix).values() for row in rows]


def inventory(s3: Any, input: ReceiveInput) -> list[dict[str, Any]]:
    return ndjson_rows(s3, layout.root(input.work_s3_uri, input.migration_id).join("inventory").as_prefix())


def failures(s3: Any, input: ReceiveInput) -> list[dict[str, Any]]:
    return ndjson_rows(s3, layout.receive_failures_prefix(input.work_s3_uri, input.migration_id))


def landing(s3: Any, bucket: str, **kwargs: Any) -> Landing:
    """A ``Landing`` writing under ``s3://<bucket>/landed/`` (where ``receive_input`` lands)."""
    return Landing(s3, parse_s3_uri(f"s3://{bucket}/landed/").as_prefix(), **kwargs)


def landed(s3: Any, bucket: str) -> dict[str, bytes]:
    out = {}
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix="landed/").get("Contents", []):
        out[obj["Key"]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


class RequestCounter:
    """Counts the S3 requests a client makes, by operation name (botocore's event hooks, no patching)."""

    def __init__(self, s3: Any) -> None:
        self.calls: dict[str, int] = {}
        s3.meta.events.register("before-call.s3.*", self._count)

    def _count(self, model: Any, **_: Any) -> None:
        self.calls[model.name] = self.calls.get(model.name, 0) + 1

    def writes(self) -> int:
        return sum(n for op, n in self.calls.items()
                   if op in ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"))
