"""One settings object, validated before anything connects: every section, every problem, named by variable."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app
from tests.support.installation import INSTALLATION_ENV
from tests.support.settings import TEST_ENV
from worker.settings import TABLE_BEGIN, TABLE_END, InvalidSettings, Settings, load_settings, settings_table

HIMIG_VARS = [k for k in os.environ if k.startswith("HIMIG_")]
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """Only what a deployment must set (the test values), in a directory without a `.env`."""
    for key in HIMIG_VARS:
        monkeypatch.delenv(key, raising=False)
    for key, value in INSTALLATION_ENV.items():  # what every installation has
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
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
        ("HIMIG_JOB_EVENTS_VISIBILITY_TIMEOUT", "1.5", "whole number"),
        ("HIMIG_PARSE_CONCURRENCY", "0", "greater than or equal to 1"),
        ("HIMIG_TEMPORAL_ADDRESS", "no-port", "host:port"),
        ("HIMIG_LOG_FORMAT", "xml", "json"),
        ("HIMIG_PARSE_CONCURRENCY", "8.0", "whole number"),
        ("HIMIG_INGEST_MAX_FILES", "1e3", "whole number"),
        ("HIMIG_TASK_QUEUE", "", "must not be empty"),
        ("HIMIG_TASK_QUEUE", "   ", "must not be empty"),
        ("HIMIG_DATA_ACCESS_ROLE_ARN", "HealthImagingImportRole", "must be an IAM role ARN"),
        ("HIMIG_DATA_ACCESS_ROLE_ARN", "arn:aws:iam::000000000000:user/someone", "must be an IAM role ARN"),
        ("HIMIG_HEALTHLAKE_DATA_ACCESS_ROLE_ARN", "arn:aws:s3:::bucket", "must be an IAM role ARN"),
        ("HIMIG_HEALTHLAKE_KMS_KEY_ID", "my key", "must be a KMS key ARN, alias ARN, key id or alias/"),
        ("HIMIG_INGEST_DATA_ACCESS_ROLE_ARN", "role/ingest", "must be an IAM role ARN"),
        ("HIMIG_IMPORT_REJECTS_TRAILING_PADDING", "1", "must be true or false"),
        ("HIMIG_IMPORT_REJECTS_TRAILING_PADDING", "yes", "must be true or false"),
        ("HIMIG_IMPORT_REJECTS_TRAILING_PADDING", "", "must be true or false"),
        ("HIMIG_TEMPORAL_ADRESS", "127.0.0.1:7233", "not a himig setting; did you mean HIMIG_TEMPORAL_ADDRESS?"),
        ("HIMIG_FINGERPRINT", "x" * 32, "not a himig setting; did you mean HIMIG_FINGERPRINT_KEY?"),
        ("himig_task_queues", "q", "not a himig setting; did you mean HIMIG_TASK_QUEUE?"),
    ])
    def test_a_bad_value_names_its_variable(self, clean_env: pytest.MonkeyPatch, var: str, value: str,
                                            reason: str) -> None:
        clean_env.setenv(var, value)
        with pytest.raises(InvalidSettings) as caught:
            load_settings()
        assert len(caught.value.problems) == 1
        assert caught.value.problems[0].startswith(f"{var}: ") and reason in caught.value.problems[0]

    @pytest.mark.parametrize(("value", "expected"), [("true", True), ("TRUE", True), ("false", False),
                                                      (" False ", False)])
    def test_a_flag_is_true_or_false(self, clean_env: pytest.MonkeyPatch, value: str, expected: bool) -> None:
        clean_env.setenv("HIMIG_IMPORT_REJECTS_TRAILING_PADDING", value)
        assert load_settings(for_worker=False).import_rejects_trailing_padding is expected

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

    def test_an_unknown_variable_far_from_any_setting_is_named_without_a_guess(
            self, clean_env: pytest.MonkeyPatch) -> None:
        clean_env.setenv("HIMIG_SOMETHING_ELSE_ENTIRELY", "canary-value")
        with pytest.raises(InvalidSettings) as caught:
            load_settings()
        [problem] = caught.value.problems
        assert problem.startswith("HIMIG_SOMETHING_ELSE_ENTIRELY: not a himig setting")
        assert "did you mean" not in problem and "canary-value" not in str(caught.value)

    def test_a_typo_in_the_env_file_is_named_with_its_file(self, clean_env: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
        (tmp_path / ".env").write_text("HIMIG_TASK_QUEUE=from-dotenv\nHIMIG_LOG_LEVLE=debug\n")
        with pytest.raises(InvalidSettings) as caught:
            load_settings()
        assert caught.value.problems == ["HIMIG_LOG_LEVLE (in .env): not a himig setting; did you mean "
                                         "HIMIG_LOG_LEVEL? (see the settings table in README.md)"]

    def test_other_programs_variables_are_not_flagged(self, clean_env: pytest.MonkeyPatch) -> None:
        # The local stack's and the emulator's own settings, and the suite's.
        for name in ("HIMIG_STACK_MOTO_PORT", "HIMIG_EMULATOR_THROTTLING", "HIMIG_RECORD_HISTORIES",
                     "HIMIG_PRIVATE_NETNS"):
            clean_env.setenv(name, "1")
        assert load_settings().task_queue == "dicom-migration"

    @pytest.mark.parametrize("var", ["HIMIG_FINGERPRINT_KEY", "HIMIG_DATA_ACCESS_ROLE_ARN"])
    def test_the_worker_requires_what_has_no_production_default(self, clean_env: pytest.MonkeyPatch,
                                                                var: str) -> None:
        clean_env.delenv(var)
        with pytest.raises(InvalidSettings) as caught:
            load_settings()
        [problem] = caught.value.problems
        assert problem.startswith(f"{var}: required by the worker")
        assert load_settings(for_worker=False).task_queue == "dicom-migration"  # the CLI needs neither

    @pytest.mark.parametrize("var", ["HIMIG_DATA_ACCESS_ROLE_ARN", "HIMIG_HEALTHLAKE_KMS_KEY_ID"])
    def test_a_malformed_arn_is_named_without_echoing_it(self, clean_env: pytest.MonkeyPatch, var: str) -> None:
        clean_env.setenv(var, "arn:aws:iam::canary-account:role/x")
        with pytest.raises(InvalidSettings) as caught:
            load_settings()
        [problem] = caught.value.problems
        assert problem.startswith(f"{var}: must be ") and "canary" not in str(caught.value)

    def test_no_placeholder_arn_is_a_default(self, clean_env: pytest.MonkeyPatch) -> None:
        for name in TEST_ENV:
            clean_env.delenv(name)
        settings = Settings()  # built directly: no required-field check, only the defaults
        for name in ("data_access_role_arn", "healthlake_data_access_role_arn", "healthlake_kms_key_id",
                     "fingerprint_key"):
            assert getattr(settings, name) is None, name
        assert "000000000000" not in settings_table()

    @pytest.mark.parametrize("value", [
        "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "arn:aws:kms:us-east-1:123456789012:alias/himig", "1234abcd-12ab-34cd-56ef-1234567890ab",
        "mrk-1234abcd12ab34cd56ef1234567890ab", "alias/himig-fhir"])
    def test_every_kms_key_form_is_accepted(self, clean_env: pytest.MonkeyPatch, value: str) -> None:
        clean_env.setenv("HIMIG_HEALTHLAKE_KMS_KEY_ID", value)
        assert load_settings().healthlake_kms_key_id == value

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


class TestDimseMoveSettings:
    def test_the_receiver_is_configured_by_title_and_port_together(self, clean_env: pytest.MonkeyPatch) -> None:
        clean_env.setenv("HIMIG_DIMSE_MOVE_AE_TITLE", "HIMIG-W1")
        clean_env.setenv("HIMIG_DIMSE_MOVE_PORT", "11112")
        settings = load_settings()
        assert (settings.dimse_move_ae_title, settings.dimse_move_port, settings.dimse_move_host) == (
            "HIMIG-W1", 11112, "127.0.0.1")

    def test_blank_is_unset(self, clean_env: pytest.MonkeyPatch) -> None:
        clean_env.setenv("HIMIG_DIMSE_MOVE_AE_TITLE", " ")
        clean_env.setenv("HIMIG_DIMSE_MOVE_PORT", "")
        assert load_settings().dimse_move_ae_title is None

    @pytest.mark.parametrize(("env", "needle"), [
        ({"HIMIG_DIMSE_MOVE_AE_TITLE": "HIMIG"}, "HIMIG_DIMSE_MOVE_AE_TITLE and HIMIG_DIMSE_MOVE_PORT are set together"),
        ({"HIMIG_DIMSE_MOVE_PORT": "11112"}, "are set together"),
        ({"HIMIG_DIMSE_MOVE_AE_TITLE": "A" * 17, "HIMIG_DIMSE_MOVE_PORT": "104"}, "HIMIG_DIMSE_MOVE_AE_TITLE: "),
        ({"HIMIG_DIMSE_MOVE_AE_TITLE": "BAD\\AE", "HIMIG_DIMSE_MOVE_PORT": "104"}, "HIMIG_DIMSE_MOVE_AE_TITLE: "),
        ({"HIMIG_DIMSE_MOVE_AE_TITLE": "HIMIG", "HIMIG_DIMSE_MOVE_PORT": "0"}, "HIMIG_DIMSE_MOVE_PORT: "),
        ({"HIMIG_DIMSE_MOVE_AE_TITLE": "HIMIG", "HIMIG_DIMSE_MOVE_PORT": "104x"}, "HIMIG_DIMSE_MOVE_PORT: "),
        ({"HIMIG_DIMSE_MOVE_HOST": "pacs.example"}, "HIMIG_DIMSE_MOVE_HOST: "),
        ({"HIMIG_DIMSE_RETRIEVALS_PER_SOURCE": "0"}, "HIMIG_DIMSE_RETRIEVALS_PER_SOURCE: "),
    ])
    def test_bad_values_name_the_variable(self, clean_env: pytest.MonkeyPatch, env: dict[str, str],
                                          needle: str) -> None:
        for key, value in env.items():
            clean_env.setenv(key, value)
        with pytest.raises(InvalidSettings) as caught:
            load_settings()
        assert any(needle in problem for problem in caught.value.problems), caught.value.problems


class TestReadmeTable:
    def test_the_readme_table_is_the_models(self) -> None:
        text = README.read_text()
        assert TABLE_BEGIN in text and TABLE_END in text, "README.md lost its settings-table markers"
        block = text.split(TABLE_BEGIN, 1)[1].split(TABLE_END, 1)[0].strip("\n") + "\n"
        assert block == settings_table(), (
            "README.md's settings table differs from worker/settings.py; regenerate it with "
            "`.venv/bin/python -m worker.settings --readme README.md`")

    def test_every_field_has_a_description(self) -> None:
        from worker.settings import CodecServerSettings, IngestSettings, JobEventSettings

        for model in (Settings, IngestSettings, JobEventSettings, CodecServerSettings):
            missing = [name for name, field in model.model_fields.items() if not field.description]
            assert not missing, f"{model.__name__} fields without a description: {missing}"


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

    def test_worker_without_a_fingerprint_key_exits_2_naming_it(self, clean_env: pytest.MonkeyPatch,
                                                                listening_port: tuple[socket.socket, int]) -> None:
        server, port = listening_port
        env = {k: v for k, v in os.environ.items() if k != "HIMIG_FINGERPRINT_KEY"}
        env["HIMIG_TEMPORAL_ADDRESS"] = f"127.0.0.1:{port}"
        done = subprocess.run([sys.executable, "-m", "worker"], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "HIMIG_FINGERPRINT_KEY: required by the worker" in done.stderr
        assert "Traceback" not in done.stderr and _accepted(server) == 0


class TestOidcClients:
    """HIMIG_DICOMWEB_OIDC_* (the PACS) and HIMIG_HEALTHIMAGING_OIDC_* (HealthImaging's DICOMweb)."""

    @pytest.mark.parametrize("prefix", ["HIMIG_DICOMWEB_OIDC", "HIMIG_HEALTHIMAGING_OIDC"])
    def test_a_partial_client_names_what_is_missing(self, clean_env: pytest.MonkeyPatch, prefix: str) -> None:
        clean_env.setenv(f"{prefix}_TOKEN_URL", "https://login.example.org/token")
        clean_env.setenv(f"{prefix}_CLIENT_SECRET", "top-secret-value")
        with pytest.raises(InvalidSettings) as info:
            load_settings()
        [line] = [p for p in info.value.problems if "OIDC" in p]
        assert line.startswith(f"{prefix}_CLIENT_ID: required with {prefix}_TOKEN_URL, {prefix}_CLIENT_SECRET")
        assert "top-secret-value" not in str(info.value)

    @pytest.mark.parametrize("url", ["ftp://login/token", "https://user:pw@login/token", "login/token",
                                     "https://login:99999/token"])
    def test_a_bad_token_url_is_named(self, clean_env: pytest.MonkeyPatch, url: str) -> None:
        clean_env.setenv("HIMIG_DICOMWEB_OIDC_TOKEN_URL", url)
        clean_env.setenv("HIMIG_DICOMWEB_OIDC_CLIENT_ID", "worker")
        clean_env.setenv("HIMIG_DICOMWEB_OIDC_CLIENT_SECRET", "s")
        with pytest.raises(InvalidSettings) as info:
            load_settings()
        assert any(p.startswith("HIMIG_DICOMWEB_OIDC_TOKEN_URL: must be an http(s):// URL")
                   for p in info.value.problems)

    def test_healthimaging_dicomweb_uses_oidc_when_configured_else_sigv4(self, clean_env: pytest.MonkeyPatch) -> None:
        from activities.bearer_http import BearerHttp
        from activities.signed_http import SignedHttp
        from worker.aws import AwsClients
        from worker.registry import healthimaging_dicomweb, token_source

        settings = load_settings()
        from botocore.credentials import Credentials

        clients = AwsClients(s3=None, medical_imaging=None, events=None, credentials=Credentials("k", "s"))
        assert isinstance(healthimaging_dicomweb(clients, settings), SignedHttp)
        assert token_source(settings, "dicomweb_oidc") is None
        clean_env.setenv("HIMIG_HEALTHIMAGING_OIDC_TOKEN_URL", "https://login.example.org/token")
        clean_env.setenv("HIMIG_HEALTHIMAGING_OIDC_CLIENT_ID", "worker")
        clean_env.setenv("HIMIG_HEALTHIMAGING_OIDC_CLIENT_SECRET", "top-secret-value")
        settings = load_settings()
        assert isinstance(healthimaging_dicomweb(clients, settings), BearerHttp)
        source = token_source(settings, "healthimaging_oidc")
        assert source is not None and "top-secret-value" not in repr(source) + repr(settings)
