"""Small S3 helpers for NDJSON and JSON objects under the work prefix."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from botocore.exceptions import ClientError
from pydantic import BaseModel
from temporalio.exceptions import ApplicationError

from contracts.errors import ErrorType
from contracts.s3uri import S3Location

M = TypeVar("M", bound=BaseModel)
_CONTENT_RANGE = re.compile(r"bytes \d+-\d+/(\d+)")


def is_missing(err: ClientError) -> bool:
    return err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")



def missing_batch_plan(batch: int, loc: S3Location) -> ApplicationError:
    """A planned batch's manifest or plan is gone: no retry brings it back, so the batch fails at once, saying
    which object (keys under the work prefix name the migration and the batch, never a patient)."""
    return ApplicationError(
        f"batch {batch}: {loc.uri} is missing from the work prefix (never planned, or deleted since); "
        "re-run the migration to plan it again", type=ErrorType.MISSING_BATCH_PLAN, non_retryable=True)


def read_batch_file(s3: Any, loc: S3Location, batch: int) -> bytes:
    """The bytes of one of a planned batch's own files (its manifest or its plan); `missing_batch_plan` if absent."""
    try:
        return get_bytes(s3, loc)
    except ClientError as err:
        if is_missing(err):
            raise missing_batch_plan(batch, loc) from None
        raise


def read_batch_models(s3: Any, loc: S3Location, model: type[M], batch: int) -> list[M]:
    """`read_models` of one of a planned batch's own NDJSON files; `missing_batch_plan` if absent."""
    return [model.model_validate_json(line) for line in read_batch_file(s3, loc, batch).splitlines() if line.strip()]


def object_size(get_object_response: dict[str, Any], fallback: int) -> int:
    """The whole object's size from a ranged GET's ``Content-Range`` (``bytes 0-65535/123456``), else ``fallback``."""
    match = _CONTENT_RANGE.match(get_object_response.get("ContentRange", "") or "")
    return int(match.group(1)) if match else fallback


def put_bytes(s3: Any, loc: S3Location, body: bytes, content_type: str) -> None:
    s3.put_object(Bucket=loc.bucket, Key=loc.key, Body=body, ContentType=content_type)


def put_ndjson(s3: Any, loc: S3Location, rows: Iterable[BaseModel | dict[str, Any]]) -> int:
    """Write rows as one NDJSON object (one PUT) and return the row count."""
    lines = []
    for row in rows:
        if isinstance(row, BaseModel):
            lines.append(row.model_dump_json(exclude_none=True))
        else:
            lines.append(json.dumps(row, separators=(",", ":"), sort_keys=True))
    body = ("\n".join(lines) + "\n").encode() if lines else b""
    put_bytes(s3, loc, body, "application/x-ndjson")
    return len(lines)


def get_bytes(s3: Any, loc: S3Location) -> bytes:
    return bytes(s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read())


def iter_ndjson(s3: Any, loc: S3Location) -> Iterator[dict[str, Any]]:
    """The rows of an NDJSON object, read as a stream: memory follows one line, not the object."""
    body = s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"]
    try:
        for line in body.iter_lines(chunk_size=64 * 1024):
            if line.strip():
                yield json.loads(line)
    finally:
        body.close()


def read_models(s3: Any, loc: S3Location, model: type[M]) -> list[M]:
    return [model.model_validate(row) for row in iter_ndjson(s3, loc)]


def put_json(s3: Any, loc: S3Location, doc: Any) -> None:
    put_bytes(s3, loc, json.dumps(doc, indent=2, sort_keys=True, default=str).encode(), "application/json")


def get_json(s3: Any, loc: S3Location) -> Any:
    return json.loads(get_bytes(s3, loc))


def list_objects(s3: Any, prefix: S3Location, start_after: str | None = None) -> Iterator[dict[str, Any]]:
    """Every object under ``prefix`` (recursive), in key order; only keys after ``start_after`` when given."""
    kwargs: dict[str, Any] = {"Bucket": prefix.bucket, "Prefix": prefix.key}
    if start_after:
        kwargs["StartAfter"] = start_after
    for page in s3.get_paginator("list_objects_v2").paginate(**kwargs):
        yield from page.get("Contents", [])
