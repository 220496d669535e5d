"""Deep verify's pixel check: a seeded sample of instances, each frame read with `GetImageFrame` (a touch) and
compared with the same frame of the source file.

`GetImageFrame` answers in the instance's *stored* transfer syntax (``StoredTransferSyntaxUID`` in its metadata;
absent means HTJ2K lossless, AWS DG "Supported transfer syntaxes"): most lossless sources are transcoded at import
to HTJ2K (``.4.202``, ``image/jph``) or JPEG 2000 lossless (``.4.90``, ``image/j2c``), a few syntaxes are kept as
received. So a frame is judged:

- stored as received (the stored syntax is the source's): its bytes must equal the source frame's bytes, else
  ``pixels_differ``;
- transcoded to a lossless JPEG 2000 / HTJ2K codestream: decoded (pylibjpeg-openjpeg) and compared sample by
  sample with the source frame decoded by pydicom, else ``pixels_differ``;
- anything else, or when a decoder is missing here (the worker image ships neither numpy nor openjpeg; the
  ``local`` extra does): **not comparable**, counted by reason, never a pass.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pydicom
from botocore.exceptions import ClientError
from pydicom.encaps import generate_frames

from activities.errors import classify, error_code
from activities.healthimaging import with_local_retries
from contracts.errors import ErrorType

HTJ2K_DEFAULT = "1.2.840.10008.1.2.4.202"  # what an instance without StoredTransferSyntaxUID is stored as
NATIVE = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})
# Lossless JPEG 2000 and HTJ2K: one decoder (OpenJPEG >= 2.5 reads both), lossless, so samples compare exactly.
J2K_LOSSLESS_STORED = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202"})


@dataclass
class Candidate:
    """One verified instance the sample may pick: where it is in HealthImaging and in the source."""

    sop_instance_uid: str
    key: str
    image_set_id: str
    instance: dict[str, Any]  # the instance's node of the image set's metadata document


@dataclass
class PixelOutcome:
    compared: int = 0  # frames found equal
    touches: int = 0  # GetImageFrame calls
    differing: list[tuple[Candidate, list[int]]] = field(default_factory=list)  # instance, frame numbers (1-based)
    not_comparable: Counter[str] = field(default_factory=Counter)


def sample(candidates: list[Candidate], n: int, seed: int) -> list[Candidate]:
    """``n`` of ``candidates``, the same ones for the same seed and SOP Instance UIDs in any order."""
    def rank(c: Candidate) -> str:
        return hashlib.sha256(f"{seed}:{c.sop_instance_uid}".encode()).hexdigest()
    return sorted(candidates, key=rank)[:n]


def _decoder() -> Callable[[bytes], Any] | None:
    try:
        import numpy  # noqa: F401  (openjpeg answers numpy arrays)
        import openjpeg
    except ImportError:
        return None
    decode: Callable[[bytes], Any] = openjpeg.decode
    return decode


def source_frames(ds: pydicom.Dataset) -> list[bytes]:
    """The source file's frames as stored in it: encapsulated fragments per frame, or native frames cut by size."""
    raw = ds.get("PixelData")  # by keyword: the raw bytes
    if not raw:
        return []
    frames = max(1, int(ds.get("NumberOfFrames") or 1))
    ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if ts not in NATIVE:
        return [bytes(f) for f in generate_frames(raw, number_of_frames=frames)]
    size = len(raw) // frames
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    bits = int(ds.get("BitsAllocated") or 0)
    if rows and columns and bits >= 8:
        size = rows * columns * int(ds.get("SamplesPerPixel") or 1) * (bits // 8)
    return [bytes(raw[i * size:(i + 1) * size]) for i in range(frames)]


class PixelCheck:
    """Reads frames and source files for one verification; ``requests`` counts every call made."""

    def __init__(self, s3: Any, medical_imaging: Any, datastore_id: str, source_bucket: str,
                 requests: Counter[str]) -> None:
        self._s3 = s3
        self._mi = medical_imaging
        self._ds = datastore_id
        self._bucket = source_bucket
        self._requests = requests
        self._decode = _decoder()

    def _frame(self, image_set_id: str, frame_id: str) -> bytes | None:
        self._requests["GetImageFrame"] += 1
        try:
            resp = with_local_retries(lambda: self._mi.get_image_frame(
                datastoreId=self._ds, imageSetId=image_set_id, imageFrameInformation={"imageFrameId": frame_id}))
        except ClientError as err:
            if error_code(err) == ErrorType.RESOURCE_NOT_FOUND:
                return None
            raise classify(err, "GetImageFrame") from None
        body: bytes = resp["imageFrameBlob"].read()
        return body

    def _source(self, key: str) -> pydicom.Dataset | None:
        self._requests["GetObject"] += 1
        try:
            body = self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()
        except ClientError as err:
            if error_code(err) in ("NoSuchKey", "404"):
                return None
            raise classify(err, "GetObject") from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return pydicom.dcmread(io.BytesIO(body))
            except Exception:
                return None

    def run(self, chosen: list[Candidate]) -> PixelOutcome:
        out = PixelOutcome()
        for cand in chosen:
            frame_ids = [str(f.get("ID")) for f in cand.instance.get("ImageFrames") or [] if f.get("ID")]
            ds = self._source(cand.key)
            if ds is None:
                out.not_comparable["the source file is gone or no longer DICOM"] += len(frame_ids) or 1
                continue
            try:
                mine = source_frames(ds)
            except Exception:
                out.not_comparable["the source file's pixel data cannot be cut into frames"] += len(frame_ids) or 1
                continue
            if len(mine) != len(frame_ids):
                out.differing.append((cand, []))  # frame count differs: no frame-by-frame verdict needed
                continue
            stored = str(cand.instance.get("StoredTransferSyntaxUID") or HTJ2K_DEFAULT)
            source_ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
            bad: list[int] = []
            for index, frame_id in enumerate(frame_ids):
                out.touches += 1
                theirs = self._frame(cand.image_set_id, frame_id)
                if theirs is None:
                    bad.append(index + 1)
                    continue
                verdict = self._judge(ds, index, mine[index], theirs, stored, source_ts)
                if verdict is True:
                    out.compared += 1
                elif verdict is False:
                    bad.append(index + 1)
                else:
                    out.not_comparable[verdict] += 1
            if bad:
                out.differing.append((cand, bad))
        return out

    def _judge(self, ds: pydicom.Dataset, index: int, mine: bytes, theirs: bytes, stored: str,
               source_ts: str) -> bool | str:
        """True (equal), False (different) or the reason the frame cannot be compared here."""
        if stored == source_ts or (stored == "1.2.840.10008.1.2.1" and source_ts in NATIVE):
            if theirs == mine:
                return True
            if stored == source_ts:
                return False
            # A native source returned as explicit little endian: equal once the source is little endian too.
            if source_ts == "1.2.840.10008.1.2.2":
                return "big-endian source frames are not compared with little-endian stored frames"
            return False
        if stored not in J2K_LOSSLESS_STORED:
            return f"stored as {stored}, which this check does not decode"
        if self._decode is None:
            return "no JPEG 2000 / HTJ2K decoder in this worker (pylibjpeg-openjpeg and numpy)"
        try:
            from pydicom.pixels import pixel_array

            original = pixel_array(ds, index=index, raw=True)  # samples as stored: no colour conversion
        except Exception:
            return f"the source's transfer syntax {source_ts} cannot be decoded here"
        try:
            decoded = self._decode(theirs)
        except Exception:
            return False  # a lossless codestream that does not decode is not the source's pixels
        import numpy as np

        return bool(np.squeeze(decoded).shape == np.squeeze(original).shape
                    and np.array_equal(np.squeeze(decoded).astype(np.int64), np.squeeze(original).astype(np.int64)))
