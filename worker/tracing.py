"""OpenTelemetry tracing through ``temporalio.contrib.opentelemetry``, on when an OTLP endpoint is configured
(``HIMIG_OTLP_ENDPOINT``, or the standard ``OTEL_EXPORTER_OTLP_ENDPOINT``).

The `TracingInterceptor` goes on the client, so every client the project creates (worker, ``himig``) starts
workflows inside a span, and the worker, which takes a client's interceptors as its own, traces workflow runs,
activities, signals and queries as their children. Spans carry Temporal's names and ids only (workflow and
activity types, workflow and run ids): never a payload, so no file key and no patient data. Nothing of
OpenTelemetry is imported when tracing is off.
"""

from __future__ import annotations

import functools
from typing import Any

from temporalio.client import Interceptor

from worker.settings import Settings

SERVICE_NAME = "himig"


def interceptors(settings: Settings) -> list[Interceptor]:
    """The client interceptors tracing needs (none when no OTLP endpoint is configured)."""
    if not settings.otlp_endpoint:
        return []
    return [_interceptor(settings.otlp_endpoint)]


@functools.cache
def _interceptor(endpoint: str) -> Interceptor:
    # One tracer provider per process and endpoint: its batch processor exports in the background.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from temporalio.contrib.opentelemetry import TracingInterceptor

    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces")))
    _providers.append(provider)
    return TracingInterceptor(provider.get_tracer(SERVICE_NAME))


_providers: list[Any] = []


def flush(timeout_millis: int = 5_000) -> None:
    """Export the spans still buffered (at shutdown, and in tests)."""
    for provider in _providers:
        provider.force_flush(timeout_millis)
