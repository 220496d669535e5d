"""Who a command records: never empty, whatever the environment lacks."""

from __future__ import annotations

import getpass
import os
import pwd

import pytest
from typer.testing import CliRunner

from cli import identity
from cli.app import app

LOGIN_VARIABLES = ("LOGNAME", "USER", "LNAME", "USERNAME")


def test_without_user_variables_the_password_database_names_the_user(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in LOGIN_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    assert identity.os_user() == pwd.getpwuid(os.getuid()).pw_name
    assert identity.operator(None) == pwd.getpwuid(os.getuid()).pw_name


def test_a_uid_without_a_name_is_recorded_by_number(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_name() -> str:  # what getpass does for a container uid missing from /etc/passwd
        raise KeyError(f"getpwuid(): uid not found: {os.getuid()}")

    monkeypatch.setattr(getpass, "getuser", no_name)
    assert identity.os_user() == f"uid-{os.getuid()}"


def test_an_explicit_by_wins_and_a_blank_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    assert identity.operator(" alice ") == "alice"
    with pytest.raises(ValueError, match="--by"):
        identity.operator("   ")
    monkeypatch.setenv("HIMIG_TEMPORAL_ADDRESS", "127.0.0.1:1")
    for args in (["pause", "m-1", "--by", " "], ["approve-manifest", "m-1.batch-00000", "--hold", "--by", ""]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and "--by" in result.output, result.output


def test_an_overlong_by_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIMIG_TEMPORAL_ADDRESS", "127.0.0.1:1")
    result = CliRunner().invoke(app, ["pause", "m-1", "--by", "x" * 201])
    assert result.exit_code == 2 and "by" in result.output and "Traceback" not in result.output
