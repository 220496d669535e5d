"""Real malformed files shipped by pydicom and pydicom-data (research/dicom.md §1.2), with what parse must say.

They are not copied into any corpus (some are not ours to redistribute in bulk and several are large); tests use
each one when its package is installed. ``finding`` is the parse finding code that names the problem (None: the
header is sound and the file imports); ``rejected`` is the verdict at ``structure-only``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HostileRealFile:
    name: str
    rejected: bool
    finding: str | None
    why: str


HOSTILE_REAL: tuple[HostileRealFile, ...] = (
    HostileRealFile("MR_truncated.dcm", True, "truncated", "Pixel Data cut short"),
    HostileRealFile("rtplan_truncated.dcm", True, "truncated", "cut inside the dataset"),
    HostileRealFile("emri_small_jpeg_2k_lossless_too_short.dcm", True, "truncated",
                    "encapsulated Pixel Data shorter than its fragments say"),
    HostileRealFile("SC_rgb_jpeg.dcm", True, "ts_mismatch", "Transfer Syntax says explicit VR, the data is implicit"),
    HostileRealFile("no_meta.dcm", True, "not_dicom", "no preamble and no File Meta Information"),
    HostileRealFile("ExplVR_BigEndNoMeta.dcm", True, "not_dicom", "bare big endian dataset, no meta"),
    HostileRealFile("ExplVR_LitEndNoMeta.dcm", True, "not_dicom", "bare little endian dataset, no meta"),
    HostileRealFile("OT-PAL-8-face.dcm", True, "not_dicom", "no File Meta Information"),
    HostileRealFile("zipMR.gz", True, "compressed_archive", "gzip-compressed Part 10 file"),
    HostileRealFile("meta_missing_tsyntax.dcm", True, "missing_transfer_syntax",
                    "File Meta Information without Transfer Syntax UID (a dataset fragment)"),
    HostileRealFile("no_meta_group_length.dcm", True, "meta_group_length_missing",
                    "no File Meta Information Group Length (a dataset fragment without SOP identity)"),
    HostileRealFile("bad_sequence.dcm", True, "invalid_uid", "UIDs are hex hashes"),
    HostileRealFile("UN_sequence.dcm", True, "missing_sop_instance_uid", "a sequence stored as UN; no SOP identity"),
    HostileRealFile("priv_SQ.dcm", True, "missing_sop_instance_uid", "private sequence fragment; no SOP identity"),
    HostileRealFile("empty_charset_LEI.dcm", True, "missing_sop_instance_uid",
                    "empty Specific Character Set in a fragment without SOP identity"),
    HostileRealFile("badVR.dcm", False, "meta_mismatch", "IS value '1A' (the service judges values); meta differs"),
    HostileRealFile("image_dfl.dcm", False, None, "Deflated Explicit VR Little Endian: valid"),
    HostileRealFile("MR_small_bigendian.dcm", False, None, "Explicit VR Big Endian: valid"),
    HostileRealFile("MR_small_padded.dcm", False, None, "trailing padding after the dataset: valid"),
    HostileRealFile("reportsi_with_empty_number_tags.dcm", False, None,
                    "structured report (no Pixel Data) with empty IS/DS values: valid"),
    HostileRealFile("JPEG2000-embedded-sequence-delimiter.dcm", False, None,
                    "a sequence delimiter byte pattern inside a J2K fragment: valid"),
)
