"""Every registered defect must have a check here proving the generated file really has that defect."""

from __future__ import annotations

import datetime
import gzip
import io
import json
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from corpus.malformed import DEFECTS, MALFORMED_NAMESPACE, DefectContext, build_defect, generate_malformed
from corpus.models import CorpusEntry, Expected, Origin
from corpus.synthetic import ImageProfile, InstanceFactory
from tests.corpus.dicom_walk import PIXEL_DATA, meta_and_dataset

UID_RE = re.compile(r"(?:[1-9][0-9]*|0)(?:\.(?:[1-9][0-9]*|0))*")
# HealthImaging import limits (DG dicom-element-constraints), restated here rather than imported.
AHI_LIMITS = {"PatientID": 256, "PatientName": 256, "AccessionNumber": 256, "StudyID": 16, "StudyDescription": 64}


def read(data: bytes, **kwargs: object) -> FileDataset:
    return dcmread(io.BytesIO(data), **kwargs)  # type: ignore[arg-type]


def not_dicom(data: bytes) -> None:
    with pytest.raises(InvalidDicomError):
        read(data)


def full_read_ok(data: bytes) -> FileDataset:
    ds = read(data)
    assert len(ds.PixelData) == ds.Rows * ds.Columns * 2
    assert ds.SOPInstanceUID and ds.StudyInstanceUID and ds.SeriesInstanceUID
    return ds


def dataset_elems(data: bytes) -> list:  # type: ignore[type-arg]
    return meta_and_dataset(data)[2]


def tag_of(data: bytes, tag: int):  # type: ignore[no-untyped-def]
    return next(e for e in dataset_elems(data) if e.tag == tag)


# ---- checks, one per defect -------------------------------------------------------------------------------


def _zero_byte(data: bytes) -> None:
    assert data == b""
    not_dicom(data)


def _not_dicom_text(data: bytes) -> None:
    text = data.decode("ascii")
    assert text.strip() and all(c.isprintable() or c == "\n" for c in text)
    assert b"DICM" not in data
    not_dicom(data)


def _not_dicom_json(data: bytes) -> None:
    doc = json.loads(data)
    assert doc["00080018"]["vr"] == "UI"  # DICOM JSON model, keyed by tag
    not_dicom(data)


def _random_bytes(data: bytes) -> None:
    assert len(data) == 4096 and data[128:132] != b"DICM"
    assert len(set(data)) > 200  # looks random, not a constant fill
    not_dicom(data)


def _gzip(data: bytes) -> None:
    assert data[:2] == b"\x1f\x8b"
    full_read_ok(gzip.decompress(data))  # a valid file inside
    not_dicom(data)


def _zip(data: bytes) -> None:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        (name,) = zf.namelist()
        full_read_ok(zf.read(name))
    not_dicom(data)


def _dicomdir(data: bytes) -> None:
    ds = read(data)
    assert ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.1.3.10"
    assert "SOPInstanceUID" not in ds and "PixelData" not in ds
    assert {r.DirectoryRecordType for r in ds.DirectoryRecordSequence} == {"PATIENT", "STUDY", "SERIES", "IMAGE"}


def _no_preamble(data: bytes) -> None:
    assert data[:4] == b"DICM"
    full_read_ok(b"\0" * 128 + data)  # it is exactly a valid file minus the preamble
    not_dicom(data)


def _dicx(data: bytes) -> None:
    assert data[128:132] == b"DICX"
    full_read_ok(data[:128] + b"DICM" + data[132:])
    not_dicom(data)


def _no_meta_implicit(data: bytes) -> None:
    assert data[:4] == b"\x08\x00\x05\x00"  # (0008,0005) first: no preamble, no meta group
    assert data[4:6] not in (b"CS", b"UI")  # implicit VR: a 4-byte length follows the tag, not a VR
    assert b"DICM" not in data[:200]
    not_dicom(data)
    ds = read(data, force=True)
    assert ds.SOPInstanceUID and "TransferSyntaxUID" not in ds.file_meta


