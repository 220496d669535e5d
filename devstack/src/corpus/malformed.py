"""Hostile and odd inputs, each built from a valid synthetic instance and labelled with what should happen to it.

Every defect is a small builder function registered with :func:`defect`, which records the short code, the
expected outcome (see :class:`~corpus.models.Expected`) and a human-readable reason. Adding a defect is one
decorated function; :func:`generate_malformed` picks it up, and ``tests/corpus`` refuses a registered defect
that has no check proving the file really has it.

Every defect gets its own Study/Series/SOP Instance UIDs (derived from the seed and the code) under one synthetic
patient, so defects never interact with each other (no accidental duplicates or identity conflicts).

Byte-level edits assume the base encoding, explicit VR little endian without sequences, which is what
:func:`DefectContext.base` produces.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import struct
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from pydicom import config, dcmread, dcmwrite
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.fileset import FileSet
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from activities.validate import rejects
from contracts.common import ValidationLevel
from corpus.models import CorpusEntry, Expected, Origin, entry_for_bytes
from corpus.synthetic import (
    UID_PREFIX,
    ImageProfile,
    InstanceFactory,
    InstanceKey,
    encode_dataset,
    phantom_slice,
)

MALFORMED_NAMESPACE = "MAL"
PREAMBLE_LEN = 128
META_START = PREAMBLE_LEN + 4  # after the preamble and "DICM"
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})

# HealthImaging import limits (DG dicom-element-constraints): values longer than these fail the import.
AHI_MAX_PATIENT_ID = 256
AHI_MAX_PATIENT_NAME = 256
AHI_MAX_ACCESSION_NUMBER = 256
AHI_MAX_STUDY_ID = 16
AHI_MAX_STUDY_DESCRIPTION = 64


class Element(NamedTuple):
    """Position of one explicit-VR-little-endian element in a byte string."""

    tag: int  # group << 16 | element
    vr: bytes
    offset: int  # where the tag starts
    value_offset: int
    length: int

    @property
    def length_offset(self) -> int:
        """Where the length field starts (2 bytes for short VRs, 4 for long ones)."""
        return self.value_offset - (4 if self.vr in _LONG_VRS else 2)

    @property
    def end(self) -> int:
        return self.value_offset + self.length


def iter_elements(data: bytes, start: int, stop: int | None = None) -> Iterator[Element]:
    """Walk top-level explicit VR little endian elements from ``start``; no sequences or undefined lengths."""
    pos, stop = start, len(data) if stop is None else stop
    while pos + 8 <= stop:
        group, elem = struct.unpack_from("<HH", data, pos)
        vr = data[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", data, pos + 8)
            value_offset = pos + 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            value_offset = pos + 8
        if length == 0xFFFFFFFF:
            raise ValueError(f"undefined length at offset {pos}; the base encoding should not contain any")
        yield Element(group << 16 | elem, vr, pos, value_offset, length)
        pos = value_offset + length


def find_element(data: bytes, tag: int) -> Element:
    """The element ``tag`` in a Part 10 file written in explicit VR little endian."""
    for el in iter_elements(data, META_START):
        if el.tag == tag:
            return el
    raise KeyError(f"tag {tag:08X} not found")


def meta_end(data: bytes) -> int:
    """Offset of the first dataset byte, from the File Meta Information Group Length."""
    el = find_element(data, 0x00020000)
    (group_length,) = struct.unpack_from("<I", data, el.value_offset)
    return int(el.end + group_length)


def rewrite_meta(data: bytes, changes: dict[int, bytes | None], *, group_length_delta: int = 0) -> bytes:
    """Replace (bytes) or drop (None) meta elements, recompute the group length (plus ``group_length_delta``)."""
    end = meta_end(data)
    parts: list[bytes] = []
    for el in iter_elements(data, META_START, end):
        if el.tag == 0x00020000:
            continue
        if el.tag in changes:
            new = changes[el.tag]
            if new is not None:
                # NUL padding: the meta group holds only UI, OB, UL and SH values here
                parts.append(encode_element(el.tag, el.vr, new, pad=b"\0"))
        else:
            parts.append(data[el.offset:el.end])
    body = b"".join(parts)
    group_length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body) + group_length_delta)
    return data[:META_START] + group_length + body + data[end:]


def _patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new):]


@dataclass
class DefectContext:
    """What a defect builder gets: the code, a seeded RNG and a factory for its own valid base instance."""

    code: str
    seed: int
    factory: InstanceFactory
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(f"{self.seed}:{self.code}")

    def base(self) -> FileDataset:
        """A fresh valid CT instance (explicit VR LE, 64x64) whose identity is unique to this defect."""
        ds = self.factory.copy(InstanceKey(0, 0, 0, 0))
        uid = self.factory.uid
        ds.StudyInstanceUID = uid("study", self.code)
        ds.SeriesInstanceUID = uid("series", self.code)
        ds.FrameOfReferenceUID = uid("frame-of-reference", self.code)
        ds.SOPInstanceUID = uid("sop", self.code)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        number = zlib.crc32(self.code.encode()) % 10**8
        # One patient per defect too, so that defects that change patient values (a long PatientName) do not
        # make the other files look like the same PatientID with conflicting demographics.
        ds.PatientID = f"SYNTH-{self.seed}-MAL-{number:08d}"
        ds.PatientName = f"SYNTH^MALFORMED^{number:08d}"
        ds.AccessionNumber = f"M{number:08d}"
        ds.StudyID = f"M{number:08d}"
        ds.StudyDescription = f"MALFORMED {self.code}"[:64]
        return ds

    def valid_bytes(self) -> bytes:
        return encode_dataset(self.base())

    def unique_uid(self, suffix: str) -> str:
        """A syntactically odd UID for this defect: the prefix, a number of this code and seed, then ``suffix``
        (another seed gives other identities, even to the files whose UIDs are odd on purpose)."""
        return f"{UID_PREFIX}{zlib.crc32(f'{self.seed}:{self.code}'.encode())}.{suffix}"


DefectBuilder = Callable[[DefectContext], bytes]


@dataclass(frozen=True)
class DefectSpec:
    code: str
    expected: Expected
    reason: str
    build: DefectBuilder
    filename: str  # corpus path relative to the malformed directory
    # The finding code the parse stage must report for this file (None: no finding at all). With the
    # validation policy (activities.validate.REJECTING_LEVELS) it fixes the verdict at every level.
    finding: str | None = None
    # A second finding the defect causes as a side effect (e.g. garbled bytes hide the SOP Instance UID), which
    # may reject the file at a level where ``finding`` alone would not.
    also: str | None = None
    # The finding instead of ``finding`` when the data store's import is known to fail zero padding after Pixel
    # Data (HIMIG_IMPORT_REJECTS_TRAILING_PADDING; the emulator's strict_trailing_padding fault).
    padding_rejected_finding: str | None = None

    def rejected_at(self, level: ValidationLevel, *, padding_rejected: bool = False) -> bool:
        """The expected verdict at ``level``, from the validation policy (and the import's padding strictness)."""
        first = self.padding_rejected_finding if padding_rejected and self.padding_rejected_finding else self.finding
        return any(code is not None and rejects(code, level) for code in (first, self.also))


DEFECTS: dict[str, DefectSpec] = {}


def defect(code: str, expected: Expected, reason: str, *, filename: str | None = None,
           finding: str | None = None, also: str | None = None,
           padding_rejected_finding: str | None = None) -> Callable[[DefectBuilder], DefectBuilder]:
    """Register a defect builder under ``code`` (default file name ``<code>.dcm``).

    ``finding`` is the parse finding code that identifies the defect (see :attr:`DefectSpec.finding`).
    """

    def register(fn: DefectBuilder) -> DefectBuilder:
        if code in DEFECTS:
            raise ValueError(f"defect {code!r} registered twice")
        DEFECTS[code] = DefectSpec(code, expected, reason, fn, filename or f"{code}.dcm", finding, also,
                                   padding_rejected_finding)
        return fn

    return register


REJECT, VALID, SERVICE_FAILURE = Expected.REJECT, Expected.VALID, Expected.SERVICE_FAILURE

# ---- framing: not a DICOM Part 10 file at all ---------------------------------------------------------------


@defect("zero_byte", REJECT, "empty file (0 bytes)", finding="zero_byte")
def _zero_byte(ctx: DefectContext) -> bytes:
    return b""


@defect("not_dicom_text", REJECT, "plain text with a .dcm name; no preamble or DICM prefix", finding="not_dicom")
def _not_dicom_text(ctx: DefectContext) -> bytes:
    line = b"This is not a DICOM file. It is plain text saved with a .dcm extension by a careless export.\n"
    return line * 8


@defect("not_dicom_json", REJECT, "DICOM JSON model (PS3.18 F), not a Part 10 file", finding="not_dicom")
def _not_dicom_json(ctx: DefectContext) -> bytes:
    ds = ctx.base()
    del ds.PixelData
    return json.dumps(ds.to_json_dict(), sort_keys=True, indent=1).encode()


@defect("random_bytes", REJECT, "4 KiB of random bytes; no DICM prefix", finding="not_dicom")
def _random_bytes(ctx: DefectContext) -> bytes:
    data = ctx.rng.randbytes(4096)
    return data[:PREAMBLE_LEN] + b"NOPE" + data[META_START:]  # make sure chance never yields "DICM"


@defect("gzip_dcm", REJECT, "gzip-compressed Part 10 file (.dcm.gz); unpack before import",
        filename="gzip_dcm.dcm.gz", finding="compressed_archive")
def _gzip_dcm(ctx: DefectContext) -> bytes:
    return gzip.compress(ctx.valid_bytes(), mtime=0)  # mtime=0 keeps the output byte-stable


@defect("zip_archive", REJECT, "zip archive holding a Part 10 file; unpack before import",
        filename="zip_archive.zip", finding="compressed_archive")
def _zip_archive(ctx: DefectContext) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("IMG00001.dcm", date_time=(2020, 1, 1, 0, 0, 0))
        info.create_system = 3  # fixed, so the archive is identical on every platform
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, ctx.valid_bytes())
    return buf.getvalue()


