"""Reading one DICOM P10 instance the way a HealthImaging import does.

:func:`parse_instance` takes the bytes of one S3 object and returns either a :class:`ParsedInstance` (the
HealthImaging metadata pieces for the Patient / Study / Series / Instance levels, the attributes that decide
primary vs non-primary, and the frame descriptors) or raises :class:`InstanceRejected` with the message that goes
into ``failure.ndjson``.

Rejected, as the real service does (DG ``understanding-import-jobs.html``, ``dicom-element-constraints.html``):
not a P10 file, DICOMDIR, truncated file, a missing required attribute (TransferSyntaxUID, SOPClassUID,
SOPInstanceUID, StudyInstanceUID, SeriesInstanceUID), or an element over the import length limits.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from emulator.medicalimaging import frames as frames_module

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
PIXEL_DATA_TAG = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF

# Required for every imported instance; the message wording is AWS's ("DICOM attribute X does not exist").
REQUIRED_ATTRIBUTES = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")

# DG dicom-element-constraints.html: maximum lengths (characters) accepted at import.
LENGTH_LIMITS: dict[str, int] = {
    "PatientName": 256,
    "PatientID": 256,
    "AccessionNumber": 256,
    "StudyInstanceUID": 256,
    "StudyID": 16,
    "StudyDescription": 64,
    "StudyDate": 18,
    "PatientBirthDate": 18,
    "StudyTime": 28,
}
MAX_NUMBER_OF_STUDY_RELATED_INSTANCES = 10000

UID_RE = re.compile(r"[0-9.]{1,64}")

# Which HealthImaging metadata level an attribute lives at. Taken from the DICOM Patient, General Study,
# Patient Study, General Series, General Equipment and Frame of Reference modules, matching where the real
# service puts them in GetImageSetMetadata documents; everything else is instance-level.
PATIENT_LEVEL = frozenset({
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "TypeOfPatientID",
    "PatientBirthDate", "PatientBirthTime", "PatientSex", "OtherPatientIDsSequence", "OtherPatientNames",
    "OtherPatientIDs", "PatientBirthName", "PatientMotherBirthName", "EthnicGroup", "PatientComments",
    "PatientSpeciesDescription", "PatientSpeciesCodeSequence", "PatientBreedDescription",
    "PatientBreedCodeSequence", "BreedRegistrationSequence", "ResponsiblePerson", "ResponsiblePersonRole",
    "ResponsibleOrganization", "PatientIdentityRemoved", "DeidentificationMethod",
    "DeidentificationMethodCodeSequence", "QualityControlSubject", "StrainDescription", "StrainNomenclature",
    "StrainCodeSequence", "GeneticModificationsSequence", "ReferencedPatientSequence",
})
STUDY_LEVEL = frozenset({
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence", "ConsultingPhysicianName", "StudyID", "AccessionNumber",
    "IssuerOfAccessionNumberSequence", "StudyDescription", "PhysiciansOfRecord",
    "PhysiciansOfRecordIdentificationSequence", "NameOfPhysiciansReadingStudy", "RequestingService",
    "ProcedureCodeSequence", "ReasonForPerformedProcedureCodeSequence", "ReferencedStudySequence",
    "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence", "PatientAge", "PatientSize",
    "PatientWeight", "PatientSizeCodeSequence", "MedicalAlerts", "Allergies", "SmokingStatus",
    "PregnancyStatus", "LastMenstrualDate", "Occupation", "AdditionalPatientHistory", "AdmissionID",
    "IssuerOfAdmissionIDSequence", "ServiceEpisodeID", "ServiceEpisodeDescription", "PatientState",
})
SERIES_LEVEL = frozenset({
    "SeriesInstanceUID", "SeriesNumber", "Modality", "Laterality", "SeriesDate", "SeriesTime",
    "PerformingPhysicianName", "PerformingPhysicianIdentificationSequence", "ProtocolName", "SeriesDescription",
    "SeriesDescriptionCodeSequence", "OperatorsName", "OperatorIdentificationSequence",
    "ReferencedPerformedProcedureStepSequence", "RelatedSeriesSequence", "BodyPartExamined", "PatientPosition",
    "SmallestPixelValueInSeries", "LargestPixelValueInSeries", "RequestAttributesSequence",
    "PerformedProcedureStepID", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "PerformedProcedureStepDescription", "PerformedProtocolCodeSequence", "Manufacturer", "InstitutionName",
    "InstitutionAddress", "StationName", "InstitutionalDepartmentName", "ManufacturerModelName",
    "DeviceSerialNumber", "SoftwareVersions", "SpatialResolution", "DateOfLastCalibration",
    "TimeOfLastCalibration", "PixelPaddingValue", "FrameOfReferenceUID", "PositionReferenceIndicator",
})

# The attributes whose disagreement with an existing primary image set makes an import non-primary. This follows
# the "normalized elements" of DG metadata-normalization: patient identity, study identity, series identity.
# StudyTime, descriptions and equipment are deliberately left out: they legitimately vary between instances.
CONFLICT_PATIENT = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")
CONFLICT_STUDY = ("StudyInstanceUID", "StudyDate", "AccessionNumber", "StudyID")
CONFLICT_SERIES = ("SeriesInstanceUID", "SeriesNumber", "Modality")

TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC",
                      "UI", "UR", "UT"})
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
# Binary values larger than this stay out of the metadata document (the real service serves them as bulk data).
MAX_INLINE_BINARY = 1024 * 1024


class InstanceRejected(Exception):
    """The file cannot be imported; ``str(exc)`` is the failure.ndjson message."""


@dataclass
class Frame:
    size: int
    crc32: int


@dataclass
class ParsedInstance:
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    patient: dict[str, Any]
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]
    vrs: dict[str, str]
    rows: int | None
    columns: int | None
    frames: list[Frame] = field(default_factory=list)
    sha256: str = ""
    size: int = 0

    def conflict_key(self) -> dict[str, dict[str, str]]:
        """The normalized attributes compared against existing primary image sets."""
        def pick(doc: dict[str, Any], names: tuple[str, ...]) -> dict[str, str]:
            return {n: _norm(doc.get(n)) for n in names}
        return {
            "patient": pick(self.patient, CONFLICT_PATIENT),
            "study": pick(self.study, CONFLICT_STUDY),
            "series": pick(self.series, CONFLICT_SERIES),
        }

    def instance_document(self) -> str:
        """JSON text of ``Study.Series.<uid>.Instances.<sop>`` without the frame IDs' image-set context."""
        frames = [
            {
                "ID": frame_id(self.sha256, i),
                "PixelDataChecksumFromBaseToFullResolution": [
                    {"Width": self.columns or 0, "Height": self.rows or 0, "Checksum": f.crc32}
                ],
                "FrameSizeInBytes": f.size,
            }
            for i, f in enumerate(self.frames)
        ]
        return json.dumps({
            "DICOM": self.instance,
            "DICOMVRs": self.vrs,
            # Lossless J2K when GetImageFrame will transcode the frames (frames.py); the source syntax stays in
            # DICOM.TransferSyntaxUID (file meta), which DICOMweb uses to describe the stored P10 file.
            "StoredTransferSyntaxUID": frames_module.stored_syntax(
                self.transfer_syntax_uid, self.instance.get("BitsAllocated"),
                self.instance.get("PhotometricInterpretation"), bool(self.frames)),
            "ImageFrames": frames,
        }, separators=(",", ":"))