def _truncated_in_preamble(data: bytes) -> None:
    assert len(data) < 128
    not_dicom(data)


def _truncated_in_meta(data: bytes) -> None:
    assert data[128:132] == b"DICM"
    (declared,) = struct.unpack_from("<I", data, 140)
    assert 132 + 12 + declared > len(data)  # the meta group claims more bytes than the file has


def _truncated_mid_header(data: bytes) -> None:
    last = dataset_elems(data)[-1]
    assert last.tag != PIXEL_DATA and last.end > len(data)


def _truncated_before_pixeldata(data: bytes) -> None:
    elems = dataset_elems(data)
    assert elems[-1].end == len(data)  # every element complete ...
    assert PIXEL_DATA not in {e.tag for e in elems}  # ... but no Pixel Data
    ds = read(data)
    assert ds.SOPClassUID == CTImageStorage and ds.Rows == 64  # an image IOD, which requires Pixel Data


def _truncated_in_pixels(data: bytes) -> None:
    pixel = tag_of(data, PIXEL_DATA)
    assert pixel.length == 64 * 64 * 2 and pixel.end > len(data) > pixel.value_offset


def _pixeldata_length_overrun(data: bytes) -> None:
    pixel = tag_of(data, PIXEL_DATA)
    assert pixel.length == 0x7FFFFFF0 and pixel.end > len(data)


def _element_length_overrun(data: bytes) -> None:
    name = tag_of(data, 0x00100010)
    assert name.end > len(data)


def _trailing_garbage(data: bytes) -> None:
    pixel = tag_of(data, PIXEL_DATA)
    assert pixel.length == 64 * 64 * 2
    rest = data[pixel.end:]
    assert len(rest) >= 1000 and rest[:4] != b"\xfc\xff\xfc\xff"  # not Data Set Trailing Padding
    full_read_ok(data[:pixel.end])  # the file minus the garbage is valid


def _bad_vr(data: bytes) -> None:
    assert tag_of(data, 0x00081030).vr == b"ZZ"


def _wrong_meta_group_length(data: bytes) -> None:
    declared, meta, _ = meta_and_dataset(data)
    actual = meta[-1].end - meta[0].end
    assert declared != actual and declared == actual + 22


def _missing_transfer_syntax(data: bytes) -> None:
    declared, meta, _ = meta_and_dataset(data)
    assert 0x00020010 not in {e.tag for e in meta}
    assert declared == meta[-1].end - meta[0].end  # only the TS is wrong; the group length is consistent


def _unknown_transfer_syntax(data: bytes) -> None:
    ts = read(data, stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert ts == "1.2.3.4.5.6.7"
    assert ts not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)


def _missing(keyword: str) -> Callable[[bytes], None]:
    def check(data: bytes) -> None:
        ds = read(data)
        assert keyword not in ds
        assert len(ds.PixelData) == 64 * 64 * 2  # otherwise intact
    return check


def _empty(keyword: str) -> Callable[[bytes], None]:
    def check(data: bytes) -> None:
        ds = read(data)
        assert keyword in ds and ds[keyword].value in ("", None)
    return check


def _uid_too_long(data: bytes) -> None:
    uid = read(data).SOPInstanceUID
    assert len(uid) > 64 and UID_RE.fullmatch(uid)  # only the length is wrong


def _uid_invalid_chars(data: bytes) -> None:
    uid = read(data).SOPInstanceUID
    assert len(uid) <= 64 and not UID_RE.fullmatch(uid) and re.search("[a-z]", uid)


def _uid_leading_zero(data: bytes) -> None:
    uid = read(data).SOPInstanceUID
    assert len(uid) <= 64 and not UID_RE.fullmatch(uid)
    assert any(len(c) > 1 and c.startswith("0") for c in uid.split("."))


