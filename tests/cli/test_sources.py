"""`himig start` connector flags: mirrored into `source_connector`, with errors naming the flag or field."""

from __future__ import annotations

import os
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.app import app
from cli.sources import SourceFlagError, connector_from_flags

GOOD = ["--source", "s3://land/in/", "--datastore-id", "a" * 32, "--work", "s3://work-bucket/w/"]


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("HIMIG_TEMPORAL_ADDRESS", "127.0.0.1:1")  # nothing listens: a start would fail visibly
    return CliRunner()


def _flat(result: Any) -> str:
    return " ".join(result.output.split())


def test_flags_build_the_connector_json(tmp_path: Any) -> None:
    assert connector_from_flags(None, None, None, None, None, None) is None
    assert connector_from_flags(str(tmp_path), None, None, None, None, None) == {"kind": "local", "path": str(tmp_path)}
    assert connector_from_flags("rel", None, None, None, None, None) == {"kind": "local", "path": os.path.abspath("rel")}
    assert connector_from_flags(None, "http://pacs/dw", None, None, None, ["1.2"]) == {
        "kind": "dicomweb", "url": "http://pacs/dw", "study_uids": ["1.2"]}
    assert connector_from_flags(None, None, "pacs:104", "PACS", None, None) == {
        "kind": "dimse", "host": "pacs", "port": 104, "called_ae": "PACS", "calling_ae": "HIMIG"}


@pytest.mark.parametrize(("args", "needle"), [
    (["--source-dir", "/a", "--source-dicomweb", "http://p/dw"], "--source-dir and --source-dicomweb: give at most one"),
    (["--source-dimse", "pacs"], "--source-dimse: expected HOST:PORT"),
    (["--source-dimse", "pacs:x"], "--source-dimse: expected HOST:PORT"),
    (["--source-dimse", "pacs:104"], "--called-ae: required with --source-dimse"),
    (["--called-ae", "PACS"], "--called-ae/--calling-ae: only with --source-dimse"),
    (["--study-uid", "1.2"], "--study-uid: only with --source-dicomweb or --source-dimse"),
])
def test_flag_errors_name_the_flag(args: list[str], needle: str) -> None:
    with pytest.raises(SourceFlagError, match=needle):
        connector_from_flags(**_kwargs(args))


def _kwargs(args: list[str]) -> dict[str, Any]:
    names = {"--source-dir": "source_dir", "--source-dicomweb": "dicomweb", "--source-dimse": "dimse",
             "--called-ae": "called_ae", "--calling-ae": "calling_ae", "--study-uid": "study_uids"}
    out: dict[str, Any] = dict.fromkeys(names.values())
    for flag, value in zip(args[::2], args[1::2], strict=True):
        out[names[flag]] = [value] if flag == "--study-uid" else value
    return out


@pytest.mark.parametrize(("args", "needle"), [
    (["--source-dicomweb", "file:///etc/passwd"], "source_connector.dicomweb.url: Value error, must be an http"),
    (["--source-dimse", "pacs:70000", "--called-ae", "PACS"], "source_connector.dimse.port"),
    (["--source-dimse", "pacs:104", "--called-ae", "A" * 17], "source_connector.dimse.called_ae"),
    (["--source-dicomweb", "http://p/dw", "--study-uid", "1.02"], "source_connector.dicomweb.study_uids"),
    (["--source-dir", "/a", "--source-dimse", "p:1"], "give at most one source connector"),
])
def test_start_refuses_bad_connector_flags_before_sending(runner: CliRunner, args: list[str], needle: str) -> None:
    result = runner.invoke(app, ["start", *GOOD, *args])
    assert result.exit_code == 2, result.output
    assert needle in _flat(result)
    assert "cannot reach Temporal" not in _flat(result)


def test_pacs_flags_are_mirrored_for_pacs_sources_only() -> None:
    pacs = {"study_date_from": "2020-01-01", "study_date_to": None, "modalities": ["CT"], "result_cap": 500,
            "retrieve": "move", "parallel": 4}
    assert connector_from_flags(None, None, "pacs:104", "PACS", None, None, pacs) == {
        "kind": "dimse", "host": "pacs", "port": 104, "called_ae": "PACS", "calling_ae": "HIMIG",
        "study_date_from": "2020-01-01", "modalities": ["CT"], "result_cap": 500, "retrieve": "move", "parallel": 4}
    with pytest.raises(SourceFlagError, match="--retrieve, --parallel: only with --source-dimse"):
        connector_from_flags(None, "http://pacs/dw", None, None, None, None, pacs)
    with pytest.raises(SourceFlagError, match="--modality: only with --source-dicomweb or --source-dimse"):
        connector_from_flags("/data", None, None, None, None, None, {"modalities": ["CT"]})


@pytest.mark.parametrize(("args", "needle"), [
    (["--retrieve", "MOVE"], "source_connector.dimse.retrieve: Input should be 'get' or 'move'"),
    (["--study-date-from", "2020-02-30"], "source_connector.dimse.study_date_from: Value error, is not a calendar date"),
    (["--modality", "ct"], "source_connector.dimse.modalities.0: String should match pattern"),
    (["--result-cap", "0"], "source_connector.dimse.result_cap: Input should be greater than or equal to 1"),
    (["--parallel", "99"], "source_connector.dimse.parallel: Input should be less than or equal to 32"),
])
def test_bad_pacs_flags_are_refused_naming_the_field(runner: CliRunner, args: list[str], needle: str) -> None:
    result = runner.invoke(app, ["start", *GOOD, "--source-dimse", "pacs:104", "--called-ae", "PACS", *args])
    assert result.exit_code == 2, result.output
    assert needle in _flat(result)


def test_good_connector_flags_reach_temporal(runner: CliRunner) -> None:
    result = runner.invoke(app, ["start", *GOOD, "--source-dimse", "127.0.0.1:104", "--called-ae", "PACS",
                                 "--study-uid", "1.2.3", "--id", "m-cli-src"])
    assert result.exit_code == 1 and "cannot reach Temporal" in _flat(result)
