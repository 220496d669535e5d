"""Helpers shared by the service backends (``medicalimaging/``'s model modules, ``healthlake/models.py``).

Ids, canonical JSON and request digests, client-token replay, and offset pagination tokens. Each service keeps
its own error texts and page sizes (they follow that service's API), so those are parameters here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import uuid
from typing import Any

from emulator.errors import AwsError, ValidationException


def new_id() -> str:
    """A 32-character lowercase id, matching the model's ``[0-9a-z]{32}``."""
    return uuid.uuid4().hex


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def canonical_digest(obj: Any) -> str:
    """SHA-256 of ``obj``'s canonical JSON: equal for requests with equal parameters, whatever their order."""
    return hashlib.sha256(canonical(obj).encode()).hexdigest()


def replayed_request(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...], request_digest: str,
                     error: type[AwsError], message: str) -> sqlite3.Row | None:
    """The row an earlier request with the same client token created (``sql`` selects it), or None.

    A client token may only be reused with the same parameters: if the stored ``request_hash`` differs from
    ``request_digest``, ``error(message)`` is raised (the services disagree on which error that is).
    """
    row: sqlite3.Row | None = conn.execute(sql, args).fetchone()
    if row is not None and row["request_hash"] != request_digest:
        raise error(message)
    return row


# ----------------------------------------------------------------------------------------------- pagination


def _scope_tag(scope: str) -> str:
    # Ties a token to the request that produced it, so a token is refused with other filters.
    return hashlib.sha1(scope.encode()).hexdigest()[:12]


def encode_token(offset: int, scope: str) -> str:
    raw = canonical({"o": offset, "s": _scope_tag(scope)})
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_token(token: str | None, scope: str, invalid_message: str) -> int:
    """The offset in ``token`` (0 without one); ValidationException(``invalid_message``) for a bad token."""
    if not token:
        return 0
    try:
        doc = json.loads(base64.urlsafe_b64decode(token.encode()))
        offset = int(doc["o"])
        ok = doc["s"] == _scope_tag(scope) and offset >= 0
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise ValidationException(invalid_message)
    return offset


def offset_page(items: list[Any], token: str | None, max_results: int | None, scope: str, default_max: int,
         invalid_message: str) -> tuple[list[Any], str | None]:
    """One page of ``items`` and the token of the next page (None on the last page)."""
    start = decode_token(token, scope, invalid_message)
    end = start + (max_results or default_max)
    return items[start:end], (encode_token(end, scope) if end < len(items) else None)
