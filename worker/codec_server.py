"""``himig codec-server``: Temporal's codec-server HTTP contract over our payload keys, for authorised people only.

The Temporal UI and ``temporal ... --codec-endpoint`` POST a ``Payloads`` message (protobuf JSON) to
``<endpoint>/encode`` or ``<endpoint>/decode`` with an ``X-Namespace`` header; only the last path segment selects
the operation, so the server can sit under any prefix. The UI forwards the operator's OIDC access token as
``Authorization: Bearer`` (and only to an https endpoint: serve TLS here or behind a load balancer), the CLI sends
what ``--codec-auth`` says.

Every request but ``GET /health`` must carry a bearer token signed by the configured issuer (RS256/ES256, checked
against its JWKS), for the configured audience, from an allowed subject or group. No or bad token: 401; a genuine
token for another audience or issuer, a person not on the lists, or another namespace: 403. Each request is logged
with who made it and how many payloads it carried, never their content.

With ``HIMIG_REVIEWER_ATTESTATION_KEY`` set, every payload ``/encode`` seals for a verified token carries the
attestation of the token's ``sub`` for this namespace (contracts/attestation.py): that is how a reconciliation
decision sent from the Temporal UI or ``temporal ... --codec-endpoint`` proves who sent it. The ``sub``, not the
``email``: it is the issuer's stable, unique name for the person (an email can change hands or be unverified).
An attestation arriving with a payload is always removed first; with ``AUTH=none`` nothing is attested.
"""

from __future__ import annotations

import json
import signal
import ssl
import threading
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import structlog
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from contracts import attestation
from worker.codec import EncryptionCodec, PayloadDecryptionError, PayloadEncryptionError, is_encrypted
from worker.settings import CodecServerSettings, InvalidSettings

ALGORITHMS = ("RS256", "ES256")
MAX_BODY_BYTES = 16 * 1024 * 1024  # a UI page of history; Temporal's own payload limit is 2 MiB each
MAX_TOKEN_BYTES = 16 * 1024
LEEWAY_SECONDS = 60
REALM = "himig-codec"


