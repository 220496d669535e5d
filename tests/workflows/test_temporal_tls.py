"""Temporal over mTLS, the SDK's way: the worker, ``himig`` and the ``temporal`` CLI through a proxy that requires a
client certificate, with the same ``TEMPORAL_*`` settings; clear one-line failures for every wrong set-up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from tests.support.dicom import make_instance, uid
from tests.support.eventually import assert_eventually_sync, wait_until
from tests.support.tls import HAPROXY, Certificates, TlsProxy, start_proxy
from tests.support.worker_process import wait_for_health

pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (make test installs it with apt)")

BIN = Path(sys.executable).parent
# Our own overrides would win over TEMPORAL_*; these tests configure Temporal the SDK's way only.
_OURS = ("HIMIG_TEMPORAL_ADDRESS", "HIMIG_TEMPORAL_NAMESPACE", "TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE",
         "TEMPORAL_CONFIG_FILE", "TEMPORAL_PROFILE")


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _OURS and not k.startswith("TEMPORAL_TLS")}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates.make(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def proxy(certs: Certificates, temporal_env: WorkflowEnvironment,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsProxy]:
    p = start_proxy(certs, temporal_env.client.service_client.config.target_host, tmp_path_factory.mktemp("haproxy"))
    yield p
    p.stop()


def mtls_env(certs: Certificates, proxy: TlsProxy, client_cert: tuple[Path, Path] | None = None) -> dict[str, str]:
    cert, key = client_cert or certs.client
    return {**_base_env(), "TEMPORAL_ADDRESS": proxy.address, "TEMPORAL_NAMESPACE": "default",
            "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(certs.ca), "TEMPORAL_TLS_SERVER_NAME": "localhost",
            "TEMPORAL_TLS_CLIENT_CERT_PATH": str(cert), "TEMPORAL_TLS_CLIENT_KEY_PATH": str(key)}


def _run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)


def _one_clear_line(done: subprocess.CompletedProcess[str]) -> str:
    err = done.stderr.strip()
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr
    return " ".join(err.split())


async def test_worker_cli_and_temporal_cli_run_a_migration_over_mtls(
        certs: Certificates, proxy: TlsProxy, moto_url: str, emulator_url: str, buckets: dict[str, Any],
        datastore_id: str, tmp_path: Path) -> None:
    queue = f"tls-{uuid.uuid4().hex[:8]}"
    health = tmp_path / "worker.ready"
    env = {**mtls_env(certs, proxy), "HIMIG_TASK_QUEUE": queue, "HIMIG_HEALTH_FILE": str(health),
           "HIMIG_GRACEFUL_SHUTDOWN_SECONDS": "5", "AWS_ENDPOINT_URL_S3": moto_url,
           "AWS_ENDPOINT_URL_EVENTBRIDGE": moto_url, "AWS_ENDPOINT_URL_MEDICAL_IMAGING": emulator_url}
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - owned by the child for its lifetime
    worker = subprocess.Popen([sys.executable, "-m", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_health(health, worker, tmp_path / "worker.log")
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        s3.put_object(Bucket=src, Key="tls/1.dcm", Body=make_instance(uid(), uid()))
        migration_id = f"tls-{uuid.uuid4().hex[:8]}"
        started = _run([str(BIN / "himig"), "start", "--source", f"s3://{src}/tls/", "--datastore-id", datastore_id,
                        "--work", f"s3://{work}/tls/", "--import-start-interval", "0", "--id", migration_id,
                        "--dicomweb-spot-check", "0"], {**env, "HIMIG_TASK_QUEUE": queue})
        assert started.returncode == 0, started.stderr

        def finished() -> dict[str, Any]:
            status = _run([str(BIN / "himig"), "status", migration_id, "--json"], env)
            assert status.returncode == 0, status.stderr
            progress: dict[str, Any] = json.loads(status.stdout)
            assert progress["phase"] == "completed", progress["phase"]
            return progress

        progress = assert_eventually_sync(finished, timeout=90, interval=0.5)
        assert {k: v for k, v in progress["files_by_state"].items() if v} == {"imported": 1}
        # The temporal CLI reads the very same variables.
        described = _run([str(BIN / "temporal"), "workflow", "describe", "--workflow-id", migration_id,
                          "--output", "json"], env)
        assert described.returncode == 0, described.stderr
        assert json.loads(described.stdout)["workflowExecutionInfo"]["status"].endswith("COMPLETED")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        text = (tmp_path / "worker.log").read_text()
        assert "mTLS with a client certificate" in text
        assert "BEGIN" not in text and str(certs.client[1]) not in text  # no key material, no key path
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
        log.close()


@pytest.mark.parametrize("case", ["no client certificate", "certificate from another CA", "no TLS at all"])
def test_a_rejected_connection_is_one_clear_line(certs: Certificates, proxy: TlsProxy, case: str) -> None:
    env = mtls_env(certs, proxy, certs.stranger if case == "certificate from another CA" else None)
    if case == "no client certificate":
        del env["TEMPORAL_TLS_CLIENT_CERT_PATH"], env["TEMPORAL_TLS_CLIENT_KEY_PATH"]
    if case == "no TLS at all":
        env = {k: v for k, v in env.items() if not k.startswith("TEMPORAL_TLS")}
    for command in ([sys.executable, "-m", "worker"], [str(BIN / "himig"), "status", "any-id"]):
        done = _run(command, env)
        assert done.returncode == 1, (command, done.stderr)
        line = _one_clear_line(done)
        assert f"cannot reach Temporal at {proxy.address}" in line
        assert ("plaintext" if case == "no TLS at all" else "TLS") in line
        assert "TEMPORAL_TLS" in line  # says what to check


@pytest.mark.parametrize(("change", "named"), [
    ({"TEMPORAL_TLS_CLIENT_CERT_PATH": "/nonexistent/client.pem"}, "TEMPORAL_TLS_CLIENT_CERT_PATH"),
    ({"TEMPORAL_TLS_SERVER_CA_CERT_PATH": "/etc/hostname"}, "TEMPORAL_TLS_SERVER_CA_CERT_PATH"),
    ({"TEMPORAL_TLS_CLIENT_KEY_PATH": None}, "TEMPORAL_TLS_CLIENT_KEY_PATH"),
    ({"TEMPORAL_ADDRESS": "no-port"}, "TEMPORAL_ADDRESS"),
    ({"TEMPORAL_CONFIG_FILE": "{config}", "TEMPORAL_PROFILE": "missing"}, "TEMPORAL_PROFILE"),
])
def test_bad_tls_settings_exit_2_before_connecting(certs: Certificates, proxy: TlsProxy, tmp_path: Path,
                                                   change: dict[str, str | None], named: str) -> None:
    config = tmp_path / "temporal.toml"
    config.write_text('[profile.default]\naddress = "127.0.0.1:1"\n')
    env = mtls_env(certs, proxy)
    for key, value in change.items():
        if value is None:
            env.pop(key)
        else:
            env[key] = value.replace("{config}", str(config))
    for command in ([sys.executable, "-m", "worker"], [str(BIN / "himig"), "status", "any-id"]):
        done = _run(command, env)
        assert done.returncode == 2, (command, done.stderr)
        assert named in _one_clear_line(done)


def test_api_key_is_sent_over_tls_and_never_shown(certs: Certificates, proxy: TlsProxy) -> None:
    env = {**mtls_env(certs, proxy), "TEMPORAL_API_KEY": "canary-api-key-0123456789"}
    done = _run([str(BIN / "himig"), "status", "no-such-migration"], env)
    assert "canary-api-key" not in done.stdout + done.stderr
    # The dev server ignores the key; the call gets through the mTLS proxy and finds no such workflow.
    assert done.returncode != 0 and "no-such-migration" in " ".join(done.stderr.split())


async def test_unknown_namespace_and_missing_search_attributes(client: Client) -> None:
    target = client.service_client.config.target_host
    env = {**_base_env(), "TEMPORAL_ADDRESS": target, "TEMPORAL_NAMESPACE": f"nowhere-{uuid.uuid4().hex[:6]}"}
    for command in ([sys.executable, "-m", "worker"], [str(BIN / "himig"), "status", "any-id"]):
        done = _run(command, env)
        assert done.returncode == 2, (command, done.stderr)
        line = _one_clear_line(done)
        assert "does not exist" in line and "temporal operator namespace create" in line
    # A fresh namespace has none of our search attributes: the worker refuses to start, naming the commands.
    bare = f"bare-{uuid.uuid4().hex[:6]}"
    await client.workflow_service.register_namespace(RegisterNamespaceRequest(
        namespace=bare, workflow_execution_retention_period={"seconds": 86400}))
    wait_until(lambda: _run([str(BIN / "temporal"), "operator", "namespace", "describe", "--namespace", bare,
                             "--address", target], _base_env()).returncode == 0, "the namespace to exist")
    done = _run([sys.executable, "-m", "worker"], {**env, "TEMPORAL_NAMESPACE": bare})
    assert done.returncode == 2, done.stderr
    line = _one_clear_line(done)
    assert "HimigMigrationId" in line and "temporal operator search-attribute create" in line
