"""Building and running the worker, with a clean shutdown on SIGTERM (ECS stop) or SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pydantic
import structlog
from temporalio.client import Client
from temporalio.worker import Worker

from worker.aws import AwsClients, make_client
from worker.jobevents import JobEventListener
from worker.listener import SqsListener
from worker.log_context import LogContextInterceptor
from worker.metrics import MetricsInterceptor, instrument, meter_of, watch_reconciliations
from worker.receiver import StoreReceiver
from worker.registry import WORKFLOWS, build_activities
from worker.settings import Settings
from worker.sqs_poller import ListenerFailed

log = structlog.get_logger("himig.worker")


def build_worker(client: Client, settings: Settings, executor: ThreadPoolExecutor, task_queue: str | None = None) -> Worker:
    return Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=WORKFLOWS,
        activities=build_activities(instrument(meter_of(client), AwsClients.from_settings(settings)), settings),
        activity_executor=executor,
        max_concurrent_activities=settings.max_concurrent_activities,
        # Bad workflow input fails the workflow at once instead of retrying its first task forever.
        workflow_failure_exception_types=[pydantic.ValidationError],
        graceful_shutdown_timeout=timedelta(seconds=settings.graceful_shutdown_seconds),
        # Log ids as fields around every activity, and no patient values in its failures (worker/log_context.py).
        interceptors=[LogContextInterceptor(), MetricsInterceptor()],
    )


async def run_worker(client: Client, settings: Settings) -> None:
    """Run until SIGTERM/SIGINT. Raises `ListenerFailed` (after a graceful stop) when a listener cannot run at all:
    a worker that silently stopped listening would look healthy while ignoring its queue."""
    stop = asyncio.Event()
    failed: list[ListenerFailed] = []

    def on_listener_done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and isinstance(error := task.exception(), ListenerFailed):
            failed.append(error)
            stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    health = Path(settings.health_file) if settings.health_file else None
    with ThreadPoolExecutor(max_workers=settings.max_concurrent_activities) as executor:
        worker = build_worker(client, settings, executor)
        async with worker:
            ingest, job_events = settings.ingest, settings.job_events
            receiver: StoreReceiver | None = None
            if settings.receiver.enabled:
                # DICOM push: C-STORE -> S3 under the ingest prefix -> signal-with-start IngestWorkflow. Bound
                # before any listener and the health file: a port that cannot be bound stops the worker.
                receiver = StoreReceiver(settings.receiver, ingest.ingest_input(),
                                         make_client("s3", settings, settings.s3_endpoint_url), client,
                                         settings.task_queue, meter_of(client))
                receiver.start(loop)
            listener_tasks: list[asyncio.Task[None]] = []
            if ingest.enabled:
                # Event-driven ingestion: S3 ObjectCreated -> SQS -> signal-with-start IngestWorkflow.
                listener = SqsListener(client, make_client("sqs", settings, settings.sqs_endpoint_url),
                                       make_client("s3", settings, settings.s3_endpoint_url), ingest,
                                       settings.task_queue)
                listener_tasks.append(asyncio.create_task(listener.run(stop)))
            if job_events.enabled:
                # Import-job events (EventBridge -> SQS) wake batches waiting on those jobs.
                events_listener = JobEventListener(client, make_client("sqs", settings, settings.sqs_endpoint_url),
                                                   job_events)
                listener_tasks.append(asyncio.create_task(events_listener.run(stop)))
            for task in listener_tasks:
                task.add_done_callback(on_listener_done)
            if settings.metrics_port is not None:
                # A gauge's recount, not a listener: its failure must not stop the worker (it is awaited below).
                listener_tasks.append(asyncio.create_task(watch_reconciliations(
                    client, meter_of(client), settings.task_queue, settings.metrics_poll_seconds, stop)))
            if health:
                health.parent.mkdir(parents=True, exist_ok=True)
                health.write_text(str(os.getpid()))
            log.info("worker started", task_queue=settings.task_queue, temporal=settings.temporal().address, temporal_security=settings.temporal().mode(),
                     ingest_listener=ingest.enabled, job_events_listener=job_events.enabled,
                     receiver=settings.receiver.enabled)
            try:
                await stop.wait()
                log.info("a listener failed; stopping the worker" if failed
                         else "shutdown requested; finishing in-flight work",
                         grace_seconds=settings.graceful_shutdown_seconds)
            finally:
                if receiver is not None:
                    # Stop accepting first, so no new C-STORE is acknowledged while the worker drains.
                    await asyncio.to_thread(receiver.stop)
                # Every listener is awaited (bounded) and the health file always goes, whatever one of them raised.
                outcomes = await asyncio.gather(*(asyncio.wait_for(t, timeout=5) for t in listener_tasks),
                                                return_exceptions=True)
                for outcome in outcomes:
                    if isinstance(outcome, BaseException) and not isinstance(outcome, ListenerFailed):
                        log.warning("a listener ended with an error", error=type(outcome).__name__)
                if health:
                    health.unlink(missing_ok=True)
    log.info("worker stopped")
    if failed:
        raise failed[0]
