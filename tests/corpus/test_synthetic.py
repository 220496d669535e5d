from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
)

from contracts.sources import is_uid
from corpus.models import CorpusEntry, Expected, Origin
from corpus.synthetic import (
    SUPPORTED_TRANSFER_SYNTAXES,
    ImageProfile,
    InstanceFactory,
    InstanceKey,
    encode_dataset,
    generate_studies,
    synth_uid,
)

UID_RE = re.compile(r"(?:[1-9][0-9]*|0)(?:\.(?:[1-9][0-9]*|0))*")
SHAPE = {"patients": 3, "studies_per_patient": 2, "series_per_study": 2, "instances_per_series": 4}


def gen(dest: Path, **kwargs: Any) -> list[CorpusEntry]:
    """generate_studies with the SHAPE counts unless overridden."""
    return generate_studies(dest, **{**SHAPE, **kwargs})


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    a = gen(tmp_path / "a", seed=7)
    b = gen(tmp_path / "b", seed=7)
    assert [(e.path, e.sha256) for e in a] == [(e.path, e.sha256) for e in b]
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_different_seed_gives_different_identities(tmp_path: Path) -> None:
    a = gen(tmp_path / "a", seed=1)
    b = gen(tmp_path / "b", seed=2)
    for field in ("sop_instance_uid", "study_instance_uid", "series_instance_uid"):
        assert not {getattr(e, field) for e in a} & {getattr(e, field) for e in b}, field
    pid_a = {str(dcmread(tmp_path / "a" / e.path, stop_before_pixels=True).PatientID) for e in a}
    pid_b = {str(dcmread(tmp_path / "b" / e.path, stop_before_pixels=True).PatientID) for e in b}
    assert not pid_a & pid_b


def test_profile_is_part_of_identity(tmp_path: Path) -> None:
    """Same seed, other image size: no SOP Instance UID may be reused for different content."""
    a = gen(tmp_path / "a", seed=0)
    b = gen(tmp_path / "b", seed=0, rows=32, cols=32)
    assert not {e.sop_instance_uid for e in a} & {e.sop_instance_uid for e in b}


def test_uid_parts_do_not_run_together() -> None:
    """generate_uid concatenates its entropy sources: the parts must stay apart (patient 10, slice 0 is not
    patient 1, slice 10)."""
    assert synth_uid(1, 10) != synth_uid(11, 0)
    assert synth_uid("instance", 10, 0, 1, 0) != synth_uid("instance", 1, 0, 10, 0)
    assert synth_uid("a", "b") == synth_uid("a", "b")


_PART = st.one_of(st.integers(min_value=0, max_value=10**6),
                  st.text(st.characters(blacklist_characters="\x1f", blacklist_categories=("Cs",)), max_size=12))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_PART, _PART, _PART), min_size=2, max_size=40, unique=True))
def test_generated_uids_are_unique_and_valid(keys: list[tuple[object, object, object]]) -> None:
    """Distinct parts, distinct UIDs; every one a valid DICOM UID (digits and dots, no leading zeros, <= 64)."""
    uids = [synth_uid(*key) for key in keys]
    assert len({str(u) for u in uids}) == len({tuple(map(str, k)) for k in keys})
    for u in uids:
        assert is_uid(str(u)), u


def test_a_part_holding_the_separator_is_refused() -> None:
    with pytest.raises(ValueError, match="separator"):
        synth_uid("a\x1fb")


def test_identities_stay_unique_past_ten_of_anything(tmp_path: Path) -> None:
    entries = generate_studies(tmp_path, patients=11, studies_per_patient=2, series_per_study=11,
                               instances_per_series=11, rows=8, cols=8)
    assert len(entries) == 11 * 2 * 11 * 11
    assert len({e.sop_instance_uid for e in entries}) == len(entries)
    assert len({e.series_instance_uid for e in entries}) == 11 * 2 * 11
    assert len({e.study_instance_uid for e in entries}) == 11 * 2


