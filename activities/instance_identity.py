"""Whether two files with one SOP Instance UID hold the same instance, compared the way HealthImaging sees them.

HealthImaging keeps a dataset's elements and its decoded pixels, not the file's bytes: the same instance stored
in explicit VR little or big endian, implicit VR or deflated, or with another file meta group, is one instance.
So identity is judged in two steps, the second only when the first cannot decide:

1. **Header** (cheap, at parse): every element before Pixel Data in a canonical form that no transfer syntax
   changes (:func:`canonical_elements`): the value bytes in little endian, text without its padding, sequences
   item by item. Group 0002 (file meta) and group lengths (gggg,0000) are left out. Their keyed HMAC is the
   record's ``dataset_fingerprint``; equal fingerprints mean equal headers.
2. **Whole file** (planning, only for two files with one SOP Instance UID, other bytes and equal headers, or
   when the header step must name what differs): both objects are read, and the elements after Pixel Data and
   the pixels themselves are compared after decoding the transfer syntax.

Pixel decoding covers the native syntaxes (implicit and explicit VR little endian, explicit VR big endian,
deflated): their pixel values are compared byte for byte in little endian. Encapsulated (compressed) Pixel Data
is compared frame by frame, on the compressed frames, when both files use the same transfer syntax (fragment
boundaries and offset tables aside). Two copies in different compressed syntaxes, or one compressed and one
native, would need codecs the worker does not ship (and lossy codecs make them different anyway), so they are
not proven the same: the verdict is a conflict that says why. Only attribute names (keywords, or the tag of a
private or unknown element) are ever reported, never values.
"""

from __future__ import annotations

import array
import functools
import hashlib
import hmac
import io
import struct
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.sequence import Sequence

from contracts.records import InstanceRecord

_T = TypeVar("_T")
PIXEL_DATA = 0x7FE00010
TRAILING_PADDING = 0xFFFCFFFC
UNDEFINED_LENGTH = 0xFFFFFFFF
DEFLATED = "1.2.840.10008.1.2.1.99"
# The whole-file step reads both objects into memory; beyond this a pair is not compared here (it needs review).
COMPARE_MAX_BYTES = 512 * 1024 * 1024
HEADER_SLACK = 16 * 1024  # read past the recorded header length, so the read stops at Pixel Data, not at EOF

# Value Representations whose values are numbers of this many bytes: byte-swapped when read in big endian.
_WIDTH = {"US": 2, "SS": 2, "OW": 2, "AT": 2, "UL": 4, "SL": 4, "FL": 4, "OF": 4, "OL": 4,
          "FD": 8, "OD": 8, "SV": 8, "UV": 8, "OV": 8}
_ARRAY_CODE = {2: "H", 4: "I", 8: "Q"}
# Text VRs: trailing spaces and NULs are padding (PS3.5 6.2); leading spaces too, except in the free-text VRs.
_TEXT = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR",
                   "UT"})
_LEADING_SIGNIFICANT = frozenset({"LT", "ST", "UT", "UC"})
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_ITEM_HEAD = struct.Struct("<IIQ")  # item position, tag, value length


@functools.lru_cache(maxsize=8192)
def _dictionary_vr(tag: int) -> str | None:
    """The VR the standard gives a public tag (its first choice when it allows two), None for private tags."""
    if tag >> 16 & 1:
        return None
    try:
        return str(dictionary_VR(tag)).split(" ", 1)[0]
    except KeyError:
        return None


def _swapped(value: bytes, width: int) -> bytes:
    """``value`` with each ``width``-byte number in the other byte order (a partial last number is kept)."""
    whole = len(value) - len(value) % width
    numbers = array.array(_ARRAY_CODE[width], value[:whole])
    numbers.byteswap()
    return numbers.tobytes() + value[whole:]


