"""Connecting to Temporal with the project's data converter, securely as configured, with one clear line when
the connection or the namespace is wrong (never a traceback)."""

from __future__ import annotations

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode

from contracts import search
from worker import tracing
from worker.aws import make_client
from worker.codec import EncryptionCodec, KmsDataKeys, data_converter
from worker.settings import Settings


class TemporalSetupError(ConnectionError):
    """Temporal answered, but its set-up does not fit the configuration (a settings problem: exit code 2)."""


class NamespaceNotFound(TemporalSetupError):
    """The configured namespace does not exist on the server."""


class SearchAttributesMissing(TemporalSetupError):
    """The namespace lacks search attributes the workflows upsert (their workflow tasks would fail)."""


def payload_codec(settings: Settings) -> EncryptionCodec:
    """The codec of ``settings``: KMS data keys when ``payload_kms_key_id`` is set, the static ring for the rest."""
    kms = None
    if settings.payload_kms_key_id:
        kms = KmsDataKeys(make_client("kms", settings, settings.kms_endpoint_url), settings.payload_kms_key_id)
    return EncryptionCodec(settings.payload_key_ring(), kms)


async def connect(settings: Settings, runtime: Runtime | None = None) -> Client:
    """A client for ``settings.temporal()`` whose payloads are sealed with ``settings.payload_keys``.

    ``runtime`` is the SDK runtime to use (the worker's serves Prometheus metrics); tracing interceptors are added
    when an OTLP endpoint is configured. `ConnectionError` (one line, with what to check) when it fails.
    """
    conn = settings.temporal()
    converter = data_converter(payload_codec(settings))
    try:
        client = await Client.connect(conn.address, namespace=conn.namespace, api_key=conn.api_key,
                                      tls=conn.tls if conn.tls is not None else False,
                                      rpc_metadata=dict(conn.rpc_metadata), data_converter=converter,
                                      runtime=runtime, interceptors=tracing.interceptors(settings))
    except RuntimeError as err:
        raise ConnectionError(f"cannot reach Temporal at {conn.address} ({conn.mode()}): "
                              f"{' '.join(str(err).split())}; {conn.hint()}") from None
    try:
        await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=conn.namespace))
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise NamespaceNotFound(
                f"namespace {conn.namespace!r} does not exist on Temporal at {conn.address}: create it "
                f"(temporal operator namespace create --namespace {conn.namespace}) or set TEMPORAL_NAMESPACE") from None
        # PERMISSION_DENIED (a key scoped to its namespace may not describe it) and the like: the first real
        # call will say more; the namespace check is a courtesy, not a gate.
    return client


async def check_search_attributes(client: Client) -> list[str]:
    """Raise `SearchAttributesMissing` when one of ours is not registered as Keyword on the namespace.

    Returns notes when the check could not run (a Temporal Cloud API key may not use the operator service):
    the worker then starts, and an unregistered attribute shows as a failing workflow task instead.
    """
    try:
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=client.namespace))
    except RPCError as err:
        return [f"search attributes not checked ({err.status.name if err.status else 'error'}): register "
                f"{', '.join(k.name for k in search.ALL)} as Keyword on namespace {client.namespace}"]
    wrong = [k.name for k in search.ALL if listed.custom_attributes.get(k.name) != IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD]
    if wrong:
        commands = "; ".join(c for c in search.operator_commands(client.namespace) if any(n in c for n in wrong))
        raise SearchAttributesMissing(f"namespace {client.namespace!r} lacks the search attribute(s) {', '.join(wrong)} "
                                      f"(type Keyword) that himig's workflows set: {commands}")
    return []
