"""Parsing and joining ``s3://bucket/key`` URIs (pure functions, used on both sides of the boundary)."""

from __future__ import annotations

import re
from typing import NamedTuple

# The pattern HealthImaging's model applies to inputS3Uri/outputS3Uri; we apply it to every S3 location we take.
_S3_URI = re.compile(r"^s3://([a-z0-9][\.\-a-z0-9]{1,61}[a-z0-9])(/.*)?$")


class S3Location(NamedTuple):
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def join(self, *parts: str) -> S3Location:
        """Append path parts, with exactly one ``/`` between them."""
        key = self.key
        for part in parts:
            part = part.strip("/")
            if not part:
                continue
            key = f"{key.rstrip('/')}/{part}" if key else part
        return S3Location(self.bucket, key)

    def as_prefix(self) -> S3Location:
        """The same location with a trailing ``/`` (an S3 "folder")."""
        return self if not self.key or self.key.endswith("/") else S3Location(self.bucket, self.key + "/")


def parse_s3_uri(uri: str, *, field: str = "s3 uri") -> S3Location:
    """Split ``s3://bucket/key`` into its parts.

    Raises:
        ValueError: naming ``field`` and what is wrong, when ``uri`` is not a valid S3 URI.
    """
    if not isinstance(uri, str):
        raise ValueError(f"{field}: expected a string like s3://bucket/prefix/, got {type(uri).__name__}")
    if len(uri) > 1024:
        raise ValueError(f"{field}: longer than 1024 characters")
    match = _S3_URI.match(uri)
    if not match:
        raise ValueError(
            f"{field}: {uri!r} is not an S3 URI; expected s3://bucket/prefix/ with a lowercase bucket name of 3-63 "
            "characters"
        )
    key = (match.group(2) or "/")[1:]
    if "//" in key or any(p in (".", "..") for p in key.split("/")):
        raise ValueError(f"{field}: {uri!r} has an empty, '.' or '..' path segment")
    return S3Location(match.group(1), key)
