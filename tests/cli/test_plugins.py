"""``himig`` gets ``stack``, ``demo`` and ``corpus`` from the local tooling's entry points, and survives bad ones."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

import pytest
import typer
from typer.testing import CliRunner

from cli.app import PLUGIN_GROUP, add_plugin_commands, app


def _flat(text: str) -> str:
    return " ".join(text.split())


def _fresh_app() -> typer.Typer:
    target = typer.Typer(no_args_is_help=True)

    @target.command()
    def ping() -> None:
        """An operator command that must keep working whatever the plugins do."""
        typer.echo("pong")

    @target.command()
    def version() -> None:
        """A second command, so Typer keeps this a group as `himig` is."""
        typer.echo("0")

    return target


def test_the_installed_tooling_registers_its_commands() -> None:
    names = {ep.name: ep.value for ep in entry_points(group=PLUGIN_GROUP)}
    assert names == {"stack": "devstack.cli:stack_app", "demo": "devstack.cli:demo",
                     "corpus": "corpus.cli:corpus_app"}


@pytest.mark.parametrize(("args", "expected"), [
    (["stack", "--help"], "Start, stop and inspect the local stack"),
    (["demo", "--help"], "migrate the bundled sample corpus"),
    (["corpus", "--help"], "Generate DICOM test corpora"),
])
def test_plugin_commands_answer_through_himig(args: list[str], expected: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert expected in _flat(result.output)


def test_a_plugin_that_fails_to_load_is_skipped_with_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    target = _fresh_app()
    add_plugin_commands(target, [
        EntryPoint(name="broken", value="no_such_module_for_himig:app", group=PLUGIN_GROUP),
        EntryPoint(name="stack", value="devstack.cli:stack_app", group=PLUGIN_GROUP),
    ])
    warning = _flat(capsys.readouterr().err)
    assert "skipping the `broken` command (no_such_module_for_himig:app): ModuleNotFoundError" in warning
    runner = CliRunner()
    assert runner.invoke(target, ["ping"]).output == "pong\n"
    assert runner.invoke(target, ["stack", "--help"]).exit_code == 0
    assert runner.invoke(target, ["broken"]).exit_code != 0


def test_a_plugin_that_is_neither_an_app_nor_a_function_is_skipped(capsys: pytest.CaptureFixture[str]) -> None:
    target = _fresh_app()
    add_plugin_commands(target, [EntryPoint(name="queue", value="cli.app:PLUGIN_GROUP", group=PLUGIN_GROUP)])
    assert "neither a Typer app nor a function" in _flat(capsys.readouterr().err)
    assert CliRunner().invoke(target, ["ping"]).output == "pong\n"
