from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from corpus.cli import Modality, corpus_app
from corpus.models import load_manifest
from corpus.synthetic import SOP_CLASSES

# Wide terminal so rich does not wrap the error box in the middle of the text we look for.
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(corpus_app, ["generate", *args])
    return result.exit_code, result.output


def test_sample_summary(tmp_path: Path) -> None:
    code, out = invoke(str(tmp_path / "c"))
    assert code == 0, out
    manifest = load_manifest(tmp_path / "c")
    assert manifest.kind == "sample"
    assert f"{len(manifest.entries)} files, {manifest.total_bytes:,} bytes" in out
    assert "malformed" in out and "service_failure" in out and "non_primary" in out


def test_synthetic_flags(tmp_path: Path) -> None:
    code, out = invoke(str(tmp_path / "s"), "--kind", "synthetic", "--patients", "2", "--studies", "1",
                       "--series", "3", "--instances", "2", "--rows", "16", "--cols", "32", "--modality", "MR",
                       "--seed", "9")
    assert code == 0, out
    manifest = load_manifest(tmp_path / "s")
    assert (manifest.kind, manifest.seed, len(manifest.entries)) == ("synthetic", 9, 12)
    assert {e.sop_class_uid for e in manifest.entries} == {SOP_CLASSES["MR"]}


def test_malformed_kind(tmp_path: Path) -> None:
    code, out = invoke(str(tmp_path / "m"), "--kind", "malformed")
    assert code == 0, out
    assert load_manifest(tmp_path / "m").counts_by_expected()["reject"] > 20


@pytest.mark.parametrize(("args", "flag", "text"), [
    (["--kind", "synthetic", "--patients", "-1"], "--patients", "greater than or equal to 1"),
    (["--kind", "synthetic", "--instances", "0"], "--instances", "greater than or equal to 1"),
    (["--kind", "synthetic", "--rows", "5000"], "--rows", "less than or equal to 4096"),
    (["--kind", "bogus"], "--kind", "bogus"),
    (["--kind", "synthetic", "--modality", "XA"], "--modality", "XA"),
    (["--seed", "-3"], "--seed", "greater than or equal to 0"),
    (["--patients", "3"], "--patients", "only valid with --kind synthetic"),
])
def test_bad_flags_name_the_flag(tmp_path: Path, args: list[str], flag: str, text: str) -> None:
    code, out = invoke(str(tmp_path / "x"), *args)
    assert code == 2
    assert f"Invalid value for '{flag}'" in out and text in out
    assert not (tmp_path / "x").exists()  # nothing written on a usage error


def test_dest_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("x")
    code, out = invoke(str(target))
    assert code == 2 and "Invalid value for 'DEST'" in out and "not a directory" in out


def test_non_empty_dest_needs_force(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("user data")
    code, out = invoke(str(tmp_path), "--kind", "malformed")
    assert code == 2 and "Invalid value for 'DEST'" in out and "--force" in out
    code, out = invoke(str(tmp_path), "--kind", "malformed", "--force")
    assert code == 0, out
    assert (tmp_path / "keep.txt").read_text() == "user data"


def test_modality_choices_follow_generator() -> None:
    assert {m.value for m in Modality} == set(SOP_CLASSES)
