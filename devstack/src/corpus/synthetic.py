"""Deterministic synthetic DICOM P10 studies (CT or MR), from tiny test sets to benchmark-sized ones.

Every value that varies is derived from ``seed`` and the instance's indices, never from the clock or a random
source, so the same arguments always give byte-identical files. UIDs come from
:func:`pydicom.uid.generate_uid` with fixed entropy sources; the image profile (modality, size, transfer syntax)
is part of that entropy, so corpora generated with different profiles never reuse a SOP Instance UID for
different content.

Speed: one template :class:`~pydicom.dataset.FileDataset` per factory is mutated in place for each instance and
pixel slices are cached, so the per-file cost is one ``dcmwrite`` (under 1 ms for 64x64).
"""

from __future__ import annotations

import copy
import math
import warnings
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from functools import lru_cache
from io import BytesIO
from pathlib import Path

from pydicom import config, dcmwrite
from pydicom.dataelem import DataElement
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from corpus.models import CorpusEntry, Expected, Origin, entry_for_bytes

# pydicom's registered root for generated UIDs; generate_uid() keeps the result within 64 characters.
UID_PREFIX = "1.2.826.0.1.3680043.8.498."
IMPLEMENTATION_VERSION_NAME = "HIMIG_CORPUS_1"
SOP_CLASSES: dict[str, UID] = {"CT": CTImageStorage, "MR": MRImageStorage}
SUPPORTED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
)
_BASE_DATE = date(2020, 1, 1)
_PIXEL_VARIANTS = 16  # distinct phantom slices per image size; instances cycle through them
# Elements InstanceFactory.dataset() assigns per instance. Every other element is encoded once and reused.
# tests/corpus checks the fast encoder against dcmwrite for several instances, so a missing entry here fails.
_VARYING_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
    "AccessionNumber", "StudyID", "StudyDescription", "SeriesInstanceUID", "SeriesDate", "SeriesTime",
    "SeriesNumber", "SeriesDescription", "FrameOfReferenceUID", "SOPInstanceUID", "ContentDate", "ContentTime",
    "InstanceNumber", "ImagePositionPatient", "SliceLocation", "PixelData",
)
_VARYING_TAGS = frozenset(Tag(k) for k in _VARYING_KEYWORDS)
_GROUP_LENGTH_TAG = Tag(0x0002, 0x0000)


SEPARATOR = "\x1f"


def synth_uid(*parts: object) -> UID:
    """A UID under :data:`UID_PREFIX` that depends only on ``parts``.

    The parts are joined with a separator into one entropy source: `generate_uid` concatenates its sources as they
    are, so ("1", "10") and ("11", "0") would otherwise hash alike (patient 10, slice 0 = patient 1, slice 10).
    """
    texts = [str(p) for p in parts]
    if any(SEPARATOR in t for t in texts):
        raise ValueError("a UID part may not contain the separator \\x1f (parts would run together)")
    return UID(generate_uid(prefix=UID_PREFIX, entropy_srcs=[SEPARATOR.join(["himig-corpus", *texts])]))


IMPLEMENTATION_CLASS_UID = synth_uid("implementation-class-uid")


@dataclass(frozen=True)
class ImageProfile:
    """The per-corpus image parameters (same for every instance a factory builds)."""

    rows: int = 64
    cols: int = 64
    modality: str = "CT"
    transfer_syntax: str = ExplicitVRLittleEndian

    def __post_init__(self) -> None:
        if self.modality not in SOP_CLASSES:
            raise ValueError(f"modality must be one of {sorted(SOP_CLASSES)}, not {self.modality!r}")
        if self.transfer_syntax not in SUPPORTED_TRANSFER_SYNTAXES:
            # Compressed syntaxes would need an encoder (numpy + plugins), which is not a dependency.
            raise ValueError(
                f"transfer syntax {self.transfer_syntax} is not supported; use one of "
                f"{[str(u) for u in SUPPORTED_TRANSFER_SYNTAXES]}"
            )
        if not (1 <= self.rows <= 4096 and 1 <= self.cols <= 4096):
            raise ValueError(f"rows and cols must be in 1..4096, not {self.rows}x{self.cols}")

    @property
    def key(self) -> str:
        """Goes into UID entropy so that different profiles never share UIDs."""
        return f"{self.modality}-{self.rows}x{self.cols}-{self.transfer_syntax}"


