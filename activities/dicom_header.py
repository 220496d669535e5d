"""Header-only DICOM parsing of an in-memory prefix of a file (pure: no I/O).

`parse_header(buf, total_size)` either returns what the header says, or asks for more bytes when pydicom ran
off the end of a prefix that is shorter than the object. It also catches the truncations that
``dcmread(stop_before_pixels=True)`` silently accepts (research/dicom.md §3.4): a short read inside the header,
and a Pixel Data element whose declared length runs past the end of the object.

Beyond pydicom's own parse it checks, cheaply and from raw bytes, what a header-only read otherwise misses: the
meta group length, the byte order and VR encoding against the Transfer Syntax, element order and duplicates,
defined-length sequence items, Pixel Data size against the image attributes, character sets, dates and identity
values. Bytes after Pixel Data are judged by :func:`check_tail` (here when ``buf`` holds them, else by the
caller, which fetches at most ``TAIL_CAP`` of them). Each problem is a :class:`Finding` with its own code.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import io
import re
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom.charset import python_encoding
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.valuerep import VR

from activities import phi
from activities.instance_identity import dataset_fingerprint
from contracts.records import Finding, Severity

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_VRS = {str(v.value) for v in VR}
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_UID_CHARS = re.compile(r"^[0-9.]+$")
KNOWN_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.1.98", "1.2.840.10008.1.2.4.100",
    "1.2.840.10008.1.2.4.101", "1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.103", "1.2.840.10008.1.2.4.104",
    "1.2.840.10008.1.2.4.105", "1.2.840.10008.1.2.4.106", "1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108",
}
# HealthImaging's element length limits at import (research/healthimaging.md §3).
LENGTH_LIMITS = {"PatientName": 256, "PatientID": 256, "AccessionNumber": 256, "StudyInstanceUID": 256,
                 "StudyID": 16, "StudyDescription": 64, "StudyDate": 18, "PatientBirthDate": 18, "StudyTime": 28}
TAIL_CAP = 64 * 1024  # trailing bytes after Pixel Data fetched for inspection; larger tails get a warning
# Value Representation limits of the identity attributes (PS3.5 6.2), checked at `strict` only.
VR_LIMITS = {"PatientID": 64, "AccessionNumber": 16, "StudyID": 16}
DATE_ATTRS = ("StudyDate", "PatientBirthDate")
_DATE = re.compile(rb"^\d{8}$")
_TIME = re.compile(rb"^(\d\d)((\d\d)((\d\d)(\.\d{1,6})?)?)?$")
_TEXT_ATTRS = ("PatientName", "PatientID", "StudyDescription", "AccessionNumber", "StudyID", "SeriesDescription")
PATIENT_ATTRS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")
STUDY_ATTRS = ("StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyDescription")
SERIES_ATTRS = ("SeriesNumber", "Modality", "SeriesDescription")
_TAGS: dict[str, int] = {
    name: int(tag_for_keyword(name) or 0)
    for name in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
                 "TransferSyntaxUID", "MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID",
                 "SpecificCharacterSet", "Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "NumberOfFrames",
                 "PhotometricInterpretation",
                 *PATIENT_ATTRS, *STUDY_ATTRS, *SERIES_ATTRS,
                 *LENGTH_LIMITS)
}


_PHI_TAGS = tuple(int(t) for t in (tag_for_keyword(k) for k in phi.PHI_KEYWORDS) if t)


@dataclass
class HeaderResult:
    """Outcome of parsing one prefix. ``need_bytes`` > 0 means: fetch at least that many bytes and retry."""

    need_bytes: int = 0
    readable: bool = False
    findings: list[Finding] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    header_bytes: int = 0
    # Bytes after the end of Pixel Data that ``buf`` did not hold: the caller fetches ``tail_start..size-1``
    # (when at most TAIL_CAP bytes) and passes them to :func:`check_tail` with ``tail_encoding``.
    tail_start: int | None = None
    tail_encoding: tuple[bool, bool] = (False, True)  # (implicit VR, little endian)


class _ProbeReader(io.BytesIO):
    """A BytesIO that remembers whether any read came back short (pydicom does not check).

    A read of nothing at all is the clean end of a dataset between two elements (every non-image object, e.g.
    a structured report, ends so); only a partial read is a cut inside an element.
    """

    short_read = False

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if size is not None and size > 0 and 0 < len(data) < size:
            self.short_read = True
        return data


def uid_problem(uid: str) -> tuple[str, str] | None:
    """What is wrong with a UID, as ``(finding code, words)``, or None.

    ``invalid_uid``: HealthImaging's own API pattern (``[0-9.]+``, at most 64) refuses it. ``uid_not_dicom``: the
    pattern lets it through, but DICOM (PS3.5 §9.1) does not: a component with a leading zero, or an empty one.
    """
    if len(uid) > 64:
        return "invalid_uid", f"is {len(uid)} characters; a UID has at most 64"
    if not _UID_CHARS.match(uid):
        return "invalid_uid", "has characters other than digits and dots"
    if _UID.match(uid):
        return None
    components = uid.split(".")
    if "" in components:
        return "uid_not_dicom", ("has an empty component (a leading, trailing or doubled dot), which DICOM forbids; "
                                 "HealthImaging's UID pattern accepts it")
    position = next(i for i, c in enumerate(components, 1) if len(c) > 1 and c.startswith("0"))
    return "uid_not_dicom", (f"component {position} has a leading zero, which DICOM forbids; HealthImaging's UID "
                             "pattern accepts it")


def _finding(code: str, reason: str, attribute: str | None = None, severity: Severity = Severity.ERROR) -> Finding:
    return Finding(code=code, severity=severity, reason=reason, attribute=attribute)


def _not_part10(buf: bytes, ended: bool) -> str:
    """Why a file is not DICOM Part 10, in our words (pydicom's messages carry advice for programmers)."""
    if ended:
        return "not a DICOM Part 10 file: it ends before its file meta information is complete"
    if buf[128:132] == b"DICM":
        return "not a DICOM Part 10 file: it has the DICM marker, but its file meta information cannot be read"
    head = buf[:512]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and text.lstrip()[:1] in ("{", "["):
        return "not a DICOM Part 10 file: JSON text (no 128-byte preamble and DICM marker)"
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        return "not a DICOM Part 10 file: plain text (no 128-byte preamble and DICM marker)"
    return "not a DICOM Part 10 file: no DICM marker after a 128-byte preamble"


def _sniff(buf: bytes) -> Finding | None:
    """Recognise common non-DICOM containers so the reason says what the file is."""
    if not buf:
        return _finding("zero_byte", "empty file (0 bytes)")
    if buf[:2] == b"\x1f\x8b":
        return _finding("compressed_archive", "gzip-compressed file (.gz); decompress it before migrating")
    if buf[:4] == b"PK\x03\x04":
        return _finding("compressed_archive", "zip archive; extract its DICOM files before migrating")
    return None


def _get(ds: Dataset, name: str) -> Any:
    """``ds.get(name)``, or None when the stored value cannot be decoded (e.g. an unknown VR)."""
    try:
        return ds.get(name)
    except Exception:
        return None


def _element(ds: Dataset, name: str) -> Any:
    """The stored element (raw or converted) of ``name``, or None; a plain dict lookup by tag."""
    return ds._dict.get(_TAGS[name])  # type: ignore[call-overload]


def _raw(ds: Dataset, name: str) -> bytes | None:
    """The stored bytes of an element, without pydicom's value conversion (which costs more than the parse).

    The dataset's own element dict holds the raw element read from the file (``get_item`` would return the same
    after a Tag conversion per call); elements pydicom already converted (the file meta) are re-encoded from
    their value.
    """
    elem = _element(ds, name)
    if elem is None:
        return None
    value = elem.value
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray):
        return bytes(value).strip(b" \x00")
    return str(value).strip().encode("utf-8", "replace")