def _canonical_bytes(tag: int, vr_in_file: str | None, little: bool, value: bytes) -> bytes:
    """Stored value bytes in a form that does not depend on the transfer syntax."""
    if not little and vr_in_file in _WIDTH:
        value = _swapped(value, _WIDTH[vr_in_file])
    # Whether a value is text comes from the dictionary, never from the file (an implicit VR file carries no VR,
    # and an explicit one may say UN), so both copies of one element are canonicalised the same way.
    vr = _dictionary_vr(tag)
    if vr in _TEXT:
        value = value.rstrip(b" \0")
        if vr not in _LEADING_SIGNIFICANT:
            value = value.lstrip(b" ")
    return value


def _canonical_value(tag: int, elem: object, encodings: list[str] | None = None) -> bytes:
    """The value of one (non-sequence) element in a form that does not depend on the transfer syntax."""
    if isinstance(elem, RawDataElement):
        return _canonical_bytes(tag, None if elem.VR is None else str(elem.VR), elem.is_little_endian,
                                bytes(elem.value or b""))
    # Converted by pydicom (Specific Character Set while reading; others once something looked at them): written
    # back the way a raw element of explicit VR little endian holds it, so the form does not depend on that.
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    try:
        write_data_element(fp, elem, encodings)  # type: ignore[arg-type]
    except Exception:  # a value pydicom cannot write back: its text stands for it
        return _canonical_bytes(tag, None, True, str(getattr(elem, "value", "")).encode("utf-8", "replace"))
    encoded = fp.getvalue()
    header = 12 if str(getattr(elem, "VR", "")) in _LONG_VRS else 8
    return _canonical_bytes(tag, None, True, encoded[header:])


def _charsets(ds: Dataset, elem: object) -> list[str] | None:
    """The character sets a converted text element is written back in (raw elements need none)."""
    if isinstance(elem, RawDataElement):
        return None
    try:
        charsets = ds._character_set
    except Exception:
        return None
    return list(charsets) if charsets else None


def _skipped(tag: int) -> bool:
    """Not an attribute of the instance: file meta, group lengths, padding (group 0000, (FFFC,FFFC)), item tags."""
    return tag >> 16 in (0, 2, 0xFFFE) or tag & 0xFFFF == 0 or tag == TRAILING_PADDING


Item = list[tuple[int, bytes]]


def _sequence_bytes(items: list[Item]) -> bytes:
    """One canonical value for a sequence. Each element carries its item's position, so moving an element to
    another item or dropping an empty item is a difference of the sequence."""
    parts = [len(items).to_bytes(4, "little")]
    for n, elements in enumerate(items):
        for tag, value in sorted(elements):
            parts.append(_ITEM_HEAD.pack(n, tag, len(value)) + value)
    return b"".join(parts)


def _raw_items(buf: bytes, pos: int, end: int, implicit: bool, little: bool) -> tuple[list[Item], int]:
    """The items of a sequence value stored in ``buf[pos:end]``, walked from the bytes (pydicom's conversion of a
    large sequence costs far more than the whole header parse). Raises ValueError on a malformed sequence."""
    head = struct.Struct("<HHI" if little else ">HHI")
    items: list[Item] = []
    while pos + 8 <= end:
        group, elem, length = head.unpack_from(buf, pos)
        pos += 8
        tag = group << 16 | elem
        if tag == _SEQUENCE_END:
            return items, pos
        if tag != _ITEM:
            raise ValueError(f"not an item at {pos - 8}")
        if length == UNDEFINED_LENGTH:
            elements, pos = _raw_elements(buf, pos, end, implicit, little, in_undefined_item=True)
        else:
            if pos + length > end:
                raise ValueError("item runs past its sequence")
            elements, _ = _raw_elements(buf, pos, pos + length, implicit, little, in_undefined_item=False)
            pos += length
        items.append(elements)
    return items, pos


_TAG_BIG = struct.Struct(">HH")
_U32 = {True: struct.Struct("<I"), False: struct.Struct(">I")}
_U16 = {True: struct.Struct("<H"), False: struct.Struct(">H")}


