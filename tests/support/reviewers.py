"""Deciding reconciliations the way an authorised reviewer does: with a payload that carries a reviewer attestation
(contracts/attestation.py), made with this installation's key, or sent through a real codec server behind the
real OIDC issuer of tests/support/oidc_issuer.py.

Every test that decides a reconciliation goes through here, so the decisions are attested like production's.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel
from temporalio.api.common.v1 import Payload
from temporalio.client import Client, WorkflowHandle
from temporalio.common import RawValue

from contracts.attestation import attest
from contracts.reconciliation import ReconciliationOutcome
from tests.support.installation import PAYLOAD_KEYS, REVIEWER_ATTESTATION_KEY, converter
from tests.support.oidc_issuer import OidcIssuer
from tests.support.servers import free_port
from tests.support.temporal_cli import temporal_cli
from worker.codec import EncryptionCodec, KeyRing
from worker.codec_server import CodecServer
from worker.settings import CodecServerSettings

CODEC_AUDIENCE = "himig-reviewer-tests"


def plain_payload(value: Any) -> Payload:
    """``value`` as the project's clients turn it into a payload (before the codec seals it)."""
    [payload] = converter().payload_converter.to_payloads([value])
    return payload


def attested(value: Any, identity: str, *, namespace: str = "default",
             key: str | bytes = REVIEWER_ATTESTATION_KEY) -> RawValue:
    """``value`` as a payload attested as sent by ``identity`` (what the codec server or `himig approve` makes)."""
    raw_key = key.encode() if isinstance(key, str) else key
    return RawValue(attest(plain_payload(value), raw_key, namespace, identity))


def _json(value: Any, reconciliation_id: str) -> Any:
    """The decision as JSON, naming its reconciliation as every real sender must (unless it names one already)."""
    body = value.model_dump(mode="json", exclude_none=True) if isinstance(value, BaseModel) else value
    if isinstance(body, dict) and "action" in body:
        body = {"reconciliation_id": reconciliation_id, **body}
    return body


async def decide(handle: WorkflowHandle[Any, Any], value: Any, identity: str,
                 namespace: str = "default") -> ReconciliationOutcome:
    """The `decide` update, attested for ``identity``; its outcome."""
    return await handle.execute_update("decide", attested(_json(value, handle.id), identity,
                                                                 namespace=namespace), result_type=ReconciliationOutcome)


async def signal_approve(handle: WorkflowHandle[Any, Any], value: Any, identity: str,
                         namespace: str = "default") -> None:
    """The `approve` signal, attested for ``identity``."""
    await handle.signal("approve", attested(_json(value, handle.id), identity, namespace=namespace))


@contextmanager
def codec_server(issuer: OidcIssuer, namespace: str = "default", *, attestation_key: str | None = None,
                 **overrides: Any) -> Iterator[CodecServer]:
    """A real codec server (OIDC against ``issuer``) that attests with this installation's key (or ``attestation_key``)."""
    values: dict[str, Any] = {"host": "127.0.0.1", "port": free_port(), "auth": "oidc", "oidc_issuer": issuer.url,
                              "oidc_audience": CODEC_AUDIENCE, "allowed_subjects": "*"}
    values.update(overrides)
    key = (attestation_key or REVIEWER_ATTESTATION_KEY).encode()
    server = CodecServer(CodecServerSettings.model_validate(values), EncryptionCodec(KeyRing.parse(PAYLOAD_KEYS)),
                         namespace, key).start()
    try:
        yield server
    finally:
        server.stop()


def token(issuer: OidcIssuer, subject: str, **claims: Any) -> str:
    return issuer.token(**{"aud": CODEC_AUDIENCE, "sub": subject, **claims})


def temporal_decide(client: Client, workflow_id: str, value: Any, *, codec: CodecServer | None = None,
                    bearer: str | None = None, signal: bool = False) -> subprocess.CompletedProcess[str]:
    """What an operator types: `temporal workflow update execute --name decide` (or `signal --name approve`),
    through ``codec`` with ``bearer`` when given, else plain."""
    args = ["workflow", "signal", "--name", "approve"] if signal else \
        ["workflow", "update", "execute", "--name", "decide"]
    args += ["--workflow-id", workflow_id, "--input", json.dumps(_json(value, workflow_id))]
    if codec is not None:
        args += ["--codec-endpoint", codec.url]
        if bearer is not None:
            args += ["--codec-auth", f"Bearer {bearer}"]
    return temporal_cli(client, *args)


async def temporal_decide_async(client: Client, workflow_id: str, value: Any, **kwargs: Any) \
        -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(temporal_decide, client, workflow_id, value, **kwargs)
