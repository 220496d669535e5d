"""Start real local servers (moto, the HealthImaging emulator) on free 127.0.0.1 ports for tests.

Every server is a child process started by the test session and stopped by pid, never by name.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait until ``url`` answers any HTTP status, or fail with the process's log tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"server for {url} did not answer within {timeout}s")


def wait_tcp(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:``port``, or fail if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server for port {port} exited early with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing accepted connections on 127.0.0.1:{port} within {timeout}s")


@dataclass
class ServerProcess:
    """A child server process with its URL and log file."""

    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log_tail(self, n: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""


def _spawn(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns the handle for its lifetime
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def start_moto(log_dir: Path, port: int | None = None, extra_env: dict[str, str] | None = None) -> ServerProcess:
    """Start ``moto.server`` (S3, SQS, EventBridge) on 127.0.0.1; ``extra_env`` e.g. turns IAM checks on
    (``INITIAL_NO_AUTH_ACTION_COUNT``)."""
    port = port or free_port()
    env = {**os.environ, **FAKE_AWS_ENV, **(extra_env or {})}
    log_path = log_dir / f"moto-{port}.log"
    proc = _spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env, log_path)
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(url, port, proc, log_path, env)
    try:
        wait_http(url + "/moto-api/", proc)
    except Exception:
        server.stop()
        raise RuntimeError(f"moto server failed to start:\n{server.log_tail()}") from None
    return server


def start_emulator(
    data_dir: Path,
    s3_url: str,
    log_dir: Path,
    port: int | None = None,
    extra_args: list[str] | None = None,
    extra_env: dict[str, str] | None = None,
) -> ServerProcess:
    """Start ``python -m emulator`` against the given S3 endpoint and wait for its health check."""
    port = port or free_port()
    # Throttling is the emulator's default (AWS's rates); tests about something else switch it off.
    env = {**os.environ, **FAKE_AWS_ENV, "AWS_ENDPOINT_URL_S3": s3_url, "HIMIG_EMULATOR_THROTTLING": "off",
           **(extra_env or {})}
    log_path = log_dir / f"emulator-{port}.log"
    args = [sys.executable, "-m", "emulator", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)]
    proc = _spawn(args + (extra_args or []), env, log_path)
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(url, port, proc, log_path, env)
    try:
        wait_http(url + "/_emulator/health", proc)
    except Exception:
        server.stop()
        raise RuntimeError(f"emulator failed to start:\n{server.log_tail()}") from None
    return server


@contextlib.contextmanager
def running(server: ServerProcess) -> Iterator[ServerProcess]:
    try:
        yield server
    finally:
        server.stop()
