"""GetImageFrame: cut one frame out of a stored P10 file, transcoding it the way AWS stores it.

AWS transcodes most lossless sources at import to its lossless storage format (HTJ2K by default, JPEG 2000
lossless when the data store's ``losslessStorageFormat`` says so; DG ``supported-transfer-syntaxes``) and keeps a
few syntaxes as they are (JPEG baseline, lossy JPEG 2000, HTJ2K...). The emulator keeps the received P10 file and
transcodes a frame on first GetImageFrame instead: native (implicit/explicit/big-endian/deflated), RLE and JPEG /
JPEG-LS lossless frames become **lossless JPEG 2000 codestreams** (``image/j2c``, ``StoredTransferSyntaxUID``
1.2.840.10008.1.2.4.90), encoded with pylibjpeg-openjpeg from the decoded pixels of that one frame and cached on
disk by frame id. Lossless J2K stands in for HTJ2K because no HTJ2K encoder is installable from the reachable
package index; it is AWS's other lossless storage format, so clients handling both decode it unchanged.

Decided at import (:func:`stored_syntax`, written into the metadata document) and honoured here, so the metadata
and the frames agree. Without the encoder (or without a pydicom decoder for the source syntax) nothing is
transcoded: the frame is the stored bytes with the ``Content-Type`` the model documents for the stored syntax.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from pydicom.encaps import generate_frames

log = logging.getLogger("emulator.frames")

NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
                             "1.2.840.10008.1.2.1.99"})

J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
# Sources AWS transcodes to its lossless storage format (DG supported-transfer-syntaxes, entries without "*")
# that the emulator can turn into lossless J2K exactly: native, RLE, JPEG lossless, JPEG-LS. JPEG 2000 lossless
# sources are already the stand-in format; lossy sources AWS also transcodes (JPEG extended .51) stay stored.
TRANSCODED_SOURCES = NATIVE_SYNTAXES | frozenset({RLE_LOSSLESS, "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
                                                  "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})

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


# ---- transcoding to lossless JPEG 2000 (the stand-in for AWS's HTJ2K)


@functools.cache
def _encoder() -> Callable[..., bytes] | None:
    """pylibjpeg-openjpeg's array encoder, or None (logged once) when it is not installed."""
    try:
        import openjpeg
    except ImportError:
        log.warning("pylibjpeg-openjpeg is not installed: frames are served as stored, not transcoded to lossless "
                    "JPEG 2000 (install the 'local' extra)")
        return None
    # 2.x calls it encode_array in newer releases and encode in older ones; both take (arr, bits_stored=, ...).
    fn: Callable[..., bytes] | None = getattr(openjpeg, "encode_array", None) or getattr(openjpeg, "encode", None)
    if fn is None:
        log.warning("this pylibjpeg-openjpeg has no array encoder: frames are served as stored")
    return fn


@functools.cache
def _can_decode(transfer_syntax_uid: str) -> bool:
    """Whether pydicom can decode pixel data of this syntax here (JPEG lossless / JPEG-LS need extra plugins)."""
    if transfer_syntax_uid in NATIVE_SYNTAXES:
        return True
    try:
        from pydicom.pixels.decoders.base import get_decoder

        return bool(get_decoder(transfer_syntax_uid).is_available)
    except (ImportError, NotImplementedError, ValueError):
        return False


def stored_syntax(source_ts: str, bits_allocated: Any, photometric: Any, has_frames: bool) -> str:
    """The ``StoredTransferSyntaxUID`` of an instance received in ``source_ts``: lossless J2K when its frames will
    be transcoded, else the source syntax.

    Kept as received: AWS's preserved syntaxes; instances without frames; 1-bit (binary segmentation, which AWS
    also keeps in explicit little endian, and whose packed frames are not byte aligned); 32-bit samples (more than
    the encoder's 24 bits); YBR_FULL_422 (J2K holds no chroma subsampling, so the decoded frame would not match the
    metadata's PhotometricInterpretation); syntaxes pydicom cannot decode here.
    """
    if source_ts not in TRANSCODED_SOURCES or not has_frames:
        return source_ts
    if _int(bits_allocated, 0) not in (8, 16) or str(photometric or "").strip() == "YBR_FULL_422":
        return source_ts
    if not _can_decode(source_ts) or _encoder() is None:
        return source_ts
    return J2K_LOSSLESS


def transcode_frame(data: bytes, index: int) -> bytes:
    """Frame ``index`` (0-based) of the P10 file ``data`` as a lossless JPEG 2000 codestream.

    The decoded samples are encoded unchanged (``raw``: no colour conversion, no multi-component transform), so
    decoding the codestream gives exactly pydicom's pixel array of that frame.

    Raises:
        IndexError: the file has no such frame.
        RuntimeError: no encoder is installed.
    """
    import numpy as np
    from pydicom.pixels import pixel_array

    encode = _encoder()
    if encode is None:
        raise RuntimeError("no JPEG 2000 encoder")
    ds = pydicom.dcmread(io.BytesIO(data))
    if not 0 <= index < max(1, _int(ds.get("NumberOfFrames", 1), 1)):
        raise IndexError(index)
    arr = pixel_array(ds, index=index, raw=True)
    # The encoder wants a C-contiguous array in native byte order (big-endian sources decode to >i2/>u2 views).
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))
    bits_stored = _int(ds.get("BitsStored", 0), 0) or None
    try:
        return encode(arr, bits_stored=bits_stored, use_mct=False)
    except (RuntimeError, ValueError):
        # Samples outside BitsStored (stray high bits): let the encoder size the precision; still lossless.
        return encode(arr, use_mct=False)


def get_frame(doc: dict[str, Any], index: int, frame_id: str, load_p10: Callable[[], bytes],
              cache_dir: Path) -> tuple[bytes, str]:
    """(bytes, Content-Type) of frame ``index`` of the instance whose metadata document is ``doc``.

    A frame the document declares transcoded (``StoredTransferSyntaxUID`` lossless J2K, source syntax something
    else) is encoded once and kept at ``cache_dir/<id[:2]>/<id>.j2c``: frame ids derive from the file's SHA-256 and
    the frame index, so a cached codestream never goes stale. Everything else is the stored bytes.

    Raises:
        IndexError: the file has no such frame.
        FileNotFoundError: the P10 file is not stored (``--store-instances false``).
    """
    stored = str(doc.get("StoredTransferSyntaxUID") or "")
    source = str((doc.get("DICOM") or {}).get("TransferSyntaxUID") or stored)
    if stored == J2K_LOSSLESS and source != J2K_LOSSLESS:
        path = cache_dir / frame_id[:2] / f"{frame_id}.j2c"
        try:
            return path.read_bytes(), CONTENT_TYPES[J2K_LOSSLESS]
        except FileNotFoundError:
            pass
        data = load_p10()
        try:
            encoded = transcode_frame(data, index)
        except IndexError:
            raise
        except Exception as exc:  # a frame the codecs refuse: serve it as stored rather than failing the call
            log.warning("frame %s could not be transcoded to JPEG 2000 (%s); serving the stored bytes",
                        frame_id, type(exc).__name__)
            return extract_frame(data, index), content_type(source)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(encoded)
        os.replace(tmp, path)  # atomic: concurrent first reads of a frame never see half a codestream
        return encoded, CONTENT_TYPES[J2K_LOSSLESS]
    return extract_frame(load_p10(), index), content_type(stored)
