"""Encrypting every Temporal payload (AES-256-GCM), so workflow history never holds patient data in clear.

Inputs, results, signals, queries, memos and (with the failure converter below) failure messages and stack traces
all pass through `EncryptionCodec` on their way to the server. Each encrypted payload says which key sealed it
(``encryption-key-id`` in its metadata), so keys rotate without re-encrypting history: the ring's first key seals
new payloads, every key in the ring opens old ones.

Keys come from ``HIMIG_PAYLOAD_KEYS`` (a Secrets Manager secret on ECS) or, with ``HIMIG_PAYLOAD_KMS_KEY_ID``, from
KMS as envelope encryption: each process asks KMS for a data key, seals with it, and puts the data key's
KMS-encrypted copy in every payload it seals (``encryption-data-key``); whoever may ``kms:Decrypt`` with that KMS key
opens them. The key never leaves KMS; a data key is replaced after a day or a million payloads.

A payload without our encoding (history written before encryption was turned on, or a signal sent by a
``temporal`` CLI that did not use the codec server) is passed through as it is: refusing it would strand those
workflows, and its content is already in history either way.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes, PayloadCodec

from activities.errors import error_code

ENCODING = b"binary/encrypted"
CIPHER = b"AES256-GCM"
META_ENCODING = "encoding"
META_KEY_ID = "encryption-key-id"
META_CIPHER = "encryption-cipher"
META_DATA_KEY = "encryption-data-key"
KMS_KEY_ID_PREFIX = "kms-"
# Bound to every data key KMS makes for us: a data key made for anything else does not decrypt as ours.
KMS_CONTEXT = {"purpose": "himig-temporal-payload"}
DATA_KEY_MAX_USES = 1_000_000  # far below the 2^32 random-nonce bound of AES-GCM
DATA_KEY_MAX_AGE_SECONDS = 24 * 3600
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


class KmsDataKeys:
    """Envelope encryption: data keys from KMS (``GenerateDataKey``), opened again with ``Decrypt``.

    Thread-safe; KMS is called once per data key made and once per foreign data key met, then cached.
    """

    def __init__(self, kms: Any, kms_key_id: str, *, max_uses: int = DATA_KEY_MAX_USES,
                 max_age_seconds: float = DATA_KEY_MAX_AGE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.kms = kms
        self.kms_key_id = kms_key_id
        self.max_uses, self.max_age_seconds, self.clock = max_uses, max_age_seconds, clock
        self._lock = threading.Lock()
        self._current: tuple[str, AESGCM, bytes] | None = None
        self._uses = 0
        self._made_at = 0.0
        self._opened: dict[str, AESGCM] = {}

    @staticmethod
    def key_id_of(blob: bytes) -> str:
        return KMS_KEY_ID_PREFIX + hashlib.sha256(blob).hexdigest()[:32]

    def needs_kms(self) -> bool:
        """Whether the next `sealing_key` calls KMS (so an async caller can move it off the event loop)."""
        return self._current is None or self._uses >= self.max_uses or \
            self.clock() - self._made_at >= self.max_age_seconds

    def sealing_key(self) -> tuple[str, AESGCM, bytes]:
        """(key id, cipher, encrypted data key) to seal the next payload with."""
        with self._lock:
            if self.needs_kms():
                try:
                    made = self.kms.generate_data_key(KeyId=self.kms_key_id, KeySpec="AES_256",
                                                      EncryptionContext=KMS_CONTEXT)
                except Exception as err:  # botocore's ClientError / connection errors: name the code, not the text
                    raise PayloadEncryptionError(f"KMS GenerateDataKey with HIMIG_PAYLOAD_KMS_KEY_ID failed "
                                                 f"({error_code(err)})") from None
                blob = bytes(made["CiphertextBlob"])
                key_id = self.key_id_of(blob)
                cipher = AESGCM(bytes(made["Plaintext"]))
                self._current, self._uses, self._made_at = (key_id, cipher, blob), 0, self.clock()
                self._opened[key_id] = cipher
            assert self._current is not None
            self._uses += 1
            return self._current

    def needs_kms_to_open(self, payloads: Iterable[Payload]) -> bool:
        return any(p.metadata.get(META_KEY_ID, b"").decode("utf-8", "replace") not in self._opened
                   for p in payloads if is_encrypted(p) and META_DATA_KEY in p.metadata)

    def opener(self, key_id: str, blob: bytes) -> AESGCM:
        """The cipher of a data key sealed by KMS (``blob``), checked to be the one ``key_id`` names."""
        if self.key_id_of(blob) != key_id:
            raise PayloadDecryptionError(f"payload sealed with key id {key_id!r} carries another data key")
        with self._lock:
            cipher = self._opened.get(key_id)
            if cipher is None:
                try:
                    plain = self.kms.decrypt(CiphertextBlob=blob, EncryptionContext=KMS_CONTEXT)["Plaintext"]
                except Exception as err:  # AccessDenied, a disabled or deleted key, a context mismatch
                    raise PayloadDecryptionError(f"payload sealed with KMS data key {key_id!r}: KMS Decrypt "
                                                 f"failed ({error_code(err)})") from None
                cipher = self._opened[key_id] = AESGCM(bytes(plain))
            return cipher


class PayloadEncryptionError(RuntimeError):
    """A payload could not be sealed (KMS refused a data key)."""


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over each whole serialized payload (its metadata too: the encoding names a pydantic type).

    New payloads are sealed with a KMS data key when ``data_keys`` is given, else with the ring's current key; both
    open what they sealed, so moving from static keys to KMS (or back) keeps old history readable.
    """

    def __init__(self, ring: KeyRing | None, data_keys: KmsDataKeys | None = None) -> None:
        if ring is None and data_keys is None:
            raise PayloadKeyError(["no key: set HIMIG_PAYLOAD_KEYS or HIMIG_PAYLOAD_KMS_KEY_ID"])
        self.ring = ring
        self.data_keys = data_keys
        self._ciphers = {key_id: AESGCM(key) for key_id, key in (ring.keys.items() if ring else ())}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        if self.data_keys is not None and self.data_keys.needs_kms():
            return await asyncio.to_thread(self.encode_sync, payloads)  # a KMS call must not block the loop
        return self.encode_sync(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        if self.data_keys is not None and self.data_keys.needs_kms_to_open(payloads):
            return await asyncio.to_thread(self.decode_sync, payloads)
        return self.decode_sync(payloads)

    def encode_sync(self, payloads: Iterable[Payload]) -> list[Payload]:
        """Seal each payload with the current key (already sealed ones are left as they are)."""
        out = []
        for payload in payloads:
            if is_encrypted(payload):
                out.append(payload)
                continue
            metadata = {META_ENCODING: ENCODING, META_CIPHER: CIPHER}
            if self.data_keys is not None:
                key_id, cipher, blob = self.data_keys.sealing_key()
                metadata[META_DATA_KEY] = blob
            else:
                assert self.ring is not None
                key_id, cipher = self.ring.current, self._ciphers[self.ring.current]
            metadata[META_KEY_ID] = key_id.encode()
            nonce = os.urandom(NONCE_BYTES)
            sealed = cipher.encrypt(nonce, payload.SerializeToString(), _AAD_PREFIX + key_id.encode())
            out.append(Payload(metadata=metadata, data=nonce + sealed))
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
        if cipher is None and META_DATA_KEY in payload.metadata:
            if self.data_keys is None:
                raise PayloadDecryptionError(f"payload sealed with KMS data key {key_id!r}: set "
                                             f"HIMIG_PAYLOAD_KMS_KEY_ID (and allow kms:Decrypt) to open it")
            cipher = self.data_keys.opener(key_id, payload.metadata[META_DATA_KEY])
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


def data_converter(codec: EncryptionCodec | KeyRing) -> DataConverter:
    """The project's converter: pydantic payloads sealed by ``codec`` (or a codec over a ring), failure messages
    and stack traces too."""
    if isinstance(codec, KeyRing):
        codec = EncryptionCodec(codec)
    return dataclasses.replace(pydantic_data_converter, payload_codec=codec,
                               failure_converter_class=DefaultFailureConverterWithEncodedAttributes)
