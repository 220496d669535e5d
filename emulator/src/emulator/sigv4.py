"""Verification of AWS Signature Version 4, recomputed with botocore's own signer.

AWS checks every signed request: the access key must be known (403 ``UnrecognizedClientException``), the
signature must be the one the secret key gives for the canonical request (403 ``InvalidSignatureException``) and
the request time must be within 15 minutes of the server's (403 ``InvalidSignatureException``, "Signature
expired"). The emulator learns secret keys from a credentials table (``--sigv4-credentials``; by default the
well-known test credentials ``testing``/``testing`` plus the emulator's own ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``). Session tokens are not checked (the emulator has no STS): see the README's
divergence table.

Both forms are verified: the ``Authorization`` header and the presigned query (``X-Amz-Signature``). The canonical
query string is accepted in either of the two spellings real clients sign: the query as sent (botocore signs a URL
that already carries its query this way) and the RFC 3986 re-encoding of the decoded parameters (the SigV4 spec).
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import time
import urllib.parse
from dataclasses import dataclass

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from emulator.errors import AwsError

#: AWS refuses requests signed more than 15 minutes away from its clock (either side).
MAX_SKEW_SECONDS = 15 * 60
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
DEFAULT_CREDENTIALS = {"testing": "testing"}


class UnrecognizedClientException(AwsError):
    code = "UnrecognizedClientException"
    status = 403


class InvalidSignatureException(AwsError):
    code = "InvalidSignatureException"
    status = 403


@dataclass(frozen=True)
class Signed:
    """The parts of a SigV4 signature a server reads before recomputing it."""

    access_key: str
    date: str  # YYYYMMDD of the scope
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str
    timestamp: str  # X-Amz-Date, YYYYMMDD'T'HHMMSS'Z'
    presigned: bool = False
    expires: int = 0


class _Verifier(SigV4Auth):
    """botocore's signer, told exactly which headers and which canonical query string the client signed."""

    def __init__(self, credentials: Credentials, service: str, region: str, signed_headers: tuple[str, ...],
                 query: str, payload: str) -> None:
        super().__init__(credentials, service, region)
        self._signed_headers = signed_headers
        self._query = query
        self._payload = payload

    def headers_to_sign(self, request: AWSRequest) -> object:
        headers = super().headers_to_sign(request)
        for name in list(headers.keys()):
            if name not in self._signed_headers:
                del headers[name]
        return headers

    def canonical_query_string(self, request: AWSRequest) -> str:
        return self._query

    def payload(self, request: AWSRequest) -> str:
        return self._payload


def _query_spellings(raw_query: str, drop_signature: bool) -> list[str]:
    pairs = [p for p in raw_query.split("&") if p] if raw_query else []
    if drop_signature:
        pairs = [p for p in pairs if not p.startswith("X-Amz-Signature=")]
    as_sent = "&".join(sorted(pairs, key=lambda p: p.partition("=")[::2]))
    decoded = [(urllib.parse.unquote_plus(k), urllib.parse.unquote_plus(v))
               for k, _, v in (p.partition("=") for p in pairs)]
    encoded = sorted((urllib.parse.quote(k, safe="-_.~"), urllib.parse.quote(v, safe="-_.~")) for k, v in decoded)
    spec = "&".join(f"{k}={v}" for k, v in encoded)
    return [as_sent] if as_sent == spec else [as_sent, spec]


def _epoch(timestamp: str) -> float:
    return float(calendar.timegm(time.strptime(timestamp, "%Y%m%dT%H%M%SZ")))


class SigV4Verifier:
    """Checks a request's SigV4 signature against a table of access key id → secret access key."""

    def __init__(self, credentials: dict[str, str]) -> None:
        self._credentials = dict(credentials)

    def known(self, access_key: str) -> bool:
        return access_key in self._credentials

    def check_known_and_fresh(self, signed: Signed, now: float | None = None) -> None:
        """What can be checked from the head alone: the key is known and the request time is acceptable."""
        if signed.access_key not in self._credentials:
            raise UnrecognizedClientException("The security token included in the request is invalid.")
        try:
            at = _epoch(signed.timestamp)
        except ValueError:
            raise InvalidSignatureException("X-Amz-Date must be in the ISO8601 basic format yyyyMMdd'T'HHmmss'Z'") \
                from None
        if signed.timestamp[:8] != signed.date:
            raise InvalidSignatureException("Date in Credential scope does not match YYYYMMDD from ISO-8601 "
                                            "version of date from HTTP")
        now = time.time() if now is None else now
        if signed.presigned:
            if not 1 <= signed.expires <= MAX_PRESIGN_SECONDS:
                raise InvalidSignatureException("X-Amz-Expires must be between 1 and 604800 seconds")
            if now > at + signed.expires:
                raise InvalidSignatureException("Signature expired: the presigned request has expired")
            if at > now + MAX_SKEW_SECONDS:
                raise InvalidSignatureException("Signature not yet current: the request time is too far in the "
                                                "future")
        elif abs(now - at) > MAX_SKEW_SECONDS:
            raise InvalidSignatureException("Signature expired: the request time is more than 15 minutes away from "
                                            "the server's time")

    def verify(self, signed: Signed, method: str, raw_path: str, raw_query: str, headers: dict[str, str],
               body: bytes | None) -> None:
        """Raise unless ``signed.signature`` is what the secret key gives for this request.

        ``headers`` have lower-cased names. ``body`` None: not read yet, so only a request whose payload hash is
        declared (``x-amz-content-sha256``) or that has no body can be verified.
        """
        self.check_known_and_fresh(signed)
        missing = [h for h in signed.signed_headers if h not in headers]
        if "host" not in signed.signed_headers or missing:
            raise InvalidSignatureException("The request signature must sign the host header, and every signed "
                                            "header must be present")
        declared = headers.get("x-amz-content-sha256")
        if signed.presigned:
            # botocore presigns S3 with UNSIGNED-PAYLOAD and every other service over the (empty) body.
            payloads = [hashlib.sha256(body or b"").hexdigest(), UNSIGNED_PAYLOAD]
        elif declared:
            payloads = [declared]
            if declared != UNSIGNED_PAYLOAD and body is not None and hashlib.sha256(body).hexdigest() != declared:
                raise InvalidSignatureException("The provided 'x-amz-content-sha256' header does not match what "
                                                "was computed.")
        else:
            payloads = [hashlib.sha256(body or b"").hexdigest()]
        credentials = Credentials(signed.access_key, self._credentials[signed.access_key])
        sent = {h: headers[h] for h in signed.signed_headers}
        request = AWSRequest(method=method, url=f"http://{headers['host']}{raw_path}", headers=sent)
        request.context["timestamp"] = signed.timestamp
        for query in _query_spellings(raw_query, signed.presigned):
            for payload in payloads:
                signer = _Verifier(credentials, signed.service, signed.region, signed.signed_headers, query, payload)
                expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)),
                                            request)
                if hmac.compare_digest(expected, signed.signature):
                    return
        raise InvalidSignatureException("The request signature we calculated does not match the signature you "
                                        "provided. Check your AWS Secret Access Key and signing method.")