@dataclass(frozen=True, order=True)
class InstanceKey:
    """Zero-based position of one instance in the patient/study/series hierarchy."""

    patient: int
    study: int
    series: int
    instance: int


@lru_cache(maxsize=128)
def phantom_slice(rows: int, cols: int, variant: int, big_endian: bool = False) -> bytes:
    """A 12-bit-in-16 "body" phantom: an ellipse of water with a disc whose size depends on ``variant``.

    Built row by row from runs so a 512x512 slice costs milliseconds in pure Python (no numpy here).
    """
    air, water, organ = 0, 1024, 1024 + 60 + 8 * variant  # stored values; CT rescale intercept is -1024
    pixels = array("H")
    cy, cx = (rows - 1) / 2, (cols - 1) / 2
    ry, rx = rows * 0.45, cols * 0.40
    r_organ = min(rows, cols) * (0.08 + 0.01 * variant)
    for y in range(rows):
        row = array("H", [air]) * cols
        dy = y - cy
        if abs(dy) < ry:
            half = int(rx * math.sqrt(1 - (dy / ry) ** 2))
            lo, hi = max(0, int(cx) - half), min(cols, int(cx) + half + 1)
            row[lo:hi] = array("H", [water]) * (hi - lo)
        if abs(dy) < r_organ:
            half = int(math.sqrt(r_organ**2 - dy**2))
            lo, hi = max(0, int(cx) - half), min(cols, int(cx) + half + 1)
            row[lo:hi] = array("H", [organ]) * (hi - lo)
        pixels.extend(row)
    if big_endian:
        pixels.byteswap()
    return pixels.tobytes()


def _element_bytes(elem: DataElement, *, little_endian: bool, implicit_vr: bool,
                   encodings: str | list[str] | None) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = little_endian
    fp.is_implicit_VR = implicit_vr
    write_data_element(fp, elem, encodings)
    return fp.getvalue()


def encode_dataset(ds: FileDataset) -> bytes:
    """Serialise ``ds`` as a Part 10 file (128-byte preamble, ``DICM``, meta group with group length)."""
    buf = BytesIO()
    with warnings.catch_warnings():
        # Malformed-corpus bases deliberately hold over-long values; pydicom would warn about each.
        warnings.simplefilter("ignore", UserWarning)
        dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


