"""``python -m worker``: run one Temporal worker with settings from the environment."""

from __future__ import annotations

import asyncio
import sys

from worker.client import connect
from worker.logs import configure_logging
from worker.runner import run_worker
from worker.settings import InvalidSettings, Settings, load_settings


async def _main(settings: Settings) -> None:
    client = await connect(settings)
    await run_worker(client, settings)


def main() -> int:
    try:
        settings = load_settings()
    except InvalidSettings as err:
        print(f"worker: {err}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(_main(settings))
    except ConnectionError as err:
        print(str(err), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
