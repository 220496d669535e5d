"""The payload codec: AES-256-GCM per payload, the key id in its metadata, rotation, and hostile keys and payloads."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import boto3
import pytest
from temporalio.api.common.v1 import Payload
from temporalio.converter import DefaultFailureConverterWithEncodedAttributes

from tests.support.installation import INSTALLATION_ENV
from worker.client import payload_codec
from worker.codec import (
    META_CIPHER,
    META_DATA_KEY,
    META_ENCODING,
    META_KEY_ID,
    EncryptionCodec,
    KeyRing,
    KmsDataKeys,
    PayloadDecryptionError,
    PayloadEncryptionError,
    PayloadKeyError,
    data_converter,
    is_encrypted,
)
from worker.settings import InvalidSettings, load_settings

CANARY = "CANARY^PATIENT-7731"


def _key(fill: int = 0) -> str:
    return base64.b64encode(bytes([fill]) * 32).decode()


def _plain(text: str = CANARY) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps({"patient": text}).encode())


class TestKeyRing:
    def test_the_first_entry_is_current_and_all_are_kept(self) -> None:
        ring = KeyRing.parse(f"new:{_key(1)}, old:{_key(2)}\nolder:{_key(3)}")
        assert ring.current == "new"
        assert list(ring.keys) == ["new", "old", "older"]
        assert "new" in repr(ring) and _key(1) not in repr(ring)

    @pytest.mark.parametrize(("spec", "reason"), [
        ("", "no key"),
        (" , ,", "no key"),
        (_key(1), "found no ':'"),
        (f"-bad:{_key(1)}", "key id must be"),
        (f"{'k' * 65}:{_key(1)}", "key id must be"),
        (f"k:{_key(1)},k:{_key(2)}", "appears twice"),
        ("k:not base64!", "not valid base64"),
        (f"k:{base64.b64encode(b'x' * 16).decode()}", "must be 32 bytes"),
        (f"k:{base64.b64encode(b'x' * 33).decode()}", "must be 32 bytes"),
    ])
    def test_a_bad_ring_says_which_entry_and_why(self, spec: str, reason: str) -> None:
        with pytest.raises(PayloadKeyError) as err:
            KeyRing.parse(spec)
        assert reason in str(err.value)

    def test_every_bad_entry_is_listed_and_no_key_material_is_echoed(self) -> None:
        short = base64.b64encode(b"secret-material!").decode()
        with pytest.raises(PayloadKeyError) as err:
            KeyRing.parse(f"good:{_key(1)},a:{short},b:{short}zz")
        assert len(err.value.problems) == 2
        assert "entry 2 ('a')" in str(err.value) and "entry 3 ('b')" in str(err.value)
        assert short not in str(err.value) and "secret" not in str(err.value)

    def test_generated_entries_are_usable_and_distinct(self) -> None:
        a, b = KeyRing.generate_entry("one"), KeyRing.generate_entry("one")
        assert a != b
        assert KeyRing.parse(a).current == "one"
        with pytest.raises(PayloadKeyError):
            KeyRing.generate_entry("no spaces")


class TestCodec:
    async def test_a_payload_is_sealed_under_the_current_key_and_opens_again(self) -> None:
        codec = EncryptionCodec(KeyRing.parse(f"k2:{_key(2)},k1:{_key(1)}"))
        [sealed] = await codec.encode([_plain()])
        assert sealed.metadata[META_ENCODING] == b"binary/encrypted"
        assert sealed.metadata[META_KEY_ID] == b"k2" and sealed.metadata[META_CIPHER] == b"AES256-GCM"
        assert CANARY.encode() not in sealed.SerializeToString()
        assert b"json/plain" not in sealed.SerializeToString()  # the inner metadata is sealed too
        assert await codec.decode([sealed]) == [_plain()]

    async def test_the_same_payload_seals_differently_each_time(self) -> None:
        codec = EncryptionCodec(KeyRing.parse(f"k:{_key(1)}"))
        first, second = codec.encode_sync([_plain(), _plain()])
        assert first.data != second.data and first.data[:12] != second.data[:12]

    async def test_rotation_new_payloads_use_the_new_key_old_ones_still_open(self) -> None:
        old = EncryptionCodec(KeyRing.parse(f"2026-01:{_key(1)}"))
        [before] = old.encode_sync([_plain("before rotation")])
        rotated = EncryptionCodec(KeyRing.parse(f"2026-12:{_key(9)},2026-01:{_key(1)}"))
        [after] = rotated.encode_sync([_plain("after rotation")])
        assert after.metadata[META_KEY_ID] == b"2026-12"
        assert rotated.decode_sync([before, after]) == [_plain("before rotation"), _plain("after rotation")]
        # Dropping the old key from the ring strands what it sealed, with a message that says what to do.
        with pytest.raises(PayloadDecryptionError, match="'2026-01', which is not in HIMIG_PAYLOAD_KEYS"):
            EncryptionCodec(KeyRing.parse(f"2026-12:{_key(9)}")).decode_sync([before])

    def test_plain_payloads_pass_through_and_sealed_ones_are_not_sealed_twice(self) -> None:
        codec = EncryptionCodec(KeyRing.parse(f"k:{_key(1)}"))
        assert codec.decode_sync([_plain()]) == [_plain()]
        [sealed] = codec.encode_sync([_plain()])
        assert codec.encode_sync([sealed]) == [sealed]

    @pytest.mark.parametrize("damage", ["flip", "truncate", "key-id", "same-id-other-key", "cipher"])
    def test_a_damaged_or_foreign_payload_is_refused(self, damage: str) -> None:
        codec = EncryptionCodec(KeyRing.parse(f"k:{_key(1)},other:{_key(2)}"))
        [sealed] = codec.encode_sync([_plain()])
        if damage == "flip":
            sealed.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
        elif damage == "truncate":
            sealed.data = sealed.data[:20]
        elif damage == "key-id":  # relabelled to another key of the ring: the key id is bound to the ciphertext
            sealed.metadata[META_KEY_ID] = b"other"
        elif damage == "cipher":
            sealed.metadata[META_CIPHER] = b"ROT13"
        else:
            codec = EncryptionCodec(KeyRing.parse(f"k:{_key(3)}"))
        with pytest.raises(PayloadDecryptionError) as err:
            codec.decode_sync([sealed])
        assert CANARY not in str(err.value)

    def test_the_project_converter_seals_failure_messages_too(self) -> None:
        converter = data_converter(KeyRing.parse(f"k:{_key(1)}"))
        assert isinstance(converter.payload_codec, EncryptionCodec)
        assert converter.failure_converter_class is DefaultFailureConverterWithEncodedAttributes

    async def test_every_value_the_converter_writes_is_sealed(self) -> None:
        converter = data_converter(KeyRing.parse(f"k:{_key(1)}"))
        payloads = await converter.encode([{"patient_name": CANARY}, CANARY, 7])
        assert all(is_encrypted(p) for p in payloads)
        assert await converter.decode(payloads, [dict, str, int]) == [{"patient_name": CANARY}, CANARY, 7]


class TestSettings:
    def test_the_keys_are_required(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("HIMIG_PAYLOAD_KEYS", raising=False)
        with pytest.raises(InvalidSettings) as err:
            load_settings()
        assert "HIMIG_PAYLOAD_KEYS: required, or HIMIG_PAYLOAD_KMS_KEY_ID" in str(err.value)

    def test_a_bad_ring_names_the_variable_and_never_the_key(self, monkeypatch: pytest.MonkeyPatch) -> None:
        secret = base64.b64encode(os.urandom(20)).decode()
        monkeypatch.setenv("HIMIG_PAYLOAD_KEYS", f"current:{secret}")
        with pytest.raises(InvalidSettings) as err:
            load_settings()
        assert "HIMIG_PAYLOAD_KEYS: entry 1 ('current'): the key must be 32 bytes" in str(err.value)
        assert secret not in str(err.value)

    def test_the_installation_ring_is_the_one_clients_use(self) -> None:
        assert load_settings().payload_key_ring() == KeyRing.parse(INSTALLATION_ENV["HIMIG_PAYLOAD_KEYS"])


class TestKmsDataKeys:
    """Envelope encryption against moto's KMS: data keys made by GenerateDataKey, opened by Decrypt."""

    @pytest.fixture
    def kms(self, moto_url: str) -> Any:
        return boto3.client("kms", endpoint_url=moto_url, region_name="us-east-1")

    @pytest.fixture
    def key_arn(self, kms: Any) -> str:
        return str(kms.create_key(Description="himig payloads")["KeyMetadata"]["Arn"])

    async def test_a_payload_sealed_by_one_process_opens_in_another(self, kms: Any, key_arn: str) -> None:
        sealer = EncryptionCodec(None, KmsDataKeys(kms, key_arn))
        [sealed] = await sealer.encode([_plain()])
        key_id = sealed.metadata[META_KEY_ID].decode()
        assert key_id.startswith("kms-") and sealed.metadata[META_DATA_KEY]
        assert CANARY.encode() not in sealed.SerializeToString()
        other = EncryptionCodec(None, KmsDataKeys(kms, key_arn))  # knows nothing but the KMS key
        assert await other.decode([sealed]) == [_plain()]

    def test_kms_seals_new_payloads_and_the_ring_still_opens_old_ones(self, kms: Any, key_arn: str) -> None:
        ring = KeyRing.parse(f"static:{_key(1)}")
        [old] = EncryptionCodec(ring).encode_sync([_plain("before KMS")])
        both = EncryptionCodec(ring, KmsDataKeys(kms, key_arn))
        [new] = both.encode_sync([_plain("with KMS")])
        assert new.metadata[META_KEY_ID].startswith(b"kms-")
        assert both.decode_sync([old, new]) == [_plain("before KMS"), _plain("with KMS")]

    def test_a_data_key_is_replaced_after_its_uses_and_its_age(self, kms: Any, key_arn: str) -> None:
        now = [0.0]
        keys = KmsDataKeys(kms, key_arn, max_uses=2, max_age_seconds=60, clock=lambda: now[0])
        codec = EncryptionCodec(None, keys)
        first = codec.encode_sync([_plain("1"), _plain("2"), _plain("3")])
        ids = [p.metadata[META_KEY_ID] for p in first]
        assert ids[0] == ids[1] != ids[2]
        now[0] = 61.0
        [later] = codec.encode_sync([_plain("4")])
        assert later.metadata[META_KEY_ID] not in ids
        assert EncryptionCodec(None, KmsDataKeys(kms, key_arn)).decode_sync([*first, later]) == [
            _plain(str(i)) for i in range(1, 5)]

    def test_what_cannot_be_opened_says_why(self, kms: Any, key_arn: str) -> None:
        codec = EncryptionCodec(None, KmsDataKeys(kms, key_arn))
        [sealed] = codec.encode_sync([_plain()])
        with pytest.raises(PayloadDecryptionError, match="set HIMIG_PAYLOAD_KMS_KEY_ID"):
            EncryptionCodec(KeyRing.parse(f"k:{_key(1)}")).decode_sync([sealed])
        # Another data key slipped under the payload's key id is refused before KMS is asked.
        swapped = Payload()
        swapped.CopyFrom(sealed)
        swapped.metadata[META_DATA_KEY] = kms.generate_data_key(KeyId=key_arn, KeySpec="AES_256")["CiphertextBlob"]
        with pytest.raises(PayloadDecryptionError, match="carries another data key"):
            EncryptionCodec(None, KmsDataKeys(kms, key_arn)).decode_sync([swapped])
        # A data key made for another purpose (another encryption context) does not decrypt as ours.
        foreign_blob = kms.generate_data_key(KeyId=key_arn, KeySpec="AES_256",
                                             EncryptionContext={"purpose": "something-else"})["CiphertextBlob"]
        foreign = Payload()
        foreign.CopyFrom(sealed)
        foreign.metadata[META_DATA_KEY] = foreign_blob
        foreign.metadata[META_KEY_ID] = KmsDataKeys.key_id_of(foreign_blob).encode()
        with pytest.raises(PayloadDecryptionError, match="KMS Decrypt failed"):
            EncryptionCodec(None, KmsDataKeys(kms, key_arn)).decode_sync([foreign])

    def test_a_key_kms_refuses_fails_the_seal_naming_the_setting(self, kms: Any) -> None:
        missing = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"
        with pytest.raises(PayloadEncryptionError, match="HIMIG_PAYLOAD_KMS_KEY_ID failed") as err:
            EncryptionCodec(None, KmsDataKeys(kms, missing)).encode_sync([_plain()])
        assert CANARY not in str(err.value)

    def test_settings_with_only_a_kms_key_build_a_kms_codec(self, monkeypatch: pytest.MonkeyPatch, moto_url: str,
                                                           key_arn: str) -> None:
        monkeypatch.delenv("HIMIG_PAYLOAD_KEYS")
        monkeypatch.setenv("HIMIG_PAYLOAD_KMS_KEY_ID", key_arn)
        monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", moto_url)
        codec = payload_codec(load_settings())
        assert codec.ring is None and codec.data_keys is not None
        [sealed] = codec.encode_sync([_plain()])
        assert sealed.metadata[META_KEY_ID].startswith(b"kms-")

    @pytest.mark.parametrize("value", ["not-a-key", "arn:aws:s3:::bucket", "alias", "arn:aws:kms:us-east-1:1:key/x"])
    def test_a_kms_key_id_that_is_not_one_is_named(self, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
        monkeypatch.setenv("HIMIG_PAYLOAD_KMS_KEY_ID", value)
        with pytest.raises(InvalidSettings, match="HIMIG_PAYLOAD_KMS_KEY_ID: "):
            load_settings()
