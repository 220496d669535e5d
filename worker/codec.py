"""Encrypting every Temporal payload (AES-256-GCM), so workflow history never holds patient data in clear.

Inputs, results, signals, queries, memos and (with the failure converter below) failure messages and stack traces
all pass through `EncryptionCodec` on their way to the server. Each encrypted payload says which key sealed it
(``encryption-key-id`` in its metadata), so keys rotate without re-encrypting history: the ring's first key seals
new payloads, every key in the ring opens old ones.

A payload without our encoding (history written before encryption was turned on, or a signal sent by a
``temporal`` CLI that did not use the codec server) is passed through as it is: refusing it would strand those
workflows, and its content is already in history either way.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes, PayloadCodec

ENCODING = b"binary/encrypted"
CIPHER = b"AES256-GCM"
META_ENCODING = "encoding"
META_KEY_ID = "encryption-key-id"
META_CIPHER = "encryption-cipher"
KEYS_VARIABLE = "HIMIG_PAYLOAD_KEYS"
KEY_BYTES = 32
NONCE_BYTES = 12
KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Bound to every ciphertext, so a payload sealed by another application's codec under a same-named key never opens.
_AAD_PREFIX = b"himig-payload-v1:"


class PayloadKeyError(ValueError):
    """The key ring cannot be built; ``problems`` name the entry and the reason (never key material)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class PayloadDecryptionError(ValueError):
    """An encrypted payload this ring cannot open (unknown key id, wrong key, corrupted or truncated)."""


@dataclass(frozen=True)
class KeyRing:
    """Named AES-256 keys; ``current`` seals new payloads, all of them open old ones."""

    current: str
    keys: dict[str, bytes] = field(repr=False)

    @classmethod
    def parse(cls, spec: str) -> KeyRing:
        """Read ``id:base64[,id:base64...]`` (the first entry is the current key).

        Raises `PayloadKeyError` naming each bad entry by position and id.
        """
        problems: list[str] = []
        keys: dict[str, bytes] = {}
        entries = [e.strip() for e in spec.replace("\n", ",").split(",") if e.strip()]
        if not entries:
            raise PayloadKeyError(["no key: expected key-id:base64-of-32-bytes[,older-id:base64...]"])
        for position, entry in enumerate(entries, 1):
            key_id, sep, material = entry.partition(":")
            where = f"entry {position}" + (f" ({key_id!r})" if KEY_ID.match(key_id) else "")
            if not sep:
                problems.append(f"{where}: expected key-id:base64, found no ':'")
                continue
            if not KEY_ID.match(key_id):
                problems.append(f"{where}: the key id must be 1-64 letters, digits, '.', '_' or '-', "
                                "starting with a letter or digit")
                continue
            if key_id in keys:
                problems.append(f"{where}: the key id appears twice (each id names one key)")
                continue
            try:
                key = base64.b64decode(material.strip(), validate=True)
            except (binascii.Error, ValueError):
                problems.append(f"{where}: the key is not valid base64")
                continue
            if len(key) != KEY_BYTES:
                problems.append(f"{where}: the key must be {KEY_BYTES} bytes (AES-256), it decodes to {len(key)}")
                continue
            keys[key_id] = key
        if problems:
            raise PayloadKeyError(problems)
        return cls(current=next(iter(keys)), keys=keys)

    @staticmethod
    def generate_entry(key_id: str) -> str:
        """A new ring entry ``key_id:base64`` with a random key (for `himig codec-key` and the local stack)."""
        if not KEY_ID.match(key_id):
            raise PayloadKeyError([f"{key_id!r}: the key id must be 1-64 letters, digits, '.', '_' or '-'"])
        return f"{key_id}:{base64.b64encode(os.urandom(KEY_BYTES)).decode()}"


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over each whole serialized payload (its metadata too: the encoding names a pydantic type)."""

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring
        self._ciphers = {key_id: AESGCM(key) for key_id, key in ring.keys.items()}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return self.encode_sync(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return self.decode_sync(payloads)

    def encode_sync(self, payloads: Iterable[Payload]) -> list[Payload]:
        """Seal each payload with the current key (already sealed ones are left as they are)."""
        key_id = self.ring.current
        cipher = self._ciphers[key_id]
        out = []
        for payload in payloads:
            if is_encrypted(payload):
                out.append(payload)
                continue
            nonce = os.urandom(NONCE_BYTES)
            sealed = cipher.encrypt(nonce, payload.SerializeToString(), _AAD_PREFIX + key_id.encode())
            out.append(Payload(metadata={META_ENCODING: ENCODING, META_KEY_ID: key_id.encode(), META_CIPHER: CIPHER},
                               data=nonce + sealed))
        return out

    def decode_sync(self, payloads: Iterable[Payload]) -> list[Payload]:
        """Open each sealed payload; plain ones pass through. Raises `PayloadDecryptionError`."""
        return [self._open(p) if is_encrypted(p) else p for p in payloads]

    def _open(self, payload: Payload) -> Payload:
        key_id = payload.metadata.get(META_KEY_ID, b"").decode("utf-8", "replace")
        cipher_name = payload.metadata.get(META_CIPHER, CIPHER)
        if cipher_name != CIPHER:
            raise PayloadDecryptionError(f"payload sealed with cipher {cipher_name.decode('utf-8', 'replace')!r}; "
                                         f"only {CIPHER.decode()} is known")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise PayloadDecryptionError(
                f"payload sealed with key id {key_id!r}, which is not in {KEYS_VARIABLE} (keep retired keys in the "
                f"ring, after the current one, for as long as history sealed with them is kept)")
        data = payload.data
        if len(data) < NONCE_BYTES + 16:
            raise PayloadDecryptionError(f"payload sealed with key id {key_id!r} is truncated")
        try:
            plain = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], _AAD_PREFIX + key_id.encode())
        except InvalidTag:
            raise PayloadDecryptionError(
                f"payload sealed with key id {key_id!r} does not authenticate: it was altered, or the ring holds a "
                f"different key under that id") from None
        inner = Payload()
        inner.ParseFromString(plain)
        return inner


def is_encrypted(payload: Payload) -> bool:
    return payload.metadata.get(META_ENCODING) == ENCODING


def data_converter(ring: KeyRing) -> DataConverter:
    """The project's converter: pydantic payloads, sealed by ``ring``, failure messages and stack traces too."""
    return dataclasses.replace(pydantic_data_converter, payload_codec=EncryptionCodec(ring),
                               failure_converter_class=DefaultFailureConverterWithEncodedAttributes)