def _raw_elements(buf: bytes, pos: int, end: int, implicit: bool, little: bool,
                  in_undefined_item: bool) -> tuple[Item, int]:
    u32, u16 = _U32[little].unpack_from, _U16[little].unpack_from
    elements: Item = []
    while pos + 8 <= end:
        if little:
            (word,) = u32(buf, pos)
            tag = (word & 0xFFFF) << 16 | word >> 16  # (group, element) stored as two little-endian halves
        else:
            group, elem = _TAG_BIG.unpack_from(buf, pos)
            tag = group << 16 | elem
        if tag == _ITEM_END:
            return elements, pos + 8
        vr: str | None
        if implicit:
            (length,) = u32(buf, pos + 4)
            vr, pos = None, pos + 8
        else:
            vr = buf[pos + 4:pos + 6].decode("latin-1")
            if vr in _LONG_VRS:
                (length,) = u32(buf, pos + 8)
                pos += 12
            else:
                (length,) = u16(buf, pos + 6)
                pos += 8
        if vr == "SQ" or length == UNDEFINED_LENGTH or (vr is None and _dictionary_vr(tag) == "SQ"):
            # (an undefined-length UN is a sequence in implicit VR little endian, PS3.5 6.2.2)
            nested_implicit, nested_little = (True, True) if vr == "UN" else (implicit, little)
            stop = end if length == UNDEFINED_LENGTH else pos + length
            items, after = _raw_items(buf, pos, stop, nested_implicit, nested_little)
            pos = after if length == UNDEFINED_LENGTH else stop
            if not _skipped(tag):
                elements.append((tag, _sequence_bytes(items)))
            continue
        if pos + length > end:
            raise ValueError("element runs past its item")
        if not _skipped(tag):
            elements.append((tag, _canonical_bytes(tag, vr, little, buf[pos:pos + length])))
        pos += length
    if in_undefined_item:
        raise ValueError("item without its delimiter")
    return elements, pos


def _canonical_sequence(elem: object) -> bytes | None:
    """The canonical value of a sequence element (raw or converted), or None when ``elem`` is not a sequence."""
    value = getattr(elem, "value", None)
    if isinstance(value, Sequence):
        return _sequence_bytes([[(t, v) for t, v in canonical_elements(item, item=True)] for item in value])
    if isinstance(elem, RawDataElement) and (elem.VR == "SQ" or (elem.VR is None
                                                                  and _dictionary_vr(int(elem.tag)) == "SQ")):
        # A defined-length sequence stays raw bytes in a header read, laid out per the encoding.
        data = bytes(value or b"")
        try:
            items, _ = _raw_items(data, 0, len(data), elem.is_implicit_VR, elem.is_little_endian)
        except (ValueError, struct.error):
            return data  # malformed: kept as stored, so only a byte-identical copy compares equal
        return _sequence_bytes(items)
    return None


def canonical_elements(ds: Dataset, *, after_pixels: bool = False, item: bool = False) -> Iterator[tuple[int, bytes]]:
    """``(tag, canonical value)`` of every attribute of ``ds`` in tag order, a sequence as one value.

    Left out: file meta (group 0002), group lengths (gggg,0000), zero padding read as elements (group 0000) and
    Data Set Trailing Padding; at the top level also Pixel Data (compared on its own, decoded), and then
    ``after_pixels`` selects the elements after it (a whole-file read), else those before it (a header read).
    ``item``: ``ds`` is a sequence item, all of whose elements count (an icon's Pixel Data too).
    """
    for key in sorted(ds._dict):
        tag = int(key)
        if _skipped(tag):
            continue
        if not item and (tag == PIXEL_DATA or (tag > PIXEL_DATA) != after_pixels):
            continue
        elem = ds._dict[key]
        sequence = _canonical_sequence(elem)
        yield tag, sequence if sequence is not None else _canonical_value(tag, elem, _charsets(ds, elem))


def dataset_fingerprint(ds: Dataset, key: bytes) -> str:
    """Keyed HMAC of the canonical header elements: equal for the same dataset in any encoding or file meta.

    Keyed (HIMIG_FINGERPRINT_KEY) like the patient fingerprints: the header holds patient values, and a bare hash
    kept in S3 could be tested against guesses.
    """
    h = hmac.new(key, digestmod=hashlib.sha256)
    for tag, value in canonical_elements(ds):
        h.update(tag.to_bytes(4, "little") + len(value).to_bytes(8, "little"))
        h.update(value)
    return h.hexdigest()


