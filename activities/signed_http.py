"""SigV4-signed HTTP for the AWS APIs that have no SDK operation: DICOMweb on HealthImaging, FHIR REST on HealthLake.

HealthImaging's DG says its DICOMweb APIs "are not offered through AWS CLI and AWS SDKs" (research/healthimaging.md
§5): requests are plain HTTP signed with botocore's ``SigV4Auth`` (service ``medical-imaging``), as AWS's own
samples do. HealthLake's FHIR REST API (``$validate``) is signed the same way with service ``healthlake``.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

TIMEOUT = urllib3.Timeout(connect=5, read=60)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class SignedHttp:
    """A small SigV4-signing HTTP client; thread-safe (one urllib3 pool shared by activity threads).

    ``credentials`` are botocore credentials (never None: without them the worker builds no client, see
    ``worker.registry``, and the features that need one are off).
    """

    def __init__(self, credentials: Any, region: str, service: str, pool: int = 16) -> None:
        self._credentials = credentials
        self._region = region
        self._service = service
        self._http = urllib3.PoolManager(maxsize=pool, retries=False, timeout=TIMEOUT)

    def request(self, method: str, url: str, *, params: dict[str, str] | None = None, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Response:
        if params:
            url = f"{url}?{urllib.parse.urlencode(sorted(params.items()))}"
        req = AWSRequest(method=method, url=url, data=body or b"", headers=headers or {})
        # Frozen credentials: a refresh between computing and sending the signature would invalidate it.
        SigV4Auth(self._credentials.get_frozen_credentials(), self._service, self._region).add_auth(req)
        resp = self._http.request(method, url, body=body, headers=dict(req.headers.items()), redirect=False)
        return Response(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.data)
