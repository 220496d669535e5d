"""S3 access for import jobs. The endpoint is found the standard way (``AWS_ENDPOINT_URL_S3``, honoured by boto3)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

S3_URI_RE = re.compile(r"s3://([^/]+)/?(.*)", re.DOTALL)


@dataclass(frozen=True)
class S3Object:
    key: str
    size: int


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` → ``("bucket", "some/prefix/")``."""
    m = S3_URI_RE.fullmatch(uri)
    if not m:
        raise ValueError(f"not an S3 URI: {uri}")
    return m.group(1), m.group(2)


def folder_prefix(prefix: str) -> str:
    """Treat a URI prefix as a folder: ``in/batch1`` must not also match ``in/batch10/``."""
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def make_s3_client(region: str, pool: int) -> Any:
    return boto3.client(
        "s3",
        region_name=region,
        config=Config(max_pool_connections=pool, retries={"mode": "standard", "max_attempts": 5},
                      s3={"addressing_style": "path"}),
    )


def list_objects(s3: Any, bucket: str, prefix: str) -> tuple[list[S3Object], int]:
    """Every object under ``prefix`` (recursive), via ListObjectsV2 pages. Returns objects and request count."""
    objects: list[S3Object] = []
    requests = 0
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": 1000}
    while True:
        page = s3.list_objects_v2(**kwargs)
        requests += 1
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.endswith("/") and item.get("Size", 0) == 0:
                continue  # "folder" placeholder objects created by consoles; not files
            objects.append(S3Object(key, int(item.get("Size", 0))))
        if not page.get("IsTruncated"):
            return objects, requests
        kwargs["ContinuationToken"] = page["NextContinuationToken"]


def count_folders(objects: list[S3Object], prefix: str) -> int:
    """Distinct folders (at any depth) below ``prefix`` that hold objects, for the nested-folder quota."""
    folders: set[str] = set()
    for obj in objects:
        rest = obj.key[len(prefix):]
        parts = rest.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            folders.add("/".join(parts[:i]))
    return len(folders)
