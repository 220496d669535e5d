"""Header-only DICOM parsing of an in-memory prefix of a file (pure: no I/O).

`parse_header(buf, total_size)` either returns what the header says, or asks for more bytes when pydicom ran
off the end of a prefix that is shorter than the object. It also catches the truncations that
``dcmread(stop_before_pixels=True)`` silently accepts (research/dicom.md §3.4): a short read inside the header,
and a Pixel Data element whose declared length runs past the end of the object.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.valuerep import VR

from contracts.records import Finding, Severity

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_VRS = {str(v.value) for v in VR}
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
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
PATIENT_ATTRS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")
STUDY_ATTRS = ("StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyDescription")
SERIES_ATTRS = ("SeriesNumber", "Modality", "SeriesDescription")
_TAGS: dict[str, int] = {
    name: int(tag_for_keyword(name) or 0)
    for name in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
                 "TransferSyntaxUID", "MediaStorageSOPClassUID", *PATIENT_ATTRS, *STUDY_ATTRS, *SERIES_ATTRS,
                 *LENGTH_LIMITS)
}


@dataclass
class HeaderResult:
    """Outcome of parsing one prefix. ``need_bytes`` > 0 means: fetch at least that many bytes and retry."""

    need_bytes: int = 0
    readable: bool = False
    findings: list[Finding] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    header_bytes: int = 0


class _ProbeReader(io.BytesIO):
    """A BytesIO that remembers whether any read came back short (pydicom does not check)."""

    short_read = False

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if size is not None and size > 0 and len(data) < size:
            self.short_read = True
        return data


def _finding(code: str, reason: str, attribute: str | None = None, severity: Severity = Severity.ERROR) -> Finding:
    return Finding(code=code, severity=severity, reason=reason, attribute=attribute)


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


def _raw(ds: Dataset, name: str) -> bytes | None:
    """The stored bytes of an element, without pydicom's value conversion (which costs more than the parse).

    ``get_item`` hands back the raw element read from the file; elements pydicom already converted (the file
    meta) are re-encoded from their value.
    """
    try:
        elem = ds.get_item(_TAGS[name])
    except Exception:
        return None
    if elem is None:
        return None
    value = elem.value
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray):
        return bytes(value).strip(b" \x00")
    return str(value).strip().encode("utf-8", "replace")


def _fingerprint(ds: Dataset, attrs: tuple[str, ...]) -> str:
    # Raw bytes are hashed: equal values in one character set hash equally, and no decoding is needed.
    h = hashlib.sha256()
    for name in attrs:
        h.update(name.encode() + b"=" + (_raw(ds, name) or b"") + b"\0")
    return h.hexdigest()


def _pixel_data_overrun(fp: io.BytesIO, total_size: int) -> int | None:
    """Bytes missing at the end when the Pixel Data element claims more than the object holds, else None."""
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
        value_start = start + 12
    else:  # implicit VR: tag then a 4-byte length
        (length,) = struct.unpack(endian + "I", head[4:8])
        value_start = start + 8
    if length == 0xFFFFFFFF:
        return None  # encapsulated: the fragment walk needs the tail of the file (issue: deepen parse)
    end = value_start + length
    return end - total_size if end > total_size else None


def _more(buf: bytes, total_size: int) -> int:
    return min(total_size, max(len(buf) * 4, 65536))


def _read(fp: io.BytesIO) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(fp, stop_before_pixels=True)


def parse_header(buf: bytes, total_size: int, key: str = "") -> HeaderResult:
    """Parse the DICOM header in ``buf`` (the first ``len(buf)`` bytes of an object of ``total_size`` bytes)."""
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
        reason = str(err).split("\n")[0][:200] if isinstance(err, InvalidDicomError) else "unexpected end of file"
        result.findings.append(_finding("not_dicom", f"not a DICOM Part 10 file: {reason}"))
        return result
    except Exception as err:  # pydicom raises many types on corrupt input; each is a finding, not a crash
        if len(buf) < total_size:
            result.need_bytes = _more(buf, total_size)
            return result
        result.findings.append(_finding("unparseable", f"DICOM header could not be parsed: {type(err).__name__}"))
        return result
    result.readable = True
    result.header_bytes = fp.tell()
    if short_read:
        result.findings.append(_finding("truncated", "file ends inside the DICOM header (truncated)"))
    else:
        missing = _pixel_data_overrun(fp, total_size)
        if missing:
            result.findings.append(_finding("truncated", f"Pixel Data is {missing} bytes shorter than its declared length (truncated file)", "PixelData"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _describe(ds, result)
    return result


def _text(ds: Dataset, name: str) -> str | None:
    raw = _raw(ds, name)
    return raw.decode("ascii", "replace") or None if raw is not None else None


def _describe(ds: Dataset, result: HeaderResult) -> None:
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
        "patient_fingerprint": _fingerprint(ds, PATIENT_ATTRS),
        "study_fingerprint": _fingerprint(ds, STUDY_ATTRS),
        "series_fingerprint": _fingerprint(ds, SERIES_ATTRS),
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
        if uid and (len(uid) > 64 or not _UID.match(uid)):
            f.append(_finding("invalid_uid", f"{label} is not a valid UID (digits and dots, at most 64 characters)", label))
    for name, limit in LENGTH_LIMITS.items():
        raw = _raw(ds, name)
        if raw is None or len(raw) <= limit:
            continue  # bytes >= characters in every character set, so no decoding is needed to pass
        value = _get(ds, name)
        length = len(str(value).strip()) if value is not None else len(raw)
        if length > limit:
            f.append(_finding("length_limit", f"{name} is {length} characters; HealthImaging accepts at most {limit}", name))
