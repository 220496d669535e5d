"""``python -m worker``: run one Temporal worker with settings from the environment."""

from __future__ import annotations

import asyncio
import sys

import structlog

from worker import tracing
from worker.client import TemporalSetupError, check_search_attributes, connect
from worker.logs import configure_logging
from worker.metrics import MetricsEndpointError, build_runtime
from worker.process_exit import exit_now
from worker.receiver import ReceiverStartError
from worker.runner import run_worker
from worker.settings import InvalidSettings, Settings, load_settings
from worker.sqs_poller import ListenerFailed


async def _main(settings: Settings) -> None:
    client = await connect(settings, runtime=build_runtime(settings))
    for note in await check_search_attributes(client):
        structlog.get_logger("himig.worker").warning(note)
    try:
        await run_worker(client, settings)
    finally:
        tracing.flush()


def main() -> int:
    try:
        settings = load_settings()
    except InvalidSettings as err:
        print(f"worker: {err}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(_main(settings))
    except (TemporalSetupError, MetricsEndpointError, ReceiverStartError) as err:
        print(f"worker: {err}", file=sys.stderr)  # the server is fine; its set-up is not: a settings problem
        return 2
    except ConnectionError as err:
        print(f"worker: {err}", file=sys.stderr)
        return 1
    except ListenerFailed:
        return 2  # already logged, once, naming the queue's variable and what to check
    return 0


if __name__ == "__main__":
    exit_now(main())
