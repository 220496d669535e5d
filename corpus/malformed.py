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
from pydicom.fileset import FileSet
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

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


def _encode_meta_element(tag: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0"  # UI padding; the meta group holds only UI, OB, UL and SH values here
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


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
                parts.append(_encode_meta_element(el.tag, el.vr, new))
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
        """A syntactically odd UID for this defect: the prefix, a code-specific number, then ``suffix``."""
        return f"{UID_PREFIX}{zlib.crc32(self.code.encode())}.{suffix}"


DefectBuilder = Callable[[DefectContext], bytes]


@dataclass(frozen=True)
class DefectSpec:
    code: str
    expected: Expected
    reason: str
    build: DefectBuilder
    filename: str  # corpus path relative to the malformed directory


DEFECTS: dict[str, DefectSpec] = {}


def defect(code: str, expected: Expected, reason: str, *,
           filename: str | None = None) -> Callable[[DefectBuilder], DefectBuilder]:
    """Register a defect builder under ``code`` (default file name ``<code>.dcm``)."""

    def register(fn: DefectBuilder) -> DefectBuilder:
        if code in DEFECTS:
            raise ValueError(f"defect {code!r} registered twice")
        DEFECTS[code] = DefectSpec(code, expected, reason, fn, filename or f"{code}.dcm")
        return fn

    return register


REJECT, VALID, SERVICE_FAILURE = Expected.REJECT, Expected.VALID, Expected.SERVICE_FAILURE

# ---- framing: not a DICOM Part 10 file at all ---------------------------------------------------------------


@defect("zero_byte", REJECT, "empty file (0 bytes)")
def _zero_byte(ctx: DefectContext) -> bytes:
    return b""


@defect("not_dicom_text", REJECT, "plain text with a .dcm name; no preamble or DICM prefix")
def _not_dicom_text(ctx: DefectContext) -> bytes:
    line = b"This is not a DICOM file. It is plain text saved with a .dcm extension by a careless export.\n"
    return line * 8


@defect("not_dicom_json", REJECT, "DICOM JSON model (PS3.18 F), not a Part 10 file")
def _not_dicom_json(ctx: DefectContext) -> bytes:
    ds = ctx.base()
    del ds.PixelData
    return json.dumps(ds.to_json_dict(), sort_keys=True, indent=1).encode()


@defect("random_bytes", REJECT, "4 KiB of random bytes; no DICM prefix")
def _random_bytes(ctx: DefectContext) -> bytes:
    data = ctx.rng.randbytes(4096)
    return data[:PREAMBLE_LEN] + b"NOPE" + data[META_START:]  # make sure chance never yields "DICM"


@defect("gzip_dcm", REJECT, "gzip-compressed Part 10 file (.dcm.gz); unpack before import",
        filename="gzip_dcm.dcm.gz")
def _gzip_dcm(ctx: DefectContext) -> bytes:
    return gzip.compress(ctx.valid_bytes(), mtime=0)  # mtime=0 keeps the output byte-stable


@defect("zip_archive", REJECT, "zip archive holding a Part 10 file; unpack before import",
        filename="zip_archive.zip")
def _zip_archive(ctx: DefectContext) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("IMG00001.dcm", date_time=(2020, 1, 1, 0, 0, 0))
        info.create_system = 3  # fixed, so the archive is identical on every platform
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, ctx.valid_bytes())
    return buf.getvalue()


@defect("dicomdir", REJECT, "DICOMDIR media index (Media Storage SOP Class 1.2.840.10008.1.3.10), "
        "not an instance: skip it or use it only as an index", filename="dicomdir/DICOMDIR")
def _dicomdir(ctx: DefectContext) -> bytes:
    fs = FileSet()
    fs.UID = ctx.factory.uid("file-set", ctx.code)
    fs.ID = "HIMIGCORPUS"
    fs.add(ctx.base())
    with tempfile.TemporaryDirectory() as tmp:
        fs.write(tmp)
        return (Path(tmp) / "DICOMDIR").read_bytes()


@defect("no_preamble_dicm_at_0", REJECT, "the 128-byte preamble is missing: DICM is at offset 0")
def _no_preamble(ctx: DefectContext) -> bytes:
    return ctx.valid_bytes()[PREAMBLE_LEN:]


@defect("wrong_magic_dicx", REJECT, "prefix at offset 128 is DICX instead of DICM")
def _wrong_magic(ctx: DefectContext) -> bytes:
    return _patch(ctx.valid_bytes(), PREAMBLE_LEN, b"DICX")


