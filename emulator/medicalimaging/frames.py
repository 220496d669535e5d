"""GetImageFrame: cut one frame out of a stored P10 file and name its content type.

The emulator stores pixel data as received (``StoredTransferSyntaxUID`` = the source transfer syntax; see the
README's divergence table), so a frame is returned as the stored bytes: native frames as raw little-endian
samples (``application/octet-stream``), encapsulated frames as their codestream, with the ``Content-Type`` the
model's ``GetImageFrameResponse.contentType`` documentation gives for that stored syntax. AWS would have
transcoded most syntaxes to HTJ2K (``image/jph``); no HTJ2K/J2K encoder is installed here, and re-encoding would
make the frame disagree with the checksum in the metadata document.
"""

from __future__ import annotations

import io

import pydicom
from pydicom.encaps import generate_frames

NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
                             "1.2.840.10008.1.2.1.99"})

_VIDEO_MPEG2 = ("1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.100.1", "1.2.840.10008.1.2.4.101",
                "1.2.840.10008.1.2.4.101.1")
_VIDEO_MP4 = ("1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.102.1", "1.2.840.10008.1.2.4.103",
              "1.2.840.10008.1.2.4.103.1", "1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.104.1",
              "1.2.840.10008.1.2.4.105", "1.2.840.10008.1.2.4.105.1", "1.2.840.10008.1.2.4.106",
              "1.2.840.10008.1.2.4.106.1")

# From the model's documentation of GetImageFrameResponse.contentType, plus the DICOMweb media types for stored
# syntaxes AWS would have transcoded (JPEG lossless, JPEG-LS, JPEG 2000 lossless, RLE).
CONTENT_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.1": "application/octet-stream",
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/j2c",
    "1.2.840.10008.1.2.4.91": "image/j2c",
    "1.2.840.10008.1.2.4.201": "image/jph",
    "1.2.840.10008.1.2.4.202": "image/jph",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.4.110": "image/jxl",
    "1.2.840.10008.1.2.4.111": "image/jxl",
    "1.2.840.10008.1.2.4.112": "image/jxl",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    **{uid: "video/mpeg" for uid in _VIDEO_MPEG2},
    **{uid: "video/mp4" for uid in _VIDEO_MP4},
    "1.2.840.10008.1.2.4.107": "video/H256",  # sic: the model documents "video/H256"
    "1.2.840.10008.1.2.4.108": "video/H256",
}


def content_type(transfer_syntax_uid: str | None) -> str:
    """The ``Content-Type`` of a frame stored in ``transfer_syntax_uid`` (a missing syntax means HTJ2K)."""
    if not transfer_syntax_uid:
        return "image/jph"
    if transfer_syntax_uid in NATIVE_SYNTAXES:
        return "application/octet-stream"
    return CONTENT_TYPES.get(transfer_syntax_uid, "application/octet-stream")


def _int(value: object, default: int) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default


def extract_frame(data: bytes, index: int) -> bytes:
    """Frame ``index`` (0-based) of the P10 file ``data``, exactly as the import measured it for ``ImageFrames``.

    Mirrors ``dicom._frames``: the checksum and size in the metadata document describe these same bytes.

    Raises:
        IndexError: the file has no such frame.
    """
    ds = pydicom.dcmread(io.BytesIO(data))
    ts = str(ds.file_meta.get("TransferSyntaxUID", "") or "").strip()
    raw = ds.get("PixelData")  # by keyword: the raw value bytes
    if not raw:
        raise IndexError(index)
    frames = max(1, _int(ds.get("NumberOfFrames", 1), 1))
    if ts not in NATIVE_SYNTAXES:
        for i, chunk in enumerate(generate_frames(raw, number_of_frames=frames)):
            if i == index:
                return bytes(chunk)
        raise IndexError(index)
    rows, columns = _int(ds.get("Rows", 0), 0), _int(ds.get("Columns", 0), 0)
    if not rows or not columns:
        if index:
            raise IndexError(index)
        return bytes(raw)
    pixels = rows * columns * max(_int(ds.get("SamplesPerPixel", 1), 1), 1)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        pixels = rows * columns * 2
    bits = _int(ds.get("BitsAllocated", 16), 16)
    if bits == 1:  # bit-packed frames are not byte aligned; the import describes them as one frame
        if index:
            raise IndexError(index)
        return bytes(raw[:(pixels * frames + 7) // 8])
    size = pixels * max(bits // 8, 1)
    if index >= frames or (index + 1) * size > len(raw):
        raise IndexError(index)
    return bytes(raw[index * size:(index + 1) * size])