MIN_FINGERPRINT_KEY_BYTES = 16


def fingerprint_key_bytes(key: bytes) -> bytes:
    """``key`` when it can key fingerprints; raises ValueError (without the key) when it is too short."""
    if len(key) < MIN_FINGERPRINT_KEY_BYTES:
        raise ValueError(f"fingerprint_key: at least {MIN_FINGERPRINT_KEY_BYTES} bytes are required "
                         "(HIMIG_FINGERPRINT_KEY)")
    return key


def _fingerprint(ds: Dataset, attrs: tuple[str, ...], secret: bytes) -> str:
    # Raw bytes are hashed: equal values in one character set hash equally, and no decoding is needed. Always an
    # HMAC keyed by HIMIG_FINGERPRINT_KEY: fingerprints kept in S3 (ledgers, the data store's import index) cannot be
    # tested against guessed values (PatientIDs and birth dates have little entropy); there is no unkeyed mode.
    h = hmac.new(secret, digestmod=hashlib.sha256)
    for name in attrs:
        h.update(name.encode() + b"=" + (_raw(ds, name) or b"") + b"\0")
    return h.hexdigest()


@dataclass
class _Pixel:
    """Where the Pixel Data value starts, its declared length and the encoding it was read in."""

    value_start: int
    length: int  # 0xFFFFFFFF: undefined (encapsulated)
    implicit: bool
    little: bool


