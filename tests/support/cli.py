"""`himig` driven the way an operator drives it, against the test's Temporal server and in-process worker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from typer.testing import CliRunner


@pytest.fixture
def himig_cli(temporal_env: Any, worker: Any, moto_url: str, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("HIMIG_TEMPORAL_ADDRESS", temporal_env.client.service_client.config.target_host)
    monkeypatch.setenv("HIMIG_TASK_QUEUE", worker.task_queue)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_url)
    return CliRunner()


async def invoke(cli: CliRunner, *args: str) -> Any:
    """Run ``himig ARGS`` off the event loop (the command runs its own); never a traceback. The result gains
    ``flat``: the output with rich's line wrapping undone."""
    from cli.app import app

    result = await asyncio.to_thread(cli.invoke, app, list(args))
    assert "Traceback" not in result.output, result.output
    result.flat = " ".join(result.output.split())
    return result