def _too_long(keyword: str) -> Callable[[bytes], None]:
    def check(data: bytes) -> None:
        ds = full_read_ok(data)  # structurally valid DICOM ...
        assert len(str(ds[keyword].value)) > AHI_LIMITS[keyword]  # ... that breaks an import limit
        others = {k: v for k, v in AHI_LIMITS.items() if k != keyword}
        assert all(len(str(ds.get(k, ""))) <= v for k, v in others.items())  # and only that one
    return check


def _tiff_preamble(data: bytes) -> None:
    assert data[:4] == b"II*\x00" and data[128:132] == b"DICM"
    full_read_ok(data)


def _trailing_padding(data: bytes) -> None:
    ds = full_read_ok(data)
    assert 0xFFFCFFFC in ds
    assert dataset_elems(data)[-1].tag == 0xFFFCFFFC


def _zero_padding_after_pixel_data(data: bytes) -> None:
    full_read_ok(data)
    assert data.endswith(b"\0" * 8)
    pixel = tag_of(data[:-8], 0x7FE00010)
    assert pixel.end == len(data) - 8  # the dataset ends with a complete Pixel Data, then only the zeros


def _deflated(data: bytes) -> None:
    ds = full_read_ok(data)
    assert ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert b"SYNTH^MALFORMED" not in data  # the dataset is really compressed


def _implicit(data: bytes) -> None:
    ds = full_read_ok(data)
    assert ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    start = data.index(b"\x08\x00\x05\x00", 132)  # first dataset element, (0008,0005)
    assert data[start + 4:start + 6] != b"CS"


def _big_endian(data: bytes) -> None:
    ds = full_read_ok(data)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    assert ds.Rows == 64 and b"\x00\x28\x00\x10US\x00\x02\x00\x40" in data  # Rows, big endian


CHECKS: dict[str, Callable[[bytes], None]] = {
    "zero_byte": _zero_byte,
    "not_dicom_text": _not_dicom_text,
    "not_dicom_json": _not_dicom_json,
    "random_bytes": _random_bytes,
    "gzip_dcm": _gzip,
    "zip_archive": _zip,
    "dicomdir": _dicomdir,
    "no_preamble_dicm_at_0": _no_preamble,
    "wrong_magic_dicx": _dicx,
    "no_meta_implicit": _no_meta_implicit,
    "truncated_in_preamble": _truncated_in_preamble,
    "truncated_in_meta": _truncated_in_meta,
    "truncated_mid_header": _truncated_mid_header,
    "truncated_before_pixeldata": _truncated_before_pixeldata,
    "truncated_in_pixels": _truncated_in_pixels,
    "pixeldata_length_overrun": _pixeldata_length_overrun,
    "element_length_overrun": _element_length_overrun,
    "trailing_garbage": _trailing_garbage,
    "bad_vr": _bad_vr,
    "wrong_meta_group_length": _wrong_meta_group_length,
    "missing_transfer_syntax": _missing_transfer_syntax,
    "unknown_transfer_syntax": _unknown_transfer_syntax,
    "missing_sop_instance_uid": _missing("SOPInstanceUID"),
    "missing_study_instance_uid": _missing("StudyInstanceUID"),
    "missing_series_instance_uid": _missing("SeriesInstanceUID"),
    "missing_sop_class_uid": _missing("SOPClassUID"),
    "empty_sop_instance_uid": _empty("SOPInstanceUID"),
    "empty_study_instance_uid": _empty("StudyInstanceUID"),
    "uid_too_long": _uid_too_long,
    "uid_invalid_chars": _uid_invalid_chars,
    "uid_leading_zero": _uid_leading_zero,
    "patient_id_too_long": _too_long("PatientID"),
    "patient_name_too_long": _too_long("PatientName"),
    "accession_number_too_long": _too_long("AccessionNumber"),
    "study_id_too_long": _too_long("StudyID"),
    "study_description_too_long": _too_long("StudyDescription"),
    "tiff_like_preamble": _tiff_preamble,
    "trailing_padding": _trailing_padding,
    "zero_padding_after_pixel_data": _zero_padding_after_pixel_data,
    "deflated": _deflated,
    "implicit_vr_little_endian": _implicit,
    "explicit_vr_big_endian": _big_endian,
}


