"""OIDC-bearer HTTP for HealthImaging's DICOMweb: the alternative to SigV4 for data stores with an OIDC authorizer.

A data store created with a Lambda authorizer (``lambdaAuthorizerArn``) accepts ``Authorization: Bearer <JWT>`` on
its DICOMweb APIs (DG ``dicomweb-oidc-requirements.html``); the worker then gets its tokens from the organisation's
issuer with the client-credentials grant (`activities.client_credentials`) instead of signing with its AWS role.
Same interface as `activities.signed_http.SignedHttp`, so the spot check does not care which one it holds.
"""

from __future__ import annotations

import urllib.parse

import urllib3

from activities.client_credentials import TokenSource
from activities.signed_http import TIMEOUT, Response


class BearerHttp:
    """HTTP with a bearer token from ``tokens``, fetched again once when the server answers 401; thread-safe.

    Raises `activities.client_credentials.TokenError` when no token can be had.
    """

    def __init__(self, tokens: TokenSource, pool: int = 16) -> None:
        self._tokens = tokens
        self._http = urllib3.PoolManager(maxsize=pool, retries=False, timeout=TIMEOUT)

    def request(self, method: str, url: str, *, params: dict[str, str] | None = None, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Response:
        if params:
            url = f"{url}?{urllib.parse.urlencode(sorted(params.items()))}"
        resp = self._send(method, url, body, headers)
        if resp.status == 401:
            # Expired or revoked before its announced lifetime: one fresh token, one more try.
            self._tokens.rejected(resp.token)
            resp = self._send(method, url, body, headers)
        return resp.response

    def _send(self, method: str, url: str, body: bytes | None, headers: dict[str, str] | None) -> _Sent:
        token = self._tokens.token()
        sent = {**(headers or {}), "Authorization": f"Bearer {token}"}
        resp = self._http.request(method, url, body=body, headers=sent, redirect=False)
        return _Sent(Response(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.data), token)


class _Sent:
    __slots__ = ("response", "token")

    def __init__(self, response: Response, token: str) -> None:
        self.response = response
        self.token = token

    @property
    def status(self) -> int:
        return self.response.status