def frame_id(sha256: str, index: int) -> str:
    """Deterministic 32-character frame id (the model's ``[0-9a-z]{32}``): stable across re-runs of a job."""
    return hashlib.md5(f"{sha256}:{index}".encode()).hexdigest()


def _norm(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "\\".join(_norm(v) for v in value)
    return str(value).strip()


def parse_instance(data: bytes, *, strict_trailing_padding: bool = False) -> ParsedInstance:
    """Parse and check one P10 file held in memory. Raises :class:`InstanceRejected` with the reason.

    Zero bytes after the last complete element (files padded to a block size) are accepted: no AWS document says
    the import rejects them. ``strict_trailing_padding`` (the ``strict_trailing_padding`` fault) fails such files
    as truncated instead, so clients can test the stricter behaviour.
    """
    if len(data) < 132 or data[128:132] != b"DICM":
        raise InstanceRejected("Input file is not a DICOM P10 file: the 'DICM' prefix at byte offset 128 is missing")
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError as exc:
        raise InstanceRejected(f"Input file is not a valid DICOM P10 file: {exc}") from None
    except Exception as exc:  # pydicom raises many types on corrupt input; the reason is what matters
        raise InstanceRejected(f"Input file could not be parsed as DICOM ({type(exc).__name__})") from None
    meta = ds.file_meta
    ts = str(meta.get("TransferSyntaxUID", "") or "").strip()
    if ts != "1.2.840.10008.1.2.1.99":  # offsets of a deflated data set refer to the inflated stream
        _check_truncation(ds, data, strict_trailing_padding)
    if not ts:
        raise InstanceRejected("DICOM attribute TransferSyntaxUID does not exist")
    if str(meta.get("MediaStorageSOPClassUID", "")).strip() == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        raise InstanceRejected("DICOMDIR files cannot be imported (MediaStorageSOPClassUID 1.2.840.10008.1.3.10)")
    try:
        values = {name: _text(ds.get(name)) for name in REQUIRED_ATTRIBUTES}
    except Exception as exc:
        raise InstanceRejected(f"Input file could not be parsed as DICOM ({type(exc).__name__})") from None
    for name in REQUIRED_ATTRIBUTES:
        if not values[name]:
            raise InstanceRejected(f"DICOM attribute {name} does not exist")
    for name in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not UID_RE.fullmatch(values[name]):
            raise InstanceRejected(f"DICOM attribute {name} is not a valid UID (digits and dots, at most 64)")
    try:
        patient, study, series, instance, vrs = _split_levels(ds, ts)
    except InstanceRejected:
        raise
    except Exception as exc:
        raise InstanceRejected(f"Input file could not be parsed as DICOM ({type(exc).__name__})") from None
    for name, limit in LENGTH_LIMITS.items():
        value = _norm(patient.get(name, study.get(name)))
        if len(value) > limit:
            raise InstanceRejected(
                f"DICOM attribute {name} has length {len(value)}, which exceeds the maximum length of {limit}")
    related = study.get("NumberOfStudyRelatedInstances", instance.get("NumberOfStudyRelatedInstances"))
    if related is not None and _int(related) > MAX_NUMBER_OF_STUDY_RELATED_INSTANCES:
        raise InstanceRejected("DICOM attribute NumberOfStudyRelatedInstances exceeds the maximum value of 10000")
    rows = _int(ds.get("Rows")) if "Rows" in ds else None
    columns = _int(ds.get("Columns")) if "Columns" in ds else None
    frames = _frames(ds, ts, rows, columns)
    return ParsedInstance(
        sop_instance_uid=values["SOPInstanceUID"],
        sop_class_uid=values["SOPClassUID"],
        study_instance_uid=values["StudyInstanceUID"],
        series_instance_uid=values["SeriesInstanceUID"],
        transfer_syntax_uid=ts,
        patient=patient, study=study, series=series, instance=instance, vrs=vrs,
        rows=rows, columns=columns, frames=frames,
        sha256=hashlib.sha256(data).hexdigest(), size=len(data),
    )


def _check_truncation(ds: Dataset, data: bytes, strict_trailing_padding: bool) -> None:
    """Detect truncation that pydicom reads silently (it stops at EOF and keeps a short last value)."""
    size = len(data)
    for tag in [t for t in ds._dict if t >> 16 == 0]:
        # Zero padding read as elements (0000,0000): pydicom makes one of every 8 zero bytes. They are padding,
        # not attributes, and must not end up in the metadata.
        del ds[tag]
    if not len(ds):
        raise InstanceRejected("Input file is truncated: no data set follows the file meta information")
    last_tag = max(ds.keys())
    raw = ds.get_item(last_tag)
    if not isinstance(raw, RawDataElement):
        return
    if raw.length == UNDEFINED_LENGTH:
        # Encapsulated Pixel Data: pydicom keeps the items, the Sequence Delimitation Item (8 bytes) follows.
        end = raw.value_tell + len(raw.value or b"") + 8
        if strict_trailing_padding and last_tag == PIXEL_DATA_TAG and end < size:
            raise InstanceRejected(
                f"Input file is truncated: {size - end} trailing bytes after element {_tag_text(last_tag)} "
                "do not form a complete data element")
        return
    end = raw.value_tell + raw.length
    if end > size:
        raise InstanceRejected(
            f"Input file is truncated: element {_tag_text(last_tag)} needs {raw.length} bytes at offset "
            f"{raw.value_tell} but the file ends at byte {size}")
    if end < size and last_tag != 0xFFFCFFFC and (strict_trailing_padding or data[end:].strip(b"\0")):
        # Bytes left that do not form a whole element: the file was cut inside the next element's header,
        # or inside an undefined-length item (such as encapsulated Pixel Data) that pydicom dropped.
        raise InstanceRejected(
            f"Input file is truncated: {size - end} trailing bytes after element {_tag_text(last_tag)} "
            "do not form a complete data element")


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _int(value: Any) -> int:
    try:
        return int(str(value).strip() or 0)
    except ValueError:
        return 0


def _text(elem: Any) -> str:
    if elem is None:
        return ""
    value = elem.value if isinstance(elem, DataElement) else elem
    return "" if value is None else str(value).strip()


_STRUCT = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}
_FAST_CHARSETS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_IMPLICIT_LE = "1.2.840.10008.1.2"


