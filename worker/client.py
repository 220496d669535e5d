"""Connecting to Temporal with the project's data converter."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from worker.settings import Settings


async def connect(settings: Settings) -> Client:
    try:
        return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace,
                                    data_converter=pydantic_data_converter)
    except RuntimeError as err:
        raise ConnectionError(f"cannot reach Temporal at {settings.temporal_address} "
                              f"(set HIMIG_TEMPORAL_ADDRESS, or start the local stack with `himig stack up`): {err}") from None
