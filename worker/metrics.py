"""The Prometheus endpoint and the metrics the worker itself emits (see `contracts.metrics` for the list).

There is one endpoint: the Temporal SDK runtime's (``PrometheusConfig``), which serves the SDK's ``temporal_*``
metrics and every metric created through its meter, so ours need no second server and no extra dependency.
Workflows and activities emit through ``workflow.metric_meter()`` / ``activity.metric_meter()`` (the runtime
the client was connected with); what only the worker sees is emitted here:

- activity latency by stage: `MetricsInterceptor`, an activity inbound interceptor;
- S3 requests and throttles: botocore event handlers on the worker's clients (`instrument`); boto3 is not
  patched, the handlers are botocore's public event hooks;
- reconciliations pending: a count of Temporal's visibility, refreshed by `watch_reconciliations`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import timedelta
from typing import Any

import structlog
from temporalio import activity
from temporalio.client import Client
from temporalio.common import MetricMeter
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory, CancelledError
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from contracts import metrics, search
from contracts.reconciliation import ReconciliationState
from worker.aws import AwsClients
from worker.settings import Settings

log = structlog.get_logger("himig.metrics")

# Activity attempts run from milliseconds (a poll) to an hour (a page of 5,000 headers): the SDK's default
# buckets stop at 10 s.
LATENCY_BUCKETS_MS = (10, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000, 1_800_000)
_PENDING = (ReconciliationState.AWAITING_DECISION, ReconciliationState.ESCALATED)


def build_runtime(settings: Settings) -> Runtime | None:
    """A runtime serving Prometheus on ``settings.metrics_bind_address()``; None (the SDK's default) when off.

    Binding happens here: a port already taken raises `MetricsEndpointError` at start, not later.
    """
    bind = settings.metrics_bind_address()
    if bind is None:
        return None
    try:
        return Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(
            bind_address=bind,
            histogram_bucket_overrides={metrics.ACTIVITY_LATENCY.name: list(LATENCY_BUCKETS_MS)})))
    except (RuntimeError, ValueError) as err:  # the SDK's core: "Failed starting Prometheus exporter: ..."
        raise MetricsEndpointError(f"cannot serve metrics on {bind} (HIMIG_METRICS_HOST, HIMIG_METRICS_PORT): "
                                   f"{' '.join(str(err).split())}") from None


class MetricsEndpointError(RuntimeError):
    """The Prometheus endpoint cannot be served as configured (a taken port: a settings problem, exit code 2)."""


def meter_of(client: Client) -> MetricMeter:
    """The meter of the runtime ``client`` was connected with (a no-op meter when that runtime has no metrics)."""
    runtime = client.service_client.config.runtime or Runtime.default()
    return runtime.metric_meter


# ---- activity latency


class MetricsInterceptor(Interceptor):
    """Records each activity attempt's duration in `contracts.metrics.ACTIVITY_LATENCY`."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _TimedActivity(next)


class _TimedActivity(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        started = time.monotonic()
        outcome = "failed"
        try:
            result = await super().execute_activity(input)
            outcome = "completed"
            return result
        except ApplicationError as err:
            if err.category == ApplicationErrorCategory.BENIGN:
                outcome = "retry"
            raise
        except (asyncio.CancelledError, CancelledError):
            outcome = "cancelled"
            raise
        finally:
            _record_latency(timedelta(seconds=time.monotonic() - started), outcome)


def _record_latency(elapsed: timedelta, outcome: str) -> None:
    # A metric must never change what the activity returns or raises.
    try:
        activity.metric_meter().create_histogram_timedelta(
            metrics.ACTIVITY_LATENCY.name, metrics.ACTIVITY_LATENCY.description,
            metrics.ACTIVITY_LATENCY.unit).record(elapsed, {"outcome": outcome})
    except Exception as err:
        log.warning("activity latency not recorded", error=type(err).__name__)


# ---- AWS calls (botocore events)


def instrument(meter: MetricMeter, clients: AwsClients) -> AwsClients:
    """Count S3 requests on ``clients.s3`` and throttling answers on every client of ``clients`` (returned).

    One botocore ``needs-retry`` handler per client: botocore emits that event once per HTTP attempt (answered or
    not), before deciding whether to retry it, so attempts botocore retries itself are counted too.
    """
    requests = meter.create_counter(metrics.S3_REQUESTS.name, metrics.S3_REQUESTS.description, metrics.S3_REQUESTS.unit)
    throttles = meter.create_counter(metrics.THROTTLES.name, metrics.THROTTLES.description, metrics.THROTTLES.unit)
    for client in (clients.s3, clients.medical_imaging, clients.events, clients.healthlake):
        if client is None:
            continue
        model = client.meta.service_model
        counts_requests = client is clients.s3

        def on_attempt(response: Any = None, operation: Any = None, service: str = model.service_name,
                       counts_requests: bool = counts_requests, **_: Any) -> None:
            # Returns None (no opinion on retrying) and never raises: an exception here would fail the AWS call.
            try:
                name = str(getattr(operation, "name", "unknown"))
                if counts_requests:
                    requests.add(1, {"operation": name})
                if not response:
                    return  # no answer (a connection error): nothing said "slow down"
                http, parsed = response
                code = str(((parsed or {}).get("Error") or {}).get("Code", ""))
                if code in metrics.THROTTLE_CODES or getattr(http, "status_code", None) == 429:
                    throttles.add(1, {"service": service, "operation": name})
            except Exception as err:
                log.warning("AWS call not counted", error=type(err).__name__)

        client.meta.events.register(f"needs-retry.{model.service_id.hyphenize()}", on_attempt)
    return clients


# ---- reconciliations pending (visibility)


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


async def count_pending_reconciliations(client: Client, task_queue: str) -> dict[str, int]:
    """Running reconciliation workflows on ``task_queue`` per open state that waits for a decision."""
    counts: dict[str, int] = {}
    for state in _PENDING:
        query = (f"WorkflowType = 'ReconciliationWorkflow' AND ExecutionStatus = 'Running' "
                 f"AND TaskQueue = {_quoted(task_queue)} AND {search.STATE.name} = '{state.value}'")
        counts[state.value] = (await client.count_workflows(query)).count
    return counts


async def watch_reconciliations(client: Client, meter: MetricMeter, task_queue: str, every: float,
                                stop: asyncio.Event) -> None:
    """Set `contracts.metrics.RECONCILIATIONS_PENDING` now and every ``every`` seconds until ``stop``."""
    gauge = meter.create_gauge(metrics.RECONCILIATIONS_PENDING.name, metrics.RECONCILIATIONS_PENDING.description,
                               metrics.RECONCILIATIONS_PENDING.unit)
    while not stop.is_set():
        try:
            for state, n in (await count_pending_reconciliations(client, task_queue)).items():
                gauge.set(n, {"state": state})
        except Exception as err:  # visibility unavailable: keep the last value and try again next round
            log.warning("could not count pending reconciliations", error=type(err).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
