"""In-process workers bound to the local stack (the Temporal dev server is in tests/conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from tests.conftest import make_medical_imaging, make_s3
from tests.support.cli import himig_cli  # noqa: F401 - `himig` against this Temporal server, for every workflow test
from tests.support.eventually import wait_until
from worker.runner import build_worker
from worker.settings import Settings


@pytest.fixture
def settings(moto_url: str, emulator_url: str) -> Settings:
    return Settings(
        s3_endpoint_url=moto_url, medical_imaging_endpoint_url=emulator_url, eventbridge_endpoint_url=moto_url,
        task_queue=f"test-{uuid.uuid4().hex[:8]}", parse_concurrency=4, max_concurrent_activities=16,
        graceful_shutdown_seconds=1,
    )


@pytest.fixture
async def worker(client: Client, settings: Settings) -> AsyncIterator[Worker]:
    with ThreadPoolExecutor(max_workers=settings.max_concurrent_activities) as executor:
        w = build_worker(client, settings, executor)
        async with w:
            yield w


def active_datastore(emulator_url: str, name: str) -> str:
    """Create a HealthImaging data store on the emulator and wait until it is ACTIVE."""
    mi = make_medical_imaging(emulator_url)
    ds = mi.create_datastore(datastoreName=name, clientToken=uuid.uuid4().hex)["datastoreId"]
    wait_until(lambda: mi.get_datastore(datastoreId=ds)["datastoreProperties"]["datastoreStatus"] == "ACTIVE",
               "the data store to become ACTIVE")
    return str(ds)


@pytest.fixture(scope="session")
def datastore_id(emulator_url: str) -> str:
    return active_datastore(emulator_url, "workflow-tests")


@pytest.fixture
def buckets(moto_url: str) -> Iterator[dict[str, Any]]:
    s3 = make_s3(moto_url)
    suffix = uuid.uuid4().hex[:10]
    names = {"source": f"src-{suffix}", "work": f"work-{suffix}"}
    for name in names.values():
        s3.create_bucket(Bucket=name)
    yield {"s3": s3, **names}


# ---- a HealthImaging emulator whose import jobs wait for the test (manual job clock), publishing its events
# to an EventBridge bus on moto. Shared by the job-event and ingest-bound tests.

@pytest.fixture(scope="module")
def held_bus(moto_url: str) -> dict[str, Any]:
    import boto3

    name = f"himig-held-{uuid.uuid4().hex[:8]}"
    events = boto3.client("events", endpoint_url=moto_url, region_name="us-east-1")
    events.create_event_bus(Name=name)
    return {"name": name, "events": events, "sqs": boto3.client("sqs", endpoint_url=moto_url, region_name="us-east-1")}


@pytest.fixture(scope="module")
def held_emulator(moto_url: str, log_dir: Path, tmp_path_factory: pytest.TempPathFactory,
                  held_bus: dict[str, Any]) -> Iterator[str]:
    from tests.support.servers import start_emulator

    server = start_emulator(tmp_path_factory.mktemp("held-emulator"), moto_url, log_dir,
                            extra_args=["--clock", "manual", "--event-bus-name", held_bus["name"]],
                            extra_env={"AWS_ENDPOINT_URL_EVENTBRIDGE": moto_url})
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def held_datastore_id(held_emulator: str) -> str:
    return active_datastore(held_emulator, "held-tests")


@pytest.fixture
def held_settings(moto_url: str, held_emulator: str) -> Settings:
    # The first poll of a job finds it SUBMITTED; the next would come only after two minutes.
    return Settings(
        s3_endpoint_url=moto_url, medical_imaging_endpoint_url=held_emulator, eventbridge_endpoint_url=moto_url,
        sqs_endpoint_url=moto_url, task_queue=f"held-{uuid.uuid4().hex[:8]}", parse_concurrency=4,
        max_concurrent_activities=16, graceful_shutdown_seconds=1, job_poll_initial_seconds=120,
        job_poll_max_seconds=300)


@pytest.fixture
async def held_worker(client: Client, held_settings: Settings) -> AsyncIterator[Worker]:
    with ThreadPoolExecutor(max_workers=held_settings.max_concurrent_activities) as executor:
        w = build_worker(client, held_settings, executor)
        async with w:
            yield w