def _split_levels(ds: Dataset, ts: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any],
                                                  dict[str, str]]:
    patient: dict[str, Any] = {}
    study: dict[str, Any] = {}
    series: dict[str, Any] = {}
    instance: dict[str, Any] = {}
    vrs: dict[str, str] = {}
    for elem in ds.file_meta:
        key, value = _convert(elem, vrs)
        instance[key] = value
    charset = ds.get("SpecificCharacterSet", "")
    charset_key = charset if isinstance(charset, str) else "\\".join(charset)
    encoding = _FAST_CHARSETS.get(charset_key.strip())
    # Fast path: decode little-endian raw elements directly. pydicom's per-element conversion (private-creator
    # lookups, value validation) costs ~4 ms per CT header, which would make parsing, not S3, the bottleneck.
    fast = encoding is not None and ts not in ("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99")
    implicit = ts == _IMPLICIT_LE
    for tag in list(ds.keys()):
        if tag == PIXEL_DATA_TAG or tag.group in (0xFFFC, 0xFFFE):
            continue
        raw = ds.get_item(tag) if fast else None
        if isinstance(raw, RawDataElement) and encoding is not None:
            converted = _fast(raw, implicit, encoding, vrs)
            if converted is None:
                converted = _convert(ds[tag], vrs)
        else:
            converted = _convert(ds[tag], vrs)
        key, value = converted
        if key in PATIENT_LEVEL:
            patient[key] = value
        elif key in STUDY_LEVEL:
            study[key] = value
        elif key in SERIES_LEVEL:
            series[key] = value
        else:
            instance[key] = value
    return patient, study, series, instance, vrs


