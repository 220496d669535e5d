"""Instance identity: the same dataset and pixels in any encoding is one instance; a real change is named.

Every case is built here from pydicom's test images (16-bit signed and unsigned, 8-bit RGB, 32-bit, multi-frame,
with and without sequences), re-encoded the way another archive would have written them, and read back through
the real header parse, so each rule is checked for the class, not for one file.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from activities.dicom_header import parse_header
from activities.instance_identity import COMPARE_MAX_BYTES, Sameness, canonical_elements, compare
from activities.normalize import to_instance
from contracts.records import InstanceRecord, ParsedRecord

KEY = b"identity-test-key-0123456789"
SOURCES = ("CT_small.dcm", "MR_small.dcm", "SC_rgb.dcm", "SC_rgb_32bit.dcm", "emri_small.dcm", "rtdose.dcm",
           "examples_palette.dcm", "examples_overlay.dcm")  # OW lookup tables; an overlay and an icon sequence
SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian)


def load(name: str) -> FileDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(get_testdata_file(name))
    ds.PatientName, ds.PatientID = "SYNTH^IDENTITY^CANARY", "SYNTH-ID-7731"
    return ds


def encode(source: FileDataset, syntax: str, change: Callable[[FileDataset], None] | None = None) -> bytes:
    """``source`` written in ``syntax`` with its pixel values unchanged (byte-swapped for big endian)."""
    ds = copy.deepcopy(source)
    pixels = ds.pixel_array if "PixelData" in ds else None
    if change is not None:
        change(ds)
        pixels = ds.pixel_array if "PixelData" in ds else None
    big = syntax == ExplicitVRBigEndian
    if big:
        _swap_words(ds)  # pydicom writes OW as given: every OW value must be big endian already
    if pixels is not None:
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(">" if big else "<")).tobytes()
        ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom.dcmwrite(buf, ds, enforce_file_format=True, little_endian=syntax != ExplicitVRBigEndian,
                         implicit_vr=syntax == ImplicitVRLittleEndian)
    return buf.getvalue()


def _swap_words(ds: Dataset, top: bool = True) -> None:
    """Byte-swap every OW value in place (lookup tables, overlays, an icon's pixels); the top-level Pixel Data is
    re-encoded from its values instead."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _swap_words(item, top=False)
        elif "OW" in elem.VR and isinstance(elem.value, bytes) and not (top and elem.tag == 0x7FE00010):
            elem.value = np.frombuffer(elem.value, "<u2").astype(">u2").tobytes()
            elem.VR = "OW"


class Files:
    """Files in memory, parsed the way the parse stage parses them, and read the way planning reads them."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.reads: list[tuple[str, int | None]] = []

    def add(self, key: str, data: bytes) -> InstanceRecord:
        self.data[key] = data
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = parse_header(data, len(data), key, KEY)
        assert result.readable, [f.code for f in result.findings]
        record = ParsedRecord(key=key, size=len(data), etag=key, readable=True, header_bytes=result.header_bytes,
                              header_sha256=key, **result.values)
        return to_instance(record)

    def fetch(self, key: str, size: int, want: int | None) -> bytes | None:
        self.reads.append((key, want))
        data = self.data.get(key)
        return data if data is None or want is None else data[:want]

    def compare(self, first: InstanceRecord, other: InstanceRecord) -> Sameness:
        return compare(first, other, self.fetch)


@pytest.fixture
def files() -> Files:
    return Files()


class TestSameInstanceOtherEncoding:
    @pytest.mark.parametrize("syntax", SYNTAXES)
    @pytest.mark.parametrize("name", SOURCES)
    def test_any_native_syntax_is_the_same_instance(self, files: Files, name: str, syntax: str) -> None:
        source = load(name)
        first = files.add("a", encode(source, ExplicitVRLittleEndian))
        other = files.add("b", encode(source, syntax))
        assert first.dataset_fingerprint and first.dataset_fingerprint == other.dataset_fingerprint
        verdict = files.compare(first, other)
        assert verdict.same, verdict
        if syntax != ExplicitVRLittleEndian:
            assert verdict.other_encoding == f"transfer syntax {ExplicitVRLittleEndian} and {syntax}"

    @pytest.mark.parametrize("name", SOURCES)
    def test_another_file_meta_group_only(self, files: Files, name: str) -> None:
        source = load(name)
        other = copy.deepcopy(source)
        other.file_meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.99"
        other.file_meta.ImplementationVersionName = "ANOTHER_TOOL"
        other.file_meta.SourceApplicationEntityTitle = "OTHER_AE"
        first = files.add("a", encode(source, ExplicitVRLittleEndian))
        verdict = files.compare(first, files.add("b", encode(other, ExplicitVRLittleEndian)))
        assert verdict.same and verdict.other_encoding.startswith("file meta differs in ")
        assert "ImplementationVersionName" in verdict.other_encoding and "ANOTHER_TOOL" not in verdict.other_encoding

    def test_equal_headers_skip_the_header_reads(self, files: Files) -> None:
        source = load("MR_small.dcm")
        first = files.add("a", encode(source, ExplicitVRLittleEndian))
        other = files.add("b", encode(source, ExplicitVRBigEndian))
        assert files.compare(first, other).same
        assert files.reads == [("a", None), ("b", None)]  # straight to the whole files, each read once

    def test_compressed_copies_in_one_syntax_compare_their_frames(self, files: Files) -> None:
        ds = load("SC_rgb_rle.dcm")
        frames = list(generate_frames(ds.PixelData, number_of_frames=1))
        with_table = copy.deepcopy(ds)
        with_table.PixelData = encapsulate(frames, has_bot=True)
        first = files.add("a", encode_as_is(ds))
        assert files.compare(first, files.add("b", encode_as_is(with_table))).same


def _nested(defined: bool) -> Callable[[FileDataset], None]:
    """Two sequences, one nested in the other's item, all written with defined or undefined lengths."""
    def change(ds: FileDataset) -> None:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "T-D1100", "SRT", "Head"
        view = Dataset()
        view.AnatomicRegionSequence = pydicom.Sequence([code])
        view.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.7"
        ds.ReferencedImageSequence = pydicom.Sequence([view, Dataset()])
        for sequence in (ds.ReferencedImageSequence, view.AnatomicRegionSequence, ds.OtherPatientIDsSequence):
            sequence.is_undefined_length = not defined
            for item in sequence:
                item.is_undefined_length_sequence_item = not defined
    return change


class TestSequences:
    @pytest.mark.parametrize("syntax", SYNTAXES)
    def test_defined_and_undefined_lengths_in_any_syntax_are_one_instance(self, files: Files, syntax: str) -> None:
        """A header read keeps a defined-length sequence as raw bytes and converts an undefined-length one: both
        canonicalise to the same value, nested sequences and empty items included."""
        source = load("CT_small.dcm")
        first = files.add("a", encode(source, ExplicitVRLittleEndian, _nested(defined=True)))
        for key, defined in (("b", True), ("c", False)):
            other = files.add(key, encode(source, syntax, _nested(defined)))
            assert other.dataset_fingerprint == first.dataset_fingerprint, (syntax, defined)
            assert files.compare(first, other).same

    @pytest.mark.parametrize("syntax", SYNTAXES)
    def test_a_change_deep_in_a_nested_item_names_the_outer_sequence(self, files: Files, syntax: str) -> None:
        source = load("CT_small.dcm")

        def deeper(ds: FileDataset) -> None:
            _nested(defined=True)(ds)
            ds.ReferencedImageSequence[0].AnatomicRegionSequence[0].CodeMeaning = "Neck"

        first = files.add("a", encode(source, ExplicitVRLittleEndian, _nested(defined=False)))
        verdict = files.compare(first, files.add("b", encode(source, syntax, deeper)))
        assert verdict.attributes == ("ReferencedImageSequence",) and "Neck" not in repr(verdict)

    def test_an_empty_item_counts(self, files: Files) -> None:
        source = load("CT_small.dcm")

        def fewer(ds: FileDataset) -> None:
            _nested(defined=True)(ds)
            del ds.ReferencedImageSequence[1]

        first = files.add("a", encode(source, ExplicitVRLittleEndian, _nested(defined=True)))
        assert files.compare(first, files.add("b", encode(source, ExplicitVRLittleEndian, fewer))).attributes == (
            "ReferencedImageSequence",)

    @pytest.mark.parametrize("syntax", SYNTAXES)
    def test_raw_and_converted_sequences_canonicalise_alike(self, syntax: str) -> None:
        """Walking the raw bytes and pydicom's conversion of the same sequence give one canonical value."""
        data = encode(load("CT_small.dcm"), syntax, _nested(defined=True))
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        raw = dict(canonical_elements(ds))
        assert ds.ReferencedImageSequence[0].AnatomicRegionSequence[0].CodeValue  # converts them in place
        assert ds.OtherPatientIDsSequence[0].PatientID
        assert dict(canonical_elements(ds)) == raw

    def test_a_malformed_sequence_is_fingerprinted_as_stored(self) -> None:
        source = load("CT_small.dcm")
        data = bytearray(encode(source, ExplicitVRLittleEndian, _nested(defined=True)))
        at = data.index(b"\x08\x00\x40\x11SQ")  # ReferencedImageSequence, explicit VR little endian
        data[at + 12:at + 16] = b"\x01\x02\x03\x04"  # its first item tag is no item tag any more
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = parse_header(bytes(data), len(data), "x", KEY)
        assert result.readable and result.values["dataset_fingerprint"]


def encode_as_is(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _set(keyword: str, value: object) -> Callable[[FileDataset], None]:
    return lambda ds: setattr(ds, keyword, value)


def _delete(keyword: str) -> Callable[[FileDataset], None]:
    return lambda ds: delattr(ds, keyword)


def _private(ds: FileDataset) -> None:
    block = ds.private_block(0x0033, "SYNTH CREATOR", create=True)
    block.add_new(0x01, "LO", "VENDOR VALUE")


def _pixel(ds: FileDataset) -> None:
    array = ds.pixel_array.copy()
    array.flat[array.size // 2] ^= 1
    ds.PixelData = array.tobytes()


def _sequence_item(ds: FileDataset) -> None:
    ds.OtherPatientIDsSequence[1].TypeOfPatientID = "RFID"


CHANGES: dict[str, tuple[Callable[[FileDataset], None], list[str]]] = {
    "an attribute": (_set("SeriesDescription", "ANOTHER DESCRIPTION"), ["SeriesDescription"]),
    "a patient value": (_set("PatientName", "SYNTH^OTHER^CANARY"), ["PatientName"]),
    "a number": (_set("InstanceNumber", 99), ["InstanceNumber"]),
    "a missing attribute": (_delete("StudyID"), ["StudyID"]),
    "a private element": (_private, ["(0033,0010)", "(0033,1001)"]),
    "one pixel": (_pixel, ["PixelData"]),
    "a sequence item": (_sequence_item, ["OtherPatientIDsSequence"]),
}


class TestRealDifferencesAreNamed:
    @pytest.mark.parametrize("syntax", SYNTAXES)
    @pytest.mark.parametrize("change", sorted(CHANGES))
    def test_the_differing_attributes_and_nothing_else(self, files: Files, change: str, syntax: str) -> None:
        apply, names = CHANGES[change]
        source = load("CT_small.dcm")
        first = files.add("a", encode(source, ExplicitVRLittleEndian))
        other = files.add("b", encode(source, syntax, apply))
        verdict = files.compare(first, other)
        assert not verdict.same and list(verdict.attributes) == names and not verdict.why, verdict
        text = repr(verdict)
        assert "CANARY" not in text and "SYNTH-ID" not in text and "ANOTHER" not in text and "VENDOR" not in text

    def test_words_left_in_the_wrong_byte_order_are_a_difference(self, files: Files) -> None:
        """A big endian file whose lookup tables were copied without swapping holds other values."""
        source = load("examples_palette.dcm")
        first = files.add("a", encode(source, ExplicitVRLittleEndian))
        good = encode(source, ExplicitVRBigEndian)
        bad = bytearray(good)
        ds = pydicom.dcmread(io.BytesIO(good))
        table = ds["RedPaletteColorLookupTableData"]
        start = good.index(table.value)
        bad[start:start + len(table.value)] = np.frombuffer(table.value, ">u2").astype("<u2").tobytes()
        assert files.compare(first, files.add("b", good)).same
        verdict = files.compare(first, files.add("c", bytes(bad)))
        assert verdict.attributes == ("RedPaletteColorLookupTableData",)

    def test_other_headers_are_named_from_ranged_reads(self, files: Files) -> None:
        source = load("emri_small.dcm")
        first = files.add("a", encode(source, ExplicitVRLittleEndian))
        other = files.add("b", encode(source, ExplicitVRBigEndian, _set("SeriesDescription", "OTHER")))
        assert files.compare(first, other).attributes == ("SeriesDescription",)
        assert [key for key, _ in files.reads] == ["a", "b"]
        assert all(want is not None and want < len(files.data[key]) for key, want in files.reads)  # no pixels

    def test_native_against_compressed_is_not_proven_the_same(self, files: Files) -> None:
        compressed = load("SC_rgb_rle.dcm")
        native = copy.deepcopy(compressed)
        native.decompress(generate_instance_uid=False)
        first = files.add("a", encode(native, ExplicitVRLittleEndian))
        other = files.add("b", encode_as_is(compressed))
        verdict = files.compare(first, other)
        assert not verdict.same and "PixelData" in verdict.attributes
        assert "native in one file and encapsulated 1.2.840.10008.1.2.5 in the other" in verdict.why
        assert str(RLELossless) == "1.2.840.10008.1.2.5"


class TestNoVerdictOfSamenessWithoutProof:
    def test_a_file_gone_since_it_was_listed(self, files: Files) -> None:
        source = load("MR_small.dcm")
        first = files.add("a", encode(source, ExplicitVRLittleEndian))
        other = files.add("b", encode(source, ExplicitVRBigEndian))
        del files.data["b"]
        verdict = files.compare(first, other)
        assert not verdict.same and "changed or disappeared" in verdict.why

    def test_a_file_that_cannot_be_read_whole(self, files: Files) -> None:
        source = load("MR_small.dcm")
        first = files.add("a", encode(source, ExplicitVRLittleEndian))
        other = files.add("b", encode(source, ExplicitVRBigEndian))
        files.data["b"] = b"rewritten since it was parsed: no longer DICOM " * 4
        verdict = files.compare(first, other)
        assert not verdict.same and verdict.attributes == () and "cannot be read whole as DICOM" in verdict.why

    def test_pixels_cut_short_since_parse_are_a_pixel_difference(self, files: Files) -> None:
        source = load("MR_small.dcm")
        first = files.add("a", encode(source, ExplicitVRLittleEndian))
        other = files.add("b", encode(source, ExplicitVRBigEndian))
        files.data["b"] = files.data["b"][:-1000]
        verdict = files.compare(first, other)
        assert not verdict.same and verdict.attributes == ("PixelData",)

    def test_a_failing_read_is_an_error_not_a_verdict(self, files: Files) -> None:
        """An S3 error (throttling, access) must fail the activity, to be retried, never judge the file."""
        source = load("MR_small.dcm")
        first = files.add("a", encode(source, ExplicitVRLittleEndian))
        other = files.add("b", encode(source, ExplicitVRBigEndian))

        def failing(key: str, size: int, want: int | None) -> bytes | None:
            raise RuntimeError("SlowDown")

        with pytest.raises(RuntimeError, match="SlowDown"):
            compare(first, other, failing)
        with pytest.raises(RuntimeError, match="SlowDown"):
            compare(first.model_copy(update={"dataset_fingerprint": "x"}), other, files.fetch, fetch_first=failing)

    def test_files_too_large_to_read_whole(self, files: Files) -> None:
        source = load("MR_small.dcm")
        first = files.add("a", encode(source, ExplicitVRLittleEndian))
        other = files.add("b", encode(source, ExplicitVRBigEndian)).model_copy(
            update={"size": COMPARE_MAX_BYTES + 1})
        verdict = files.compare(first, other)
        assert not verdict.same and "not read whole" in verdict.why and files.reads == []

    def test_records_without_fingerprints_are_compared_by_reading(self, files: Files) -> None:
        source = load("CT_small.dcm")
        first = files.add("a", encode(source, ExplicitVRLittleEndian)).model_copy(
            update={"dataset_fingerprint": "", "header_bytes": 0})
        other = files.add("b", encode(source, ImplicitVRLittleEndian)).model_copy(update={"dataset_fingerprint": ""})
        assert files.compare(first, other).same


def test_pixels_are_compared_as_values_not_bytes() -> None:
    """The 16-bit image in big endian holds other bytes than in little endian, yet the same values."""
    source = load("MR_small.dcm")
    little, big = encode(source, ExplicitVRLittleEndian), encode(source, ExplicitVRBigEndian)
    values = [pydicom.dcmread(io.BytesIO(d)).pixel_array for d in (little, big)]
    assert np.array_equal(*values)
    raw = [pydicom.dcmread(io.BytesIO(d))["PixelData"].value for d in (little, big)]
    assert raw[0] != raw[1]