# ---- checks for the second wave of defects ----------------------------------------------------------------


def _raw_value(data: bytes, tag: int) -> bytes:
    el = tag_of(data, tag)
    return data[el.value_offset:el.end]


def _charset_999(data: bytes) -> None:
    assert _raw_value(data, 0x00080005).strip() == b"ISO_IR 999"


def _charset_utf8_latin1(data: bytes) -> None:
    assert _raw_value(data, 0x00080005).strip() == b"ISO_IR 192"
    name = _raw_value(data, 0x00100010)
    with pytest.raises(UnicodeDecodeError):
        name.decode("utf-8")


def _charset_missing(data: bytes) -> None:
    assert 0x00080005 not in {e.tag for e in dataset_elems(data)}
    assert max(_raw_value(data, 0x00100010)) > 0x7F


def _charset_cjk(data: bytes) -> None:
    ds = full_read_ok(data)
    assert ds.SpecificCharacterSet == "ISO_IR 192" and "\u5c71" in str(ds.PatientName)


def _charset_iso2022(data: bytes) -> None:
    ds = full_read_ok(data)
    assert b"\x1b$B" in _raw_value(data, 0x00100010) and "\u5c71" in str(ds.PatientName)


def _patient_id_multi(data: bytes) -> None:
    assert b"\\" in _raw_value(data, 0x00100020)


def _patient_id_empty(data: bytes) -> None:
    assert tag_of(data, 0x00100020).length == 0


def _patient_id_80(data: bytes) -> None:
    assert len(_raw_value(data, 0x00100020).strip()) == 80


def _is_date(value: str) -> bool:
    try:
        datetime.datetime.strptime(value, "%Y%m%d")
    except ValueError:
        return False
    return True


def _bad_da(tag: int) -> Callable[[bytes], None]:
    def check(data: bytes) -> None:
        assert not _is_date(_raw_value(data, tag).strip().decode())
    return check


def _study_time(data: bytes) -> None:
    value = _raw_value(data, 0x00080030).strip().decode()
    assert int(value[:2]) > 23


def _private_block(min_size: int, vr: bytes = b"OB", creator: bool = True) -> Callable[[bytes], None]:
    def check(data: bytes) -> None:
        tags = {e.tag: e for e in dataset_elems(data)}
        assert (0x00090010 in tags) is creator and 0x00091010 in tags
        assert tags[0x00091010].vr == vr and tags[0x00091010].length >= min_size
        assert tags[0x00091010].end < tags[PIXEL_DATA].offset
        full_read_ok(data)
    return check


def _sequence_items(n: int) -> Callable[[bytes], None]:
    def check(data: bytes) -> None:
        ds = full_read_ok(data)
        assert "ReferencedImageSequence" in ds and len(ds.ReferencedImageSequence) == n
    return check


def _sequence_undefined(data: bytes) -> None:
    assert tag_of(data, 0x00081140).length == 0xFFFFFFFF
    assert b"\xfe\xff\xdd\xe0\x00\x00\x00\x00" in data and len(full_read_ok(data).ReferencedImageSequence) == 2


def _sequence_unterminated(data: bytes) -> None:
    assert tag_of(data, 0x00081140).length == 0xFFFFFFFF
    assert b"\xfe\xff\xdd\xe0" not in data


def _sequence_item_overrun(data: bytes) -> None:
    seq = tag_of(data, 0x00081140)
    first_len = struct.unpack_from("<I", data, seq.value_offset + 4)[0]
    second = seq.value_offset + 8 + first_len
    assert data[second:second + 4] == b"\xfe\xff\x00\xe0"
    assert second + 8 + struct.unpack_from("<I", data, second + 4)[0] > seq.end


