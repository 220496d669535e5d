"""`python -m worker` as a child process of a test, to be SIGKILLed and restarted (what ECS does to a task)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from temporalio.service import RPCError

from contracts.migration import MigrationProgress
from tests.support.eventually import assert_eventually, assert_eventually_sync
from workflows.migration import MigrationWorkflow

# A worker's start imports temporalio, boto3 and pydicom and connects to Temporal: seconds when the machine is
# quiet, more than 30 s when the suite's other processes hold both cores. The bound only matters when it fails.
HEALTH_TIMEOUT = 120.0


def wait_for_health(health: Path, proc: subprocess.Popen[bytes], log: Path | None = None,
                    timeout: float = HEALTH_TIMEOUT) -> None:
    """Until ``python -m worker`` has written its health file (it polls Temporal); fails at once if it exited."""
    def ready() -> None:
        assert proc.poll() is None, f"worker exited with {proc.returncode}" + (
            f": {log.read_text(errors='replace')[-2000:]}" if log else "")
        assert health.exists(), "worker never wrote its health file"

    assert_eventually_sync(ready, timeout=timeout)


class WorkerProcess:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log_path = env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen([sys.executable, "-m", "worker"], env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


async def progress_until(handle: Any, cond: Callable[[MigrationProgress], bool],
                         timeout: float = 60) -> MigrationProgress:
    """Poll the migration's `progress` query (every 50 ms, bounded) until ``cond`` holds; a query that fails
    because no worker is up to answer it (one is restarting) is polled again."""
    last: MigrationProgress | None = None

    async def reached() -> MigrationProgress:
        nonlocal last
        try:
            last = await handle.query(MigrationWorkflow.progress)
        except RPCError as err:
            raise AssertionError(f"condition not reached; last progress: {last!r} (query failed: {err})") from err
        assert cond(last), f"condition not reached; last progress: {last!r}"
        return last

    return await assert_eventually(reached, timeout=timeout, interval=0.05)