def element_digests(ds: Dataset, *, after_pixels: bool = False) -> dict[int, bytes]:
    """tag -> digest of its canonical value (to name what differs without keeping or showing values)."""
    return {tag: hashlib.sha256(value).digest() for tag, value in canonical_elements(ds, after_pixels=after_pixels)}


def attribute_name(tag: int) -> str:
    """The attribute's keyword, or its tag for a private or unknown element (never its value)."""
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def differing(a: dict[int, bytes], b: dict[int, bytes]) -> list[str]:
    """Names of the attributes present in one only, or with other values, in tag order."""
    return [attribute_name(t) for t in sorted(a.keys() | b.keys()) if a.get(t) != b.get(t)]


@dataclass
class WholeView:
    """What the whole-file step compares: the attributes before and after Pixel Data, and the pixels."""

    elements: dict[int, bytes]
    pixels_kind: str  # "native", "encapsulated <transfer syntax>", or "none"
    pixels_digest: str
    transfer_syntax: str
    meta: dict[int, bytes] = field(default_factory=dict)


def _read(data: bytes, stop_before_pixels: bool) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels)


def _uint(ds: Dataset, name: str, default: int) -> int:
    try:
        value = ds.get(name)
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _pixels(ds: Dataset) -> tuple[str, str]:
    """(kind, digest) of the Pixel Data after decoding the transfer syntax as far as this module can."""
    elem = ds._dict.get(PIXEL_DATA)  # type: ignore[call-overload]
    if elem is None:
        return "none", ""
    raw = elem if isinstance(elem, RawDataElement) else None
    value = bytes((raw.value if raw else elem.value) or b"")
    h = hashlib.sha256()
    if (raw is not None and raw.length == UNDEFINED_LENGTH) or (raw is None and getattr(elem, "is_undefined_length",
                                                                                        False)):
        frames = _uint(ds, "NumberOfFrames", 1)
        for frame in generate_frames(value, number_of_frames=frames):
            h.update(len(frame).to_bytes(8, "little") + frame)
        meta = getattr(ds, "file_meta", Dataset())
        return f"encapsulated {str(meta.get('TransferSyntaxUID', '')).strip()}", h.hexdigest()
    bits = _uint(ds, "BitsAllocated", 8)
    size = (_uint(ds, "Rows", 0) * _uint(ds, "Columns", 0) * _uint(ds, "SamplesPerPixel", 1)
            * _uint(ds, "NumberOfFrames", 1) * bits + 7) // 8
    if size and size <= len(value):
        value = value[:size]  # the odd-length pad byte is not a pixel
    little = raw.is_little_endian if raw is not None else True
    if not little:
        vr = str(raw.VR) if raw is not None else "OW"
        width = bits // 8 if bits in (16, 32, 64) else (2 if vr == "OW" else 1)
        if width > 1:
            value = _swapped(value, width)
    h.update(value)
    return "native", h.hexdigest()


def whole_view(data: bytes) -> WholeView:
    """Read a whole file and describe what the whole-file step compares (raises on unreadable bytes)."""
    ds = _read(data, stop_before_pixels=False)
    elements = element_digests(ds)
    elements.update(element_digests(ds, after_pixels=True))
    kind, digest = _pixels(ds)
    meta = getattr(ds, "file_meta", Dataset())
    return WholeView(elements, kind, digest, str(meta.get("TransferSyntaxUID", "")).strip(),
                     {int(t): hashlib.sha256(_canonical_value(int(t), e)).digest() for t, e in meta._dict.items()})


def header_digests(prefix: bytes) -> dict[int, bytes]:
    """Element digests of a header read from a prefix of a file (stops before Pixel Data)."""
    return element_digests(_read(prefix, stop_before_pixels=True))


@dataclass(frozen=True)
class Sameness:
    """The verdict on two files with one SOP Instance UID.

    ``same``: one instance (imported once). Else ``attributes`` names what differs (never values) and
    ``why`` says why no verdict of sameness could be reached when nothing is known to differ.
    """

    same: bool
    attributes: tuple[str, ...] = ()
    why: str = ""
    other_encoding: str = ""  # for ``same``: what differs in the files (transfer syntax, file meta)