def _sequence_nested_truncated(data: bytes) -> None:
    last = dataset_elems(data)[-1]
    assert last.tag == 0x00081140 and last.end > len(data)


def _meta_value(tag: int, expect_missing: bool = False) -> Callable[[bytes], None]:
    def check(data: bytes) -> None:
        ds = read(data, stop_before_pixels=True)
        meta = {e.tag for e in meta_and_dataset(data)[1]}
        if expect_missing:
            assert tag not in meta
        else:
            dataset_value = ds.SOPInstanceUID if tag == 0x00020003 else ds.SOPClassUID
            assert ds.file_meta[tag].value != dataset_value
    return check


def _series_is_study(data: bytes) -> None:
    ds = full_read_ok(data)
    assert ds.SeriesInstanceUID == ds.StudyInstanceUID


def _hex_uid(keyword: str) -> Callable[[bytes], None]:
    def check(data: bytes) -> None:
        uid = read(data).get(keyword)
        assert not UID_RE.fullmatch(uid)
    return check


def _first_dataset_tag_bytes(data: bytes) -> bytes:
    declared, meta, _ = meta_and_dataset(data)
    start = meta[0].end + declared
    return data[start:start + 6]


def _implicit_big(data: bytes) -> None:
    assert read(data, stop_before_pixels=True).file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert _first_dataset_tag_bytes(data)[:4] == b"\x00\x08\x00\x05"  # big endian (0008,0005)


def _ts_explicit_implicit(data: bytes) -> None:
    assert read(data, stop_before_pixels=True).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    head = _first_dataset_tag_bytes(data)
    assert head[:4] == b"\x08\x00\x05\x00" and head[4:6] != b"CS"


def _ts_implicit_explicit(data: bytes) -> None:
    assert read(data, stop_before_pixels=True).file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert _first_dataset_tag_bytes(data) == b"\x08\x00\x05\x00CS"


def _ts_big_little(data: bytes) -> None:
    assert read(data, stop_before_pixels=True).file_meta.TransferSyntaxUID == ExplicitVRBigEndian
    assert _first_dataset_tag_bytes(data) == b"\x08\x00\x05\x00CS"


def _declares_deflated(data: bytes) -> bool:
    return any(e.tag == 0x00020010 and data[e.value_offset:e.end].rstrip(b"\0") == DeflatedExplicitVRLittleEndian.encode()
               for e in meta_and_dataset(data)[1])


def _deflated_corrupt(data: bytes) -> None:
    assert _declares_deflated(data)
    declared, meta, _ = meta_and_dataset(data)
    with pytest.raises(zlib.error):
        zlib.decompress(data[meta[0].end + declared:], -zlib.MAX_WBITS)


def _deflated_plain(data: bytes) -> None:
    assert _declares_deflated(data)
    assert _first_dataset_tag_bytes(data) == b"\x08\x00\x05\x00CS"  # not compressed


def _odd_length(data: bytes) -> None:
    assert tag_of(data, 0x00081030).length % 2 == 1


def _duplicate(data: bytes) -> None:
    tags = [e.tag for e in dataset_elems(data)]
    assert tags.count(0x00081010) == 2


def _out_of_order(data: bytes) -> None:
    tags = [e.tag for e in dataset_elems(data)]
    assert tags != sorted(tags) and 0x00080060 in tags


def _meta_group_short(data: bytes) -> None:
    declared, meta, _ = meta_and_dataset(data)
    assert declared == meta[-1].end - meta[0].end - 10


def _meta_group_missing(data: bytes) -> None:
    assert struct.unpack_from("<HH", data, 132) != (2, 0)
    assert data[128:132] == b"DICM"
    full_read_ok(data)