def _fast(raw: RawDataElement, implicit: bool, encoding: str, vrs: dict[str, str]) -> tuple[str, Any] | None:
    """Convert a raw little-endian element without pydicom's DataElement machinery; None = use the slow path."""
    tag = raw.tag
    private = tag.group % 2 == 1
    if implicit or raw.VR is None:
        if private:
            vr = "LO" if 0x10 <= tag.element <= 0xFF else "UN"
        else:
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                return None
    else:
        vr = str(raw.VR)
    if vr == "SQ" or " or " in vr or raw.length == UNDEFINED_LENGTH:
        return None
    key = "" if private else keyword_for_tag(tag)
    if not key:
        key = f"{int(tag):08X}"
        vrs[key] = vr
    data = raw.value
    if data is None or len(data) == 0:
        return key, None
    if vr in TEXT_VRS:
        text = data.decode("ascii" if vr in ("UI", "DA", "TM", "DT", "CS", "AE", "AS", "IS", "DS") else encoding,
                           errors="replace").rstrip(" \x00")
        if vr in ("LT", "ST", "UT", "UR"):
            return key, text or None
        parts = [p.strip(" \x00") for p in text.split("\\")]
        if not any(parts):
            return key, None
        return key, parts if len(parts) > 1 else parts[0]
    code = _STRUCT.get(vr)
    if code is not None:
        size = struct.calcsize("<" + code)
        if len(data) % size:
            return None
        values = struct.unpack(f"<{len(data) // size}{code}", data)
        return key, list(values) if len(values) > 1 else values[0]
    if vr == "AT":
        return None
    if len(data) > MAX_INLINE_BINARY:
        return key, None
    return key, base64.b64encode(data).decode()


