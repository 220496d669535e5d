"""`himig stack up|down|status`: the embedded local stack from the command line (see devstack/src/devstack/stack.py).

Exit codes: 0 success; 1 a component failed to become healthy (``up``) or is not healthy (``status``);
2 bad flags/settings, a port in use, a missing program or dependency.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from contracts.common import ValidationLevel
from devstack.stack import COMPONENTS, Stack, StackConfig, StackError, StackStatus, parse_components

stack_app = typer.Typer(
    help="Start, stop and inspect the local stack (Temporal dev server, moto, emulator, worker) on 127.0.0.1. "
    "State lives under .local/ (HIMIG_STACK_DIR); moto's S3/SQS are in memory and `up` recreates the buckets.",
    no_args_is_help=True,
)

_PORT = {"min": 1, "max": 65535}
DirOpt = Annotated[Path | None, typer.Option("--dir", help="state directory (env HIMIG_STACK_DIR, default .local)")]
TemporalPort = Annotated[int | None, typer.Option("--temporal-port", **_PORT,
                                                  help="Temporal frontend (env HIMIG_STACK_TEMPORAL_PORT, default 7233)")]
TemporalUiPort = Annotated[int | None, typer.Option("--temporal-ui-port", **_PORT,
                                                    help="Temporal UI (env HIMIG_STACK_TEMPORAL_UI_PORT, default 8233)")]
MotoPort = Annotated[int | None, typer.Option("--moto-port", **_PORT, help="moto (env HIMIG_STACK_MOTO_PORT, default 4566)")]
EmulatorPort = Annotated[int | None, typer.Option("--emulator-port", **_PORT,
                                                  help="emulator (env HIMIG_STACK_EMULATOR_PORT, default 8400)")]
_COMPONENT_HELP = f"comma-separated subset of {', '.join(COMPONENTS)}"

# Field name -> how the operator sets it, so a validation error names what to change.
_FIELD_SOURCES = {
    "dir": "--dir / HIMIG_STACK_DIR",
    "temporal_port": "--temporal-port / HIMIG_STACK_TEMPORAL_PORT",
    "temporal_ui_port": "--temporal-ui-port / HIMIG_STACK_TEMPORAL_UI_PORT",
    "moto_port": "--moto-port / HIMIG_STACK_MOTO_PORT",
    "emulator_port": "--emulator-port / HIMIG_STACK_EMULATOR_PORT",
    "health_timeout": "--timeout / HIMIG_STACK_HEALTH_TIMEOUT",
    "stop_timeout": "--timeout / HIMIG_STACK_STOP_TIMEOUT",
}


def _err() -> Console:
    # soft_wrap: a message naming a port or flag must stay greppable, never broken across lines.
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _config(**overrides: Any) -> StackConfig:
    """Settings from env/.env with the given flags on top; a bad value exits 2 naming the flag or variable."""
    try:
        return StackConfig(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        for e in exc.errors():
            name = str(e["loc"][0]) if e["loc"] else ""
            where = _FIELD_SOURCES.get(name, f"HIMIG_STACK_{name.upper()}" if name else "stack settings")
            msg = str(e["msg"]).removeprefix("Value error, ")
            text = f"invalid {where}: {msg}" if name else msg
            _err().print(f"[red]error:[/] {escape(text)}")
        raise typer.Exit(2) from None


def _stack(config: StackConfig, quiet: bool = False) -> Stack:
    console = Console(highlight=False)
    return Stack(config, on_event=None if quiet else lambda msg: console.print(f"[dim]•[/] {escape(msg)}"))


def _components(value: str | None, option: str) -> list[str] | None:
    if value is None:
        return None
    try:
        return parse_components(value, option)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"'{option}'") from None


_STYLE = {"healthy": "green", "unhealthy": "red", "stopped": "dim", "stale": "yellow"}


def _table(status: StackStatus) -> Table:
    table = Table(title="himig local stack", title_justify="left")
    for col in ("component", "pid", "port(s)", "health", "detail"):
        table.add_column(col)
    for c in status.components:
        ports = ", ".join(f"{p}" + (" (UI)" if label.endswith("ui_port") else "") for label, p in c.ports.items())
        health = f"[{_STYLE[c.state]}]{c.state}[/]" + (" (reused)" if c.reused else "")
        table.add_row(c.name, str(c.pid) if c.pid else "-", ports or "-", health, escape(c.detail))
    return table


@stack_app.command()
def up(
    only: Annotated[str | None, typer.Option("--only", help=f"start only these: {_COMPONENT_HELP}")] = None,
    skip: Annotated[str | None, typer.Option("--skip", help=f"leave these out: {_COMPONENT_HELP}")] = None,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="same as --skip worker")] = False,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0.1, max=3600,
                                                  help="seconds to wait for each component (default 60)")] = None,
    dir: DirOpt = None,
    temporal_port: TemporalPort = None,
    temporal_ui_port: TemporalUiPort = None,
    moto_port: MotoPort = None,
    emulator_port: EmulatorPort = None,
) -> None:
    """Start the stack (Temporal, moto + buckets, emulator, worker), reusing what is already healthy."""
    selected = _components(only, "--only") or list(COMPONENTS)
    skipped = set(_components(skip, "--skip") or []) | ({"worker"} if no_worker else set())
    selected = [c for c in selected if c not in skipped]
    if not selected:
        raise typer.BadParameter("nothing left to start", param_hint="'--skip'")
    config = _config(dir=dir, temporal_port=temporal_port, temporal_ui_port=temporal_ui_port, moto_port=moto_port,
                     emulator_port=emulator_port, health_timeout=timeout)
    stack = _stack(config)
    t0 = time.monotonic()
    try:
        status = stack.up(selected)
    except StackError as exc:
        _err().print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(exc.exit_code) from None
    console = Console(highlight=False)
    console.print(_table(status))
    console.print(f"up in {time.monotonic() - t0:.1f}s")
    if "temporal" in selected:
        console.print(f"Temporal UI: {config.temporal_ui_url}   (address {config.temporal_address})")
    console.print(f"Client environment: source {stack.env_file}")


@stack_app.command()
def down(
    timeout: Annotated[float | None, typer.Option("--timeout", min=0.1, max=600,
                                                  help="seconds from SIGTERM to SIGKILL (default 20)")] = None,
    dir: DirOpt = None,
) -> None:
    """Stop everything `up` started (SIGTERM, then SIGKILL after --timeout). Moto's buckets are lost."""
    stack = _stack(_config(dir=dir, stop_timeout=timeout))
    t0 = time.monotonic()
    try:
        stopped = stack.down()
    except StackError as exc:
        _err().print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(exc.exit_code) from None
    if stopped:
        Console(highlight=False).print(f"stopped {', '.join(stopped)} in {time.monotonic() - t0:.1f}s")


@stack_app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
    only: Annotated[str | None, typer.Option("--only", help=f"check only these: {_COMPONENT_HELP}")] = None,
    dir: DirOpt = None,
) -> None:
    """Show each component's pid, port(s) and health; exit 0 only if all shown are healthy.

    A running component is checked on the ports recorded when it started, so no port flags are needed.
    """
    config = _config(dir=dir)
    result = _stack(config, quiet=True).status(_components(only, "--only"))
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        console = Console(highlight=False)
        console.print(_table(result))
        if any(c.name == "temporal" and c.healthy for c in result.components):
            console.print(f"Temporal UI: {result.temporal_ui}")
    raise typer.Exit(0 if result.healthy else 1)


def demo(
    keep_going: bool = typer.Option(True, "--leave-running/--stop-after", help="leave the local stack running"),
    validation_level: ValidationLevel = typer.Option(ValidationLevel.STRUCTURE_ONLY, "--validation-level"),
) -> None:
    """Start the local stack, migrate the bundled sample corpus, and print the report."""
    from devstack.demo import run_demo  # local import: the demo pulls in the Temporal client and boto3

    code = run_demo(Console(), validation_level=validation_level, leave_running=keep_going)
    raise typer.Exit(code)
