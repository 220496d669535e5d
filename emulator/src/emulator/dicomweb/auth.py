"""Authentication of DICOMweb requests: AWS SigV4 (verified, ``emulator.sigv4``) or an OIDC bearer token.

HealthImaging accepts SigV4 on DICOMweb like everywhere else, and additionally ``Authorization: Bearer <JWT>``
for data stores with an OIDC (Lambda) authorizer (DG ``dicomweb-oidc-requirements.html``): the service first
checks ``exp``, ``nbf`` and ``iat`` (at most 12 h old), then the authorizer decides. The emulator replaces the
customer's Lambda with a configured issuer: the token's signature is verified against the issuer's JWKS
(RS256/ES256 only), ``iss`` and ``aud`` must match the settings.

Answers: no or unusable credentials, bad signature, expired / not yet valid / too old token → 401
``UnauthorizedException`` with ``WWW-Authenticate``; a genuine token for another issuer or audience, or a SigV4
credential scoped to another service → 403 ``AccessDeniedException``. Nothing from the token is echoed.

SigV4 (``--sigv4 verify``, the default) is checked as AWS checks it: an unknown access key → 403
``UnrecognizedClientException``; a wrong signature or a request time more than 15 minutes off → 403
``InvalidSignatureException``. What the head alone allows is checked before any body is read; a STOW-RS whose
payload hash is not declared in ``x-amz-content-sha256`` has its signature checked once the body is in.
``--sigv4 presence`` restores the old shape-only check (for clients with real AWS keys the emulator cannot know).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from emulator.config import Settings
from emulator.errors import AccessDeniedException, AwsError
from emulator.protocol import HttpRequest
from emulator.sigv4 import Signed, SigV4Verifier

log = logging.getLogger("emulator.dicomweb.auth")

ALLOWED_ALGORITHMS = {"RS256": "RSA", "ES256": "EC"}
MAX_TOKEN_AGE_SECONDS = 12 * 3600
JWKS_TTL_SECONDS = 300.0
JWKS_MIN_REFRESH_SECONDS = 5.0
MAX_TOKEN_BYTES = 16 * 1024
_SIGNATURE_PENDING = "sigv4.pending"  # request.context: the signature still needs the body


class UnauthorizedException(AwsError):
    code = "UnauthorizedException"
    status = 401

    def __init__(self, message: str, error: str = "invalid_token") -> None:
        super().__init__(message)
        # RFC 6750 §3; realm names the service so a client can tell where to get a token.
        self.headers = {"WWW-Authenticate": f'Bearer realm="medical-imaging", error="{error}"'}


class _TokenRejected(Exception):
    """Internal: verification failed; ``status`` 401 or 403, ``message`` safe to show."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _b64json(segment: str) -> dict[str, Any]:
    padded = segment + "=" * (-len(segment) % 4)
    doc = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


class JwksCache:
    """The issuer's signing keys, fetched lazily (the issuer may start after the emulator) and cached.

    Refetched after ``JWKS_TTL_SECONDS``, or early when a token names an unknown ``kid`` (key rotation), but not
    more often than every ``JWKS_MIN_REFRESH_SECONDS`` so a stream of bogus kids cannot hammer the issuer.
    """

    def __init__(self, issuer: str, jwks_url: str | None) -> None:
        self.issuer = issuer.rstrip("/")
        self.jwks_url = jwks_url
        self._keys: list[dict[str, Any]] | None = None
        self._fetched = 0.0
        self._lock = threading.Lock()

    def keys(self, refresh: bool = False) -> list[dict[str, Any]]:
        with self._lock:
            now = time.monotonic()
            stale = self._keys is None or now - self._fetched > JWKS_TTL_SECONDS
            if stale or (refresh and now - self._fetched > JWKS_MIN_REFRESH_SECONDS):
                try:
                    self._keys = self._fetch()
                    self._fetched = now
                except (OSError, ValueError) as exc:
                    log.warning("cannot fetch the OIDC issuer's JWKS: %s", type(exc).__name__)
                    if self._keys is None:
                        raise _TokenRejected("The token cannot be verified: the issuer's signing keys are "
                                             "unavailable") from None
            return list(self._keys or [])

    def _fetch(self) -> list[dict[str, Any]]:
        url = self.jwks_url
        if not url:
            try:
                config = _get_json(self.issuer + "/.well-known/openid-configuration")
                url = str(config["jwks_uri"])
            except (OSError, ValueError, KeyError, TypeError):
                url = self.issuer + "/.well-known/jwks.json"
        doc = _get_json(url)
        keys = doc.get("keys")
        if not isinstance(keys, list):
            raise ValueError("JWKS has no keys array")
        return [k for k in keys if isinstance(k, dict)]


