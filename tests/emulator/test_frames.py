"""GetImageFrame's lossless JPEG 2000 stand-in for HTJ2K: which frames are transcoded, that the transcoding is
exact, the on-disk cache, and the fallbacks (preserved syntaxes, no encoder)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.uid import UID

from emulator.medicalimaging import frames
from emulator.medicalimaging.dicom import parse_instance
from tests.emulator.conftest import Importer
from tests.emulator.test_mutations import import_one, metadata

openjpeg = pytest.importorskip("openjpeg")

J2K = "1.2.840.10008.1.2.4.90"
STUDY = "1.2.826.0.52"


def _p10(name: str, series: str, sop: str) -> bytes:
    """pydicom test file ``name`` with our own UIDs, as P10 bytes."""
    ds = pydicom.dcmread(str(get_testdata_file(name)))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = STUDY, series, sop
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def _pixels(name: str) -> Any:
    return pydicom.dcmread(str(get_testdata_file(name))).pixel_array


def _import(importer: Importer, prefix: str, name: str, series: str) -> tuple[str, dict[str, Any]]:
    """Import one test file; (image set id, its instance metadata)."""
    sop = series + ".1"
    set_id = import_one(importer, prefix, {"f.dcm": _p10(name, series, sop)})
    inst = metadata(importer.mi, importer.datastore_id, set_id)["Study"]["Series"][series]["Instances"][sop]
    return set_id, inst


def _frame(importer: Importer, set_id: str, inst: dict[str, Any], index: int) -> tuple[bytes, str]:
    got = importer.mi.get_image_frame(datastoreId=importer.datastore_id, imageSetId=set_id,
                                      imageFrameInformation={"imageFrameId": inst["ImageFrames"][index]["ID"]})
    return got["imageFrameBlob"].read(), got["contentType"]


class TestGetImageFrameTranscodes:
    def test_ct_small_is_a_lossless_j2k_codestream(self, importer: Importer) -> None:
        set_id, inst = _import(importer, "in/ct/", "CT_small.dcm", "1.2.826.0.52.1")
        assert inst["StoredTransferSyntaxUID"] == J2K
        data, ctype = _frame(importer, set_id, inst, 0)
        assert ctype == "image/j2c"
        assert data[:2] == b"\xff\x4f"  # SOC marker: a raw codestream, not a JP2 file
        decoded = openjpeg.decode(data)
        expected = _pixels("CT_small.dcm")
        assert decoded.dtype == expected.dtype and (decoded == expected).all()
        assert _frame(importer, set_id, inst, 0) == (data, ctype), "served again (from the cache) unchanged"

    @pytest.mark.parametrize("name", ["emri_small.dcm", "emri_small_RLE.dcm"])
    def test_multi_frame_files_give_the_requested_frame(self, importer: Importer, name: str) -> None:
        series = "1.2.826.0.52.2" if name == "emri_small.dcm" else "1.2.826.0.52.3"
        set_id, inst = _import(importer, f"in/{series}/", name, series)
        assert inst["StoredTransferSyntaxUID"] == J2K and len(inst["ImageFrames"]) == 10
        expected = _pixels(name)
        for index in (7, 0, 3):
            data, ctype = _frame(importer, set_id, inst, index)
            assert ctype == "image/j2c"
            assert (openjpeg.decode(data) == expected[index]).all(), f"frame {index}"

    def test_preserved_syntaxes_are_served_as_stored(self, importer: Importer) -> None:
        name = "emri_small_jpeg_2k_lossless.dcm"
        set_id, inst = _import(importer, "in/j2k/", name, "1.2.826.0.52.4")
        assert inst["StoredTransferSyntaxUID"] == J2K
        source = pydicom.dcmread(str(get_testdata_file(name)))
        assert _frame(importer, set_id, inst, 4) == (list(generate_frames(source.PixelData, number_of_frames=10))[4],
                                                     "image/j2c")

        name = "SC_rgb_jpeg_dcmtk.dcm"
        set_id, inst = _import(importer, "in/jpeg/", name, "1.2.826.0.52.5")
        assert inst["StoredTransferSyntaxUID"] == "1.2.840.10008.1.2.4.50"
        source = pydicom.dcmread(str(get_testdata_file(name)))
        assert _frame(importer, set_id, inst, 0) == (next(generate_frames(source.PixelData, number_of_frames=1)),
                                                     "image/jpeg")


# ---- frames.py in-process: the import-time decision, the cache, the fallbacks


def _doc(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(parse_instance(_p10(name, "1.2.826.0.52.9", "1.2.826.0.52.9.1"))
                                     .instance_document())
    return doc


@pytest.mark.parametrize(("source", "bits", "photometric", "has_frames", "expected"), [
    ("1.2.840.10008.1.2", 16, "MONOCHROME2", True, J2K),
    ("1.2.840.10008.1.2.2", 8, "RGB", True, J2K),
    ("1.2.840.10008.1.2.1.99", 8, "MONOCHROME2", True, J2K),
    ("1.2.840.10008.1.2.5", 16, "MONOCHROME1", True, J2K),
    ("1.2.840.10008.1.2.1", 1, "MONOCHROME2", True, "1.2.840.10008.1.2.1"),  # binary segmentation: kept (AWS too)
    ("1.2.840.10008.1.2.1", 32, "MONOCHROME2", True, "1.2.840.10008.1.2.1"),  # beyond the encoder's 24 bits
    ("1.2.840.10008.1.2.1", 8, "YBR_FULL_422", True, "1.2.840.10008.1.2.1"),
    ("1.2.840.10008.1.2.1", 16, "MONOCHROME2", False, "1.2.840.10008.1.2.1"),  # no pixel data
    ("1.2.840.10008.1.2.4.50", 8, "YBR_FULL_422", True, "1.2.840.10008.1.2.4.50"),
    ("1.2.840.10008.1.2.4.91", 16, "MONOCHROME2", True, "1.2.840.10008.1.2.4.91"),
    ("1.2.840.10008.1.2.4.202", 16, "MONOCHROME2", True, "1.2.840.10008.1.2.4.202"),
])
def test_stored_syntax(source: str, bits: int, photometric: str, has_frames: bool, expected: str) -> None:
    assert frames.stored_syntax(source, bits, photometric, has_frames) == expected


def test_jpeg_lossless_is_transcoded_only_when_pydicom_can_decode_it() -> None:
    from pydicom.pixels.decoders.base import get_decoder

    can = get_decoder("1.2.840.10008.1.2.4.70").is_available
    assert frames.stored_syntax("1.2.840.10008.1.2.4.70", 8, "MONOCHROME2", True) == \
        (J2K if can else "1.2.840.10008.1.2.4.70")


def test_big_endian_frames_decode_to_the_pixel_array() -> None:
    data = (Path(str(get_testdata_file("MR_small_bigendian.dcm")))).read_bytes()
    assert (openjpeg.decode(frames.transcode_frame(data, 0)) == _pixels("MR_small_bigendian.dcm")).all()
    with pytest.raises(IndexError):
        frames.transcode_frame(data, 1)


def test_a_frame_is_encoded_once_and_cached_by_frame_id(tmp_path: Path) -> None:
    p10 = _p10("CT_small.dcm", "1.2.826.0.52.9", "1.2.826.0.52.9.1")
    doc = _doc("CT_small.dcm")
    frame_id = doc["ImageFrames"][0]["ID"]
    loads: list[int] = []

    def load() -> bytes:
        loads.append(1)
        return p10

    first = frames.get_frame(doc, 0, frame_id, load, tmp_path)
    assert first[1] == "image/j2c" and loads == [1]
    assert (tmp_path / frame_id[:2] / f"{frame_id}.j2c").read_bytes() == first[0]
    assert frames.get_frame(doc, 0, frame_id, load, tmp_path) == first
    assert loads == [1], "the second read comes from the cache without reading the P10 file"


def test_without_the_encoder_frames_are_the_stored_bytes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    imported_with_encoder = _doc("CT_small.dcm")
    monkeypatch.setattr(frames, "_encoder", lambda: None)
    doc = _doc("CT_small.dcm")
    assert doc["StoredTransferSyntaxUID"] == "1.2.840.10008.1.2.1", "metadata follows what frames will be"
    p10 = _p10("CT_small.dcm", "1.2.826.0.52.9", "1.2.826.0.52.9.1")
    pixel_data = pydicom.dcmread(io.BytesIO(p10)).PixelData
    frame_id = doc["ImageFrames"][0]["ID"]
    assert frames.get_frame(doc, 0, frame_id, lambda: p10, tmp_path) == (pixel_data, "application/octet-stream")
    # Imported while the encoder was there, served after it went: still an answer, the stored bytes.
    assert frames.get_frame(imported_with_encoder, 0, frame_id, lambda: p10, tmp_path) == \
        (pixel_data, "application/octet-stream")
    assert not tmp_path.joinpath(frame_id[:2]).exists()
