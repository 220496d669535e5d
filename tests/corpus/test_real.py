from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

import pytest
from pydicom import dcmread

import corpus.real as real
from corpus.models import Expected, Origin
from corpus.real import CURATED, check_real_file, locate, select_real_files

needs_pydicom_data = pytest.mark.skipif(importlib.util.find_spec("data_store") is None,
                                        reason="pydicom-data (the 'local' extra) is not installed")


@needs_pydicom_data
def test_curated_selection(tmp_path: Path) -> None:
    entries = select_real_files(tmp_path)
    assert [e.source for e in entries] == [f.name for f in CURATED]  # every curated file passes its checks
    assert {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()} == {
        e.path for e in entries}
    assert sum(e.size for e in entries) < 15 * 2**20
    modalities, syntaxes = set(), set()
    for e in entries:
        assert e.origin is Origin.REAL and e.expected is Expected.VALID and e.path == f"real/{e.source}"
        ds = dcmread(tmp_path / e.path)  # full read
        assert "PixelData" in ds
        assert (e.sop_instance_uid, e.study_instance_uid, e.series_instance_uid, e.transfer_syntax_uid) == (
            ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.file_meta.TransferSyntaxUID)
        modalities.add(ds.Modality)
        syntaxes.add(ds.file_meta.TransferSyntaxUID)
        src = locate(e.source or "")
        assert src is not None and src.read_bytes() == (tmp_path / e.path).read_bytes()  # copied unchanged
    assert len({e.sop_instance_uid for e in entries}) == len(entries)
    assert modalities >= {"CT", "MR", "NM", "US", "CR", "OT"}
    assert len(syntaxes) >= 8


def test_missing_file_is_skipped_with_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    original = real.locate
    monkeypatch.setattr(real, "locate", lambda name: None if name == "MR_small.dcm" else original(name))
    with caplog.at_level(logging.WARNING, logger="corpus.real"):
        entries = select_real_files(tmp_path, names=["MR_small.dcm", "CT_small.dcm"])
    assert [e.source for e in entries] == ["CT_small.dcm"]
    assert "skipping MR_small.dcm: not installed" in caplog.text


def test_unknown_name_is_skipped_without_download(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="corpus.real"):
        assert select_real_files(tmp_path, names=["no_such_file_anywhere.dcm"]) == []
    assert "not installed" in caplog.text


@pytest.mark.parametrize(("name", "reason"), [
    ("rtdose.dcm", "MediaStorageSOPInstanceUID differs"),  # meta/dataset SOP UID mismatch upstream
    ("no_meta.dcm", "does not parse"),
    ("JPEGLSNearLossless_16.dcm", "no StudyInstanceUID"),
])
def test_unclean_files_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str,
                                   reason: str) -> None:
    with caplog.at_level(logging.WARNING, logger="corpus.real"):
        assert select_real_files(tmp_path, names=[name]) == []
    assert reason in caplog.text


def test_repeated_identity_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # MR_small_RLE.dcm is MR_small.dcm's SOP Instance in another encoding: a divergent duplicate.
    with caplog.at_level(logging.WARNING, logger="corpus.real"):
        entries = select_real_files(tmp_path, names=["MR_small.dcm", "MR_small_RLE.dcm"])
    assert [e.source for e in entries] == ["MR_small.dcm"]
    assert "SOP Instance UID already selected" in caplog.text


def test_check_catches_truncated_copy(tmp_path: Path) -> None:
    src = locate("CT_small.dcm")
    assert src is not None
    broken = tmp_path / "ct.dcm"
    shutil.copyfile(src, broken)
    ds, problem = check_real_file(broken)
    assert ds is not None and problem is None
    broken.write_bytes(src.read_bytes()[:100])
    ds, problem = check_real_file(broken)
    assert ds is None and problem and "does not parse" in problem