# (key, size, number of bytes wanted or None for the whole object) -> bytes; None when the object is gone.
Fetch = Callable[[str, int, "int | None"], "bytes | None"]


class _Unreadable(Exception):
    """Bytes that the parse stage read, but that cannot be read again as DICOM now."""


def _parsed(read: Callable[[bytes], _T], data: bytes) -> _T:
    # Only the DICOM reading is guarded: an S3 error from a fetch must reach the activity (and its retry), not
    # become a verdict about the file.
    try:
        return read(data)
    except Exception as err:  # pydicom raises many types on corrupt input
        raise _Unreadable from err


def _header(fetch: Fetch, rec: InstanceRecord) -> dict[int, bytes] | None:
    """The header digests of one file: a ranged read past its header, the whole object when that is needed."""
    whole = rec.transfer_syntax_uid == DEFLATED or not rec.header_bytes
    want = None if whole or rec.header_bytes + HEADER_SLACK >= rec.size else rec.header_bytes + HEADER_SLACK
    data = fetch(rec.key, rec.size, want)
    if data is None:
        return None
    if want is not None:
        try:
            return _parsed(header_digests, data)
        except _Unreadable:
            data = fetch(rec.key, rec.size, None)  # the header is longer than recorded: the file changed
            if data is None:
                return None
    return _parsed(header_digests, data)


_GONE = "a file changed or disappeared since it was listed, so the two could not be compared"


def compare(first: InstanceRecord, other: InstanceRecord, fetch: Fetch, fetch_first: Fetch | None = None) -> Sameness:
    """Are ``first`` and ``other`` (one SOP Instance UID, different bytes) the same instance?

    Equal header fingerprints go straight to the whole-file step; different ones are named from both headers
    (a ranged read each), and the whole files are read only if the headers turn out equal after all.
    ``fetch_first`` reads ``first`` when it lives elsewhere (a file an earlier migration imported). Errors of the
    fetches themselves (S3 throttling, access) propagate.
    """
    read_first = fetch_first or fetch
    try:
        if not (first.dataset_fingerprint and first.dataset_fingerprint == other.dataset_fingerprint):
            a, b = _header(read_first, first), _header(fetch, other)
            if a is None or b is None:
                return Sameness(False, why=_GONE)
            names = differing(a, b)
            if names:
                return Sameness(False, tuple(names))
        if max(first.size, other.size) > COMPARE_MAX_BYTES:
            return Sameness(False, why=f"the headers are equal, but files over {COMPARE_MAX_BYTES // 2**20} MiB are "
                                       "not read whole to compare their pixel data")
        data_a, data_b = read_first(first.key, first.size, None), fetch(other.key, other.size, None)
        if data_a is None or data_b is None:
            return Sameness(False, why=_GONE)
        va, vb = _parsed(whole_view, data_a), _parsed(whole_view, data_b)
    except _Unreadable:
        return Sameness(False, why="one of the files cannot be read whole as DICOM, so the two could not be "
                                   "compared")
    names = differing(va.elements, vb.elements)
    if va.pixels_kind != vb.pixels_kind:
        compressed = "encapsulated" in va.pixels_kind + vb.pixels_kind
        return Sameness(False, (*names, "PixelData"), why=(
            f"the pixel data is {va.pixels_kind} in one file and {vb.pixels_kind} in the other; decoding "
            "compressed pixel data to compare it is not done here") if compressed else "")
    if va.pixels_digest != vb.pixels_digest:
        names.append("PixelData")
    if names:
        return Sameness(False, tuple(names))
    return Sameness(True, other_encoding=_encoding_difference(va, vb))


def _encoding_difference(a: WholeView, b: WholeView) -> str:
    if a.transfer_syntax != b.transfer_syntax:
        return f"transfer syntax {a.transfer_syntax} and {b.transfer_syntax}"
    names = differing(a.meta, b.meta)
    if names:
        return f"file meta differs in {', '.join(names)}"
    return "the same transfer syntax and file meta, other element encoding (value padding, sequence lengths)"
