"""Who decided: a reviewer attestation carried inside a (sealed) payload.

Whoever holds ``HIMIG_REVIEWER_ATTESTATION_KEY`` (the workers, the codec server, an admin host's ``himig``) can
vouch that a payload was sent by an identity the platform authenticated: the codec server for the OIDC subject of
the bearer token it verified, ``himig approve`` for the OS user of the host holding the key. The attestation is two
entries of the payload's own metadata, inside the AES-GCM envelope the payload codec adds, so it is sealed with the
payload:

- ``himig-attested-by``: the identity (UTF-8);
- ``himig-attestation``: hex HMAC-SHA256(key, ``himig-reviewer-v1`` US namespace US identity US sha256(data)),
  where US is the unit separator 0x1f and ``data`` the payload's data (the JSON of the decision).

It binds who, where (the Temporal namespace) and exactly what was sent; the ``verify_reviewer`` activity checks it
before a reconciliation decision is applied. Pure standard library: usable by the codec server, the CLI, the
activity and the workflow (which only reads the metadata and hashes the data).
"""

from __future__ import annotations

import hashlib
import hmac

from temporalio.api.common.v1 import Payload

META_ATTESTED_BY = "himig-attested-by"
META_ATTESTATION = "himig-attestation"
ATTESTATION_DOMAIN = b"himig-reviewer-v1"
KEY_VARIABLE = "HIMIG_REVIEWER_ATTESTATION_KEY"
REVIEWERS_VARIABLE = "HIMIG_RECONCILIATION_REVIEWERS"
MIN_KEY_CHARS = 32
_SEP = b"\x1f"


def data_digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def attestation(key: bytes, namespace: str, identity: str, digest: bytes) -> str:
    """The hex MAC binding ``identity`` and ``namespace`` to a payload whose data hashes to ``digest``."""
    message = _SEP.join([ATTESTATION_DOMAIN, namespace.encode(), identity.encode(), digest])
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def verifies(key: bytes, namespace: str, identity: str, digest: bytes, mac: str) -> bool:
    return hmac.compare_digest(attestation(key, namespace, identity, digest).encode(), mac.encode())


def strip(payload: Payload) -> None:
    """Remove any attestation a caller brought along (only a key holder attests)."""
    for name in (META_ATTESTED_BY, META_ATTESTATION):
        if name in payload.metadata:
            del payload.metadata[name]


def attest(payload: Payload, key: bytes, namespace: str, identity: str) -> Payload:
    """``payload`` (changed in place and returned) attested as sent by ``identity`` in ``namespace``."""
    strip(payload)
    payload.metadata[META_ATTESTED_BY] = identity.encode()
    payload.metadata[META_ATTESTATION] = attestation(key, namespace, identity, data_digest(payload.data)).encode()
    return payload


def claimed(payload: Payload) -> tuple[str | None, str | None]:
    """(identity, MAC) as the payload's metadata states them, unverified; None for what is absent or not text."""
    def text(name: str) -> str | None:
        raw = payload.metadata.get(name)
        if not raw:
            return None
        try:
            return raw.decode("utf-8")[:512]
        except UnicodeDecodeError:
            return None
    return text(META_ATTESTED_BY), text(META_ATTESTATION)


def parse_reviewers(value: str) -> tuple[str, ...]:
    """The identities of a comma-separated ``HIMIG_RECONCILIATION_REVIEWERS``."""
    return tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
