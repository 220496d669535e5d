"""Zero padding after the last element: accepted by default (no AWS document says the import rejects it), failed
as truncated under the ``strict_trailing_padding`` fault; bytes that are not padding stay a truncation."""

from __future__ import annotations

import copy
import io
import warnings

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian, RLELossless

from emulator.medicalimaging.dicom import InstanceRejected, parse_instance

_BASE = pydicom.dcmread(get_testdata_file("CT_small.dcm"))


def _image(encoding: str) -> bytes:
    """A valid CT whose last element is Pixel Data (CT_small's own trailing padding element removed)."""
    ds: Dataset = copy.deepcopy(_BASE)
    del ds[0xFFFCFFFC]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if encoding == "rle":
            ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
        elif encoding == "big":
            ds.PixelData = ds.pixel_array.astype(">i2").tobytes()  # OW is written as given: swap it ourselves
            ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
        elif encoding == "implicit":
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, ds, enforce_file_format=True, little_endian=encoding != "big",
                         implicit_vr=encoding == "implicit")
    return buf.getvalue()


ENCODINGS = ("explicit", "implicit", "big", "rle")
PADDINGS = (1, 7, 8, 9, 512, 4096)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("pad", PADDINGS)
def test_zero_padding_after_pixel_data_is_accepted_by_default(encoding: str, pad: int) -> None:
    data = _image(encoding)
    plain, padded = parse_instance(data), parse_instance(data + b"\0" * pad)
    assert padded.sop_instance_uid == plain.sop_instance_uid
    # The padding is not an attribute: pydicom reads each 8 zero bytes as an element (0000,0000).
    assert padded.instance == plain.instance and padded.patient == plain.patient and padded.vrs == plain.vrs
    assert padded.frames == plain.frames


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("pad", PADDINGS)
def test_strict_fault_fails_the_same_files_as_truncated(encoding: str, pad: int) -> None:
    data = _image(encoding)
    parse_instance(data, strict_trailing_padding=True)  # nothing trails: strict has nothing to say
    with pytest.raises(InstanceRejected, match=rf"^Input file is truncated: {pad} trailing bytes after element "
                                               r"\(7FE0,0010\) do not form a complete data element$"):
        parse_instance(data + b"\0" * pad, strict_trailing_padding=True)


@pytest.mark.parametrize("tail", [b"\x01", b"\0" * 7 + b"\x01", b"\xff" * 8, b"\0" * 100 + b"garbage"])
def test_bytes_that_are_not_padding_stay_a_truncation(tail: bytes) -> None:
    with pytest.raises(InstanceRejected, match=r"^Input file (is truncated: \d+ trailing bytes|could not be parsed as DICOM)"):
        parse_instance(_image("explicit") + tail)


def test_only_zero_padding_after_the_meta_is_no_data_set() -> None:
    data = _image("explicit")
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")
    with pytest.raises(InstanceRejected, match="no data set follows"):
        parse_instance(data[:meta_end] + b"\0" * 64)


