"""The deep pixel check's pieces: the seeded sample, and how one frame is judged by what the service stored it as
(bytes kept as received; lossless JPEG 2000 / HTJ2K decoded; anything else, or no decoder, "not comparable")."""

from __future__ import annotations

import io
from collections import Counter

import pydicom

from activities.verify_pixels import Candidate, PixelCheck, sample, source_frames
from tests.support.dicom import make_instance, uid


def test_the_sample_depends_on_the_seed_and_the_instances_only() -> None:
    cands = [Candidate(f"1.2.{n}", f"k{n}", "s", {}) for n in range(50)]
    picked = [c.sop_instance_uid for c in sample(cands, 5, 3)]
    assert picked == [c.sop_instance_uid for c in sample(list(reversed(cands)), 5, 3)]
    assert picked != [c.sop_instance_uid for c in sample(cands, 5, 4)]
    assert len(sample(cands, 500, 3)) == 50


class TestJudge:
    """How one frame is judged, by what the service stored it as (no server needed: nothing is read)."""

    def _check(self, decode: bool) -> PixelCheck:
        check = PixelCheck(None, None, "a" * 32, "bkt", Counter())
        if not decode:
            check._decode = None  # as in the worker image, which ships no JPEG 2000 decoder
        return check

    def test_stored_as_received_compares_bytes(self) -> None:
        ds = pydicom.dcmread(io.BytesIO(make_instance(uid(), uid())))
        mine = source_frames(ds)[0]
        ts = str(ds.file_meta.TransferSyntaxUID)
        assert self._check(True)._judge(ds, 0, mine, mine, ts, ts) is True
        assert self._check(True)._judge(ds, 0, mine, mine[:-1] + b"\x00", ts, ts) is False

    def test_lossless_codestreams_are_decoded_or_not_comparable(self) -> None:
        import numpy as np
        import openjpeg

        ds = pydicom.dcmread(io.BytesIO(make_instance(uid(), uid())))
        mine, ts = source_frames(ds)[0], str(ds.file_meta.TransferSyntaxUID)
        arr = ds.pixel_array
        same = openjpeg.encode(np.ascontiguousarray(arr), use_mct=False)
        other = openjpeg.encode(np.ascontiguousarray(arr + 1), use_mct=False)
        for stored in ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.202"):
            assert self._check(True)._judge(ds, 0, mine, same, stored, ts) is True
            assert self._check(True)._judge(ds, 0, mine, other, stored, ts) is False
            assert self._check(True)._judge(ds, 0, mine, b"not a codestream", stored, ts) is False
            reason = self._check(False)._judge(ds, 0, mine, same, stored, ts)
            assert isinstance(reason, str) and "no JPEG 2000" in reason  # never a pass
        reason = self._check(True)._judge(ds, 0, mine, b"\xff\xd8", "1.2.840.10008.1.2.4.50", ts)
        assert isinstance(reason, str) and "does not decode" in reason


class TestSourceFrames:
    def _ds(self, frames: int, encapsulated: bool) -> pydicom.Dataset:
        from pydicom.encaps import encapsulate
        from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

        ds = pydicom.dcmread(io.BytesIO(make_instance(uid(), uid())))
        size = ds.Rows * ds.Columns * 2
        native = b"".join(bytes([n + 1]) * size for n in range(frames))
        ds.NumberOfFrames = frames
        if encapsulated:
            ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
            ds.PixelData = encapsulate([bytes([0xFF, 0xD8, n]) * 10 for n in range(frames)])
        else:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.PixelData = native
        return ds

    def test_native_frames_are_cut_by_size(self) -> None:
        frames = source_frames(self._ds(3, encapsulated=False))
        assert len(frames) == 3 and [f[0] for f in frames] == [1, 2, 3] and len({len(f) for f in frames}) == 1

    def test_encapsulated_frames_are_their_fragments(self) -> None:
        frames = source_frames(self._ds(2, encapsulated=True))
        assert frames == [bytes([0xFF, 0xD8, 0]) * 10, bytes([0xFF, 0xD8, 1]) * 10]
        # Stored as received (JPEG baseline is kept by the service): compared byte for byte.
        ds = self._ds(2, encapsulated=True)
        check = PixelCheck(None, None, "a" * 32, "bkt", Counter())
        ts = str(ds.file_meta.TransferSyntaxUID)
        assert check._judge(ds, 1, frames[1], frames[1], ts, ts) is True
        assert check._judge(ds, 1, frames[1], frames[0], ts, ts) is False
