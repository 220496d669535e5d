"""The parse + validate policy against every file of the sample corpus, whose manifest says what to expect."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from activities.dicom_header import parse_header
from activities.validate import rejects
from contracts.pipeline import ValidationLevel
from corpus.models import CorpusManifest, Expected
from corpus.sample import build_sample_corpus

# Defects a header-only read cannot see: they need the file's tail (issue: parse in depth).
HEADER_BLIND = {"trailing_garbage", "wrong_meta_group_length"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CorpusManifest]:
    dest = tmp_path_factory.mktemp("sample")
    return dest, build_sample_corpus(dest)


def verdict(data: bytes, level: ValidationLevel) -> tuple[bool, list[str]]:
    buf = data[:65536]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while True:
            result = parse_header(buf, len(data))
            if result.need_bytes and len(buf) < len(data):
                buf = data[: result.need_bytes]
                continue
            break
    codes = [f.code for f in result.findings]
    return (not result.readable or any(rejects(c, level) for c in codes)), codes


def test_structure_only_rejects_exactly_the_files_the_corpus_marks_reject(corpus: tuple[Path, CorpusManifest]) -> None:
    dest, manifest = corpus
    wrong = []
    for entry in manifest.entries:
        if entry.defect in HEADER_BLIND:
            continue
        rejected, codes = verdict((dest / entry.path).read_bytes(), ValidationLevel.STRUCTURE_ONLY)
        if rejected != (entry.expected is Expected.REJECT):
            wrong.append(f"{entry.path} expected {entry.expected.value}, findings {codes}")
    assert not wrong, "\n".join(wrong)


def test_strict_also_catches_what_the_service_would_fail(corpus: tuple[Path, CorpusManifest]) -> None:
    dest, manifest = corpus
    for entry in manifest.entries:
        if entry.expected is Expected.SERVICE_FAILURE:
            rejected, codes = verdict((dest / entry.path).read_bytes(), ValidationLevel.STRICT)
            assert rejected and "length_limit" in codes, entry.path
            assert not verdict((dest / entry.path).read_bytes(), ValidationLevel.STRUCTURE_ONLY)[0]


def test_minimal_rejects_only_what_cannot_be_sent(corpus: tuple[Path, CorpusManifest]) -> None:
    dest, manifest = corpus
    by_defect = {e.defect: e for e in manifest.entries if e.defect}
    assert verdict((dest / by_defect["missing_series_instance_uid"].path).read_bytes(), ValidationLevel.MINIMAL)[0] is False
    assert verdict((dest / by_defect["zero_byte"].path).read_bytes(), ValidationLevel.MINIMAL)[0] is True
    assert verdict((dest / by_defect["dicomdir"].path).read_bytes(), ValidationLevel.MINIMAL)[0] is True
