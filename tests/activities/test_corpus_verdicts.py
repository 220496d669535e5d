"""The parse + validate policy against every file of the sample corpus, whose manifest says what to expect."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from activities.dicom_header import parse_header
from activities.validate import rejects
from contracts.common import ValidationLevel
from corpus.malformed import DEFECTS, build_defect
from corpus.models import CorpusManifest, Expected
from corpus.sample import build_sample_corpus
from tests.support.dicom import verdict


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CorpusManifest]:
    dest = tmp_path_factory.mktemp("sample")
    return dest, build_sample_corpus(dest)


def test_structure_only_rejects_exactly_the_files_the_corpus_marks_reject(corpus: tuple[Path, CorpusManifest]) -> None:
    dest, manifest = corpus
    wrong = []
    for entry in manifest.entries:
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


@pytest.mark.parametrize("code", sorted(DEFECTS))
def test_every_defect_gets_its_finding_and_verdict_at_every_level(code: str) -> None:
    """The parse names each defect with its code, and the verdict at each level follows the policy table."""
    spec = DEFECTS[code]
    data = build_defect(code)
    _, codes = verdict(data, ValidationLevel.STRUCTURE_ONLY)
    if spec.finding is None:
        assert not [c for c in codes if any(rejects(c, level) for level in ValidationLevel)], codes
    else:
        assert spec.finding in codes, (code, codes)
    if spec.also is not None:
        assert spec.also in codes, (code, codes)
    for level in ValidationLevel:
        rejected, level_codes = verdict(data, level)
        assert rejected == spec.rejected_at(level), (code, level, level_codes)
        if level is ValidationLevel.STRUCTURE_ONLY:
            assert rejected == (spec.expected is Expected.REJECT), (code, level_codes)
        if level is ValidationLevel.STRICT and spec.expected is not Expected.VALID:
            assert rejected, (code, level_codes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = parse_header(data, len(data))
    for finding in result.findings:
        assert finding.reason and finding.code and finding.severity  # every finding is named and explained


@pytest.mark.parametrize("code", sorted(DEFECTS))
def test_an_import_that_rejects_padding_changes_only_the_padded_verdicts(code: str) -> None:
    """With HIMIG_IMPORT_REJECTS_TRAILING_PADDING a padded file is named and rejected at every level; every other
    defect keeps its findings and verdicts."""
    spec = DEFECTS[code]
    data = build_defect(code)
    _, lenient = verdict(data, ValidationLevel.STRUCTURE_ONLY)
    _, strict = verdict(data, ValidationLevel.STRUCTURE_ONLY, padding_rejected=True)
    if spec.padding_rejected_finding is None:
        assert strict == lenient, code
    else:
        assert spec.finding in lenient and spec.padding_rejected_finding in strict, (lenient, strict)
        assert [c for c in strict if c != spec.padding_rejected_finding] == \
            [c for c in lenient if c != spec.finding]
    for level in ValidationLevel:
        rejected, level_codes = verdict(data, level, padding_rejected=True)
        assert rejected == spec.rejected_at(level, padding_rejected=True), (code, level, level_codes)
        if spec.padding_rejected_finding is not None:
            assert rejected, (code, level)  # the import would fail it: never sent, at any level