def _random_preamble(data: bytes) -> None:
    assert data[128:132] == b"DICM" and len(set(data[:128])) > 50
    full_read_ok(data)


def _pixel_empty(data: bytes) -> None:
    assert tag_of(data, PIXEL_DATA).length == 0


def _pixel_short(data: bytes) -> None:
    ds = read(data)
    assert len(ds.PixelData) < ds.Rows * ds.Columns * 2


def _rle(data: bytes) -> None:
    ds = read(data)
    assert ds.file_meta.TransferSyntaxUID == RLELossless and data[-8:] == b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    assert ds.pixel_array.shape == (64, 64)


def _rle_unterminated(data: bytes) -> None:
    assert read(data, stop_before_pixels=True).file_meta.TransferSyntaxUID == RLELossless
    assert b"\xfe\xff\xdd\xe0" not in data[-64:]


CHECKS.update({
    "charset_unknown_iso_ir_999": _charset_999,
    "charset_utf8_over_latin1_bytes": _charset_utf8_latin1,
    "charset_non_ascii_without_charset": _charset_missing,
    "charset_cjk_utf8": _charset_cjk,
    "charset_iso2022_japanese": _charset_iso2022,
    "patient_id_multi_valued": _patient_id_multi,
    "patient_id_empty": _patient_id_empty,
    "patient_id_missing": _missing("PatientID"),
    "patient_id_80_chars": _patient_id_80,
    "study_date_invalid": _bad_da(0x00080020),
    "study_date_iso_format": _bad_da(0x00080020),
    "birth_date_invalid": _bad_da(0x00100030),
    "study_time_invalid": _study_time,
    "private_ob_2mb_before_pixels": _private_block(2 * 1024 * 1024),
    "header_over_64k": _private_block(65 * 1024),
    "header_over_256k": _private_block(257 * 1024),
    "private_tag_without_creator": _private_block(16, b"LO", creator=False),
    "private_un_vr": _private_block(64, b"UN"),
    "sequence_3000_items": _sequence_items(3000),
    "sequence_undefined_length": _sequence_undefined,
    "sequence_unterminated": _sequence_unterminated,
    "sequence_item_overrun": _sequence_item_overrun,
    "sequence_nested_truncated": _sequence_nested_truncated,
    "meta_sop_instance_mismatch": _meta_value(0x00020003),
    "meta_sop_class_mismatch": _meta_value(0x00020002),
    "meta_missing_sop_instance": _meta_value(0x00020003, expect_missing=True),
    "series_uid_equals_study_uid": _series_is_study,
    "empty_series_instance_uid": _empty("SeriesInstanceUID"),
    "empty_sop_class_uid": _empty("SOPClassUID"),
    "study_uid_hex_hash": _hex_uid("StudyInstanceUID"),
    "uid_trailing_dot": _hex_uid("SeriesInstanceUID"),
    "implicit_big_endian": _implicit_big,
    "ts_explicit_data_implicit": _ts_explicit_implicit,
    "ts_implicit_data_explicit": _ts_implicit_explicit,
    "ts_big_endian_data_little": _ts_big_little,
    "deflated_corrupt_stream": _deflated_corrupt,
    "deflated_declared_not_deflated": _deflated_plain,
    "odd_value_length": _odd_length,
    "duplicate_element": _duplicate,
    "elements_out_of_order": _out_of_order,
    "wrong_meta_group_length_short": _meta_group_short,
    "missing_meta_group_length": _meta_group_missing,
    "random_preamble": _random_preamble,
    "pixel_data_empty": _pixel_empty,
    "pixel_data_short_for_rows": _pixel_short,
    "rle_lossless": _rle,
    "encapsulated_no_sequence_delimiter": _rle_unterminated,
})