@defect("no_meta_implicit", REJECT, "bare implicit VR dataset (ACR-NEMA style): no preamble, no DICM, "
        "no File Meta Information, so the transfer syntax and SOP identity of the file are guesses")
def _no_meta_implicit(ctx: DefectContext) -> bytes:
    # A FileDataset always carries file_meta, so copy the elements into a plain Dataset to write them bare.
    bare = Dataset()
    bare.update(ctx.base())
    buf = io.BytesIO()
    dcmwrite(buf, bare, implicit_vr=True, little_endian=True)
    return buf.getvalue()


# ---- truncation and length corruption (pydicom's header-only read accepts all of these silently) -------------


@defect("truncated_in_preamble", REJECT, "file cut inside the 128-byte preamble (100 bytes long)")
def _truncated_in_preamble(ctx: DefectContext) -> bytes:
    return ctx.valid_bytes()[:100]


@defect("truncated_in_meta", REJECT, "file cut inside the File Meta Information group; "
        "stop_before_pixels reads it without error")
def _truncated_in_meta(ctx: DefectContext) -> bytes:
    data = ctx.valid_bytes()
    return data[:(META_START + meta_end(data)) // 2]


@defect("truncated_mid_header", REJECT, "file cut in the middle of an element value before Pixel Data; "
        "stop_before_pixels reads it without error")
def _truncated_mid_header(ctx: DefectContext) -> bytes:
    data = ctx.valid_bytes()
    el = find_element(data, 0x0020000E)  # SeriesInstanceUID: mid-dataset
    return data[:el.value_offset + el.length // 2]


@defect("truncated_before_pixeldata", REJECT, "file ends exactly at the element boundary before (7FE0,0010): "
        "every element is complete, but the image has no Pixel Data")
def _truncated_before_pixeldata(ctx: DefectContext) -> bytes:
    data = ctx.valid_bytes()
    return data[:find_element(data, 0x7FE00010).offset]


@defect("truncated_in_pixels", REJECT, "file cut halfway through Pixel Data: the element's length claims "
        "more bytes than the file holds")
def _truncated_in_pixels(ctx: DefectContext) -> bytes:
    data = ctx.valid_bytes()
    el = find_element(data, 0x7FE00010)
    return data[:el.value_offset + el.length // 2]


@defect("pixeldata_length_overrun", REJECT, "Pixel Data length field says 0x7FFFFFF0 bytes; the file is ~10 KB")
def _pixeldata_length_overrun(ctx: DefectContext) -> bytes:
    data = ctx.valid_bytes()
    el = find_element(data, 0x7FE00010)
    return _patch(data, el.length_offset, struct.pack("<I", 0x7FFFFFF0))


@defect("element_length_overrun", REJECT, "PatientName length field says 0xFFF0 bytes, past the end of file")
def _element_length_overrun(ctx: DefectContext) -> bytes:
    data = ctx.valid_bytes()
    el = find_element(data, 0x00100010)
    return _patch(data, el.length_offset, struct.pack("<H", 0xFFF0))


@defect("trailing_garbage", REJECT, "1 KiB of random bytes after the end of Pixel Data; they do not form "
        "valid elements")
def _trailing_garbage(ctx: DefectContext) -> bytes:
    # Start with a group number below 7FE0 so a reader cannot mistake the garbage for trailing padding.
    return ctx.valid_bytes() + b"\x08\x00" + ctx.rng.randbytes(1022)


@defect("bad_vr", REJECT, "StudyDescription is encoded with the non-existent VR 'ZZ'")
def _bad_vr(ctx: DefectContext) -> bytes:
    data = ctx.valid_bytes()
    el = find_element(data, 0x00081030)
    return _patch(data, el.offset + 4, b"ZZ")


# ---- meta group problems ------------------------------------------------------------------------------------


@defect("wrong_meta_group_length", REJECT, "File Meta Information Group Length is 22 bytes too large, so it "
        "points into the dataset; readers disagree about where the dataset starts")
def _wrong_meta_group_length(ctx: DefectContext) -> bytes:
    return rewrite_meta(ctx.valid_bytes(), {}, group_length_delta=22)


@defect("missing_transfer_syntax", REJECT, "File Meta Information has no Transfer Syntax UID (0002,0010); "
        "the encoding has to be guessed")
def _missing_transfer_syntax(ctx: DefectContext) -> bytes:
    return rewrite_meta(ctx.valid_bytes(), {0x00020010: None})


@defect("unknown_transfer_syntax", REJECT, "Transfer Syntax UID 1.2.3.4.5.6.7 is not a DICOM transfer "
        "syntax and not on HealthImaging's supported list")
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
        "the meta copy alone is not an instance identity")
def _missing_sop_instance_uid(ctx: DefectContext) -> bytes:
    return _without(ctx, "SOPInstanceUID")


@defect("missing_study_instance_uid", REJECT, "dataset has no Study Instance UID (0020,000D)")
def _missing_study_instance_uid(ctx: DefectContext) -> bytes:
    return _without(ctx, "StudyInstanceUID")


@defect("missing_series_instance_uid", REJECT, "dataset has no Series Instance UID (0020,000E)")
def _missing_series_instance_uid(ctx: DefectContext) -> bytes:
    return _without(ctx, "SeriesInstanceUID")


@defect("missing_sop_class_uid", REJECT, "dataset has no SOP Class UID (0008,0016)")
def _missing_sop_class_uid(ctx: DefectContext) -> bytes:
    return _without(ctx, "SOPClassUID")


@defect("empty_sop_instance_uid", REJECT, "SOP Instance UID is present but zero-length")
def _empty_sop_instance_uid(ctx: DefectContext) -> bytes:
    return _emptied(ctx, "SOPInstanceUID")


@defect("empty_study_instance_uid", REJECT, "Study Instance UID is present but zero-length")
def _empty_study_instance_uid(ctx: DefectContext) -> bytes:
    return _emptied(ctx, "StudyInstanceUID")


def _with_sop_uid(ctx: DefectContext, uid: str) -> bytes:
    ds = ctx.base()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = UID(uid)  # keep meta consistent so only the UID syntax is wrong
    return encode_dataset(ds)


@defect("uid_too_long", REJECT, "SOP Instance UID is 76 characters; UI values are at most 64 (PS3.5 6.2) and "
        "HealthImaging's API pattern caps UIDs at 64")
def _uid_too_long(ctx: DefectContext) -> bytes:
    uid = ctx.unique_uid("")
    return _with_sop_uid(ctx, uid + "1" * (76 - len(uid)))


@defect("uid_invalid_chars", REJECT, "SOP Instance UID contains letters (a component 'abc')")
def _uid_invalid_chars(ctx: DefectContext) -> bytes:
    return _with_sop_uid(ctx, ctx.unique_uid("abc.4"))


@defect("uid_leading_zero", REJECT, "SOP Instance UID has a component with a leading zero ('0123'), which "
        "PS3.5 9.1 forbids and HealthImaging's UID pattern does not match")
def _uid_leading_zero(ctx: DefectContext) -> bytes:
    return _with_sop_uid(ctx, ctx.unique_uid("0123.1"))


# ---- valid DICOM that HealthImaging's import fails (DG dicom-element-constraints) ---------------------------


def _with_value(ctx: DefectContext, keyword: str, value: str) -> bytes:
    ds = ctx.base()
    setattr(ds, keyword, value)
    return encode_dataset(ds)


@defect("patient_id_too_long", SERVICE_FAILURE,
        f"PatientID is 300 characters; HealthImaging import allows at most {AHI_MAX_PATIENT_ID}")
def _patient_id_too_long(ctx: DefectContext) -> bytes:
    return _with_value(ctx, "PatientID", ("SYNTH-LONG-ID-" + "9" * 300)[:300])


@defect("patient_name_too_long", SERVICE_FAILURE,
        f"PatientName is 300 characters; HealthImaging import allows at most {AHI_MAX_PATIENT_NAME}")
def _patient_name_too_long(ctx: DefectContext) -> bytes:
    return _with_value(ctx, "PatientName", ("SYNTH^" + "LONGNAME" * 40)[:300])


@defect("accession_number_too_long", SERVICE_FAILURE,
        f"AccessionNumber is 300 characters; HealthImaging import allows at most {AHI_MAX_ACCESSION_NUMBER}")
def _accession_number_too_long(ctx: DefectContext) -> bytes:
    return _with_value(ctx, "AccessionNumber", "A" * 300)


@defect("study_id_too_long", SERVICE_FAILURE,
        f"StudyID is 20 characters; HealthImaging import allows at most {AHI_MAX_STUDY_ID}")
def _study_id_too_long(ctx: DefectContext) -> bytes:
    return _with_value(ctx, "StudyID", "SYNTHSTUDYID12345678")


@defect("study_description_too_long", SERVICE_FAILURE,
        f"StudyDescription is 80 characters; HealthImaging import allows at most {AHI_MAX_STUDY_DESCRIPTION}")
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
