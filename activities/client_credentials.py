"""OAuth 2.0 client-credentials bearer tokens (RFC 6749 §4.4) for the DICOMweb servers the worker calls.

One `TokenSource` per configured client and process: every activity thread shares its cached token, which is
fetched again shortly before it expires (``expires_in`` minus a margin) and at once when a server answers 401
(`TokenSource.rejected`). A long pull therefore outlives any single token. The client secret and the tokens never
appear in a message, a log line or a ``repr``.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import requests

#: Refresh this long before a token's announced expiry (or at half its lifetime, when that is shorter).
DEFAULT_MARGIN_SECONDS = 60.0
#: A token endpoint that announces no ``expires_in`` (RFC 6749 makes it only RECOMMENDED) and issues an opaque
#: token: kept until a server refuses it, but at most this long.
UNANNOUNCED_LIFETIME_SECONDS = 300.0
MAX_RESPONSE_BYTES = 64 * 1024
# RFC 6749 §5.2: an error code is %x20-21 / %x23-5B / %x5D-7E; anything else is not repeated.
_ERROR_CODE = re.compile(r"^[\x20\x21\x23-\x5b\x5d-\x7e]{1,64}$")


class TokenError(Exception):
    """No token could be obtained. The message names the setting to check, never a secret."""


class TokenUnavailable(TokenError):
    """The token endpoint did not answer usefully (down, 5xx, 429, garbage): worth retrying later."""


class TokenRefused(TokenError):
    """The token endpoint refused our client (RFC 6749 §5.2 error): a retry cannot help until settings change."""


@dataclass(frozen=True)
class ClientCredentials:
    """A confidential client registered at the issuer; ``setting`` is the variable prefix named in errors."""

    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    scope: str | None = None
    setting: str = "HIMIG_DICOMWEB_OIDC"

    def __post_init__(self) -> None:
        url = urlsplit(self.token_url)
        if url.scheme not in ("http", "https") or not url.hostname or url.username or url.fragment:
            raise ValueError(f"{self.setting}_TOKEN_URL: must be an http(s):// URL without credentials or fragment")
        if not self.client_id:
            raise ValueError(f"{self.setting}_CLIENT_ID: must not be empty")
        if not self.client_secret:
            raise ValueError(f"{self.setting}_CLIENT_SECRET: must not be empty")


@dataclass(frozen=True)
class _Token:
    value: str = field(repr=False)
    refresh_at: float  # on the source's clock


class TokenSource:
    """Bearer tokens of one client, cached and refreshed; thread-safe.

    ``clock`` is monotonic seconds (injectable so tests can move time without sleeping).
    """

    def __init__(self, client: ClientCredentials, timeout: float = 10.0,
                 margin_seconds: float = DEFAULT_MARGIN_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._timeout = (min(5.0, timeout), timeout)
        self._margin = margin_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._token: _Token | None = None
        self._session = requests.Session()
        self.fetches = 0  # token requests made (how often the issuer was asked; for metrics and tests)

    def __repr__(self) -> str:
        return f"TokenSource({self._client.token_url!r}, client_id={self._client.client_id!r})"

    def token(self) -> str:
        """A token valid for a while yet: the cached one, or a new one from the token endpoint."""
        with self._lock:
            if self._token is None or self._clock() >= self._token.refresh_at:
                self._token = self._fetch()
            return self._token.value

    def rejected(self, token: str) -> None:
        """A server refused ``token`` (401): forget it, unless another thread already replaced it."""
        with self._lock:
            if self._token is not None and self._token.value == token:
                self._token = None

    def _fetch(self) -> _Token:
        c = self._client
        # RFC 6749 §2.3.1: client_secret_basic, id and secret form-urlencoded before base64.
        basic = base64.b64encode(f"{quote(c.client_id, safe='')}:{quote(c.client_secret, safe='')}".encode()).decode()
        form = {"grant_type": "client_credentials", **({"scope": c.scope} if c.scope else {})}
        where = f"the token endpoint ({c.setting}_TOKEN_URL)"
        self.fetches += 1
        started = self._clock()
        try:
            resp = self._session.post(c.token_url, data=form, timeout=self._timeout, allow_redirects=False,
                                      headers={"Authorization": f"Basic {basic}", "Accept": "application/json"},
                                      stream=True)
        except (requests.ConnectionError, requests.Timeout) as err:
            raise TokenUnavailable(f"{where} did not answer ({type(err).__name__})") from None
        except requests.RequestException as err:
            raise TokenUnavailable(f"{where}: request failed ({type(err).__name__})") from None
        with resp:
            raw = resp.raw.read(MAX_RESPONSE_BYTES + 1, decode_content=True)
            status = resp.status_code
        if status == 429 or status >= 500:
            raise TokenUnavailable(f"{where} answered HTTP {status}")
        doc = _json_object(raw)
        if status in (400, 401, 403):
            code = doc.get("error") if doc else None
            shown = code if isinstance(code, str) and _ERROR_CODE.match(code) else "no error code"
            raise TokenRefused(f"{where} refused the client credentials: HTTP {status} ({shown}); check "
                               f"{c.setting}_CLIENT_ID, {c.setting}_CLIENT_SECRET and {c.setting}_SCOPE")
        if status != 200 or doc is None:
            raise TokenUnavailable(f"{where} answered HTTP {status} without a JSON token response")
        return self._parse(doc, started, where)

    def _parse(self, doc: dict[str, object], started: float, where: str) -> _Token:
        value = doc.get("access_token")
        if not isinstance(value, str) or not value or len(value) > 16 * 1024 or not value.isascii() \
                or any(ch.isspace() for ch in value):
            raise TokenUnavailable(f"{where}: the response has no usable access_token")
        kind = doc.get("token_type")
        if not isinstance(kind, str) or kind.lower() != "bearer":
            raise TokenRefused(f"{where}: token_type must be Bearer (RFC 6750), not a {type(kind).__name__} "
                               "or another scheme")
        lifetime = _lifetime(doc.get("expires_in"), value, where)
        # Counted from when we asked, so time spent waiting for the answer is not counted as validity.
        return _Token(value, started + lifetime - min(self._margin, lifetime / 2))


def _json_object(raw: bytes) -> dict[str, object] | None:
    if len(raw) > MAX_RESPONSE_BYTES:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _lifetime(expires_in: object, token: str, where: str) -> float:
    if expires_in is None:
        return _jwt_lifetime(token)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in <= 0:
        # A string, a fraction or a non-positive number: the endpoint is not speaking RFC 6749 §5.1.
        raise TokenUnavailable(f"{where}: expires_in must be a positive whole number of seconds")
    return float(expires_in)


def _jwt_lifetime(token: str) -> float:
    """Seconds until a JWT access token's ``exp`` (read, not verified: only to schedule the refresh)."""
    parts = token.split(".")
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        exp = claims["exp"]
        if isinstance(exp, bool) or not isinstance(exp, (int, float)):
            raise TypeError
    except (IndexError, ValueError, KeyError, TypeError):
        return UNANNOUNCED_LIFETIME_SECONDS
    return max(0.0, min(float(exp) - time.time(), UNANNOUNCED_LIFETIME_SECONDS))
