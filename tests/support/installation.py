"""The test installation's secrets, as `himig stack up` generates them for a local one: set in the test process's
environment (so the worker and CLI subprocesses the tests start inherit them) and used by every test client."""

from __future__ import annotations

import getpass
import json
import secrets

from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.api.history.v1 import History
from temporalio.client import WorkflowHistory
from temporalio.converter import DataConverter

from tests.support.settings import TEST_ENV
from worker.codec import EncryptionCodec, KeyRing, data_converter, is_encrypted

# A fresh key per test session: nothing may depend on a particular key.
PAYLOAD_KEYS = KeyRing.generate_entry("tests-current")
# Who may decide reconciliations: the attestation key the workers and codec servers share, and the reviewers
# (the OIDC subjects the tests' tokens carry, and the OS user `himig approve` attests as).
REVIEWER_ATTESTATION_KEY = secrets.token_urlsafe(36)
REVIEWERS = ("alice-sub", "bob-sub", "carol-sub", "dave-sub", "canary-reviewer", getpass.getuser())
# Everything a worker of this installation needs that has no default: the secrets and the deployment's values.
INSTALLATION_ENV = {**TEST_ENV, "HIMIG_PAYLOAD_KEYS": PAYLOAD_KEYS,
                    "HIMIG_REVIEWER_ATTESTATION_KEY": REVIEWER_ATTESTATION_KEY,
                    "HIMIG_RECONCILIATION_REVIEWERS": ",".join(REVIEWERS)}


def converter() -> DataConverter:
    """The converter of this installation's workers and clients (payloads sealed with `PAYLOAD_KEYS`)."""
    return data_converter(KeyRing.parse(PAYLOAD_KEYS))


def _open_payloads(message: Message, codec: EncryptionCodec) -> None:
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        is_map = descriptor.message_type.GetOptions().map_entry
        items = list(value.values()) if is_map else (list(value) if descriptor.is_repeated else [value])
        for item in items:
            if isinstance(item, Payload):
                if is_encrypted(item):
                    item.CopyFrom(codec.decode_sync([item])[0])
            elif isinstance(item, Message):
                _open_payloads(item, codec)


def plain_history_json(history: WorkflowHistory) -> str:
    """``history`` as JSON with every payload opened, for `tests/histories/` (recorded histories must replay
    under any later session's key; their content is synthetic)."""
    events = History(events=history.events)
    codec = EncryptionCodec(KeyRing.parse(PAYLOAD_KEYS))
    _open_payloads(events, codec)
    return json.dumps(json.loads(WorkflowHistory(history.workflow_id, list(events.events)).to_json()), indent=1)
