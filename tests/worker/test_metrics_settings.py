"""The observability settings (``HIMIG_METRICS_*``, the OTLP endpoint): hostile values stop the process naming the
variable, blank means off, and a metrics port that cannot be bound is a settings problem (exit code 2)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.support.installation import INSTALLATION_ENV
from worker.settings import InvalidSettings, load_settings

OBSERVABILITY_VARS = ("HIMIG_METRICS_PORT", "HIMIG_METRICS_HOST", "HIMIG_METRICS_POLL_SECONDS",
                      "HIMIG_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in [k for k in os.environ if k.startswith("HIMIG_")] + list(OBSERVABILITY_VARS):
        monkeypatch.delenv(key, raising=False)
    for key, value in INSTALLATION_ENV.items():  # what every installation has (its secrets)
        monkeypatch.setenv(key, value)
    return monkeypatch


class TestMetricsSettings:
    def test_off_by_default_and_when_blank(self, clean_env: pytest.MonkeyPatch) -> None:
        assert load_settings().metrics_bind_address() is None
        clean_env.setenv("HIMIG_METRICS_PORT", " ")
        clean_env.setenv("HIMIG_OTLP_ENDPOINT", "")
        settings = load_settings()
        assert settings.metrics_bind_address() is None and settings.otlp_endpoint is None

    @pytest.mark.parametrize(("host", "port", "bind"), [
        (None, "9464", "127.0.0.1:9464"),  # loopback unless told otherwise
        ("0.0.0.0", "9464", "0.0.0.0:9464"),  # a container's published port
        ("::1", "65535", "[::1]:65535"),
    ])
    def test_bind_address(self, clean_env: pytest.MonkeyPatch, host: str | None, port: str, bind: str) -> None:
        clean_env.setenv("HIMIG_METRICS_PORT", port)
        if host is not None:
            clean_env.setenv("HIMIG_METRICS_HOST", host)
        assert load_settings().metrics_bind_address() == bind

    @pytest.mark.parametrize(("var", "value", "reason"), [
        ("HIMIG_METRICS_PORT", "0", "greater than or equal to 1"),
        ("HIMIG_METRICS_PORT", "65536", "less than or equal to 65535"),
        ("HIMIG_METRICS_PORT", "-9464", "greater than or equal to 1"),
        ("HIMIG_METRICS_PORT", "9464.5", "valid integer"),
        ("HIMIG_METRICS_PORT", "9464; rm -rf /", "valid integer"),
        ("HIMIG_METRICS_PORT", "127.0.0.1:9464", "valid integer"),
        ("HIMIG_METRICS_HOST", "metrics.example.com", "IP address"),
        ("HIMIG_METRICS_HOST", "0.0.0.0:9464", "IP address"),
        ("HIMIG_METRICS_HOST", "127.0.0.1 --evil", "IP address"),
        ("HIMIG_METRICS_HOST", "", "IP address"),
        ("HIMIG_METRICS_POLL_SECONDS", "0", "greater than or equal to 5"),
        ("HIMIG_OTLP_ENDPOINT", "collector:4318", "http[s]://host"),
        ("HIMIG_OTLP_ENDPOINT", "ftp://collector:4318", "http[s]://host"),
        ("HIMIG_OTLP_ENDPOINT", "http://collector:99999", "valid port"),
        ("HIMIG_OTLP_ENDPOINT", "http://user:secret@collector:4318", "no credentials"),
        ("HIMIG_OTLP_ENDPOINT", "http://collector:4318/?debug=1", "no credentials, query"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url", "http[s]://host"),
    ])
    def test_a_hostile_value_names_its_variable(self, clean_env: pytest.MonkeyPatch, var: str, value: str,
                                                reason: str) -> None:
        clean_env.setenv("HIMIG_METRICS_PORT", "9464")  # so the host is used
        clean_env.setenv(var, value)
        with pytest.raises(InvalidSettings) as caught:
            load_settings()
        [problem] = caught.value.problems
        name = "HIMIG_OTLP_ENDPOINT" if var == "OTEL_EXPORTER_OTLP_ENDPOINT" else var
        assert problem.startswith(f"{name}: ") and reason in problem, problem
        assert "secret" not in problem

    def test_the_standard_otlp_variable_is_read(self, clean_env: pytest.MonkeyPatch) -> None:
        clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/")
        assert load_settings().otlp_endpoint == "http://127.0.0.1:4318"
        clean_env.setenv("HIMIG_OTLP_ENDPOINT", "https://collector.internal:4318")
        assert load_settings().otlp_endpoint == "https://collector.internal:4318"


class TestWorkerStart:
    def test_a_taken_metrics_port_exits_2_before_connecting(self, clean_env: pytest.MonkeyPatch) -> None:
        with socket.socket() as taken, socket.socket() as temporal:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            temporal.bind(("127.0.0.1", 0))
            temporal.listen(1)
            temporal.setblocking(False)
            env = {**os.environ, "HIMIG_METRICS_PORT": str(taken.getsockname()[1]),
                   "HIMIG_TEMPORAL_ADDRESS": f"127.0.0.1:{temporal.getsockname()[1]}"}
            done = subprocess.run([sys.executable, "-m", "worker"], env=env, capture_output=True, text=True,
                                  timeout=60)
            assert done.returncode == 2, done.stderr
            assert "cannot serve metrics on 127.0.0.1:" in done.stderr and "HIMIG_METRICS_PORT" in done.stderr
            assert "Traceback" not in done.stderr
            with pytest.raises(BlockingIOError):
                temporal.accept()  # nothing connected to Temporal first
