"""Header-only parsing of in-memory prefixes (pure function; no servers)."""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from activities.dicom_header import check_tail, parse_header, uid_problem
from activities.validate import rejects
from contracts.common import ValidationLevel
from corpus.hostile_real import HOSTILE_REAL
from corpus.malformed import generate_malformed
from corpus.real import locate
from tests.support.dicom import make_instance, uid


def _parse_like_s3(data: bytes, first: int = 65536):
    """Drive parse_header the way the parse activity does: a first range, then larger ones on request."""
    buf = data[:first]
    while True:
        result = parse_header(buf, len(data), fingerprint_key=b"k" * 32)
        if result.need_bytes and len(buf) < len(data):
            buf = data[: result.need_bytes]
            continue
        return result, len(buf)


class TestParseHeader:
    def test_valid_instance_yields_uids_and_no_findings(self) -> None:
        study, series = uid(), uid()
        result, read = _parse_like_s3(make_instance(study, series))
        assert result.readable and not result.findings
        assert result.values["study_instance_uid"] == study
        assert result.values["series_instance_uid"] == series
        assert result.header_bytes < read

    def test_header_longer_than_first_range_asks_for_more(self) -> None:
        data = make_instance(uid(), uid())
        result = parse_header(data[:256], len(data))
        assert result.need_bytes > 256
        result, _read = _parse_like_s3(data, first=256)
        assert result.readable and not result.findings

    @pytest.mark.parametrize("name", ["MR_truncated.dcm", "rtplan_truncated.dcm"])
    def test_real_truncated_files_are_caught(self, name: str) -> None:
        path = get_testdata_file(name)
        assert path is not None
        with open(path, "rb") as fh:
            data = fh.read()
        result, _ = _parse_like_s3(data)
        # The truncation is the one error; anything else found is a warning (rtplan_truncated's meta differs).
        assert [f.code for f in result.findings if f.severity == "error"] == ["truncated"]

    @pytest.mark.parametrize("name", ["reportsi.dcm", "rtplan.dcm"])
    def test_objects_without_pixel_data_are_not_truncated(self, name: str) -> None:
        """A structured report or RT plan ends at an element boundary with no Pixel Data: that is complete."""
        path = get_testdata_file(name)
        assert path is not None
        with open(path, "rb") as fh:
            data = fh.read()
        result, _ = _parse_like_s3(data)
        assert result.readable and "truncated" not in [f.code for f in result.findings]

    def test_truncated_in_pixels_is_caught(self) -> None:
        data = make_instance(uid(), uid())
        result, _ = _parse_like_s3(data[:-1000])
        assert any(f.code == "truncated" and "bytes shorter" in f.reason for f in result.findings)

    @pytest.mark.parametrize("data,code", [
        (b"", "zero_byte"),
        (b"plain text, not DICOM at all", "not_dicom"),
        (gzip.compress(b"x" * 100, mtime=0), "compressed_archive"),
        (b"PK\x03\x04" + b"\0" * 200, "compressed_archive"),
    ])
    def test_non_dicom_gets_a_named_reason(self, data: bytes, code: str) -> None:
        result = parse_header(data, len(data))
        assert not result.readable
        assert [f.code for f in result.findings] == [code]

    @pytest.mark.parametrize("attr,code", [
        ("SOPInstanceUID", "missing_sop_instance_uid"),
        ("StudyInstanceUID", "missing_study_instance_uid"),
        ("SeriesInstanceUID", "missing_series_instance_uid"),
    ])
    def test_missing_uid_is_named(self, attr: str, code: str) -> None:
        result, _ = _parse_like_s3(make_instance(uid(), uid(), drop=(attr,)))
        assert result.readable
        finding = next(f for f in result.findings if f.code == code)
        assert finding.attribute == attr

    def test_fingerprints_change_with_patient_but_carry_no_phi(self) -> None:
        study, series = uid(), uid()
        a, _ = _parse_like_s3(make_instance(study, series, patient_id="SYNTH-A"))
        b, _ = _parse_like_s3(make_instance(study, series, patient_id="SYNTH-B"))
        assert a.values["patient_fingerprint"] != b.values["patient_fingerprint"]
        assert "SYNTH" not in repr(a.values)