def _get_json(url: str) -> dict[str, Any]:
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError("only http(s) URLs are fetched")
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:  # the scheme was checked above
        raw = resp.read(1024 * 1024)
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc


def _header_signature(credentials: str, headers: dict[str, str]) -> Signed | None:
    fields: dict[str, str] = {}
    for item in credentials.split(","):
        name, _, value = item.strip().partition("=")
        fields[name] = value
    return _signed(fields.get("Credential", ""), fields.get("SignedHeaders", ""), fields.get("Signature", ""),
                   headers.get("x-amz-date", ""))


def _query_signature(query: dict[str, list[str]]) -> Signed | None:
    def one(name: str) -> str:
        return query.get(name, [""])[-1]

    expires = one("X-Amz-Expires")
    if not expires.isdigit() or len(expires) > 7:
        return None
    return _signed(one("X-Amz-Credential"), one("X-Amz-SignedHeaders"), one("X-Amz-Signature"), one("X-Amz-Date"),
                   presigned=True, expires=int(expires))


def _signed(credential: str, signed_headers: str, signature: str, timestamp: str, presigned: bool = False,
            expires: int = 0) -> Signed | None:
    """The signature's parts, or None when it is incomplete or malformed."""
    scope = credential.split("/")
    if len(scope) != 5 or not all(scope) or scope[4] != "aws4_request" or not signed_headers or not signature:
        return None
    return Signed(access_key=scope[0], date=scope[1], region=scope[2], service=scope[3],
                  signed_headers=tuple(signed_headers.split(";")), signature=signature, timestamp=timestamp,
                  presigned=presigned, expires=expires)