def test_every_defect_has_a_check() -> None:
    assert set(CHECKS) == set(DEFECTS)
    assert len(DEFECTS) >= 80


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("code", sorted(DEFECTS))
def test_file_exhibits_its_defect(malformed_dir: tuple[Path, list[CorpusEntry]], code: str) -> None:
    root, entries = malformed_dir
    (entry,) = [e for e in entries if e.defect == code]
    data = (root / entry.path).read_bytes()
    assert len(data) == entry.size
    CHECKS[code](data)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("code", sorted(DEFECTS))
def test_check_fails_on_the_valid_base(code: str) -> None:
    """Each check must reject an unmodified base file; a check that passes on anything proves nothing."""
    factory = InstanceFactory(ImageProfile(), seed=0, namespace=MALFORMED_NAMESPACE)
    base = DefectContext(code, 0, factory).valid_bytes()
    full_read_ok(base)
    # Decoding errors (ValueError covers JSON and text decoding; OSError covers gzip) count as a failed check.
    with pytest.raises((AssertionError, ValueError, OSError, zipfile.BadZipFile, StopIteration)):
        CHECKS[code](base)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_entries_describe_files(malformed_dir: tuple[Path, list[CorpusEntry]]) -> None:
    root, entries = malformed_dir
    assert [e.defect for e in entries] == list(DEFECTS)
    assert {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} == {e.path for e in entries}
    for e in entries:
        spec = DEFECTS[e.defect or ""]
        assert e.origin is Origin.MALFORMED and e.expected is spec.expected and e.reason == spec.reason
        if e.expected is Expected.REJECT:
            assert e.sop_instance_uid is None
            continue
        # Identifiable files: the manifest's identity is the file's identity.
        ds = read((root / e.path).read_bytes())
        assert (e.sop_instance_uid, e.study_instance_uid, e.series_instance_uid, e.transfer_syntax_uid) == (
            ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.file_meta.TransferSyntaxUID)


def test_outcome_classes_are_all_present() -> None:
    expected = {spec.expected for spec in DEFECTS.values()}
    assert expected == {Expected.REJECT, Expected.SERVICE_FAILURE, Expected.VALID}


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_defects_do_not_share_identities(malformed_dir: tuple[Path, list[CorpusEntry]]) -> None:
    """Each defect has its own patient/study/series/instance, so defects cannot interact in one import."""
    root, entries = malformed_dir
    seen: dict[str, set[str]] = {"SOPInstanceUID": set(), "StudyInstanceUID": set(), "PatientID": set()}
    for e in entries:
        try:
            ds = read((root / e.path).read_bytes(), stop_before_pixels=True)
        except Exception:  # unreadable files carry no identity to compare
            continue
        for keyword, values in seen.items():
            value = str(ds.get(keyword) or "")
            if value and keyword in ds and e.defect != "dicomdir":
                assert value not in values, (e.defect, keyword)
                values.add(value)


def test_deterministic_and_seeded(tmp_path: Path) -> None:
    a = generate_malformed(tmp_path / "a", seed=4)
    b = generate_malformed(tmp_path / "b", seed=4)
    c = generate_malformed(tmp_path / "c", seed=5)
    assert [x.sha256 for x in a] == [x.sha256 for x in b]
    differing = {x.defect for x, y in zip(a, c, strict=True) if x.sha256 != y.sha256}
    # Only the files without seed-derived content (empty, fixed text, 100 zero bytes) may stay the same.
    assert differing == set(DEFECTS) - {"zero_byte", "not_dicom_text", "truncated_in_preamble"}
    assert build_defect("deflated", seed=4) == (tmp_path / "a" / "deflated.dcm").read_bytes()


def test_subset_and_unknown_codes(tmp_path: Path) -> None:
    entries = generate_malformed(tmp_path, defects=["zero_byte", "gzip_dcm"])
    assert [e.path for e in entries] == ["zero_byte.dcm", "gzip_dcm.dcm.gz"]
    with pytest.raises(ValueError, match="unknown defect codes"):
        generate_malformed(tmp_path, defects=["no_such_defect"])