def _implicit_meta(data: bytes) -> bytes:
    """``data`` with its File Meta Information rewritten in implicit VR (as some old writers did)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, True
    write_dataset(meta, ds.file_meta)
    group_length = struct.pack("<HHI", 2, 0, 4) + struct.pack("<I", len(meta.getvalue()))
    (declared,) = struct.unpack_from("<I", data, 140)
    return data[:132] + group_length + meta.getvalue() + data[144 + declared:]


def test_an_implicit_vr_meta_group_is_not_a_wrong_group_length() -> None:
    data = _implicit_meta(make_instance(uid(), uid()))
    assert data[136:138] != b"UL"  # really implicit: no VR after the group length tag
    result, _ = _parse_like_s3(data)
    assert result.readable
    assert not {"meta_group_length", "meta_group_length_missing"} & {f.code for f in result.findings}


def test_ybr_422_pixel_data_is_two_samples_per_pixel() -> None:
    ds = pydicom.dcmread(io.BytesIO(make_instance(uid(), uid())))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = b"\x80" * (ds.Rows * ds.Columns * 2)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    result, _ = _parse_like_s3(buf.getvalue())
    assert "pixel_data_size" not in [f.code for f in result.findings]
    ds.PixelData = b"\x80" * (ds.Rows * ds.Columns)  # now really short
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    result, _ = _parse_like_s3(buf.getvalue())
    assert "pixel_data_size" in [f.code for f in result.findings]


def test_tail_elements_of_undefined_length_are_walked() -> None:
    """A Digital Signatures Sequence of undefined length after Pixel Data is well formed; unterminated it is not."""
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 8) + struct.pack("<HH2sH", 0x0400, 0x0005, b"US", 2) + b"\x01\x00"
    sequence = struct.pack("<HH2sHI", 0xFFFA, 0xFFFA, b"SQ", 0, 0xFFFFFFFF) + item
    delimiter = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    assert check_tail(sequence + delimiter) is None
    padding = check_tail(sequence + delimiter + b"\0" * 6)  # zero padding after it: a note, not a problem
    assert padding is not None and (padding.code, padding.severity) == ("trailing_padding", "info")
    assert "6 bytes of zero padding follow the last element (FFFA,FFFA)" in padding.reason
    assert check_tail(sequence + delimiter + b"\x01" * 6) is not None  # bytes after it that are not an element
    finding = check_tail(sequence)
    assert finding is not None and finding.code == "trailing_garbage"


class TestZeroPaddingAfterPixelData:
    """Zero padding after the last element is a note by default; an error only when the import rejects it."""

    @pytest.mark.parametrize("size", [1, 7, 8, 9, 4096])
    @pytest.mark.parametrize(("implicit", "little"), [(False, True), (True, True), (False, False)])
    def test_any_length_in_any_encoding(self, size: int, implicit: bool, little: bool) -> None:
        note = check_tail(b"\0" * size, implicit, little)
        assert note is not None and (note.code, note.severity, note.attribute) == ("trailing_padding", "info",
                                                                                   "PixelData")
        assert note.reason.startswith(f"{size} bytes of zero padding follow Pixel Data")
        error = check_tail(b"\0" * size, implicit, little, padding_rejected=True)
        assert error is not None and (error.code, error.severity) == ("trailing_padding_rejected", "error")
        assert "HIMIG_IMPORT_REJECTS_TRAILING_PADDING" in error.reason and "would fail this file" in error.reason
        assert rejects("trailing_padding_rejected", ValidationLevel.MINIMAL)
        assert not any(rejects("trailing_padding", level) for level in ValidationLevel)

    def test_trailing_padding_element_is_never_rejected(self) -> None:
        element = struct.pack("<HH2sHI", 0xFFFC, 0xFFFC, b"OB", 0, 16) + b"\0" * 16
        assert check_tail(element, padding_rejected=True) is None
        # zeros after Data Set Trailing Padding: part of the padding, which the import accepts (the emulator too)
        after = check_tail(element + b"\0" * 8, padding_rejected=True)
        assert after is not None and after.code == "trailing_padding"

    def test_garbage_is_never_mistaken_for_padding(self) -> None:
        for tail in (b"\0" * 7 + b"\x01", b"\x01" + b"\0" * 7, b"\0" * 100 + b"x"):
            finding = check_tail(tail, padding_rejected=True)
            assert finding is not None and finding.code == "trailing_garbage", tail

    def test_parse_of_a_whole_file_says_so_with_the_setting(self) -> None:
        ds = pydicom.dcmread(io.BytesIO(make_instance(uid(), uid())))
        del ds[0xFFFCFFFC]
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        data = buf.getvalue() + b"\0" * 8
        lenient = parse_header(data, len(data))
        assert [(f.code, f.severity) for f in lenient.findings if "trailing" in f.code] == [("trailing_padding", "info")]
        strict = parse_header(data, len(data), padding_rejected=True)
        assert [f.code for f in strict.findings if "trailing" in f.code] == ["trailing_padding_rejected"]


class TestFindingReasonsCarryNoFileText:
    @staticmethod
    def _with_charset(value: str) -> bytes:
        ds = pydicom.dcmread(io.BytesIO(make_instance(uid(), uid())))
        ds.SpecificCharacterSet = value
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    def test_an_unknown_defined_term_is_named(self) -> None:
        result, _ = _parse_like_s3(self._with_charset("ISO_IR 999"))
        reasons = [f.reason for f in result.findings if f.code == "unknown_charset"]
        assert reasons and "ISO_IR 999" in reasons[0]

    def test_free_text_in_the_charset_element_is_not_echoed(self) -> None:
        # A broken writer put a patient's name where the character set belongs.
        result, _ = _parse_like_s3(self._with_charset("DOE^JOHN"))
        reasons = [f.reason for f in result.findings if f.code == "unknown_charset"]
        assert reasons and "DOE" not in reasons[0] and "not a defined term" in reasons[0]


class TestKeyedFingerprints:
    def test_fingerprints_are_hmacs_stable_per_key(self) -> None:
        data = make_instance(uid(), uid(), patient_id="SYNTH-KEYED")
        keyed = parse_header(data, len(data), fingerprint_key=b"k" * 32).values
        again = parse_header(data, len(data), fingerprint_key=b"k" * 32).values
        other = parse_header(data, len(data), fingerprint_key=b"j" * 32).values
        for level in ("patient_fingerprint", "study_fingerprint", "series_fingerprint"):
            assert keyed[level] == again[level] != other[level]

    def test_demographics_alone_do_not_recompute_a_fingerprint(self) -> None:
        # What anyone holding a candidate's name, id, birth date and sex could compute: the plain SHA-256.
        import hashlib

        from activities.dicom_header import PATIENT_ATTRS, _raw

        data = make_instance(uid(), uid(), patient_id="SYNTH-GUESSABLE")
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        plain = hashlib.sha256(b"".join(name.encode() + b"=" + (_raw(ds, name) or b"") + b"\0"
                                        for name in PATIENT_ATTRS)).hexdigest()
        values = parse_header(data, len(data), fingerprint_key=b"k" * 32).values
        assert values["patient_fingerprint"] != plain
        unkeyed = parse_header(data, len(data)).values  # the listener's use: UIDs only, no fingerprints at all
        assert unkeyed["study_instance_uid"] and unkeyed["patient_fingerprint"] is None

    def test_the_setting_refuses_a_short_key_naming_it(self) -> None:
        from pydantic import ValidationError

        from worker.settings import Settings

        with pytest.raises(ValidationError, match="fingerprint_key"):
            Settings(fingerprint_key="short")
        assert Settings(fingerprint_key="x" * 16).fingerprint_secret() == b"x" * 16

    def test_activities_refuse_a_short_key_without_echoing_it(self) -> None:
        from activities.parse import ParseActivities
        from activities.reconcile import ReconcileActivities

        for build in (lambda: ParseActivities(None, fingerprint_key=b"canary-short"),
                      lambda: ReconcileActivities(None, None, None, fingerprint_key=b"canary-short")):
            with pytest.raises(ValueError, match="fingerprint_key: at least 16 bytes") as caught:
                build()
            assert "canary" not in str(caught.value)


class TestReasonsAreRightAndReadable:
    """A reason says what is wrong, in our words: never a library's advice or an exception class name."""

    LIBRARY_TEXT = ("force=True", "Use force", "pydicom", "Error", "Exception", "Traceback", "errno")

    @pytest.mark.parametrize(("value", "code", "words"), [
        ("1.2." + "3" * 70, "invalid_uid", "is 74 characters; a UID has at most 64"),
        ("1.2.abc.4", "invalid_uid", "characters other than digits and dots"),
        ("1.2 .3", "invalid_uid", "characters other than digits and dots"),
        ("1.2.0123.4", "uid_not_dicom", "component 3 has a leading zero"),
        ("01.2", "uid_not_dicom", "component 1 has a leading zero"),
        ("1.2.", "uid_not_dicom", "empty component"),
        (".1.2", "uid_not_dicom", "empty component"),
        ("1..2", "uid_not_dicom", "empty component"),
        ("1.2.0.3", None, None),
        ("0", None, None),
    ])
    def test_a_uid_problem_is_named_for_what_it_is(self, value: str, code: str | None, words: str | None) -> None:
        problem = uid_problem(value)
        if code is None:
            assert problem is None
        else:
            assert problem is not None and problem[0] == code and words in problem[1]

    @pytest.mark.parametrize(("code", "rejected_at"), [
        ("uid_not_dicom", {ValidationLevel.STRICT}),
        ("invalid_uid", {ValidationLevel.STRICT, ValidationLevel.STRUCTURE_ONLY}),
        ("missing_pixel_data", {ValidationLevel.STRICT, ValidationLevel.STRUCTURE_ONLY}),
    ])
    def test_the_level_follows_what_healthimaging_accepts(self, code: str, rejected_at: set[ValidationLevel]) -> None:
        assert {level for level in ValidationLevel if rejects(code, level)} == rejected_at

    def test_an_image_that_ends_cleanly_without_pixels_is_missing_an_attribute(self) -> None:
        data = make_instance(uid(), uid())
        cut = data[:data.rindex(b"\xe0\x7f\x10\x00")]  # every element before Pixel Data, complete
        result, _ = _parse_like_s3(cut)
        codes = {f.code for f in result.findings}
        assert "missing_pixel_data" in codes and "truncated" not in codes
        # Cut inside Pixel Data instead: that one is truncated.
        result, _ = _parse_like_s3(data[:data.rindex(b"\xe0\x7f\x10\x00") + 400])
        assert "truncated" in {f.code for f in result.findings}

    @pytest.mark.parametrize(("data", "words"), [
        (b"PatientName=Somebody\nStudyDate=20200101\n" * 10, "plain text"),
        (b'{"00100010": {"vr": "PN"}}' + b" " * 200, "JSON text"),
        (bytes(range(256)) * 8, "no DICM marker"),
        (b"\0" * 100, "no DICM marker"),
    ])
    def test_a_file_that_is_not_dicom_says_what_it_is(self, data: bytes, words: str) -> None:
        result, _ = _parse_like_s3(data)
        [finding] = result.findings
        assert words in finding.reason and finding.code in ("not_dicom", "unparseable"), finding
        assert not any(t in finding.reason for t in self.LIBRARY_TEXT), finding.reason

    @pytest.mark.filterwarnings("ignore::UserWarning")
    def test_no_reason_in_the_malformed_corpus_carries_library_text(self, tmp_path: Path) -> None:
        entries = generate_malformed(tmp_path)
        for hostile in HOSTILE_REAL:
            path = locate(hostile.name)
            if path is not None:
                entries.append(type(entries[0]).model_construct(path=str(path)))
        seen = 0
        for entry in entries:
            path = Path(entry.path)
            data = (path if path.is_absolute() else tmp_path / path).read_bytes()
            result, _ = _parse_like_s3(data)
            for finding in result.findings:
                seen += 1
                assert not any(t in finding.reason for t in self.LIBRARY_TEXT), (entry.path, finding.reason)
        assert seen > len(entries)  # the corpus does produce findings to judge