class InstanceFactory:
    """Builds synthetic instances for one profile by mutating a single template dataset.

    ``namespace`` separates identity spaces (the plain hierarchy, the malformed bases, the non-primary pair) so
    their UIDs and PatientIDs never collide for the same seed.
    """

    def __init__(self, profile: ImageProfile | None = None, *, seed: int = 0, namespace: str = "") -> None:
        self.profile = profile or ImageProfile()
        self.seed = seed
        self.namespace = namespace
        self._ds = self._template()
        ts = UID(self.profile.transfer_syntax)
        self._little_endian = ts.is_little_endian
        self._implicit_vr = ts.is_implicit_VR
        self._encodings: str | list[str] | None = self._ds._character_set
        self._static: dict[BaseTag, bytes] = {
            elem.tag: self._elem(elem) for elem in self._ds if elem.tag not in _VARYING_TAGS
        }

    def _elem(self, elem: DataElement, *, meta: bool = False) -> bytes:
        if meta:  # the meta group is always explicit VR little endian
            return _element_bytes(elem, little_endian=True, implicit_vr=False, encodings=None)
        return _element_bytes(elem, little_endian=self._little_endian, implicit_vr=self._implicit_vr,
                              encodings=self._encodings)

    def uid(self, *parts: object) -> UID:
        return synth_uid(self.seed, self.namespace, self.profile.key, *parts)

    def _template(self) -> FileDataset:
        prof = self.profile
        meta = FileMetaDataset()
        meta.FileMetaInformationVersion = b"\0\1"
        meta.MediaStorageSOPClassUID = SOP_CLASSES[prof.modality]
        meta.MediaStorageSOPInstanceUID = UID(UID_PREFIX + "1")  # replaced per instance
        meta.TransferSyntaxUID = UID(prof.transfer_syntax)
        meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        ds = FileDataset("synthetic.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = SOP_CLASSES[prof.modality]
        ds.Modality = prof.modality
        ds.Manufacturer = "HIMIG SYNTHETIC"
        ds.InstitutionName = "SYNTHETIC TEST SITE"
        ds.ReferringPhysicianName = ""
        ds.StationName = "SYNTH01"
        ds.ManufacturerModelName = "CORPUS GENERATOR"
        ds.BodyPartExamined = "CHEST"
        ds.PatientPosition = "HFS"
        if prof.modality == "CT":
            ds.KVP = "120"
            ds.ConvolutionKernel = "STANDARD"
        else:
            ds.ScanningSequence = "SE"
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "2D"
            ds.RepetitionTime = "500"
            ds.EchoTime = "15"
            ds.MagneticFieldStrength = "1.5"
        ds.SliceThickness = "2.5"
        ds.AcquisitionNumber = 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PositionReferenceIndicator = ""
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = prof.rows
        ds.Columns = prof.cols
        ds.PixelSpacing = ["0.78125", "0.78125"]
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        if prof.modality == "CT":
            ds.WindowCenter = "40"
            ds.WindowWidth = "400"
            ds.RescaleIntercept = "-1024"
            ds.RescaleSlope = "1"
            ds.RescaleType = "HU"
        else:
            ds.WindowCenter = "600"
            ds.WindowWidth = "1200"
        ds.PixelData = b""
        ds["PixelData"].VR = "OW"
        return ds

    # -- identity ---------------------------------------------------------------------------------------------

    def patient_id(self, patient: int) -> str:
        return f"SYNTH-{self.seed}-{self.namespace}{patient + 1:04d}"

    def patient_name(self, patient: int) -> str:
        return f"SYNTH^PATIENT^{self.namespace}{patient + 1:04d}"

    def study_uid(self, key: InstanceKey) -> str:
        return self.uid("study", key.patient, key.study)

    def series_uid(self, key: InstanceKey) -> str:
        return self.uid("series", key.patient, key.study, key.series)

    def sop_uid(self, key: InstanceKey) -> str:
        return self.uid("sop", key.patient, key.study, key.series, key.instance)

    # -- building ---------------------------------------------------------------------------------------------

    def dataset(self, key: InstanceKey) -> FileDataset:
        """The shared template, set up for ``key``. Valid until the next call; use :meth:`copy` to keep it."""
        ds = self._ds
        prof = self.profile
        p, s, se, i = key.patient, key.study, key.series, key.instance
        # config.disable_value_validation skips pydicom's per-assignment VR checks, a large share of the cost;
        # every value below is known-valid by construction.
        with config.disable_value_validation():
            study_day = _BASE_DATE + timedelta(days=(self.seed * 97 + p * 31 + s * 7) % 1800)
            study_time = f"{8 + (p + s) % 10:02d}{(p * 7 + s * 13) % 60:02d}00"
            series_time = f"{study_time[:2]}{(int(study_time[2:4]) + se) % 60:02d}{(se * 7) % 60:02d}"
            ds.PatientName = self.patient_name(p)
            ds.PatientID = self.patient_id(p)
            ds.PatientBirthDate = f"{1930 + (self.seed + p * 13) % 70}{p % 12 + 1:02d}{p % 28 + 1:02d}"
            ds.PatientSex = "FMO"[p % 3]
            ds.StudyInstanceUID = self.study_uid(key)
            ds.StudyDate = study_day.strftime("%Y%m%d")
            ds.StudyTime = study_time
            ds.AccessionNumber = f"SYNA{p:05d}{s:03d}"
            ds.StudyID = f"P{p}S{s + 1}"[:16]
            ds.StudyDescription = f"SYNTHETIC {prof.modality} STUDY {s + 1}"
            ds.SeriesInstanceUID = self.series_uid(key)
            ds.SeriesDate = ds.StudyDate
            ds.SeriesTime = series_time
            ds.SeriesNumber = se + 1
            ds.SeriesDescription = f"SYNTHETIC AXIAL {se + 1}"
            ds.FrameOfReferenceUID = self.uid("frame-of-reference", p, s, se)
            ds.SOPInstanceUID = self.sop_uid(key)
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.ContentDate = ds.StudyDate
            ds.ContentTime = series_time
            ds.InstanceNumber = i + 1
            z = round(-100.0 + 2.5 * i, 2)
            x0 = round(-0.78125 * prof.cols / 2, 4)
            y0 = round(-0.78125 * prof.rows / 2, 4)
            ds.ImagePositionPatient = [x0, y0, z]
            ds.SliceLocation = z
            ds.PixelData = phantom_slice(
                prof.rows, prof.cols, (i + se) % _PIXEL_VARIANTS, prof.transfer_syntax == ExplicitVRBigEndian
            )
        return ds

    def copy(self, key: InstanceKey) -> FileDataset:
        """An independent dataset for ``key`` (for callers that go on to modify it)."""
        return copy.deepcopy(self.dataset(key))

    def encode(self, key: InstanceKey) -> bytes:
        """The Part 10 bytes for ``key``."""
        return self.serialize(self.dataset(key))

    def serialize(self, ds: FileDataset) -> bytes:
        """Part 10 bytes of the template as last set by :meth:`dataset`; equal to ``encode_dataset(ds)``.

        Elements that do not vary between instances were encoded once at construction, which makes this
        about 3x faster than ``dcmwrite``. Deflated output has to compress the whole dataset, so it goes
        through ``dcmwrite``.
        """
        if ds is not self._ds:
            raise ValueError("serialize() only accepts the factory's own template; use encode_dataset()")
        if self.profile.transfer_syntax == DeflatedExplicitVRLittleEndian:
            return encode_dataset(ds)
        meta = b"".join(self._elem(e, meta=True) for e in ds.file_meta if e.tag != _GROUP_LENGTH_TAG)
        group_length = DataElement(_GROUP_LENGTH_TAG, "UL", len(meta))
        parts = [ds.preamble or b"\0" * 128, b"DICM", self._elem(group_length, meta=True), meta]
        static = self._static
        parts.extend(static.get(e.tag) or self._elem(e) for e in ds)
        return b"".join(parts)


def iter_keys(patients: int, studies_per_patient: int, series_per_study: int,
              instances_per_series: int) -> Iterator[InstanceKey]:
    for p in range(patients):
        for s in range(studies_per_patient):
            for se in range(series_per_study):
                for i in range(instances_per_series):
                    yield InstanceKey(p, s, se, i)


def _width(count: int, minimum: int) -> int:
    return max(minimum, len(str(count)))


def generate_studies(
    dest: Path,
    *,
    patients: int,
    studies_per_patient: int,
    series_per_study: int,
    instances_per_series: int,
    seed: int = 0,
    rows: int = 64,
    cols: int = 64,
    modality: str = "CT",
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> list[CorpusEntry]:
    """Write a synthetic hierarchy under ``dest`` and return one entry per file (paths relative to ``dest``).

    Layout: ``p0001/st001/se001/00001.dcm`` (opaque one-based indices; names carry no patient data).
    Counts must be >= 1. 64x64 files are about 9 KB; 512x512 about 525 KB.
    """
    for name, value in (("patients", patients), ("studies_per_patient", studies_per_patient),
                        ("series_per_study", series_per_study), ("instances_per_series", instances_per_series)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, not {value}")
    factory = InstanceFactory(ImageProfile(rows, cols, modality, transfer_syntax), seed=seed)
    wp, ws = _width(patients, 4), _width(studies_per_patient, 3)
    wse, wi = _width(series_per_study, 3), _width(instances_per_series, 5)
    entries: list[CorpusEntry] = []
    made_dirs: set[Path] = set()
    for key in iter_keys(patients, studies_per_patient, series_per_study, instances_per_series):
        rel = (f"p{key.patient + 1:0{wp}d}/st{key.study + 1:0{ws}d}/se{key.series + 1:0{wse}d}/"
               f"{key.instance + 1:0{wi}d}.dcm")
        target = dest / rel
        if target.parent not in made_dirs:
            target.parent.mkdir(parents=True, exist_ok=True)
            made_dirs.add(target.parent)
        ds = factory.dataset(key)
        data = factory.serialize(ds)
        target.write_bytes(data)
        entries.append(entry_for_bytes(
            rel, data, origin=Origin.SYNTHETIC, expected=Expected.VALID,
            sop_class_uid=str(ds.SOPClassUID), sop_instance_uid=str(ds.SOPInstanceUID),
            study_instance_uid=str(ds.StudyInstanceUID), series_instance_uid=str(ds.SeriesInstanceUID),
            transfer_syntax_uid=str(transfer_syntax),
        ))
    return entries