class Refused(Exception):
    """A request the server answers with ``status`` and ``message`` (safe to show: nothing from the request)."""

    def __init__(self, status: HTTPStatus, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def _unauthorized(message: str, error: str = "invalid_token") -> Refused:
    # RFC 6750 §3: tells a client that a (new) bearer token is what it needs.
    return Refused(HTTPStatus.UNAUTHORIZED, message, {"WWW-Authenticate": f'Bearer realm="{REALM}", error="{error}"'})


@dataclass(frozen=True)
class Principal:
    """Who a verified token says made the request (recorded in the audit line)."""

    subject: str
    email: str | None
    verified: bool = True  # False: no token was checked (AUTH=none); such a principal is never attested


class OidcVerifier:
    """Bearer tokens from one OIDC issuer: signature against its JWKS, then issuer, audience, time, and the lists."""

    def __init__(self, settings: CodecServerSettings) -> None:
        assert settings.oidc_issuer and settings.oidc_audience
        self.issuer = settings.oidc_issuer.rstrip("/")
        self.audience = settings.oidc_audience
        self.jwks_url = settings.oidc_jwks_url
        self.subjects = set(settings.allowed_subject_list())
        self.groups = set(settings.allowed_group_list())
        self.groups_claim = settings.groups_claim
        self._jwks: jwt.PyJWKClient | None = None
        self._lock = threading.Lock()

    def _keys(self) -> jwt.PyJWKClient:
        # Found lazily: the issuer may come up after the codec server.
        with self._lock:
            if self._jwks is None:
                url = self.jwks_url or _discover_jwks(self.issuer)
                self._jwks = jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=5)
            return self._jwks

    def verify(self, authorization: str | None) -> Principal:
        if not authorization:
            raise _unauthorized("a bearer token is required (Authorization: Bearer <OIDC access token>)",
                                "invalid_request")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthorized("only bearer tokens are accepted", "invalid_request")
        if len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
            raise _unauthorized("the bearer token is not a well-formed JWT")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise _unauthorized("the bearer token is not a well-formed JWT") from None
        if header.get("alg") not in ALGORITHMS:
            # alg=none, HS* (a public key used as an HMAC secret) and anything unknown
            raise _unauthorized("the token's signing algorithm is not allowed (RS256 or ES256)")
        try:
            key = self._keys().get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError:
            raise Refused(HTTPStatus.SERVICE_UNAVAILABLE, "the issuer's signing keys cannot be fetched") from None
        except (jwt.PyJWKClientError, jwt.InvalidTokenError):
            raise _unauthorized("the token's signing key is not published by the issuer") from None
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=[str(header["alg"])], audience=self.audience, issuer=self.issuer,
                leeway=LEEWAY_SECONDS, options={"require": ["exp", "iat", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError:
            raise _unauthorized("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise _unauthorized("the token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise Refused(HTTPStatus.FORBIDDEN, "the token was issued for another audience") from None
        except jwt.InvalidIssuerError:
            raise Refused(HTTPStatus.FORBIDDEN, "the token was issued by another issuer") from None
        except jwt.MissingRequiredClaimError as err:
            raise _unauthorized(f"the token has no '{err.claim}' claim") from None
        except jwt.InvalidSignatureError:
            raise _unauthorized("the token signature is invalid") from None
        except jwt.InvalidTokenError:
            raise _unauthorized("the token is not valid") from None
        subject = str(claims["sub"])
        email = claims.get("email") if isinstance(claims.get("email"), str) else None
        groups = claims.get(self.groups_claim, [])
        groups = set(groups) if isinstance(groups, list) else {groups} if isinstance(groups, str) else set()
        allowed = ("*" in self.subjects or subject in self.subjects or (email is not None and email in self.subjects)
                   or bool(self.groups & {g for g in groups if isinstance(g, str)}))
        if not allowed:
            raise Refused(HTTPStatus.FORBIDDEN, "this identity may not see or seal payloads "
                          "(not in HIMIG_CODEC_SERVER_ALLOWED_SUBJECTS or _ALLOWED_GROUPS)")
        return Principal(subject, email)


def _discover_jwks(issuer: str) -> str:
    """The issuer's ``jwks_uri`` from its discovery document; ``<issuer>/.well-known/jwks.json`` failing that."""
    try:
        with urllib.request.urlopen(issuer + "/.well-known/openid-configuration", timeout=5) as resp:
            doc = json.loads(resp.read(1024 * 1024))
        return str(doc["jwks_uri"])
    except (OSError, ValueError, KeyError, TypeError):
        return issuer + "/.well-known/jwks.json"


class CodecService:
    """What the HTTP handler calls: authorise, then encode or decode one ``Payloads`` JSON body."""

    def __init__(self, settings: CodecServerSettings, codec: EncryptionCodec, namespace: str,
                 attestation_key: bytes | None = None) -> None:
        self.settings = settings
        self.codec = codec
        self.namespace = namespace
        self.attestation_key = attestation_key
        self.origins = set(settings.ui_origin_list())
        self.verifier = OidcVerifier(settings) if settings.auth == "oidc" else None

    def authorise(self, headers: Mapping[str, str], path_namespace: str | None) -> Principal:
        namespace = headers.get("x-namespace") or path_namespace
        if namespace is not None and namespace != self.namespace:
            raise Refused(HTTPStatus.FORBIDDEN, "this codec server serves another namespace")
        if self.verifier is None:
            return Principal("anonymous (HIMIG_CODEC_SERVER_AUTH=none, loopback only)", None, verified=False)
        return self.verifier.verify(headers.get("authorization"))

    def convert(self, operation: str, body: bytes, principal: Principal | None = None) -> tuple[bytes, int]:
        payloads = Payloads()
        try:
            json_format.Parse(body.decode("utf-8"), payloads)
        except (json_format.ParseError, UnicodeDecodeError, RecursionError):
            raise Refused(HTTPStatus.BAD_REQUEST, "the body is not a Payloads message in protobuf JSON "
                          '({"payloads": [{"metadata": {...}, "data": "<base64>"}]})') from None
        try:
            if operation == "encode":
                for payload in payloads.payloads:
                    self._attest(payload, principal)
                result = self.codec.encode_sync(payloads.payloads)
            else:
                result = self.codec.decode_sync(payloads.payloads)
        except PayloadDecryptionError as err:
            raise Refused(HTTPStatus.BAD_REQUEST, str(err)) from None
        except PayloadEncryptionError as err:
            raise Refused(HTTPStatus.SERVICE_UNAVAILABLE, str(err)) from None
        out = json_format.MessageToJson(Payloads(payloads=result), indent=None)
        return out.encode(), len(payloads.payloads)

    def _attest(self, payload: Payload, principal: Principal | None) -> None:
        """Only this server says who sent a payload: a caller's own attestation is dropped, a verified
        principal's added (when the key is configured)."""
        if is_encrypted(payload):
            return  # sealed elsewhere: left as it is by the codec, so nothing is added
        attestation.strip(payload)
        if self.attestation_key is not None and principal is not None and principal.verified:
            attestation.attest(payload, self.attestation_key, self.namespace, principal.subject)


def _handler(service: CodecService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "himig-codec"
        sys_version = ""
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one structured audit line per request instead (see _finish)

        def _cors(self) -> dict[str, str]:
            origin = self.headers.get("Origin")
            if origin is None or origin not in service.origins:
                return {}
            return {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
                    "Access-Control-Allow-Credentials": "true"}

        def _send(self, status: HTTPStatus, body: bytes, content_type: str = "application/json",
                  headers: Mapping[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in {**self._cors(), **(headers or {})}.items():
                self.send_header(name, value)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")  # decoded payloads may hold patient data
            self.end_headers()
            self.wfile.write(body)

        def _refuse(self, refused: Refused) -> None:
            self._send(refused.status, json.dumps({"error": refused.message}).encode(), headers=refused.headers)

        def do_OPTIONS(self) -> None:  # CORS preflight from the UI's origin
            cors = self._cors()
            if not cors:
                self._refuse(Refused(HTTPStatus.FORBIDDEN, "origin not allowed (HIMIG_CODEC_SERVER_UI_ORIGINS)"))
                return
            self.send_response(HTTPStatus.NO_CONTENT)
            for name, value in cors.items():
                self.send_header(name, value)
            self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")
            self.send_header("Access-Control-Allow-Headers", "Content-Type, X-Namespace, Authorization")
            self.send_header("Access-Control-Max-Age", "600")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            if self.path.split("?")[0].rstrip("/").endswith("/health"):
                self._send(HTTPStatus.OK, b'{"status":"ok"}')
            else:
                self._refuse(Refused(HTTPStatus.NOT_FOUND, "POST <endpoint>/encode or <endpoint>/decode"))

        def do_POST(self) -> None:
            segments = [s for s in self.path.split("?")[0].split("/") if s]
            operation = segments[-1] if segments else ""
            principal: Principal | None = None
            count = 0
            try:
                if operation not in ("encode", "decode"):
                    raise Refused(HTTPStatus.NOT_FOUND, "POST <endpoint>/encode or <endpoint>/decode")
                principal = service.authorise({k.lower(): v for k, v in self.headers.items()},
                                              segments[-2] if len(segments) > 1 else None)
                out, count = service.convert(operation, self._body(), principal)
                answer: Refused | bytes = out
            except Refused as refused:
                answer = refused
            # The audit line is written before the answer leaves: whoever saw the payloads is on record.
            # (A fresh logger each time: it must honour the logging set-up in force now.)
            structlog.get_logger("himig.codec_server").info(
                "codec request", operation=operation or None,
                status=int(answer.status if isinstance(answer, Refused) else HTTPStatus.OK), payloads=count,
                subject=principal.subject if principal else None, origin=self.headers.get("Origin"))
            if isinstance(answer, Refused):
                self._refuse(answer)
            else:
                self._send(HTTPStatus.OK, answer)

        def _body(self) -> bytes:
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                raise Refused(HTTPStatus.LENGTH_REQUIRED, "a Content-Length is required")
            if int(length) > MAX_BODY_BYTES:
                self.close_connection = True
                raise Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body exceeds {MAX_BODY_BYTES} bytes")
            return self.rfile.read(int(length))

    return Handler


class CodecServer:
    """The HTTP(S) server; `start` in a thread (tests) or `serve_until_signalled` (the command)."""

    def __init__(self, settings: CodecServerSettings, codec: EncryptionCodec, namespace: str,
                 attestation_key: bytes | None = None) -> None:
        problems = settings.problems()
        if problems:
            raise InvalidSettings(problems)
        self.service = CodecService(settings, codec, namespace, attestation_key)
        self.httpd = ThreadingHTTPServer((settings.host, settings.port), _handler(self.service))
        self.httpd.daemon_threads = True
        self.scheme = "http"
        if settings.tls_cert_path and settings.tls_key_path:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(settings.tls_cert_path, settings.tls_key_path)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"{self.scheme}://{host if isinstance(host, str) else host.decode()}:{port}"

    def start(self) -> CodecServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="codec-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def serve_until_signalled(self) -> None:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        self.start()
        structlog.get_logger("himig.codec_server").info("codec server started", url=self.url, auth=self.service.settings.auth,
                 attests_reviewers=self.service.attestation_key is not None,
                 namespace=self.service.namespace, ui_origins=sorted(self.service.origins))
        stop.wait()
        self.stop()
        structlog.get_logger("himig.codec_server").info("codec server stopped")