def _pixel_element(fp: io.BytesIO) -> _Pixel | None:
    """The Pixel Data element header at the current position of ``fp`` (where a header-only read stopped)."""
    start = fp.tell()
    head = fp.read(12)
    if len(head) < 8 or head[:4] not in (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10"):
        return None
    little = head[:4] == b"\xe0\x7f\x10\x00"
    endian = "<" if little else ">"
    if head[4:6] in (b"OB", b"OW", b"OD", b"OF", b"OL", b"OV", b"UN"):
        if len(head) < 12:
            return None
        (length,) = struct.unpack(endian + "I", head[8:12])
        return _Pixel(start + 12, length, False, little)
    (length,) = struct.unpack(endian + "I", head[4:8])  # implicit VR: tag then a 4-byte length
    return _Pixel(start + 8, length, True, little)


def _fragments_end(buf: bytes, start: int, little: bool) -> int | None:
    """Offset after the Sequence Delimitation Item of encapsulated Pixel Data, or None when there is none."""
    fmt = "<HHI" if little else ">HHI"
    pos = start
    while pos + 8 <= len(buf):
        group, elem, length = struct.unpack_from(fmt, buf, pos)
        if (group, elem) == (0xFFFE, 0xE0DD):
            return pos + 8
        if (group, elem) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
            return None
        pos += 8 + length
    return None


_LONG_VR_BYTES = (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
_LONG_VR_STR = frozenset(v.decode() for v in _LONG_VR_BYTES)
_VR_BYTES = frozenset(v.encode() for v in _VRS)


def check_tail(tail: bytes, implicit: bool = False, little: bool = True, *,
               padding_rejected: bool = False) -> Finding | None:
    """Judge the bytes after the end of Pixel Data.

    Well-formed elements above (7FE0,0010) (e.g. Data Set Trailing Padding (FFFC,FFFC) or a private group some
    modalities append) are accepted; anything else but zero padding is garbage a header-only read cannot see.
    Zero padding after the last element (files padded to a block size) is reported as ``trailing_padding``, a
    note: no AWS document says the import rejects it. ``padding_rejected`` (HIMIG_IMPORT_REJECTS_TRAILING_PADDING:
    the operator knows the endpoint fails such files) makes it ``trailing_padding_rejected``, an error, so the
    file is rejected before import instead of failing in it.
    """
    if not tail:
        return None
    endian = "<" if little else ">"
    pos, last = 0, 0x7FE00010
    while pos < len(tail):
        if pos + 8 > len(tail):
            break
        group, elem = struct.unpack_from(endian + "HH", tail, pos)
        tag = group << 16 | elem
        if tag <= last:
            break
        vr = tail[pos + 4:pos + 6]
        if implicit:
            (length,), header = struct.unpack_from(endian + "I", tail, pos + 4), 8
        elif vr in _LONG_VR_BYTES:
            if pos + 12 > len(tail):
                break
            (length,), header = struct.unpack_from(endian + "I", tail, pos + 8), 12
        elif vr in _VR_BYTES:
            (length,), header = struct.unpack_from(endian + "H", tail, pos + 6), 8
        else:
            break
        if length == 0xFFFFFFFF and (implicit or vr in (b"SQ", b"UN")):
            # e.g. a Digital Signatures Sequence (FFFA,FFFA): skip to its Sequence Delimitation Item
            delimiter = struct.pack(endian + "HHI", 0xFFFE, 0xE0DD, 0)
            end = tail.find(delimiter, pos + header)
            if end < 0:
                break
            pos, last = end + 8, tag
            continue
        if length == 0xFFFFFFFF or pos + header + length > len(tail):
            break
        pos, last = pos + header + length, tag
    else:
        return None  # nothing but well-formed elements
    if not tail[pos:].strip(b"\0"):
        return _padding(len(tail) - pos, last, padding_rejected)
    return _finding("trailing_garbage", f"{len(tail)} bytes after the end of Pixel Data are not well-formed DICOM "
                    f"elements or zero padding (first bad byte at offset {pos} of the tail)", "PixelData")


def _padding(size: int, last: int, rejected: bool) -> Finding:
    """Zero padding of ``size`` bytes after element ``last`` (a note, or an error when the import rejects it)."""
    after = "Pixel Data" if last == 0x7FE00010 else f"the last element {_tag_text(last)}"
    if rejected and last != 0xFFFCFFFC:  # zeros after Data Set Trailing Padding are more of it: accepted (emulator too)
        return _finding("trailing_padding_rejected", f"{size} bytes of zero padding follow {after}; the data store's "
                        "import is configured as rejecting trailing bytes (HIMIG_IMPORT_REJECTS_TRAILING_PADDING), "
                        "so it would fail this file as truncated", "PixelData")
    return _finding("trailing_padding", f"{size} bytes of zero padding follow {after} (accepted: padding to a block "
                    "size is not an element)", "PixelData", Severity.INFO)


def _meta_group(buf: bytes) -> tuple[int | None, int] | None:
    """(declared File Meta Information Group Length or None, actual length of the meta group after it).

    None when the meta group is not explicit VR little endian (some old writers used implicit VR there; pydicom
    reads it, and its length cannot be walked the standard way).
    """
    pos = 132
    declared: int | None = None
    first = None
    while pos + 8 <= len(buf):
        group, elem = struct.unpack_from("<HH", buf, pos)
        if group != 2:
            break
        vr = buf[pos + 4:pos + 6]
        if vr not in _VR_BYTES:
            return None
        if vr in _LONG_VR_BYTES:
            if pos + 12 > len(buf):
                break
            (length,), header = struct.unpack_from("<I", buf, pos + 8), 12
        else:
            (length,), header = struct.unpack_from("<H", buf, pos + 6), 8
        if elem == 0 and length == 4 and pos + 12 <= len(buf):
            (declared,) = struct.unpack_from("<I", buf, pos + 8)
            first = pos + 12
        pos += header + length
    return declared, pos - (first if first is not None else 132)


def _structure(ds: Dataset, buf: bytes, tsuid: str | None, f: list[Finding]) -> None:
    """Byte-level problems pydicom reads past: meta group length, TS vs actual encoding, order, duplicates."""
    meta = _meta_group(buf) if buf[128:132] == b"DICM" else None
    if meta is not None:
        declared, actual = meta
        if declared is None:
            f.append(_finding("meta_group_length_missing", "File Meta Information Group Length (0002,0000) is "
                              "missing", "FileMetaInformationGroupLength", Severity.WARNING))
        elif declared != actual:
            f.append(_finding("meta_group_length", f"File Meta Information Group Length says {declared} bytes but "
                              f"the meta group is {actual} bytes; readers disagree where the dataset starts",
                              "FileMetaInformationGroupLength"))
    first = next((r for r in ds._dict.values() if isinstance(r, RawDataElement)), None)
    if tsuid in KNOWN_TRANSFER_SYNTAXES and first is not None:
        implicit, little = _TS_ENCODING.get(tsuid, (False, True))
        group = first.tag >> 16
        swapped = (group >> 8) | ((group & 0xFF) << 8)
        if group > 0xFF and swapped <= 0x28:  # e.g. (0008,xxxx) read in the wrong byte order is (0800,xxxx)
            f.append(_finding("ts_mismatch", f"the dataset's byte order is not the one its Transfer Syntax {tsuid} "
                              "says", "TransferSyntaxUID"))
        elif first.is_implicit_VR != implicit or first.is_little_endian != little:
            f.append(_finding("ts_mismatch", f"the dataset is encoded {_encoding_name(first.is_implicit_VR, first.is_little_endian)} "
                              f"but its Transfer Syntax {tsuid} says {_encoding_name(implicit, little)}",
                              "TransferSyntaxUID"))
    prev_end = -1  # -1: the previous element's extent is not known (converted, or undefined length)
    prev_tag = -1
    odd: list[int] = []
    bad_order: int | None = None
    for raw in ds._dict.values():  # insertion order is file order
        tag = raw.tag.real  # a plain int: BaseTag's comparisons are Python-level
        if tag <= prev_tag:
            bad_order = tag
            break
        prev_tag = tag
        if type(raw) is not RawDataElement:
            prev_end = -1  # already converted (sequences): its extent is not at hand
            continue
        tell, length = raw.value_tell, raw.length
        if prev_end >= 0 and tell - (8 if raw.is_implicit_VR or raw.VR not in _LONG_VR_STR else 12) != prev_end:
            bad_order = tag  # a duplicated element keeps its first position but its last value: a gap here
            break
        if length == 0xFFFFFFFF:
            prev_end = -1
            continue
        prev_end = tell + length
        if length & 1:
            odd.append(tag)
        if raw.VR == "SQ" and raw.value and not _items_fit(raw.value, raw.is_little_endian):
            f.append(_finding("bad_sequence", f"sequence {_tag_text(tag)} has an item whose length runs past the "
                              "end of the sequence"))
    if bad_order is not None:
        f.append(_finding("element_order", "elements are not in ascending tag order or an element appears twice "
                          f"(at {_tag_text(bad_order)})"))
    if odd:
        f.append(_finding("odd_length", f"{len(odd)} element(s) have an odd value length, first {_tag_text(odd[0])}",
                          severity=Severity.WARNING))


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _items_fit(value: bytes, little: bool) -> bool:
    """True when the items of a defined-length sequence tile its value exactly (items of undefined length pass)."""
    fmt = "<HHI" if little else ">HHI"
    pos = 0
    while pos + 8 <= len(value):
        group, elem, length = struct.unpack_from(fmt, value, pos)
        if (group, elem) != (0xFFFE, 0xE000):
            return False
        if length == 0xFFFFFFFF:
            return True  # walking nested undefined lengths costs a full parse; the service judges those
        pos += 8 + length
    return pos == len(value)


_TS_ENCODING = {"1.2.840.10008.1.2": (True, True), "1.2.840.10008.1.2.2": (False, False)}


def _encoding_name(implicit: bool, little: bool) -> str:
    return f"{'implicit' if implicit else 'explicit'} VR {'little' if little else 'big'} endian"


def _more(buf: bytes, total_size: int) -> int:
    return min(total_size, max(len(buf) * 4, 65536))


def _read(fp: io.BytesIO) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(fp, stop_before_pixels=True)


def register_phi(ds: Dataset) -> None:
    """Register the file's patient values with the current activity's scrub set (``activities.phi``)."""
    for tag in _PHI_TAGS:
        elem = ds._dict.get(tag)  # type: ignore[call-overload]
        value = getattr(elem, "value", None)
        if isinstance(value, bytes | bytearray | str):
            phi.register(value)
        elif value is not None:
            phi.register(str(value))


def parse_header(buf: bytes, total_size: int, key: str = "", fingerprint_key: bytes | None = None, *,
                 padding_rejected: bool = False) -> HeaderResult:
    """Parse the DICOM header in ``buf`` (the first ``len(buf)`` bytes of an object of ``total_size`` bytes).

    ``fingerprint_key`` keys the patient / study / series fingerprints (an HMAC). Without it no fingerprints are
    computed (they are None): for callers that need only the UIDs, such as the ingest listener.
    ``padding_rejected``: zero padding after Pixel Data is an error (see :func:`check_tail`).
    pydicom's warnings about this file are held until its patient values are registered for scrubbing.
    """
    with phi.holding_third_party_logs():
        return _parse_header(buf, total_size, fingerprint_key, padding_rejected)


def _parse_header(buf: bytes, total_size: int, fingerprint_key: bytes | None, padding_rejected: bool) -> HeaderResult:
    result = HeaderResult()
    sniffed = _sniff(buf)
    if sniffed:
        result.findings.append(sniffed)
        return result
    fp: io.BytesIO = io.BytesIO(buf)
    try:
        ds = _read(fp)
        short_read = False
        if fp.tell() >= len(buf):
            # The parse ran to the end of the buffer: either the header is longer than this prefix, or the file
            # has no Pixel Data, or it is truncated. Only then is the (slower) short-read probe worth running:
            # a parse that stops before Pixel Data has read every header element in full.
            if len(buf) < total_size:
                result.need_bytes = _more(buf, total_size)
                return result
            fp = _ProbeReader(buf)
            ds = _read(fp)
            short_read = fp.short_read  # type: ignore[attr-defined]
    except (InvalidDicomError, EOFError) as err:
        if len(buf) < total_size:
            result.need_bytes = _more(buf, total_size)
            return result
        result.findings.append(_finding("not_dicom", _not_part10(buf, isinstance(err, EOFError))))
        return result
    except Exception:  # pydicom raises many types on corrupt input; each is a finding, not a crash
        if len(buf) < total_size:
            result.need_bytes = _more(buf, total_size)
            return result
        result.findings.append(_finding("unparseable", "the DICOM header is malformed: an element's tag, value "
                                        "representation or length cannot be read"))
        return result
    register_phi(ds)
    result.readable = True
    result.header_bytes = fp.tell()
    pixel = None
    if short_read:
        result.findings.append(_finding("truncated", "file ends inside the DICOM header (truncated)"))
    else:
        pixel = _pixel_element(fp)
        if pixel is not None:
            _check_pixel_extent(buf, total_size, pixel, result, padding_rejected)
        elif fp.tell() >= total_size and _uint(ds, "Rows") and _uint(ds, "Columns") and "FloatPixelData" not in ds \
                and "DoubleFloatPixelData" not in ds and not _deflated(ds):
            # An image (Rows and Columns present) whose last element ends cleanly, with no Pixel Data after it:
            # nothing is cut off, the required attribute is simply not there.
            result.findings.append(_finding("missing_pixel_data", "required attribute PixelData is missing: Rows and "
                                            "Columns describe an image, but the file ends without its pixels",
                                            "PixelData"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _describe(ds, result, fingerprint_key)
        if result.readable and not result.values.get("is_dicomdir"):
            _structure(ds, buf, result.values.get("transfer_syntax_uid"), result.findings)
            _values(ds, result.findings)
            if pixel is not None and pixel.length != 0xFFFFFFFF:
                _pixel_size(ds, pixel.length, result.findings)
    return result


def _deflated(ds: Dataset) -> bool:
    """Deflated files are inflated whole by pydicom, so the read position says nothing about Pixel Data."""
    meta = getattr(ds, "file_meta", None)
    return meta is not None and _text(meta, "TransferSyntaxUID") == "1.2.840.10008.1.2.1.99"


def _check_pixel_extent(buf: bytes, total_size: int, pixel: _Pixel, result: HeaderResult,
                        padding_rejected: bool) -> None:
    """Pixel Data running past the end of the object, or bytes after it (checked here, or fetched by the caller)."""
    f = result.findings
    if pixel.length == 0xFFFFFFFF:
        if len(buf) < total_size:
            return  # the fragments are not in the buffer; walking them would mean reading the pixels
        end = _fragments_end(buf, pixel.value_start, pixel.little)
        if end is None:
            f.append(_finding("truncated", "encapsulated Pixel Data has no Sequence Delimitation Item (truncated "
                              "file or corrupt fragments)", "PixelData"))
            return
    else:
        end = pixel.value_start + pixel.length
        if end > total_size:
            f.append(_finding("truncated", f"Pixel Data is {end - total_size} bytes shorter than its declared "
                              "length (truncated file)", "PixelData"))
            return
    if end >= total_size:
        return
    if len(buf) >= total_size:
        tail_finding = check_tail(buf[end:total_size], pixel.implicit, pixel.little,
                                  padding_rejected=padding_rejected)
        if tail_finding:
            f.append(tail_finding)
    elif total_size - end <= TAIL_CAP:
        result.tail_start, result.tail_encoding = end, (pixel.implicit, pixel.little)
    else:
        f.append(_finding("trailing_data_not_inspected", f"{total_size - end} bytes follow Pixel Data; more than "
                          f"{TAIL_CAP} bytes, so they were not read or checked", "PixelData", Severity.WARNING))


def _uint(ds: Dataset, name: str) -> int | None:
    """An US or IS value straight from the raw element (pydicom's conversion costs more than the whole check)."""
    elem = _element(ds, name)
    if elem is None:
        return None
    value = elem.value
    if isinstance(elem, RawDataElement) and isinstance(value, bytes):
        if elem.VR == "US" or (elem.VR is None and len(value) == 2):
            return int.from_bytes(value[:2], "little" if elem.is_little_endian else "big") if len(value) >= 2 else None
        try:
            return int(value.strip(b" \0") or b"0")
        except ValueError:
            return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _pixel_size(ds: Dataset, length: int, f: list[Finding]) -> None:
    """Native Pixel Data shorter than Rows x Columns x samples x bytes x frames (the image cannot be decoded)."""
    rows, cols, bits = _uint(ds, "Rows"), _uint(ds, "Columns"), _uint(ds, "BitsAllocated")
    if not rows or not cols or not bits:
        return
    samples, frames = _uint(ds, "SamplesPerPixel") or 1, _uint(ds, "NumberOfFrames") or 1
    if (_raw(ds, "PhotometricInterpretation") or b"").endswith(b"_422"):
        samples = 2  # YBR_FULL_422 / YBR_PARTIAL_422: two chroma samples shared by each pair of pixels
    expected = (rows * cols * samples * frames * bits + 7) // 8
    if length < expected:
        f.append(_finding("pixel_data_size", f"Pixel Data holds {length} bytes but Rows, Columns, BitsAllocated, "
                          f"SamplesPerPixel and NumberOfFrames need {expected}", "PixelData"))


_CHARSET_TERM = re.compile(r"^[A-Z0-9 _-]{1,16}$")


def _values(ds: Dataset, f: list[Finding]) -> None:
    """Value problems the service or downstream readers trip over (character sets, dates, identity)."""
    charsets = _charsets(ds)
    unknown = [c for c in charsets if c and c not in python_encoding]
    if unknown:
        # The value is echoed only when it looks like a defined term: a broken writer can put any text there.
        shown = [c if _CHARSET_TERM.match(c) else "(a value that is not a defined term)" for c in unknown]
        f.append(_finding("unknown_charset", f"Specific Character Set {', '.join(shown)} is not a defined term; "
                          "text values cannot be decoded", "SpecificCharacterSet", Severity.WARNING))
    texts = {name: raw for name in _TEXT_ATTRS if (raw := _raw(ds, name))}
    if not [c for c in charsets if c and c != "ISO_IR 6"]:
        bad = sorted(name for name, raw in texts.items() if max(raw) > 0x7F)
        if bad:
            f.append(_finding("non_ascii_without_charset", f"{', '.join(bad)} holds non-ASCII bytes but there is no "
                              "Specific Character Set", bad[0], Severity.WARNING))
    elif charsets and charsets[0] in ("ISO_IR 192", "GB18030", "GBK") and not unknown:
        codec = python_encoding[charsets[0]]
        for name, raw in texts.items():
            try:
                raw.decode(codec)
            except UnicodeDecodeError:
                f.append(_finding("charset_decode_error", f"{name} is not valid {charsets[0]} text", name,
                                  Severity.WARNING))
                break
    patient_id = texts.get("PatientID")
    if not patient_id:
        f.append(_finding("empty_patient_id", "PatientID is missing or empty", "PatientID", Severity.WARNING))
    elif b"\\" in patient_id:
        f.append(_finding("multi_valued", "PatientID holds more than one value (VM must be 1)", "PatientID",
                          Severity.WARNING))
    for name, limit in VR_LIMITS.items():
        if name in texts and len(texts[name]) > limit:
            f.append(_finding("vr_length", f"{name} is {len(texts[name])} bytes; its VR allows {limit}", name,
                              Severity.WARNING))
    for name in DATE_ATTRS:
        raw = _raw(ds, name)
        if raw and not _valid_date(raw):
            f.append(_finding("bad_date", f"{name} is not a DICOM date (YYYYMMDD)", name, Severity.WARNING))
    raw = _raw(ds, "StudyTime")
    if raw and not _valid_time(raw):
        f.append(_finding("bad_time", "StudyTime is not a DICOM time (HHMMSS.FFFFFF)", "StudyTime", Severity.WARNING))
    meta = getattr(ds, "file_meta", None) or Dataset()
    for meta_name, name in (("MediaStorageSOPInstanceUID", "SOPInstanceUID"), ("MediaStorageSOPClassUID", "SOPClassUID")):
        if _text(meta, meta_name) != _text(ds, name):
            f.append(_finding("meta_mismatch", f"file meta {meta_name} is missing or differs from the dataset's "
                              f"{name}", meta_name, Severity.WARNING))
    study, series = _text(ds, "StudyInstanceUID"), _text(ds, "SeriesInstanceUID")
    if study and study == series:
        f.append(_finding("series_uid_equals_study_uid", "SeriesInstanceUID equals StudyInstanceUID",
                          "SeriesInstanceUID", Severity.WARNING))
    private = {int(t) for t in ds._dict if t >> 16 & 1}
    for tag in sorted(private):
        group, elem = tag >> 16, tag & 0xFFFF
        if elem >= 0x1000 and (group << 16 | elem >> 8) not in private:
            f.append(_finding("private_without_creator", f"private element ({group:04X},{elem:04X}) has no Private "
                              "Creator reserving its block", severity=Severity.WARNING))
            break


def _charsets(ds: Dataset) -> list[str]:
    """The Specific Character Set terms (pydicom converts this element while reading, so it may be a list)."""
    value = getattr(_element(ds, "SpecificCharacterSet"), "value", None)
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("ascii", "replace").split("\\")
    elif isinstance(value, str):
        value = value.split("\\")
    return [str(v).strip() for v in (value or [])]


def _valid_date(raw: bytes) -> bool:
    if not _DATE.match(raw):
        return False
    try:
        datetime.date(int(raw[:4]), int(raw[4:6]), int(raw[6:8]))
    except ValueError:
        return False
    return True


def _valid_time(raw: bytes) -> bool:
    m = _TIME.match(raw)
    if not m:
        return False
    hour, minute, second = int(m.group(1)), int(m.group(3) or 0), int(m.group(5) or 0)
    return hour < 24 and minute < 60 and second <= 60


def _text(ds: Dataset, name: str) -> str | None:
    raw = _raw(ds, name)
    return raw.decode("ascii", "replace") or None if raw is not None else None


def _describe(ds: Dataset, result: HeaderResult, fingerprint_key: bytes | None = None) -> None:
    meta = getattr(ds, "file_meta", None) or Dataset()
    tsuid = _text(meta, "TransferSyntaxUID")
    media_class = _text(meta, "MediaStorageSOPClassUID")
    values: dict[str, Any] = {
        "sop_instance_uid": _text(ds, "SOPInstanceUID") or None,
        "sop_class_uid": _text(ds, "SOPClassUID"),
        "study_instance_uid": _text(ds, "StudyInstanceUID"),
        "series_instance_uid": _text(ds, "SeriesInstanceUID"),
        "transfer_syntax_uid": tsuid,
        "modality": _text(ds, "Modality"),
        "is_dicomdir": media_class == DICOMDIR_SOP_CLASS or _text(ds, "SOPClassUID") == DICOMDIR_SOP_CLASS
        or "DirectoryRecordSequence" in ds,
        "patient_fingerprint": _fingerprint(ds, PATIENT_ATTRS, fingerprint_key) if fingerprint_key else None,
        "study_fingerprint": _fingerprint(ds, STUDY_ATTRS, fingerprint_key) if fingerprint_key else None,
        "series_fingerprint": _fingerprint(ds, SERIES_ATTRS, fingerprint_key) if fingerprint_key else None,
        # The instance's identity as HealthImaging sees it (elements, not bytes): see activities.instance_identity.
        "dataset_fingerprint": dataset_fingerprint(ds, fingerprint_key) if fingerprint_key else None,
    }
    result.values = values
    f = result.findings
    # Raw elements are checked without decoding them: decoding every value would double the parse cost.
    bad_vrs = sorted({str(raw.VR) for raw in ds._dict.values() if getattr(raw, "VR", None) and raw.VR not in _VRS})
    if bad_vrs:
        f.append(_finding("bad_vr", f"invalid value representation {', '.join(bad_vrs)} in the header"))
    if values["is_dicomdir"]:
        f.append(_finding("dicomdir", "DICOMDIR media index, not an image instance; not imported"))
        return
    for attr, label in (("sop_instance_uid", "SOPInstanceUID"), ("study_instance_uid", "StudyInstanceUID"),
                        ("series_instance_uid", "SeriesInstanceUID"), ("sop_class_uid", "SOPClassUID")):
        if not values[attr]:
            f.append(_finding(f"missing_{attr}", f"required attribute {label} is missing or empty", label))
    if not tsuid:
        f.append(_finding("missing_transfer_syntax", "file meta TransferSyntaxUID is missing", "TransferSyntaxUID"))
    elif tsuid not in KNOWN_TRANSFER_SYNTAXES:
        f.append(_finding("unknown_transfer_syntax", f"transfer syntax {tsuid} is not a known DICOM transfer syntax",
                          "TransferSyntaxUID"))
    for attr, label in (("sop_instance_uid", "SOPInstanceUID"), ("study_instance_uid", "StudyInstanceUID"),
                        ("series_instance_uid", "SeriesInstanceUID")):
        uid = values[attr]
        if uid and (problem := uid_problem(uid)):
            code, what = problem
            f.append(_finding(code, f"{label} {what}", label))
    for name, limit in LENGTH_LIMITS.items():
        raw = _raw(ds, name)
        if raw is None or len(raw) <= limit:
            continue  # bytes >= characters in every character set, so no decoding is needed to pass
        value = _get(ds, name)
        length = len(str(value).strip()) if value is not None else len(raw)
        if length > limit:
            f.append(_finding("length_limit", f"{name} is {length} characters; HealthImaging accepts at most {limit}", name))
