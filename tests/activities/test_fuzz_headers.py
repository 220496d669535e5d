"""Property-based fuzzing of the header parser and the validator with mutated real headers.

Real files (pydicom's CT_small and MR_small as the pipeline builds them, and an explicit-VR big-endian one) are
mutated in their header region: bytes overwritten, runs deleted or inserted, the buffer cut short or the total
size misreported. Whatever comes in, `parse_header` returns a `HeaderResult` (never raises), asks for more bytes
only beyond what it has, every finding has a known severity and a reason with no input bytes in it, and the
validator decides each finding at every level without raising.
"""

from __future__ import annotations

import warnings

import pydicom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from activities.dicom_header import HeaderResult, check_tail, parse_header
from activities.validate import rejects
from contracts.common import ValidationLevel
from contracts.records import Severity
from tests.support.dicom import make_instance, uid

HEADER_REGION = 2048


def _real_files() -> list[bytes]:
    files = [make_instance(uid(), uid())]
    for name in ("MR_small.dcm", "MR_small_bigendian.dcm", "rtplan.dcm"):
        path = get_testdata_file(name)
        if path:
            with open(path, "rb") as f:
                files.append(f.read())
    return files


REAL = _real_files()


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, int]:
    data = bytearray(draw(st.sampled_from(REAL)))
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["overwrite", "delete", "insert", "cut"]))
        region = min(len(data), HEADER_REGION)
        if region == 0:
            break
        at = draw(st.integers(0, region - 1))
        if kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at:at + len(chunk)] = chunk
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:
            del data[at:]
    total = len(data) + draw(st.sampled_from([0, 0, 0, 1, 4096, -min(len(data), 16)]))
    return bytes(data), max(total, len(data))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), st.integers(128, 70_000))
def test_a_mutated_real_header_never_crashes_the_parser_or_the_validator(case: tuple[bytes, int], prefix: int) -> None:
    data, total = case
    buf = data[:prefix]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = parse_header(buf, total, key="fuzz.dcm", fingerprint_key=b"k" * 32)
    assert isinstance(result, HeaderResult)
    if result.need_bytes:
        assert len(buf) < result.need_bytes <= max(total, len(buf)) or result.need_bytes > len(buf)
    for finding in result.findings:
        assert finding.severity in set(Severity) and finding.code and finding.reason
        assert "Traceback" not in finding.reason and "pydicom" not in finding.reason.lower()
        for level in ValidationLevel:
            rejects(finding.code, level)  # decided, never raises
    if result.readable and not result.need_bytes:
        # The UIDs the pipeline keys files by are strings, or absent with a finding that says so.
        codes = {f.code for f in result.findings}
        for key in ("sop_instance_uid", "study_instance_uid", "series_instance_uid"):
            value = result.values.get(key)
            assert isinstance(value, str) or f"missing_{key}" in codes, (key, codes)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512), st.booleans(), st.booleans())
def test_any_tail_is_judged_without_raising(tail: bytes, implicit: bool, little: bool) -> None:
    finding = check_tail(tail, implicit=implicit, little=little)
    assert finding is None or (finding.code and finding.reason)


def test_the_unmutated_files_parse() -> None:
    """The base of the mutations is real and readable, so the fuzzing starts from meaningful headers."""
    for data in REAL:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = parse_header(data, len(data))
        assert result.readable or result.need_bytes, [f.code for f in result.findings]
        assert pydicom.dcmread  # the library under the parser is the one the corpus was made with