class DicomwebAuth:
    """Decides whether a DICOMweb request may proceed; raises an AwsError (401/403) when not."""

    def __init__(self, settings: Settings) -> None:
        self.required = settings.dicomweb_auth != "off"
        self.issuer = settings.oidc_issuer.rstrip("/") if settings.oidc_issuer else None
        self.audience = settings.oidc_audience
        self.jwks = JwksCache(self.issuer, settings.oidc_jwks_url) if self.issuer else None
        self.leeway = settings.oidc_leeway_seconds
        self.sigv4 = SigV4Verifier(settings.sigv4_credentials) if settings.sigv4 == "verify" else None

    def check(self, request: HttpRequest) -> None:
        """Authenticate from the head (``request.body`` may still be unread)."""
        if not self.required:
            return
        header = request.headers.get("authorization", "").strip()
        scheme, _, credentials = header.partition(" ")
        if scheme.upper() == "AWS4-HMAC-SHA256":
            self._check_sigv4(request, _header_signature(credentials, request.headers))
            return
        if scheme.lower() == "bearer":
            self._check_bearer(credentials.strip())
            return
        if not header and request.query.get("X-Amz-Algorithm", [""])[-1] == "AWS4-HMAC-SHA256":
            self._check_sigv4(request, _query_signature(request.query))
            return
        if header:
            raise UnauthorizedException("Unsupported authorization scheme", error="invalid_request")
        raise UnauthorizedException("Missing authentication: sign the request with SigV4 or send an OIDC bearer "
                                    "token", error="invalid_request")

    def check_body(self, request: HttpRequest) -> None:
        """Finish what :meth:`check` left for the body: a signature over an undeclared payload, a declared hash."""
        signed = request.context.pop(_SIGNATURE_PENDING, None)
        if signed is not None and self.sigv4 is not None:
            self.sigv4.verify(signed, request.method, request.raw_path, request.raw_query, request.headers,
                              request.body)

    # ---- SigV4

    def _check_sigv4(self, request: HttpRequest, signed: Signed | None) -> None:
        if signed is None:
            raise UnauthorizedException("The SigV4 authorization is incomplete or malformed",
                                        error="invalid_request")
        if signed.service != "medical-imaging":
            raise AccessDeniedException("Credential should be scoped to correct service: 'medical-imaging'")
        if self.sigv4 is None:
            return
        if request.method == "POST":  # STOW-RS: a body, perhaps chunked
            if request.headers.get("x-amz-content-sha256"):
                # The payload hash is declared: the signature is checked now, the body against the hash later.
                self.sigv4.verify(signed, request.method, request.raw_path, request.raw_query, request.headers,
                                  None)
            else:
                # The signature covers the body: known key and time now, the signature once the body is in.
                self.sigv4.check_known_and_fresh(signed)
            request.context[_SIGNATURE_PENDING] = signed
        else:
            self.sigv4.verify(signed, request.method, request.raw_path, request.raw_query, request.headers, b"")

    # ---- OIDC bearer tokens

    def _check_bearer(self, token: str) -> None:
        if self.jwks is None:
            raise UnauthorizedException("Bearer tokens are not accepted: no OIDC issuer is configured for "
                                        "DICOMweb")
        try:
            self._verify(token)
        except _TokenRejected as exc:
            if exc.status == 403:
                raise AccessDeniedException(exc.message) from None
            raise UnauthorizedException(exc.message) from None

    def _verify(self, token: str) -> dict[str, Any]:
        if len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
            raise _TokenRejected("The bearer token is not a well-formed JWT")
        try:
            header = _b64json(token.split(".")[0])
        except (ValueError, UnicodeError):
            raise _TokenRejected("The bearer token is not a well-formed JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            # alg=none, HS* (which would let a public key act as an HMAC secret) and anything unknown.
            raise _TokenRejected("The token's signing algorithm is not allowed (RS256 or ES256)")
        if header.get("crit") is not None:
            raise _TokenRejected("The token has unsupported critical header parameters")
        claims = self._signature(token, alg, header.get("kid"))
        self._claims(claims)
        return claims

    def _signature(self, token: str, alg: str, kid: Any) -> dict[str, Any]:
        from joserfc import jwt  # local import: only needed when an issuer is configured
        from joserfc.errors import JoseError
        from joserfc.jwk import import_key

        assert self.jwks is not None
        for refresh in (False, True):
            candidates = [k for k in self.jwks.keys(refresh)
                          if k.get("kty") == ALLOWED_ALGORITHMS[alg]
                          and (kid is None or k.get("kid") == kid)
                          and k.get("use", "sig") == "sig" and k.get("alg", alg) == alg]
            if candidates:
                break
        else:
            raise _TokenRejected("The token's signing key is not published by the issuer")
        for jwk in candidates[:8]:
            try:
                key = import_key(jwk)
                decoded = jwt.decode(token, key, algorithms=[alg])
            except (JoseError, ValueError, TypeError):
                continue
            claims = decoded.claims
            if not isinstance(claims, dict):
                break
            return claims
        raise _TokenRejected("The token signature is invalid")

    def _claims(self, claims: dict[str, Any]) -> None:
        now = time.time()

        def number(name: str, required: bool) -> float | None:
            value = claims.get(name)
            if value is None:
                if required:
                    raise _TokenRejected(f"The token has no '{name}' claim")
                return None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _TokenRejected(f"The token's '{name}' claim is not a number")
            return float(value)

        exp = number("exp", True)
        iat = number("iat", True)
        nbf = number("nbf", False)
        assert exp is not None and iat is not None
        if now >= exp + self.leeway:
            raise _TokenRejected("The token has expired")
        if nbf is not None and now + self.leeway < nbf:
            raise _TokenRejected("The token is not valid yet (nbf)")
        if iat > now + self.leeway:
            raise _TokenRejected("The token was issued in the future (iat)")
        if now - iat > MAX_TOKEN_AGE_SECONDS:
            raise _TokenRejected("The token is too old: iat must be at most 12 hours ago")
        # A correctly signed token from our issuer's keys, but meant for something else: authenticated, not allowed.
        if str(claims.get("iss", "")).rstrip("/") != self.issuer:
            raise _TokenRejected("The token was not issued by the configured OIDC issuer", status=403)
        if self.audience is not None:
            aud = claims.get("aud")
            audiences = aud if isinstance(aud, list) else [aud]
            if self.audience not in audiences:
                raise _TokenRejected("The token's audience does not include this service", status=403)