@defect("dicomdir", REJECT, "DICOMDIR media index (Media Storage SOP Class 1.2.840.10008.1.3.10), "
        "not an instance: skip it or use it only as an index", filename="dicomdir/DICOMDIR", finding="dicomdir")
def _dicomdir(ctx: DefectContext) -> bytes:
    fs = FileSet()
    fs.UID = ctx.factory.uid("file-set", ctx.code)
    fs.ID = "HIMIGCORPUS"
    fs.add(ctx.base())
    with tempfile.TemporaryDirectory() as tmp:
        fs.write(tmp)
        return (Path(tmp) / "DICOMDIR").read_bytes()


@defect("no_preamble_dicm_at_0", REJECT, "the 128-byte preamble is missing: DICM is at offset 0", finding="not_dicom")
def _no_preamble(ctx: DefectContext) -> bytes:
    return ctx.valid_bytes()[PREAMBLE_LEN:]


@defect("wrong_magic_dicx", REJECT, "prefix at offset 128 is DICX instead of DICM", finding="not_dicom")
def _wrong_magic(ctx: DefectContext) -> bytes:
    return _patch(ctx.valid_bytes(), PREAMBLE_LEN, b"DICX")


@defect("no_meta_implicit", REJECT, "bare implicit VR dataset (ACR-NEMA style): no preamble, no DICM, "
        "no File Meta Information, so the transfer syntax and SOP identity of the file are guesses", finding="not_dicom")
def _no_meta_implicit(ctx: DefectContext) -> bytes:
    # A FileDataset always carries file_meta, so copy the elements into a plain Dataset to write them bare.
    bare = Dataset()
    bare.update(ctx.base())
    buf = io.BytesIO()
    dcmwrite(buf, bare, implicit_vr=True, little_endian=True)
    return buf.getvalue()