def _convert(elem: DataElement, vrs: dict[str, str]) -> tuple[str, Any]:
    """One element in HealthImaging's metadata JSON form: keyword (or 8-hex tag) → plain JSON value."""
    key = elem.keyword or f"{elem.tag:08X}"
    vr = elem.VR
    if not elem.keyword or " or " in str(vr):
        vrs[key] = str(vr)
    return key, _json_value(elem, str(vr), vrs)


def _json_value(elem: DataElement, vr: str, vrs: dict[str, str]) -> Any:
    value = elem.value
    if vr == "SQ":
        return [{k: v for k, v in (_convert(e, vrs) for e in item)} for item in value]
    if value is None or value == "" or (isinstance(value, (list, MultiValue)) and len(value) == 0):
        return None
    if vr in BINARY_VRS or isinstance(value, bytes):
        data = bytes(value)
        if len(data) > MAX_INLINE_BINARY:
            return None
        return base64.b64encode(data).decode()
    if vr == "AT":
        items = value if isinstance(value, (list, MultiValue)) else [value]
        out = [f"{int(t):08X}" for t in items]
        return out if len(out) > 1 else out[0]
    if isinstance(value, (list, MultiValue)):
        return [_scalar(v, vr) for v in value]
    return _scalar(value, vr)


def _scalar(value: Any, vr: str) -> Any:
    if vr in TEXT_VRS or isinstance(value, PersonName):
        return str(value)
    if isinstance(value, (int, float)):
        return value
    return str(value)


def _frames(ds: Dataset, ts: str, rows: int | None, columns: int | None) -> list[Frame]:
    if PIXEL_DATA_TAG not in ds:
        return []
    elem = ds[PIXEL_DATA_TAG]
    pixel_data = elem.value
    if pixel_data is None:
        return []
    number_of_frames = max(1, _int(ds.get("NumberOfFrames")) if "NumberOfFrames" in ds else 1)
    encapsulated = ts not in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
                              "1.2.840.10008.1.2.1.99")
    if encapsulated:
        try:
            chunks = list(generate_frames(pixel_data, number_of_frames=number_of_frames))
        except Exception:
            raise InstanceRejected("Pixel Data is truncated or its encapsulation is invalid") from None
        if len(chunks) < number_of_frames:
            raise InstanceRejected(
                f"Pixel Data holds {len(chunks)} frames but NumberOfFrames is {number_of_frames}")
        return [Frame(len(c), zlib.crc32(c)) for c in chunks]
    spp = _int(ds.get("SamplesPerPixel")) if "SamplesPerPixel" in ds else 1
    bits = _int(ds.get("BitsAllocated")) if "BitsAllocated" in ds else 16
    if not rows or not columns:
        return [Frame(len(pixel_data), zlib.crc32(pixel_data))]
    pixels = rows * columns * max(spp, 1)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        pixels = rows * columns * 2  # 4:2:2 subsampling: two samples per pixel on average
    if bits == 1:
        expected_total = (pixels * number_of_frames + 7) // 8
        if len(pixel_data) < expected_total:
            raise InstanceRejected(
                f"Pixel Data is truncated: {len(pixel_data)} bytes present, {expected_total} expected")
        return [Frame(expected_total, zlib.crc32(pixel_data[:expected_total]))]
    frame_size = pixels * max(bits // 8, 1)
    expected_total = frame_size * number_of_frames
    if len(pixel_data) < expected_total:
        raise InstanceRejected(
            f"Pixel Data is truncated: {len(pixel_data)} bytes present, {expected_total} expected "
            f"for {number_of_frames} frame(s) of {rows}x{columns}")
    view = memoryview(pixel_data)
    return [Frame(frame_size, zlib.crc32(view[i * frame_size:(i + 1) * frame_size]))
            for i in range(number_of_frames)]