def test_hierarchy_parses_and_matches_manifest(tmp_path: Path) -> None:
    entries = gen(tmp_path, seed=3)
    total = 3 * 2 * 2 * 4
    assert len(entries) == total
    assert {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.dcm")} == {e.path for e in entries}
    series_of_study: dict[str, set[str]] = defaultdict(set)
    instances_of_series: dict[str, set[int]] = defaultdict(set)
    patient_of_study: dict[str, set[tuple[str, str, str, str]]] = defaultdict(set)
    studies_of_patient: dict[str, set[str]] = defaultdict(set)
    sops = set()
    for e in entries:
        assert e.origin is Origin.SYNTHETIC and e.expected is Expected.VALID
        ds = dcmread(tmp_path / e.path)  # full read, pixel data included
        assert ds.preamble == b"\0" * 128
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPClassUID == CTImageStorage
        assert (e.sop_instance_uid, e.study_instance_uid, e.series_instance_uid) == (
            ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID)
        for uid in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID):
            assert len(uid) <= 64 and UID_RE.fullmatch(uid)
        assert len(ds.PixelData) == ds.Rows * ds.Columns * 2 == 64 * 64 * 2
        assert str(ds.PatientName).startswith("SYNTH^") and str(ds.PatientID).startswith("SYNTH-")
        assert len(ds.StudyID) <= 16 and len(ds.AccessionNumber) <= 16
        # Paths carry opaque indices only, and the indices agree with the header.
        match = re.fullmatch(r"p\d{4}/st\d{3}/se(\d{3})/(\d{5})\.dcm", e.path)
        assert match
        se, n = match.groups()
        assert int(n) == ds.InstanceNumber and int(se) == ds.SeriesNumber
        assert ds.ImagePositionPatient[2] == pytest.approx(-100 + 2.5 * (int(n) - 1))
        sops.add(ds.SOPInstanceUID)
        series_of_study[ds.StudyInstanceUID].add(ds.SeriesInstanceUID)
        instances_of_series[ds.SeriesInstanceUID].add(int(ds.InstanceNumber))
        patient_of_study[ds.StudyInstanceUID].add(
            (ds.PatientID, str(ds.PatientName), ds.PatientBirthDate, ds.PatientSex))
        studies_of_patient[ds.PatientID].add(ds.StudyInstanceUID)
    assert len(sops) == total
    assert len(studies_of_patient) == 3 and all(len(s) == 2 for s in studies_of_patient.values())
    assert len(series_of_study) == 6 and all(len(s) == 2 for s in series_of_study.values())
    assert all(v == {1, 2, 3, 4} for v in instances_of_series.values())
    # One set of patient values per study: nothing here should make a non-primary image set.
    assert all(len(v) == 1 for v in patient_of_study.values())


@pytest.mark.parametrize("ts", SUPPORTED_TRANSFER_SYNTAXES)
@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_fast_encoder_matches_dcmwrite(ts: str, modality: str) -> None:
    """InstanceFactory caches encoded static elements; any per-instance element missed there shows up here."""
    factory = InstanceFactory(ImageProfile(transfer_syntax=ts, modality=modality), seed=5)
    keys = [InstanceKey(0, 0, 0, 0), InstanceKey(2, 1, 3, 17), InstanceKey(11, 0, 1, 2)]
    encoded = [factory.encode(k) for k in keys]
    assert encoded == [encode_dataset(factory.dataset(k)) for k in keys]
    assert len(set(encoded)) == len(keys)


@pytest.mark.parametrize("ts", SUPPORTED_TRANSFER_SYNTAXES)
def test_transfer_syntaxes_round_trip(tmp_path: Path, ts: str) -> None:
    entries = generate_studies(tmp_path, patients=1, studies_per_patient=1, series_per_study=1,
                               instances_per_series=2, modality="MR", transfer_syntax=ts)
    for e in entries:
        ds = dcmread(tmp_path / e.path)
        assert ds.file_meta.TransferSyntaxUID == ts == e.transfer_syntax_uid
        assert ds.SOPClassUID == MRImageStorage and ds.Rows == 64
        assert len(ds.PixelData) == 64 * 64 * 2
    raw = (tmp_path / entries[0].path).read_bytes()
    if ts == DeflatedExplicitVRLittleEndian:
        assert b"SYNTH^PATIENT" not in raw  # the dataset really is compressed
    if ts == ImplicitVRLittleEndian:
        assert b"PN" not in raw[raw.index(b"SYNTH^PATIENT") - 4:raw.index(b"SYNTH^PATIENT")]
    if ts == ExplicitVRBigEndian:
        assert b"\x00\x10\x00\x10PN" in raw  # (0010,0010) PN with big-endian tag bytes


def test_large_images_for_benchmarks(tmp_path: Path) -> None:
    entries = generate_studies(tmp_path, patients=1, studies_per_patient=1, series_per_study=1,
                               instances_per_series=3, rows=512, cols=512)
    for e in entries:
        assert 512 * 512 * 2 < e.size < 512 * 512 * 2 + 4096
        ds = dcmread(tmp_path / e.path)
        assert (ds.Rows, ds.Columns) == (512, 512)


def test_a_large_corpus_has_every_file_once_in_its_hierarchy(tmp_path: Path) -> None:
    """2,000 files: one entry and one file each, in the requested hierarchy. (Generation speed is measured by
    bench/corpus_generation.py, never asserted here.)"""
    entries = generate_studies(tmp_path, patients=4, studies_per_patient=5, series_per_study=2,
                               instances_per_series=50)
    assert len(entries) == 2000
    assert len({e.path for e in entries}) == 2000
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) \
        == sorted(e.path for e in entries)
    assert len({e.study_instance_uid for e in entries}) == 4 * 5
    assert len({e.series_instance_uid for e in entries}) == 4 * 5 * 2
    assert len({e.sop_instance_uid for e in entries}) == 2000


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"patients": 0}, "patients must be >= 1"),
    ({"instances_per_series": -1}, "instances_per_series must be >= 1"),
    ({"modality": "XA"}, "modality must be one of"),
    ({"transfer_syntax": JPEG2000Lossless}, "not supported"),
    ({"rows": 0}, "rows and cols"),
])
def test_bad_arguments_are_rejected(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gen(tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())
