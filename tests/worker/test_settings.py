"""One settings object, validated before anything connects: every section, every problem, named by variable."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from cli.app import app
from tests.support.installation import INSTALLATION_ENV
from worker.settings import InvalidSettings, Settings, load_settings

HIMIG_VARS = [k for k in os.environ if k.startswith("HIMIG_")]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in HIMIG_VARS:
        monkeypatch.delenv(key, raising=False)
    for key, value in INSTALLATION_ENV.items():  # what every installation has (its secrets)
        monkeypatch.setenv(key, value)
    return monkeypatch


@pytest.fixture
def listening_port() -> Iterator[tuple[socket.socket, int]]:
    """A TCP port that accepts connections, so a worker that tried to reach Temporal would be seen doing so."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server, server.getsockname()[1]
    server.close()


def _accepted(server: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


class TestLoadSettings:
    def test_sections_are_part_of_the_one_object(self, clean_env: pytest.MonkeyPatch) -> None:
        clean_env.setenv("HIMIG_INGEST_QUIET_SECONDS", "5")
        clean_env.setenv("HIMIG_JOB_EVENTS_QUEUE_URL", "http://127.0.0.1:1/000000000000/q")
        settings = load_settings()
        assert settings.ingest.quiet_seconds == 5.0 and not settings.ingest.enabled
        assert settings.job_events.enabled

    @pytest.mark.parametrize(("var", "value", "reason"), [
        ("HIMIG_INGEST_QUIET_SECONDS", "abc", "valid number"),
        ("HIMIG_INGEST_QUIET_SECONDS", "0", "greater than 0"),
        ("HIMIG_INGEST_VALIDATION_LEVEL", "lenient", "strict"),
        ("HIMIG_JOB_EVENTS_WAIT_SECONDS", "99", "less than or equal to 20"),
        ("HIMIG_JOB_EVENTS_VISIBILITY_TIMEOUT", "1.5", "valid integer"),
        ("HIMIG_PARSE_CONCURRENCY", "0", "greater than or equal to 1"),
        ("HIMIG_TEMPORAL_ADDRESS", "no-port", "host:port"),
        ("HIMIG_LOG_FORMAT", "xml", "json"),
    ])
    def test_a_bad_value_names_its_variable(self, clean_env: pytest.MonkeyPatch, var: str, value: str,
                                            reason: str) -> None:
        clean_env.setenv(var, value)
        with pytest.raises(InvalidSettings) as caught:
            load_settings()
        assert len(caught.value.problems) == 1
        assert caught.value.problems[0].startswith(f"{var}: ") and reason in caught.value.problems[0]

    def test_every_problem_is_listed_at_once(self, clean_env: pytest.MonkeyPatch) -> None:
        clean_env.setenv("HIMIG_INGEST_MAX_FILES", "0")
        clean_env.setenv("HIMIG_JOB_EVENTS_WAIT_SECONDS", "0")
        clean_env.setenv("HIMIG_MAX_CONCURRENT_ACTIVITIES", "0")
        with pytest.raises(InvalidSettings) as caught:
            load_settings()
        named = sorted(p.split(":")[0] for p in caught.value.problems)
        assert named == ["HIMIG_INGEST_MAX_FILES", "HIMIG_JOB_EVENTS_WAIT_SECONDS", "HIMIG_MAX_CONCURRENT_ACTIVITIES"]

    def test_an_enabled_listener_needs_its_workflow_input(self, clean_env: pytest.MonkeyPatch) -> None:
        clean_env.setenv("HIMIG_INGEST_QUEUE_URL", "http://127.0.0.1:1/000000000000/arrivals")
        clean_env.setenv("HIMIG_INGEST_WORK_S3_URI", "not-a-uri")
        with pytest.raises(InvalidSettings) as caught:
            load_settings()
        problems = dict(p.split(": ", 1) for p in caught.value.problems)
        assert problems["HIMIG_INGEST_DATASTORE_ID"] == "required when HIMIG_INGEST_QUEUE_URL is set"
        assert problems["HIMIG_INGEST_SOURCE_S3_URI"] == "required when HIMIG_INGEST_QUEUE_URL is set"
        assert "not an S3 URI" in problems["HIMIG_INGEST_WORK_S3_URI"]

    def test_secret_values_are_never_echoed(self, clean_env: pytest.MonkeyPatch) -> None:
        clean_env.setenv("HIMIG_FINGERPRINT_KEY", "canary-short")
        with pytest.raises(InvalidSettings) as caught:
            load_settings()
        [problem] = caught.value.problems
        assert problem.startswith("HIMIG_FINGERPRINT_KEY: ") and "at least 16" in problem
        assert "canary-short" not in str(caught.value)

    def test_settings_built_directly_still_validate_their_sections(self, clean_env: pytest.MonkeyPatch) -> None:
        clean_env.setenv("HIMIG_INGEST_MAX_FILES", "-1")
        with pytest.raises(ValueError, match="max_files"):
            Settings()


class TestEntryPoints:
    def test_worker_exits_2_before_connecting(self, clean_env: pytest.MonkeyPatch,
                                              listening_port: tuple[socket.socket, int]) -> None:
        server, port = listening_port
        env = {**os.environ, "HIMIG_TEMPORAL_ADDRESS": f"127.0.0.1:{port}",
               "HIMIG_INGEST_QUEUE_URL": "http://127.0.0.1:1/000000000000/arrivals",
               "HIMIG_JOB_EVENTS_WAIT_SECONDS": "abc"}
        done = subprocess.run([sys.executable, "-m", "worker"], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "HIMIG_JOB_EVENTS_WAIT_SECONDS: " in done.stderr
        assert "HIMIG_INGEST_DATASTORE_ID: required" in done.stderr
        assert "Traceback" not in done.stderr
        assert _accepted(server) == 0, "the worker connected to Temporal before validating its settings"

    def test_cli_exits_2_naming_the_variable(self, clean_env: pytest.MonkeyPatch,
                                             listening_port: tuple[socket.socket, int]) -> None:
        server, port = listening_port
        clean_env.setenv("HIMIG_TEMPORAL_ADDRESS", f"127.0.0.1:{port}")
        clean_env.setenv("HIMIG_INGEST_MAX_WAIT_SECONDS", "soon")
        result = CliRunner().invoke(app, ["status", "some-migration"])
        assert result.exit_code == 2
        assert "HIMIG_INGEST_MAX_WAIT_SECONDS: " in result.output
        assert _accepted(server) == 0
