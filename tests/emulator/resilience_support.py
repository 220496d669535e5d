"""Helpers shared by the throttling, events and faults tests: admin calls with any method, dedicated emulators."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError


def strict_client(url: str) -> Any:
    """A medical-imaging client that never retries.

    ``retries={"max_attempts": 1}`` still allows one retry (botocore reads it as retries, not attempts); only
    ``total_max_attempts`` counts the first call, so every 429/500 the server sends reaches the test.
    """
    return boto3.client("medical-imaging", endpoint_url=url, region_name="us-east-1",
                        config=Config(inject_host_prefix=False,
                                      retries={"mode": "standard", "total_max_attempts": 1}))


def admin(url: str, method: str, path: str, body: Any = None) -> Any:
    """Call an ``/_emulator/`` endpoint; returns ``(status, json)`` for errors, the JSON for 200."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + "/_emulator/" + path.lstrip("/"), data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null"), err.headers.get("x-amzn-ErrorType")


def error_of(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    """(error code, HTTP status) of a botocore ClientError."""
    response: Any = exc.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]
