"""`himig stack`: real Temporal dev server, moto (and emulator, when present) on random 127.0.0.1 ports.

Every test uses its own state dir; the `stacks` fixture stops whatever a test started, by pid from the pid
files (``Stack.down``, then SIGKILL for anything left), even when the test fails.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from devstack.cli import stack_app
from devstack.stack import COMPONENTS, PidRecord, Stack, StackConfig, StackError, proc_cmdline
from worker.codec import KeyRing

# Honours the worker's health contract (HIMIG_HEALTH_FILE holds our pid while ready; removed on SIGTERM).
STAND_IN_WORKER = """
import os, pathlib, signal, sys, time
path = pathlib.Path(os.environ["HIMIG_HEALTH_FILE"])
def stop(*_):
    path.unlink(missing_ok=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
time.sleep(0.3)  # "connecting"
path.write_text(str(os.getpid()))
while True:
    time.sleep(1)
"""


def free_ports(n: int) -> list[int]:
    """n distinct ports free right now (all held at once while choosing, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def port_env(ports: list[int]) -> dict[str, int]:
    return dict(zip(("temporal_port", "temporal_ui_port", "moto_port", "emulator_port"), ports, strict=True))


def alive(pid: int) -> bool:
    return proc_cmdline(pid) is not None


StackFactory = Callable[..., Stack]


@pytest.fixture
def stacks(tmp_path: Path) -> Iterator[StackFactory]:
    """Make `Stack`s on fresh ports in tmp dirs; tear every one of them down afterwards, by pid."""
    made: list[Stack] = []

    def make(state: Path | None = None, events: list[str] | None = None,
             commands: dict[str, list[str]] | None = None, **overrides: Any) -> Stack:
        settings: dict[str, Any] = {"dir": state or tmp_path / "state", **port_env(free_ports(4)),
                                    "health_timeout": 30, "stop_timeout": 10, **overrides}
        on_event = events.append if events is not None else None
        stack = Stack(StackConfig(**settings), on_event=on_event, cwd=tmp_path,
                      commands={"worker": [sys.executable, "-c", STAND_IN_WORKER], **(commands or {})})
        made.append(stack)
        return stack

    yield make
    for stack in made:
        try:
            stack.down()
        finally:
            for name in COMPONENTS:  # belt and braces: whatever down() could not stop
                try:
                    record = PidRecord.load(stack.pid_file(name))
                except ValueError:
                    continue
                if record is not None and proc_cmdline(record.pid) == record.cmdline:
                    os.kill(record.pid, signal.SIGKILL)


def temporal_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([stack.temporal_bin(), *args, "--address", stack.config.temporal_address,
                           "--disable-config-file", "--disable-config-env"],
                          capture_output=True, text=True, timeout=30, check=False)


def bucket_names(stack: Stack) -> set[str]:
    s3 = boto3.client("s3", endpoint_url=stack.config.moto_url, region_name="us-east-1")
    return {b["Name"] for b in s3.list_buckets()["Buckets"]}


def job_events_wired(stack: Stack) -> bool:
    """The import-job events rule on moto's default bus targets the queue the worker reads."""
    kwargs: dict[str, Any] = {"endpoint_url": stack.config.moto_url, "region_name": "us-east-1"}
    queue = boto3.client("sqs", **kwargs).get_queue_url(QueueName="himig-import-job-events")["QueueUrl"]
    targets = boto3.client("events", **kwargs).list_targets_by_rule(Rule="himig-import-job-events")["Targets"]
    return bool(queue == stack.config.job_events_queue_url and [t["Arn"] for t in targets]
                == ["arn:aws:sqs:us-east-1:123456789012:himig-import-job-events"])


def test_up_reuse_status_down_and_persistence(stacks: StackFactory) -> None:
    events: list[str] = []
    stack = stacks(events=events)
    names = ["temporal", "moto", "emulator", "worker"]

    t0 = time.monotonic()
    first = stack.up(names)
    cold = time.monotonic() - t0
    assert first.healthy, first.to_dict()
    assert [c.name for c in first.components] == names
    pids = {c.name: c.pid for c in first.components}
    for c in first.components:
        assert c.pid and alive(c.pid) and not c.reused
        record = PidRecord.load(stack.pid_file(c.name))
        assert record is not None and record.pid == c.pid and record.started_at
        assert proc_cmdline(c.pid) == record.cmdline  # what later commands verify before signalling
    assert first["temporal"].ports == {"temporal_port": stack.config.temporal_port,
                                       "temporal_ui_port": stack.config.temporal_ui_port}
    assert first["moto"].ports == {"moto_port": stack.config.moto_port}
    assert bucket_names(stack) >= {"himig-source", "himig-work"}
    assert stack.health_file.read_text().strip() == str(pids["worker"])
    assert (stack.root / "logs" / "temporal.log").exists()

    # The worker got the whole client environment (read back from the kernel, not from our own dict).
    environ = dict(kv.split("=", 1) for kv in Path(f"/proc/{pids['worker']}/environ").read_text().split("\0") if "=" in kv)
    assert environ["HIMIG_TEMPORAL_ADDRESS"] == stack.config.temporal_address
    assert environ["AWS_ENDPOINT_URL_S3"] == environ["AWS_ENDPOINT_URL_SQS"] == stack.config.moto_url
    assert environ["AWS_ENDPOINT_URL_EVENTBRIDGE"] == stack.config.moto_url
    assert environ["AWS_ENDPOINT_URL_MEDICAL_IMAGING"] == environ["AWS_ENDPOINT_URL_HEALTHLAKE"] == stack.config.emulator_url
    assert environ["AWS_ACCESS_KEY_ID"] == "testing" and environ["AWS_REGION"] == "us-east-1"
    assert environ["HIMIG_HEALTH_FILE"] == str(stack.health_file)
    assert environ["HIMIG_JOB_EVENTS_QUEUE_URL"] == stack.config.job_events_queue_url
    assert environ["HIMIG_FINGERPRINT_KEY"] == stack.secrets()["HIMIG_FINGERPRINT_KEY"]
    assert environ["HIMIG_PAYLOAD_KEYS"] == stack.secrets()["HIMIG_PAYLOAD_KEYS"]
    assert environ["HIMIG_REVIEWER_ATTESTATION_KEY"] == stack.secrets()["HIMIG_REVIEWER_ATTESTATION_KEY"]
    assert environ["HIMIG_RECONCILIATION_REVIEWERS"] == getpass.getuser()  # who runs the stack decides
    assert environ["HIMIG_DATA_ACCESS_ROLE_ARN"].startswith("arn:aws:iam::000000000000:role/")
    assert job_events_wired(stack)

    env_file = stack.env_file.read_text()
    assert f"export TEMPORAL_ADDRESS={stack.config.temporal_address}" in env_file
    assert f"export AWS_ENDPOINT_URL_S3={stack.config.moto_url}" in env_file
    assert stack.env()["AWS_ENDPOINT_URL_MEDICAL_IMAGING"] == stack.config.emulator_url

    # A workflow (no worker needed for it to exist) to prove Temporal's SQLite survives down/up.
    started = temporal_cli(stack, "workflow", "start", "--type", "Persisted", "--task-queue", "nobody",
                           "--workflow-id", "persist-me")
    assert started.returncode == 0, started.stderr

    t0 = time.monotonic()
    second = stack.up(names)
    warm = time.monotonic() - t0
    assert {c.name: c.pid for c in second.components} == pids
    assert all(c.reused for c in second.components)
    assert any("reusing" in e for e in events)

    status = stack.status()
    assert [c.name for c in status.components] == list(COMPONENTS)
    assert all(status[n].state == "healthy" for n in names)
    assert status.healthy is True

    t0 = time.monotonic()
    assert stack.down() == list(reversed(names))
    stopped_in = time.monotonic() - t0
    assert not any(alive(pid) for pid in pids.values() if pid)
    assert not any(stack.pid_file(n).exists() for n in COMPONENTS)
    assert not stack.health_file.exists()  # the stand-in removed it on SIGTERM
    assert {c.state for c in stack.status().components} == {"stopped"}
    events.clear()
    assert stack.down() == []
    assert events == ["stack is not running"]

    assert stack.temporal_db.exists()
    again = stack.up(["temporal", "moto"])  # straight after down: no SQLITE_BUSY, down waited for the exit
    assert again.healthy
    described = temporal_cli(stack, "workflow", "describe", "--workflow-id", "persist-me")
    assert described.returncode == 0 and "Persisted" in described.stdout, described.stderr
    assert temporal_cli(stack, "workflow", "list").returncode == 0
    assert bucket_names(stack) >= {"himig-source", "himig-work"}  # moto is fresh: buckets recreated
    assert job_events_wired(stack)  # and the import-job events rule and queue
    print(f"\nstack up cold {cold:.2f}s, warm {warm:.2f}s, down {stopped_in:.2f}s")


def test_secrets_are_generated_once_private_and_reused(stacks: StackFactory, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    stack = stacks(events=events)
    assert stack.secrets() == {}  # nothing before the first `up`
    stack.up(["moto"])
    made = stack.secrets()
    assert set(made) == {"HIMIG_FINGERPRINT_KEY", "HIMIG_PAYLOAD_KEYS", "HIMIG_REVIEWER_ATTESTATION_KEY"}
    assert len(made["HIMIG_REVIEWER_ATTESTATION_KEY"]) >= 32  # the setting's minimum
    assert len(made["HIMIG_FINGERPRINT_KEY"]) >= 40  # token_urlsafe(32)
    key_id, _, key = made["HIMIG_PAYLOAD_KEYS"].partition(":")
    assert re.fullmatch(r"local-[0-9a-f]{8}", key_id) and len(base64.b64decode(key, validate=True)) == 32
    assert KeyRing.parse(made["HIMIG_PAYLOAD_KEYS"])  # what the worker's codec reads
    for path in (stack.secrets_file, stack.env_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert sum(e.startswith("generated ") for e in events) == 1, events
    assert all(v not in " ".join(events) for v in made.values())  # the event names the secrets, never their values

    stack.secrets_file.chmod(0o644)
    stack.up(["moto"])  # reused, not regenerated (fingerprints written under another key would no longer match)
    assert stack.secrets() == made and sum(e.startswith("generated ") for e in events) == 1
    assert stat.S_IMODE(stack.secrets_file.stat().st_mode) == 0o600
    other = stacks(state=tmp_path / "other-installation")
    other.up(["moto"])
    assert other.secrets()["HIMIG_FINGERPRINT_KEY"] != made["HIMIG_FINGERPRINT_KEY"]

    # What the stack hands the worker is a complete worker configuration.
    from tests.support.deployment import use_only
    from worker.settings import load_settings

    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    use_only(stack.env(), monkeypatch, workdir)
    settings = load_settings()
    assert settings.fingerprint_secret() == made["HIMIG_FINGERPRINT_KEY"].encode()
    assert settings.healthlake_kms_key_id and settings.healthlake_data_access_role_arn
    # ... and of `himig codec-server` for the stack's UI, which the dev server is told to call.
    assert settings.codec_server.problems() == []
    assert settings.codec_server.ui_origin_list() == (stack.config.temporal_ui_url,)
    argv = stack.spec("temporal").argv
    endpoint = argv[argv.index("--ui-codec-endpoint") + 1]
    assert endpoint == f"http://{settings.codec_server.host}:{settings.codec_server.port}"


def test_emulator_component(stacks: StackFactory) -> None:
    stack = stacks()
    status = stack.up(["moto", "emulator"])
    assert status.healthy and status["emulator"].ports == {"emulator_port": stack.config.emulator_port}
    pid = status["emulator"].pid
    assert pid is not None
    environ = Path(f"/proc/{pid}/environ").read_text()
    assert f"AWS_ENDPOINT_URL_S3={stack.config.moto_url}" in environ
    assert f"AWS_ENDPOINT_URL_EVENTBRIDGE={stack.config.moto_url}" in environ
    assert (stack.root / "emulator").is_dir()


def test_stale_pid_files_are_replaced_and_never_signalled(stacks: StackFactory, tmp_path: Path) -> None:
    events: list[str] = []
    stack = stacks(events=events)
    stack.run_dir.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    moto_argv = stack.spec("moto").argv
    # A pid that no longer exists, and a live pid that belongs to someone else (this very test process).
    PidRecord("moto", dead.pid, {"moto_port": 1}, moto_argv, {}, "then").save(stack.pid_file("moto"))
    PidRecord("temporal", os.getpid(), {}, stack.spec("temporal").argv, {}, "then").save(stack.pid_file("temporal"))
    stack.pid_file("worker").write_text("{not json")

    before = stack.status()
    assert before["moto"].state == "stale" and before["temporal"].state == "stale"
    assert "not running" in before["moto"].detail and "another process" in before["temporal"].detail

    status = stack.up(["temporal", "moto"])
    assert status.healthy
    assert status["temporal"].pid != os.getpid() and status["moto"].pid != dead.pid
    assert any("stale pid file" in e and str(os.getpid()) in e and "not signalled" in e for e in events)
    assert any("stale pid file" in e and str(dead.pid) in e for e in events)
    assert any("unreadable pid file" in e for e in events) is False  # worker was not selected: left alone

    # down on a stale worker file: removed, nothing signalled, exit quietly.
    assert stack.down() == ["moto", "temporal"]
    assert not stack.pid_file("worker").exists()
    assert any("unreadable pid file" in e for e in events)

    # Different settings for a running component restart it rather than orphaning the old process.
    first = stack.up(["moto"])["moto"].pid
    moved = Stack(stack.config.model_copy(update={"moto_port": free_ports(1)[0]}), on_event=events.append,
                  cwd=tmp_path)
    second = moved.up(["moto"])["moto"]
    assert second.pid != first and first is not None and not alive(first)
    assert any("different settings" in e for e in events)
    moved.down()


def test_port_in_use_fails_fast_naming_the_port(stacks: StackFactory, tmp_path: Path) -> None:
    events: list[str] = []
    stack = stacks(events=events)
    for label, what, var in (("moto_port", "moto", "HIMIG_STACK_MOTO_PORT"),
                             ("temporal_ui_port", "temporal UI", "HIMIG_STACK_TEMPORAL_UI_PORT")):
        port = getattr(stack.config, label)
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", port))
            holder.listen()
            with pytest.raises(StackError) as info:
                stack.up(["temporal", "moto"])
        assert info.value.exit_code == 2
        assert f"port {port} ({what}) is already in use" in str(info.value) and var in str(info.value)
        # Checked before anything starts (fast because nothing was started or waited on): no start was even
        # tried, and nothing is left running or recorded.
        assert not any(": starting" in e for e in events), events
        assert not any(stack.pid_file(n).exists() for n in COMPONENTS)

    # The same through the CLI: exit code 2, the port and the flag in the message.
    port = free_ports(1)[0]
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        result = CliRunner().invoke(stack_app, ["up", "--only", "moto", "--dir", str(tmp_path / "cli"),
                                                "--moto-port", str(port)])
    assert result.exit_code == 2, result.output
    assert f"port {port} (moto) is already in use" in result.output and "--moto-port" in result.output


def test_child_failures_are_reported_at_once(stacks: StackFactory, tmp_path: Path) -> None:
    crash = [sys.executable, "-c", "print('boom: bad config'); raise SystemExit(3)"]
    # "At once" without a clock: the health timeout is the longest allowed, so a stack that noticed the exit
    # only when it gave up waiting would run into pytest's per-test timeout (300 s, pyproject) and fail.
    stack = stacks(health_timeout=3600, commands={"moto": crash})
    with pytest.raises(StackError) as info:
        stack.up(["moto"])
    assert "exited with code 3" in str(info.value) and "boom: bad config" in str(info.value)
    assert "not healthy" not in str(info.value)
    assert not stack.pid_file("moto").exists()

    hang = [sys.executable, "-c", "print('never healthy', flush=True); import time; time.sleep(60)"]
    stack = stacks(state=tmp_path / "hang", health_timeout=1.5, commands={"moto": hang})
    with pytest.raises(StackError) as info:
        stack.up(["moto"])
    assert "not healthy after 1.5s" in str(info.value) and "never healthy" in str(info.value)
    assert not stack.pid_file("moto").exists()  # it was stopped, not left holding the port

    with pytest.raises(StackError, match="worker needs temporal") as info:
        stack.up(["worker"])
    assert info.value.exit_code == 2

    # A child that ignores SIGTERM is killed after stop_timeout, and down still returns promptly.
    port = free_ports(1)[0]
    deaf = [sys.executable, "-c", "import http.server, signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), http.server.BaseHTTPRequestHandler)"
            ".serve_forever()", str(port)]
    events: list[str] = []
    stack = stacks(state=tmp_path / "deaf", events=events, stop_timeout=0.5, buckets=[], moto_port=port,
                   commands={"moto": deaf})
    pid = stack.up(["moto"])["moto"].pid
    assert pid is not None
    events.clear()
    assert stack.down() == ["moto"]
    assert not alive(pid)
    # Killed once the configured 0.5 s had passed (not the default 10 s, nor never): the order of the steps.
    steps = [e for e in events if e.startswith("moto: ")]
    assert [s.split(" pid ")[0] for s in steps[:1]] == ["moto: stopping"], steps
    assert any(e == f"moto: pid {pid} still running after 0.5s; killing it" for e in steps), steps
    assert steps[-1].startswith("moto: stopped in "), steps


def test_cli_flags_status_and_down(stacks: StackFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env; --dir relative to here
    for var in [v for v in os.environ if v.startswith("HIMIG_STACK_")]:
        monkeypatch.delenv(var)
    runner = CliRunner()
    cases = [
        (["up", "--temporal-port", "0"], "--temporal-port"),
        (["up", "--moto-port", "70000"], "--moto-port"),
        (["up", "--only", "moto,nope"], "--only"),
        (["up", "--skip", "bogus"], "--skip"),
        (["up", "--moto-port", "5000", "--emulator-port", "5000"], "--emulator-port"),
        (["status", "--only", "x"], "--only"),
    ]
    for args, flag in cases:
        result = runner.invoke(stack_app, args)
        assert result.exit_code == 2, (args, result.output)
        assert flag in result.output, (args, result.output)
    result = runner.invoke(stack_app, ["up", "--only", "moto"], env={"HIMIG_STACK_MOTO_PORT": "70000"})
    assert result.exit_code == 2 and "HIMIG_STACK_MOTO_PORT" in result.output
    with pytest.raises(ValidationError, match="temporal_port"):
        StackConfig(temporal_port=0)
    with pytest.raises(ValidationError, match="valid S3 bucket name"):
        StackConfig(buckets=["Bad_Bucket"])
    monkeypatch.setenv("HIMIG_STACK_BUCKETS", "a-1,b-2 ,")
    assert StackConfig().buckets == ["a-1", "b-2"]
    monkeypatch.delenv("HIMIG_STACK_BUCKETS")

    # A real moto through the CLI: up, status (table and JSON), down twice.
    moto_port = free_ports(1)[0]
    state = tmp_path / "cli-state"
    stacks(state=state)  # registers the dir for teardown
    result = runner.invoke(stack_app, ["up", "--only", "moto", "--dir", str(state), "--moto-port", str(moto_port)])
    assert result.exit_code == 0, result.output
    flat = result.output.replace("\n", "")  # rich wraps long paths at the terminal width
    assert "moto: starting" in flat and "stack.env" in flat
    result = runner.invoke(stack_app, ["status", "--json", "--only", "moto", "--dir", str(state)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["healthy"] is True
    [moto] = data["components"]
    assert moto["state"] == "healthy" and moto["ports"] == {"moto_port": moto_port} and alive(moto["pid"])
    result = runner.invoke(stack_app, ["status", "--dir", str(state)])
    assert result.exit_code == 1 and "stopped" in result.output and str(moto_port) in result.output
    result = runner.invoke(stack_app, ["down", "--dir", str(state)])
    assert result.exit_code == 0 and "stopped moto" in result.output
    assert not alive(moto["pid"])
    result = runner.invoke(stack_app, ["down", "--dir", str(state)])
    assert result.exit_code == 0 and "not running" in result.output


def test_the_stack_runs_the_emulator_throttled_as_its_readmes_say(tmp_path: Path) -> None:
    """The local stack behaves like AWS (1 TPS import starts...), and both READMEs say so; the test fixtures, not
    the stack, switch throttling off."""
    from devstack.stack import Stack, StackConfig

    argv = Stack(StackConfig(), cwd=tmp_path).spec("emulator").argv
    assert argv[argv.index("--throttling") + 1] == "on"
    root = Path(__file__).resolve().parents[2]
    flag_row = next(line for line in (root / "emulator" / "README.md").read_text().splitlines()
                    if line.startswith("| `--throttling"))
    assert "local stack (`himig stack up`) runs it on" in flag_row and "stack set" not in flag_row
    assert "`himig stack up` starts it with `--throttling on`" in (root / "README.md").read_text()
