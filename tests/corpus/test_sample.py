from __future__ import annotations

import hashlib
import importlib.util
from collections import defaultdict
from pathlib import Path

import pytest
from pydicom import dcmread

from corpus.malformed import DEFECTS
from corpus.models import MANIFEST_NAME, CorpusManifest, Expected, Origin, load_manifest
from corpus.sample import build_sample_corpus

IDENTIFIABLE = {Expected.VALID, Expected.SERVICE_FAILURE, Expected.NON_PRIMARY, Expected.DUPLICATE, Expected.CONFLICT}


def _walk(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST_NAME}


def test_manifest_accounts_for_every_file_once(sample_dir: Path, sample_manifest: CorpusManifest) -> None:
    files = _walk(sample_dir)
    paths = [e.path for e in sample_manifest.entries]
    assert len(paths) == len(set(paths))
    assert set(paths) == set(files)
    assert paths == sorted(paths)
    for e in sample_manifest.entries:
        data = files[e.path]
        assert e.size == len(data) and e.sha256 == hashlib.sha256(data).hexdigest()


def test_composition_and_budget(sample_manifest: CorpusManifest) -> None:
    counts = sample_manifest.counts_by_origin()
    assert counts["synthetic"] == 2 * 2 * 2 * 3
    assert counts["malformed"] == len(DEFECTS)
    assert counts["nonprimary"] == 2 and counts["duplicate"] == 1 and counts["identity"] == 7
    if importlib.util.find_spec("data_store") is not None:
        assert counts["real"] >= 5
    assert len(sample_manifest.entries) <= 150  # every defect kind (>= 80) is in the sample
    assert sample_manifest.total_bytes < 20 * 2**20
    assert set(sample_manifest.counts_by_expected()) == {e.value for e in Expected}


def test_deterministic(tmp_path: Path, sample_dir: Path) -> None:
    again = tmp_path / "again"
    build_sample_corpus(again, seed=0)
    assert (again / MANIFEST_NAME).read_bytes() == (sample_dir / MANIFEST_NAME).read_bytes()
    assert _walk(again) == _walk(sample_dir)


def test_other_seed_changes_generated_identities(tmp_path: Path, sample_manifest: CorpusManifest) -> None:
    other = build_sample_corpus(tmp_path / "seed1", seed=1)
    generated = {Origin.SYNTHETIC, Origin.NONPRIMARY, Origin.DUPLICATE, Origin.MALFORMED, Origin.IDENTITY}

    def sops(m: CorpusManifest) -> set[str]:
        return {e.sop_instance_uid for e in m.entries if e.origin in generated and e.sop_instance_uid}

    assert sops(other) and not sops(other) & sops(sample_manifest)
    real = {e.path: e.sha256 for e in sample_manifest.entries if e.origin is Origin.REAL}
    assert real == {e.path: e.sha256 for e in other.entries if e.origin is Origin.REAL}


def test_identifiable_files_parse_and_match(sample_dir: Path, sample_manifest: CorpusManifest) -> None:
    for e in sample_manifest.entries:
        if e.expected not in IDENTIFIABLE:
            assert e.sop_instance_uid is None
            continue
        ds = dcmread(sample_dir / e.path)  # full read
        assert (e.sop_instance_uid, e.study_instance_uid, e.series_instance_uid) == (
            ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID), e.path


def test_nonprimary_pair(sample_dir: Path, sample_manifest: CorpusManifest) -> None:
    pair = [e for e in sample_manifest.entries if e.origin is Origin.NONPRIMARY]
    assert [e.path for e in pair] == ["nonprimary/a_original.dcm", "nonprimary/b_conflict.dcm"]
    a, b = (dcmread(sample_dir / e.path) for e in pair)
    assert a.StudyInstanceUID == b.StudyInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert a.PatientID != b.PatientID and str(a.PatientName) != str(b.PatientName)
    assert [e.expected for e in pair] == [Expected.VALID, Expected.NON_PRIMARY]
    assert pair[1].related_to == pair[0].path


def test_duplicate_is_identical_copy(sample_dir: Path, sample_manifest: CorpusManifest) -> None:
    (dup,) = [e for e in sample_manifest.entries if e.origin is Origin.DUPLICATE]
    original = sample_manifest.by_path()[dup.related_to or ""]
    assert dup.path != original.path and dup.path > original.path  # the copy is listed second
    assert (sample_dir / dup.path).read_bytes() == (sample_dir / original.path).read_bytes()
    assert dup.sop_instance_uid == original.sop_instance_uid and dup.expected is Expected.DUPLICATE


@pytest.mark.filterwarnings("ignore::UserWarning")  # service_failure files hold over-long values on purpose
def test_no_accidental_identity_conflicts(sample_dir: Path, sample_manifest: CorpusManifest) -> None:
    """Only the deliberate pairs may share a SOP Instance UID or disagree on a study's patient."""
    sop_paths: dict[str, list[str]] = defaultdict(list)
    patients: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for e in sample_manifest.entries:
        if e.expected not in IDENTIFIABLE:
            continue
        ds = dcmread(sample_dir / e.path, stop_before_pixels=True)
        sop_paths[str(ds.SOPInstanceUID)].append(e.path)
        if e.expected is not Expected.NON_PRIMARY:
            patients[str(ds.StudyInstanceUID)].add((str(ds.get("PatientID")), str(ds.get("PatientName"))))
    shared = sorted(paths for paths in sop_paths.values() if len(paths) > 1)
    dup = next(e for e in sample_manifest.entries if e.origin is Origin.DUPLICATE)
    identity = [e for e in sample_manifest.entries if e.origin is Origin.IDENTITY]
    assert shared == sorted([[dup.related_to, dup.path], [e.path for e in identity]])
    assert all(e.related_to == identity[0].path for e in identity[1:])
    assert all(len(v) == 1 for v in patients.values())


def test_load_manifest_accepts_file_or_directory(sample_dir: Path, sample_manifest: CorpusManifest) -> None:
    assert load_manifest(sample_dir / MANIFEST_NAME) == sample_manifest
    assert load_manifest(sample_dir) == sample_manifest
    text = (sample_dir / MANIFEST_NAME).read_text()
    with pytest.raises(ValueError, match="sha256"):
        CorpusManifest.model_validate_json(text.replace('"sha256": "', '"sha256": "x', 1))


def test_identity_cases_say_what_is_expected(sample_manifest: CorpusManifest) -> None:
    """Every re-encoding is a duplicate, every real change a conflict that names its attributes."""
    identity = [e for e in sample_manifest.entries if e.origin is Origin.IDENTITY]
    assert identity[0].expected is Expected.VALID and identity[0].related_to is None
    syntaxes = {e.transfer_syntax_uid for e in identity if e.expected is Expected.DUPLICATE}
    assert {"1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.1"} <= syntaxes
    conflicts = {e.path.rsplit("/", 1)[1]: e.differs_in for e in identity if e.expected is Expected.CONFLICT}
    assert conflicts == {"f_conflict_attribute.dcm": ["SeriesDescription"], "g_conflict_pixels.dcm": ["PixelData"]}
    assert all(e.differs_in is None for e in identity if e.expected is not Expected.CONFLICT)