# ---- truncation and length corruption (pydicom's header-only read accepts all of these silently) -------------


@defect("truncated_in_preamble", REJECT, "file cut inside the 128-byte preamble (100 bytes long)", finding="not_dicom")
def _truncated_in_preamble(ctx: DefectContext) -> bytes:
    return ctx.valid_bytes()[:100]


@defect("truncated_in_meta", REJECT, "file cut inside the File Meta Information group; "
        "stop_before_pixels reads it without error", finding="truncated", also="missing_sop_instance_uid")
def _truncated_in_meta(ctx: DefectContext) -> bytes:
    data = ctx.valid_bytes()
    return data[:(META_START + meta_end(data)) // 2]


@defect("truncated_mid_header", REJECT, "file cut in the middle of an element value before Pixel Data; "
        "stop_before_pixels reads it without error", finding="truncated")
def _truncated_mid_header(ctx: DefectContext) -> bytes:
    data = ctx.valid_bytes()
    el = find_element(data, 0x0020000E)  # SeriesInstanceUID: mid-dataset
    return data[:el.value_offset + el.length // 2]


@defect("truncated_before_pixeldata", REJECT, "file ends exactly at the element boundary before (7FE0,0010): "
        "every element is complete, but the image has no Pixel Data (a missing attribute, not a cut-off file)",
        finding="missing_pixel_data")
def _truncated_before_pixeldata(ctx: DefectContext) -> bytes:
    data = ctx.valid_bytes()
    return data[:find_element(data, 0x7FE00010).offset]


@defect("truncated_in_pixels", REJECT, "file cut halfway through Pixel Data: the element's length claims "
        "more bytes than the file holds", finding="truncated")
def _truncated_in_pixels(ctx: DefectContext) -> bytes:
    data = ctx.valid_bytes()
    el = find_element(data, 0x7FE00010)
    return data[:el.value_offset + el.length // 2]


@defect("pixeldata_length_overrun", REJECT, "Pixel Data length field says 0x7FFFFFF0 bytes; the file is ~10 KB", finding="truncated")
def _pixeldata_length_overrun(ctx: DefectContext) -> bytes:
    data = ctx.valid_bytes()
    el = find_element(data, 0x7FE00010)
    return _patch(data, el.length_offset, struct.pack("<I", 0x7FFFFFF0))


@defect("element_length_overrun", REJECT, "PatientName length field says 0xFFF0 bytes, past the end of file", finding="truncated")
def _element_length_overrun(ctx: DefectContext) -> bytes:
    data = ctx.valid_bytes()
    el = find_element(data, 0x00100010)
    return _patch(data, el.length_offset, struct.pack("<H", 0xFFF0))


@defect("trailing_garbage", REJECT, "1 KiB of random bytes after the end of Pixel Data; they do not form "
        "valid elements", finding="trailing_garbage")
def _trailing_garbage(ctx: DefectContext) -> bytes:
    # Start with a group number below 7FE0 so a reader cannot mistake the garbage for trailing padding.
    return ctx.valid_bytes() + b"\x08\x00" + ctx.rng.randbytes(1022)


@defect("bad_vr", REJECT, "StudyDescription is encoded with the non-existent VR 'ZZ'", finding="bad_vr")
def _bad_vr(ctx: DefectContext) -> bytes:
    data = ctx.valid_bytes()
    el = find_element(data, 0x00081030)
    return _patch(data, el.offset + 4, b"ZZ")


# ---- meta group problems ------------------------------------------------------------------------------------


@defect("wrong_meta_group_length", REJECT, "File Meta Information Group Length is 22 bytes too large, so it "
        "points into the dataset; readers disagree about where the dataset starts", finding="meta_group_length")
def _wrong_meta_group_length(ctx: DefectContext) -> bytes:
    return rewrite_meta(ctx.valid_bytes(), {}, group_length_delta=22)


@defect("missing_transfer_syntax", REJECT, "File Meta Information has no Transfer Syntax UID (0002,0010); "
        "the encoding has to be guessed", finding="missing_transfer_syntax")
def _missing_transfer_syntax(ctx: DefectContext) -> bytes:
    return rewrite_meta(ctx.valid_bytes(), {0x00020010: None})


@defect("unknown_transfer_syntax", REJECT, "Transfer Syntax UID 1.2.3.4.5.6.7 is not a DICOM transfer "
        "syntax and not on HealthImaging's supported list", finding="unknown_transfer_syntax")
def _unknown_transfer_syntax(ctx: DefectContext) -> bytes:
    return rewrite_meta(ctx.valid_bytes(), {0x00020010: b"1.2.3.4.5.6.7"})


# ---- identity problems --------------------------------------------------------------------------------------


def _without(ctx: DefectContext, keyword: str) -> bytes:
    ds = ctx.base()
    delattr(ds, keyword)
    return encode_dataset(ds)


def _emptied(ctx: DefectContext, keyword: str) -> bytes:
    ds = ctx.base()
    setattr(ds, keyword, "")
    return encode_dataset(ds)


@defect("missing_sop_instance_uid", REJECT, "dataset has no SOP Instance UID (0008,0018); "
        "the meta copy alone is not an instance identity", finding="missing_sop_instance_uid")
def _missing_sop_instance_uid(ctx: DefectContext) -> bytes:
    return _without(ctx, "SOPInstanceUID")


@defect("missing_study_instance_uid", REJECT, "dataset has no Study Instance UID (0020,000D)", finding="missing_study_instance_uid")
def _missing_study_instance_uid(ctx: DefectContext) -> bytes:
    return _without(ctx, "StudyInstanceUID")


@defect("missing_series_instance_uid", REJECT, "dataset has no Series Instance UID (0020,000E)", finding="missing_series_instance_uid")
def _missing_series_instance_uid(ctx: DefectContext) -> bytes:
    return _without(ctx, "SeriesInstanceUID")


@defect("missing_sop_class_uid", REJECT, "dataset has no SOP Class UID (0008,0016)", finding="missing_sop_class_uid")
def _missing_sop_class_uid(ctx: DefectContext) -> bytes:
    return _without(ctx, "SOPClassUID")


@defect("empty_sop_instance_uid", REJECT, "SOP Instance UID is present but zero-length", finding="missing_sop_instance_uid")
def _empty_sop_instance_uid(ctx: DefectContext) -> bytes:
    return _emptied(ctx, "SOPInstanceUID")


@defect("empty_study_instance_uid", REJECT, "Study Instance UID is present but zero-length", finding="missing_study_instance_uid")
def _empty_study_instance_uid(ctx: DefectContext) -> bytes:
    return _emptied(ctx, "StudyInstanceUID")


def _with_sop_uid(ctx: DefectContext, uid: str) -> bytes:
    ds = ctx.base()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = UID(uid)  # keep meta consistent so only the UID syntax is wrong
    return encode_dataset(ds)


@defect("uid_too_long", REJECT, "SOP Instance UID is 76 characters; UI values are at most 64 (PS3.5 6.2) and "
        "HealthImaging's API pattern caps UIDs at 64", finding="invalid_uid")
def _uid_too_long(ctx: DefectContext) -> bytes:
    uid = ctx.unique_uid("")
    return _with_sop_uid(ctx, uid + "1" * (76 - len(uid)))


@defect("uid_invalid_chars", REJECT, "SOP Instance UID contains letters (a component 'abc')", finding="invalid_uid")
def _uid_invalid_chars(ctx: DefectContext) -> bytes:
    return _with_sop_uid(ctx, ctx.unique_uid("abc.4"))


@defect("uid_leading_zero", VALID, "SOP Instance UID has a component with a leading zero ('0123'), which "
        "PS3.5 9.1 forbids but HealthImaging's UID pattern ([0-9.]+) accepts: imported with a warning at "
        "structure-only, rejected at strict", finding="uid_not_dicom")
def _uid_leading_zero(ctx: DefectContext) -> bytes:
    return _with_sop_uid(ctx, ctx.unique_uid("0123.1"))


# ---- valid DICOM that HealthImaging's import fails (DG dicom-element-constraints) ---------------------------


def _with_value(ctx: DefectContext, keyword: str, value: str) -> bytes:
    ds = ctx.base()
    setattr(ds, keyword, value)
    return encode_dataset(ds)


@defect("patient_id_too_long", SERVICE_FAILURE,
        f"PatientID is 300 characters; HealthImaging import allows at most {AHI_MAX_PATIENT_ID}", finding="length_limit")
def _patient_id_too_long(ctx: DefectContext) -> bytes:
    return _with_value(ctx, "PatientID", ("SYNTH-LONG-ID-" + "9" * 300)[:300])


@defect("patient_name_too_long", SERVICE_FAILURE,
        f"PatientName is 300 characters; HealthImaging import allows at most {AHI_MAX_PATIENT_NAME}", finding="length_limit")
def _patient_name_too_long(ctx: DefectContext) -> bytes:
    return _with_value(ctx, "PatientName", ("SYNTH^" + "LONGNAME" * 40)[:300])


@defect("accession_number_too_long", SERVICE_FAILURE,
        f"AccessionNumber is 300 characters; HealthImaging import allows at most {AHI_MAX_ACCESSION_NUMBER}", finding="length_limit")
def _accession_number_too_long(ctx: DefectContext) -> bytes:
    return _with_value(ctx, "AccessionNumber", "A" * 300)


@defect("study_id_too_long", SERVICE_FAILURE,
        f"StudyID is 20 characters; HealthImaging import allows at most {AHI_MAX_STUDY_ID}", finding="length_limit")
def _study_id_too_long(ctx: DefectContext) -> bytes:
    return _with_value(ctx, "StudyID", "SYNTHSTUDYID12345678")


@defect("study_description_too_long", SERVICE_FAILURE,
        f"StudyDescription is 80 characters; HealthImaging import allows at most {AHI_MAX_STUDY_DESCRIPTION}", finding="length_limit")
def _study_description_too_long(ctx: DefectContext) -> bytes:
    return _with_value(ctx, "StudyDescription", ("SYNTHETIC STUDY DESCRIPTION THAT IS FAR TOO LONG " * 2)[:80])


# ---- legal oddities: a correct pipeline imports these ------------------------------------------------------


@defect("tiff_like_preamble", VALID, "preamble starts with a TIFF header ('II*\\0'); PS3.10 7.1 lets "
        "applications use the preamble, so this is legal")
def _tiff_like_preamble(ctx: DefectContext) -> bytes:
    ds = ctx.base()
    ds.preamble = b"II*\0" + b"\0" * (PREAMBLE_LEN - 4)
    return encode_dataset(ds)


@defect("trailing_padding", VALID, "Data Set Trailing Padding (FFFC,FFFC) after Pixel Data; legal (PS3.10 7.2)")
def _trailing_padding(ctx: DefectContext) -> bytes:
    ds = ctx.base()
    ds.add_new(0xFFFCFFFC, "OB", b"\0" * 256)
    return encode_dataset(ds)


@defect("zero_padding_after_pixel_data", VALID, "8 zero bytes after a complete Pixel Data (padding to a block "
        "size, no element); no AWS document says the import rejects it, so it imports. Where the import is known "
        "to fail it (HIMIG_IMPORT_REJECTS_TRAILING_PADDING) parse predicts that and the file is rejected at every "
        "level", finding="trailing_padding", padding_rejected_finding="trailing_padding_rejected")
def _zero_padding_after_pixel_data(ctx: DefectContext) -> bytes:
    return ctx.valid_bytes() + b"\0" * 8


@defect("deflated", VALID, "Deflated Explicit VR Little Endian (1.2.840.10008.1.2.1.99): a valid file in a rare "
        "syntax HealthImaging supports; header parsing needs the whole object inflated")
def _deflated(ctx: DefectContext) -> bytes:
    ds = ctx.base()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return encode_dataset(ds)


@defect("implicit_vr_little_endian", VALID, "Implicit VR Little Endian (1.2.840.10008.1.2): valid, common in "
        "older archives, supported by HealthImaging")
def _implicit_vr(ctx: DefectContext) -> bytes:
    ds = ctx.base()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return encode_dataset(ds)


@defect("explicit_vr_big_endian", VALID, "Explicit VR Big Endian (1.2.840.10008.1.2.2): retired but valid, "
        "on HealthImaging's supported list")
def _explicit_big_endian(ctx: DefectContext) -> bytes:
    ds = ctx.base()
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds.PixelData = phantom_slice(ds.Rows, ds.Columns, 0, big_endian=True)  # OW bytes are written as given
    return encode_dataset(ds)


# ---- byte-level helpers for the defects below -----------------------------------------------------------------


def encode_element(tag: int, vr: bytes, value: bytes, *, pad: bytes = b" ") -> bytes:
    """One explicit VR little endian element (value padded to even length with ``pad``)."""
    if len(value) % 2:
        value += pad
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def insert_before(data: bytes, tag: int, new: bytes) -> bytes:
    """Insert ``new`` (encoded elements) before the first dataset element whose tag is greater than ``tag``."""
    for el in iter_elements(data, meta_end(data)):
        if el.tag > tag:
            return data[:el.offset] + new + data[el.offset:]
    raise KeyError(f"no element after {tag:08X}")


def _item(payload: bytes) -> bytes:
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(payload)) + payload


_ITEM_DELIMITER = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
_SEQUENCE_DELIMITER = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
REFERENCED_IMAGE_SEQUENCE = 0x00081140


def _reference_items(ctx: DefectContext, n: int) -> list[bytes]:
    """``n`` Referenced Image Sequence items (SOP class + instance UID each)."""
    return [_item(encode_element(0x00081150, b"UI", b"1.2.840.10008.5.1.4.1.1.2", pad=b"\0")
                  + encode_element(0x00081155, b"UI", ctx.unique_uid(str(i + 1)).encode(), pad=b"\0"))
            for i in range(n)]


def _sequence(items: list[bytes], *, defined: bool = True, terminated: bool = True) -> bytes:
    body = b"".join(items)
    if defined:
        return encode_element(REFERENCED_IMAGE_SEQUENCE, b"SQ", body)
    tag = REFERENCED_IMAGE_SEQUENCE
    return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, b"SQ", 0, 0xFFFFFFFF) + body + (
        _SEQUENCE_DELIMITER if terminated else b"")


def _with_sequence(ctx: DefectContext, seq: bytes) -> bytes:
    return insert_before(ctx.valid_bytes(), REFERENCED_IMAGE_SEQUENCE, seq)


def _private_block(size: int, *, creator: bool = True, vr: bytes = b"OB") -> bytes:
    """A private creator (0009,0010) and one private element (0009,1010) of ``size`` deterministic bytes."""
    value = bytes(range(256)) * (size // 256) + bytes(size % 256)
    head = encode_element(0x00090010, b"LO", b"HIMIG CORPUS") if creator else b""
    return head + encode_element(0x00091010, vr, value, pad=b"\0")


def _replace_value(data: bytes, tag: int, value: bytes) -> bytes:
    """Replace the value of a short-VR element (any length; the length field follows)."""
    el = find_element(data, tag)
    return data[:el.offset] + encode_element(tag, el.vr, value) + data[el.end:]


def _reencoded(ctx: DefectContext, *, declared_ts: str, implicit: bool, little: bool) -> bytes:
    """The base dataset encoded as ``implicit``/``little`` under a meta group that declares ``declared_ts``."""
    ds = ctx.base()
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = little, implicit
    if not little:
        ds.PixelData = phantom_slice(ds.Rows, ds.Columns, 0, big_endian=True)
    plain = Dataset()
    plain.update(ds)
    write_dataset(fp, plain)
    valid = ctx.valid_bytes()
    head = rewrite_meta(valid, {0x00020010: declared_ts.encode()})
    return head[:meta_end(head)] + fp.getvalue()


# ---- character sets (PS3.5 6.1): values the header parse hashes but the service has to decode ---------------


@defect("charset_unknown_iso_ir_999", VALID, "Specific Character Set 'ISO_IR 999' is not a defined term: text "
        "values cannot be decoded reliably", finding="unknown_charset")
def _charset_unknown(ctx: DefectContext) -> bytes:
    return _replace_value(ctx.valid_bytes(), 0x00080005, b"ISO_IR 999")


@defect("charset_utf8_over_latin1_bytes", VALID, "Specific Character Set says ISO_IR 192 (UTF-8) but PatientName "
        "holds Latin-1 bytes (0xDC), which are not valid UTF-8", finding="charset_decode_error")
def _charset_utf8_latin1(ctx: DefectContext) -> bytes:
    data = _replace_value(ctx.valid_bytes(), 0x00080005, b"ISO_IR 192")
    return _replace_value(data, 0x00100010, b"SYNTH^M\xdcLLER")


@defect("charset_non_ascii_without_charset", VALID, "no Specific Character Set (so the default repertoire, ASCII) "
        "but PatientName holds a non-ASCII byte (0xE9)", finding="non_ascii_without_charset")
def _charset_missing(ctx: DefectContext) -> bytes:
    ds = ctx.base()
    del ds.SpecificCharacterSet
    data = encode_dataset(ds)
    return _replace_value(data, 0x00100010, b"SYNTH^REN\xe9")


@defect("charset_cjk_utf8", VALID, "ISO_IR 192 with a CJK PatientName in correct UTF-8: legal, must import")
def _charset_cjk(ctx: DefectContext) -> bytes:
    ds = ctx.base()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "SYNTH^\u5c71\u7530"
    return encode_dataset(ds)


@defect("charset_iso2022_japanese", VALID, "ISO 2022 IR 87 code extensions (escape sequences inside PatientName): "
        "legal, must import")
def _charset_iso2022(ctx: DefectContext) -> bytes:
    ds = ctx.base()
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.PatientName = "SYNTH^YAMADA=\u5c71\u7530^\u592a\u90ce"
    return encode_dataset(ds)


# ---- patient identity values ---------------------------------------------------------------------------------


@defect("patient_id_multi_valued", VALID, "PatientID holds two values separated by a backslash; its VM is 1",
        finding="multi_valued")
def _patient_id_multi(ctx: DefectContext) -> bytes:
    return _replace_value(ctx.valid_bytes(), 0x00100020, b"SYNTH-A\\SYNTH-B")


@defect("patient_id_empty", VALID, "PatientID is present but empty (Type 2: allowed, but the image set has no "
        "patient identity)", finding="empty_patient_id")
def _patient_id_empty(ctx: DefectContext) -> bytes:
    return _replace_value(ctx.valid_bytes(), 0x00100020, b"")


@defect("patient_id_missing", VALID, "PatientID (Type 2) is absent", finding="empty_patient_id")
def _patient_id_missing(ctx: DefectContext) -> bytes:
    return _without(ctx, "PatientID")


@defect("patient_id_80_chars", VALID, "PatientID is 80 characters; LO allows 64 (HealthImaging allows 256)",
        finding="vr_length")
def _patient_id_80(ctx: DefectContext) -> bytes:
    return _replace_value(ctx.valid_bytes(), 0x00100020, b"SYNTH-" + b"8" * 74)


# ---- dates and times -----------------------------------------------------------------------------------------


@defect("study_date_invalid", VALID, "StudyDate '20231345' has month 13 and day 45", finding="bad_date")
def _study_date_invalid(ctx: DefectContext) -> bytes:
    return _replace_value(ctx.valid_bytes(), 0x00080020, b"20231345")


@defect("study_date_iso_format", VALID, "StudyDate '2023-01-15' uses ISO 8601 dashes; DA is YYYYMMDD",
        finding="bad_date")
def _study_date_iso(ctx: DefectContext) -> bytes:
    return _replace_value(ctx.valid_bytes(), 0x00080020, b"2023-01-15")


@defect("birth_date_invalid", VALID, "PatientBirthDate '19XX0101' is not a date", finding="bad_date")
def _birth_date_invalid(ctx: DefectContext) -> bytes:
    return _replace_value(ctx.valid_bytes(), 0x00100030, b"19XX0101")


@defect("study_time_invalid", VALID, "StudyTime '256199' has hour 25 and second 99", finding="bad_time")
def _study_time_invalid(ctx: DefectContext) -> bytes:
    return _replace_value(ctx.valid_bytes(), 0x00080030, b"256199")


# ---- size, private data, sequences ---------------------------------------------------------------------------


@defect("private_ob_2mb_before_pixels", VALID, "2 MiB private OB element before Pixel Data: the header is 2 MiB, "
        "so a header-only read must extend its range")
def _private_ob_2mb(ctx: DefectContext) -> bytes:
    return insert_before(ctx.valid_bytes(), 0x00090010, _private_block(2 * 1024 * 1024))


@defect("header_over_64k", VALID, "70 KiB private element: the header is longer than the first 64 KiB range")
def _header_64k(ctx: DefectContext) -> bytes:
    return insert_before(ctx.valid_bytes(), 0x00090010, _private_block(70 * 1024))


@defect("header_over_256k", VALID, "300 KiB private element: the header is longer than a 4x extended range")
def _header_256k(ctx: DefectContext) -> bytes:
    return insert_before(ctx.valid_bytes(), 0x00090010, _private_block(300 * 1024))


@defect("private_tag_without_creator", VALID, "private element (0009,1010) with no Private Creator (0009,0010) "
        "reserving its block", finding="private_without_creator")
def _private_no_creator(ctx: DefectContext) -> bytes:
    return insert_before(ctx.valid_bytes(), 0x00090010, _private_block(16, creator=False, vr=b"LO"))


@defect("private_un_vr", VALID, "private element stored with VR UN (its creator is unknown to every reader): "
        "legal, must import")
def _private_un(ctx: DefectContext) -> bytes:
    return insert_before(ctx.valid_bytes(), 0x00090010, _private_block(64, vr=b"UN"))


@defect("sequence_3000_items", VALID, "Referenced Image Sequence with 3,000 items (a ~300 KB header)")
def _sequence_3000(ctx: DefectContext) -> bytes:
    return _with_sequence(ctx, _sequence(_reference_items(ctx, 3000)))


@defect("sequence_undefined_length", VALID, "sequence and items of undefined length with their delimiters: legal")
def _sequence_undefined(ctx: DefectContext) -> bytes:
    items = [struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + i[8:] + _ITEM_DELIMITER
             for i in _reference_items(ctx, 2)]
    return _with_sequence(ctx, _sequence(items, defined=False))


@defect("sequence_unterminated", REJECT, "sequence of undefined length with no Sequence Delimitation Item: "
        "everything after it, Pixel Data included, reads as part of the sequence", finding="unparseable")
def _sequence_unterminated(ctx: DefectContext) -> bytes:
    return _with_sequence(ctx, _sequence(_reference_items(ctx, 2), defined=False, terminated=False))


@defect("sequence_item_overrun", REJECT, "a sequence item's length runs past the end of its sequence",
        finding="bad_sequence")
def _sequence_item_overrun(ctx: DefectContext) -> bytes:
    items = _reference_items(ctx, 2)
    items[1] = items[1][:4] + struct.pack("<I", len(items[1]) + 40) + items[1][8:]
    return _with_sequence(ctx, _sequence(items))


@defect("sequence_nested_truncated", REJECT, "file cut inside an item of a nested sequence", finding="truncated")
def _sequence_nested_truncated(ctx: DefectContext) -> bytes:
    data = _with_sequence(ctx, _sequence(_reference_items(ctx, 4)))
    seq = find_element(data, REFERENCED_IMAGE_SEQUENCE)
    return data[:seq.value_offset + seq.length // 2]


# ---- identity consistency ----------------------------------------------------------------------------------


@defect("meta_sop_instance_mismatch", VALID, "Media Storage SOP Instance UID (meta) differs from the dataset's "
        "SOP Instance UID", finding="meta_mismatch")
def _meta_sop_mismatch(ctx: DefectContext) -> bytes:
    return rewrite_meta(ctx.valid_bytes(), {0x00020003: ctx.unique_uid("99").encode()})


@defect("meta_sop_class_mismatch", VALID, "Media Storage SOP Class UID (meta) is MR Image Storage; the dataset "
        "says CT Image Storage", finding="meta_mismatch")
def _meta_class_mismatch(ctx: DefectContext) -> bytes:
    return rewrite_meta(ctx.valid_bytes(), {0x00020002: b"1.2.840.10008.5.1.4.1.1.4"})


@defect("meta_missing_sop_instance", VALID, "File Meta Information has no Media Storage SOP Instance UID "
        "(0002,0003)", finding="meta_mismatch")
def _meta_missing_sop(ctx: DefectContext) -> bytes:
    return rewrite_meta(ctx.valid_bytes(), {0x00020003: None})


@defect("series_uid_equals_study_uid", VALID, "Series Instance UID is the Study Instance UID: the two levels of "
        "the hierarchy cannot be told apart", finding="series_uid_equals_study_uid")
def _series_is_study(ctx: DefectContext) -> bytes:
    ds = ctx.base()
    ds.SeriesInstanceUID = ds.StudyInstanceUID
    return encode_dataset(ds)


@defect("empty_series_instance_uid", REJECT, "Series Instance UID is present but zero-length",
        finding="missing_series_instance_uid")
def _empty_series(ctx: DefectContext) -> bytes:
    return _emptied(ctx, "SeriesInstanceUID")


@defect("empty_sop_class_uid", REJECT, "SOP Class UID is present but zero-length", finding="missing_sop_class_uid")
def _empty_sop_class(ctx: DefectContext) -> bytes:
    return _emptied(ctx, "SOPClassUID")


@defect("study_uid_hex_hash", REJECT, "Study Instance UID is a hex hash with dots (letters a-f), as some "
        "anonymisers write", finding="invalid_uid")
def _study_uid_hex(ctx: DefectContext) -> bytes:
    ds = ctx.base()
    ds.StudyInstanceUID = "2.25." + zlib.crc32(ctx.code.encode()).to_bytes(4, "big").hex() + "ab.7f"
    return encode_dataset(ds)


@defect("uid_trailing_dot", VALID, "Series Instance UID ends with a dot (an empty component), which DICOM "
        "forbids but HealthImaging's UID pattern ([0-9.]+) accepts: imported with a warning at structure-only, "
        "rejected at strict", finding="uid_not_dicom")
def _uid_trailing_dot(ctx: DefectContext) -> bytes:
    ds = ctx.base()
    ds.SeriesInstanceUID = ctx.unique_uid("5.")
    return encode_dataset(ds)


# ---- encoding and structure --------------------------------------------------------------------------------


@defect("implicit_big_endian", REJECT, "dataset in implicit VR big endian (non-standard, seen from old "
        "ultrasound devices) under a meta group declaring Implicit VR Little Endian", finding="ts_mismatch", also="missing_sop_instance_uid")
def _implicit_big_endian(ctx: DefectContext) -> bytes:
    return _reencoded(ctx, declared_ts=ImplicitVRLittleEndian, implicit=True, little=False)


@defect("ts_explicit_data_implicit", REJECT, "Transfer Syntax says Explicit VR Little Endian but the dataset is "
        "encoded implicit VR", finding="ts_mismatch")
def _ts_explicit_data_implicit(ctx: DefectContext) -> bytes:
    return _reencoded(ctx, declared_ts=ExplicitVRLittleEndian, implicit=True, little=True)


@defect("ts_implicit_data_explicit", REJECT, "Transfer Syntax says Implicit VR Little Endian but the dataset is "
        "encoded explicit VR", finding="ts_mismatch")
def _ts_implicit_data_explicit(ctx: DefectContext) -> bytes:
    return _reencoded(ctx, declared_ts=ImplicitVRLittleEndian, implicit=False, little=True)


@defect("ts_big_endian_data_little", REJECT, "Transfer Syntax says Explicit VR Big Endian but the dataset is "
        "little endian", finding="ts_mismatch", also="missing_sop_instance_uid")
def _ts_big_data_little(ctx: DefectContext) -> bytes:
    return rewrite_meta(ctx.valid_bytes(), {0x00020010: ExplicitVRBigEndian.encode()})


@defect("deflated_corrupt_stream", REJECT, "Deflated transfer syntax whose deflate stream is cut short and "
        "corrupted", finding="unparseable")
def _deflated_corrupt(ctx: DefectContext) -> bytes:
    data = _deflated(ctx)
    end = meta_end(data)
    return data[:end + 40] + ctx.rng.randbytes(200)


@defect("deflated_declared_not_deflated", REJECT, "Transfer Syntax says Deflated but the dataset is plain "
        "explicit VR little endian", finding="unparseable")
def _deflated_not_deflated(ctx: DefectContext) -> bytes:
    return rewrite_meta(ctx.valid_bytes(), {0x00020010: DeflatedExplicitVRLittleEndian.encode()})


@defect("odd_value_length", VALID, "StudyDescription has an odd value length (11); PS3.5 7.1.1 requires even "
        "lengths", finding="odd_length")
def _odd_length(ctx: DefectContext) -> bytes:
    data = _replace_value(ctx.valid_bytes(), 0x00081030, b"MALFORMED 1")
    el = find_element(data, 0x00081030)
    return data[:el.length_offset] + struct.pack("<H", el.length - 1) + data[el.value_offset:el.end - 1] + data[el.end:]


@defect("duplicate_element", REJECT, "Station Name (0008,1010) appears twice in the dataset",
        finding="element_order")
def _duplicate_element(ctx: DefectContext) -> bytes:
    data = ctx.valid_bytes()
    el = find_element(data, 0x00081010)
    return data[:el.end] + encode_element(0x00081010, b"SH", b"SECOND") + data[el.end:]


@defect("elements_out_of_order", REJECT, "Modality (0008,0060) is stored after PatientName (0010,0010); "
        "elements must ascend by tag", finding="element_order")
def _out_of_order(ctx: DefectContext) -> bytes:
    data = ctx.valid_bytes()
    el = find_element(data, 0x00080060)
    moved = data[el.offset:el.end]
    data = data[:el.offset] + data[el.end:]
    name = find_element(data, 0x00100010)
    return data[:name.end] + moved + data[name.end:]


@defect("wrong_meta_group_length_short", REJECT, "File Meta Information Group Length is 10 bytes too small, so "
        "it ends inside the Implementation Version Name", finding="meta_group_length")
def _wrong_meta_group_length_short(ctx: DefectContext) -> bytes:
    return rewrite_meta(ctx.valid_bytes(), {}, group_length_delta=-10)


@defect("missing_meta_group_length", VALID, "File Meta Information has no Group Length (0002,0000); readers find "
        "the end of the group by its tags", finding="meta_group_length_missing")
def _missing_meta_group_length(ctx: DefectContext) -> bytes:
    data = ctx.valid_bytes()
    el = find_element(data, 0x00020000)
    return data[:el.offset] + data[el.end:]


@defect("random_preamble", VALID, "the 128-byte preamble holds random bytes; PS3.10 leaves its content to the "
        "application: legal")
def _random_preamble(ctx: DefectContext) -> bytes:
    data = ctx.valid_bytes()
    return ctx.rng.randbytes(PREAMBLE_LEN) + data[PREAMBLE_LEN:]


@defect("pixel_data_empty", REJECT, "Pixel Data is present with length 0 in a 64x64 image",
        finding="pixel_data_size")
def _pixel_data_empty(ctx: DefectContext) -> bytes:
    ds = ctx.base()
    ds.PixelData = b""
    return encode_dataset(ds)


@defect("pixel_data_short_for_rows", REJECT, "Rows says 128 but Pixel Data holds 64 rows (8,192 of 16,384 bytes)",
        finding="pixel_data_size")
def _pixel_data_short(ctx: DefectContext) -> bytes:
    ds = ctx.base()
    ds.Rows = 128
    return encode_dataset(ds)


@defect("rle_lossless", VALID, "RLE Lossless (1.2.840.10008.1.2.5), encapsulated Pixel Data with a Basic Offset "
        "Table and a Sequence Delimitation Item: a compressed syntax HealthImaging supports")
def _rle(ctx: DefectContext) -> bytes:
    return _rle_bytes(ctx)


def _rle_bytes(ctx: DefectContext) -> bytes:
    ds = ctx.base()
    ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    return encode_dataset(ds)


@defect("encapsulated_no_sequence_delimiter", REJECT, "encapsulated Pixel Data (RLE) whose fragments are not "
        "closed by a Sequence Delimitation Item", finding="truncated")
def _encapsulated_unterminated(ctx: DefectContext) -> bytes:
    data = _rle_bytes(ctx)
    assert data[-8:] == _SEQUENCE_DELIMITER
    return data[:-8]


# ---- generation ---------------------------------------------------------------------------------------------


def _identity(data: bytes) -> dict[str, str | None]:
    """UIDs as stored in ``data`` (for entries a pipeline should be able to identify)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
        except (InvalidDicomError, ValueError, EOFError):
            return {}

    def get(keyword: str, meta: bool = False) -> str | None:
        value = (ds.file_meta if meta else ds).get(keyword)
        return str(value) if value is not None else None

    return {
        "sop_class_uid": get("SOPClassUID"),
        "sop_instance_uid": get("SOPInstanceUID"),
        "study_instance_uid": get("StudyInstanceUID"),
        "series_instance_uid": get("SeriesInstanceUID"),
        "transfer_syntax_uid": get("TransferSyntaxUID", meta=True),
    }


def build_defect(code: str, seed: int = 0) -> bytes:
    """The bytes of defect ``code`` for ``seed`` (no file written)."""
    factory = InstanceFactory(ImageProfile(), seed=seed, namespace=MALFORMED_NAMESPACE)
    return _run(DEFECTS[code], DefectContext(code, seed, factory))


def _run(spec: DefectSpec, ctx: DefectContext) -> bytes:
    # Builders assign invalid values on purpose; pydicom's per-assignment validation (a warning plus a log
    # record each) would only be noise.
    with warnings.catch_warnings(), config.disable_value_validation():
        warnings.simplefilter("ignore", UserWarning)
        return spec.build(ctx)


def generate_malformed(dest: Path, *, seed: int = 0, defects: Iterable[str] | None = None) -> list[CorpusEntry]:
    """Write one file per defect (all registered ones by default) under ``dest``; paths are relative to ``dest``."""
    codes = list(DEFECTS) if defects is None else list(defects)
    unknown = [c for c in codes if c not in DEFECTS]
    if unknown:
        raise ValueError(f"unknown defect codes {unknown}; known: {sorted(DEFECTS)}")
    factory = InstanceFactory(ImageProfile(), seed=seed, namespace=MALFORMED_NAMESPACE)
    entries: list[CorpusEntry] = []
    for code in codes:
        spec = DEFECTS[code]
        data = _run(spec, DefectContext(code, seed, factory))
        target = dest / spec.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        identity = _identity(data) if spec.expected is not Expected.REJECT else {}
        entries.append(entry_for_bytes(spec.filename, data, origin=Origin.MALFORMED, expected=spec.expected,
                                       defect=code, reason=spec.reason, **identity))
    return entries
