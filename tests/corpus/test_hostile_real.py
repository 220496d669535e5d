"""Real malformed files from pydicom / pydicom-data get the expected finding and verdict (when installed)."""

from __future__ import annotations

import warnings

import pytest

from activities.dicom_header import parse_header
from activities.validate import rejects
from contracts.pipeline import ValidationLevel
from corpus.hostile_real import HOSTILE_REAL, HostileRealFile, locate_hostile


@pytest.mark.parametrize("spec", HOSTILE_REAL, ids=lambda s: s.name)
def test_real_hostile_file(spec: HostileRealFile) -> None:
    path = locate_hostile(spec.name)
    if path is None:
        pytest.skip(f"{spec.name} is not installed")
    data = path.read_bytes()
    buf = data[:65536]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while True:
            result = parse_header(buf, len(data))
            if result.need_bytes and len(buf) < len(data):
                buf = data[:result.need_bytes]
                continue
            break
    codes = [f.code for f in result.findings]
    if spec.finding:
        assert spec.finding in codes, codes
    rejected = not result.readable or any(rejects(c, ValidationLevel.STRUCTURE_ONLY) for c in codes)
    assert rejected is spec.rejected, codes


def test_the_pydicom_files_are_present() -> None:
    """pydicom itself ships most of them, so this list is really exercised (pydicom-data adds the rest)."""
    present = [s.name for s in HOSTILE_REAL if locate_hostile(s.name)]
    assert len(present) >= 15, present
