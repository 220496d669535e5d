"""Real malformed files from pydicom / pydicom-data get the expected finding and verdict (when installed)."""

from __future__ import annotations

import pytest

from contracts.common import ValidationLevel
from corpus.hostile_real import HOSTILE_REAL, HostileRealFile
from corpus.real import locate
from tests.support.dicom import verdict


@pytest.mark.parametrize("spec", HOSTILE_REAL, ids=lambda s: s.name)
def test_real_hostile_file(spec: HostileRealFile) -> None:
    path = locate(spec.name)
    if path is None:
        pytest.skip(f"{spec.name} is not installed")
    rejected, codes = verdict(path.read_bytes(), ValidationLevel.STRUCTURE_ONLY)
    if spec.finding:
        assert spec.finding in codes, codes
    assert rejected is spec.rejected, codes


def test_the_pydicom_files_are_present() -> None:
    """pydicom itself ships most of them, so this list is really exercised (pydicom-data adds the rest)."""
    present = [s.name for s in HOSTILE_REAL if locate(s.name)]
    assert len(present) >= 15, present
