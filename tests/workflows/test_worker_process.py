"""`python -m worker` as a real process: it serves a migration, and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from contracts.common import FileState
from contracts.migration import MigrationInput
from tests.support.dicom import make_instance, uid
from tests.support.prometheus import listening_ports
from tests.support.worker_process import wait_for_health
from workflows.migration import MigrationWorkflow


async def test_worker_process_migrates_and_stops_on_sigterm(
        client: Client, moto_url: str, emulator_url: str, buckets: dict[str, Any], datastore_id: str,
        tmp_path: Path) -> None:
    queue = f"proc-{uuid.uuid4().hex[:8]}"
    health = tmp_path / "worker.ready"
    env = {**os.environ, "HIMIG_TEMPORAL_ADDRESS": client.service_client.config.target_host,
           "HIMIG_TASK_QUEUE": queue, "HIMIG_HEALTH_FILE": str(health), "HIMIG_GRACEFUL_SHUTDOWN_SECONDS": "5",
           "AWS_ENDPOINT_URL_S3": moto_url, "AWS_ENDPOINT_URL_EVENTBRIDGE": moto_url,
           "AWS_ENDPOINT_URL_MEDICAL_IMAGING": emulator_url}
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - owned by the child for its lifetime
    proc = subprocess.Popen([sys.executable, "-m", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_health(health, proc)
        assert health.read_text() == str(proc.pid)
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        s3.put_object(Bucket=src, Key="p/1.dcm", Body=make_instance(uid(), uid()))
        payload = MigrationInput(source_s3_uri=f"s3://{src}/p/", datastore_id=datastore_id,
                                 work_s3_uri=f"s3://{work}/w/", import_start_interval_seconds=0)
        result = await client.execute_workflow(MigrationWorkflow.run, payload, id=f"proc-{uuid.uuid4().hex[:8]}",
                                               task_queue=queue, execution_timeout=timedelta(seconds=90))
        assert result.files_by_state[FileState.IMPORTED] == 1
        assert listening_ports(proc.pid) == set()  # without HIMIG_METRICS_PORT no metrics endpoint, nor any other
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not health.exists()
        text = (tmp_path / "worker.log").read_text()
        assert "shutdown requested" in text and "worker stopped" in text
        assert "SYNTH" not in text  # no patient values in the worker's logs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


@pytest.mark.parametrize("var,value", [
    ("HIMIG_TEMPORAL_ADDRESS", "nohostport"),
    ("HIMIG_PARSE_CONCURRENCY", "0"),
    ("HIMIG_LOG_LEVEL", "loud"),
])
def test_bad_settings_exit_2_naming_the_setting(var: str, value: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "worker"], env={**os.environ, var: value}, capture_output=True,
                          timeout=60)
    assert proc.returncode == 2
    assert f"  {var}: " in proc.stderr.decode()


def test_unreachable_temporal_exits_1_with_a_clear_message() -> None:
    # Port 1 is privileged and never ours: the connection is refused at once, with no race for a free port.
    proc = subprocess.run([sys.executable, "-m", "worker"], capture_output=True, timeout=60,
                          env={**os.environ, "HIMIG_TEMPORAL_ADDRESS": "127.0.0.1:1"})
    assert proc.returncode == 1
    assert "cannot reach Temporal" in proc.stderr.decode()


def test_a_listener_without_credentials_stops_the_worker_once(client: Client, moto_url: str,
                                                              tmp_path: Path) -> None:
    """ECS must see a failed task (and its circuit breaker count it), not a healthy-looking worker logging
    NoCredentialsError every two seconds: one line naming the queue's variable, then a drained exit 2."""
    import boto3

    queue = boto3.client("sqs", endpoint_url=moto_url, region_name="us-east-1").create_queue(
        QueueName=f"no-creds-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")}
    env.update({"HIMIG_TEMPORAL_ADDRESS": client.service_client.config.target_host,
                "HIMIG_TASK_QUEUE": f"no-creds-{uuid.uuid4().hex[:8]}", "HIMIG_GRACEFUL_SHUTDOWN_SECONDS": "1",
                "HIMIG_JOB_EVENTS_QUEUE_URL": queue, "HIMIG_JOB_EVENTS_WAIT_SECONDS": "1",
                "AWS_ENDPOINT_URL_SQS": moto_url, "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_EC2_METADATA_DISABLED": "true"})
    done = subprocess.run([sys.executable, "-m", "worker"], env=env, capture_output=True, text=True, timeout=90)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    failures = [line for line in output.splitlines() if "cannot read HIMIG_JOB_EVENTS_QUEUE_URL" in line]
    assert len(failures) == 1, output
    assert "no AWS credentials found" in failures[0] and "task role" in failures[0]
    assert "retrying" not in output and "worker stopped" in output
