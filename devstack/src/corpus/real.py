"""Real, redistributable DICOM files from pydicom's own test data and the pydicom-data package.

The curated list spans modalities (CT, MR, NM, US, CR, OT) and transfer syntaxes (explicit/implicit VR little
endian, deflated, RLE, JPEG lossless, JPEG baseline, JPEG 2000 lossy and lossless), plus multi-frame, enhanced and
vendor-private (Siemens CSA) headers. Every file is checked when it is selected; a file that is missing or fails a
check is skipped with a logged reason rather than failing the build, because pydicom-data is an optional extra.

Files are looked up with ``get_testdata_file(name, download=False)``: pydicom would otherwise try GitHub for names
that are in its URL list but not installed, and this project must work offline.

Several upstream files share identities (e.g. ``MR_small.dcm`` and ``MR_small_RLE.dcm`` are the same SOP Instance
in two encodings; ``JPEG2000.dcm`` and ``JPEG-LL.dcm`` share a series), so only one of each family is listed: two
of them in one import would be a divergent duplicate or a non-primary image set, which belongs in the
deliberately built cases, not here. Files whose meta SOP Instance UID differs from the dataset's (``rtdose.dcm``,
``rtplan.dcm``) or with non-DICOM dates and ``999.`` UIDs (``color-pl.dcm``) are left out for the same reason.
"""

from __future__ import annotations

import logging
import re
import shutil
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import FileDataset

from corpus.models import CorpusEntry, Expected, Origin, entry_for_bytes

log = logging.getLogger(__name__)

REAL_DIR = "real"
# The UID pattern of HealthImaging's API model, with the DICOM 64-character limit.
UID_PATTERN = re.compile(r"(?:[1-9][0-9]*|0)(?:\.(?:[1-9][0-9]*|0))*")
# HealthImaging import length limits (DG dicom-element-constraints).
AHI_LENGTH_LIMITS = {"PatientName": 256, "PatientID": 256, "AccessionNumber": 256, "StudyID": 16,
                     "StudyDescription": 64, "StudyDate": 18, "PatientBirthDate": 18, "StudyTime": 28}


@dataclass(frozen=True)
class RealFile:
    name: str
    why: str  # what the file adds to the corpus
    in_sample: bool = False  # part of the small bundled sample corpus


CURATED: tuple[RealFile, ...] = (
    RealFile("CT_small.dcm", "CT, explicit VR LE, 128x128 single frame", in_sample=True),
    RealFile("MR_small.dcm", "MR, explicit VR LE, 64x64", in_sample=True),
    RealFile("JPEG2000.dcm", "NM, JPEG 2000 (lossy) encapsulated", in_sample=True),
    RealFile("SC_rgb.dcm", "secondary capture, RGB, explicit VR LE", in_sample=True),
    RealFile("image_dfl.dcm", "deflated explicit VR LE; empty PatientID", in_sample=True),
    RealFile("emri_small.dcm", "MR, 10-frame multi-frame, explicit VR LE", in_sample=True),
    RealFile("US1_J2KR.dcm", "US RGB, JPEG 2000 lossless", in_sample=True),
    RealFile("MR2_J2KI.dcm", "MR 1024x1024, JPEG 2000 lossy"),
    RealFile("693_J2KR.dcm", "CT, JPEG 2000 lossless"),
    RealFile("RG1_J2KI.dcm", "CR, JPEG 2000 lossy, large matrix"),
    RealFile("JPGLosslessP14SV1_1s_1f_8b.dcm", "US, JPEG lossless process 14 SV1"),
    RealFile("examples_ybr_color.dcm", "US YBR, JPEG baseline, 30 frames"),
    RealFile("OBXXXX1A_rle.dcm", "US (Philips), RLE lossless"),
    RealFile("gdcm-US-ALOKA-16.dcm", "US (Aloka), implicit VR LE, 16-bit"),
    RealFile("MR-SIEMENS-DICOM-WithOverlays.dcm", "MR (Siemens) with CSA private header and overlays"),
    RealFile("eCT_Supplemental.dcm", "Enhanced CT, multi-frame functional groups"),
)


def locate(name: str) -> Path | None:
    """Path of a pydicom / pydicom-data test file, or None when it is not installed (never downloads)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            found = get_testdata_file(name, download=False)
        except Exception:  # pydicom raises when pydicom-data is absent: the file is simply unavailable
            return None
    return Path(str(found)) if found else None


def check_real_file(path: Path) -> tuple[FileDataset | None, str | None]:
    """Parse ``path`` fully and check it is a clean import candidate. Returns (dataset, None) or (None, reason)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(path)
            ds.get("PixelData")  # fully read, including a deferred Pixel Data value
    except Exception as exc:  # any parse failure means "not a clean candidate"; the reason is logged
        return None, f"does not parse: {type(exc).__name__}: {exc}"
    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:
        return None, "no Transfer Syntax UID in file meta"
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = str(ds.get(keyword) or "")
        if not value:
            return None, f"no {keyword}"
        if len(value) > 64 or not UID_PATTERN.fullmatch(value):
            return None, f"{keyword} {value!r} is not a valid UID"
    if meta.get("MediaStorageSOPInstanceUID") != ds.SOPInstanceUID:
        return None, "MediaStorageSOPInstanceUID differs from SOPInstanceUID"
    for keyword, limit in AHI_LENGTH_LIMITS.items():
        if len(str(ds.get(keyword) or "")) > limit:
            return None, f"{keyword} longer than HealthImaging's {limit}-character limit"
    return ds, None


def select_real_files(dest: Path, *, names: Iterable[str] | None = None,
                      sample_only: bool = False) -> list[CorpusEntry]:
    """Copy the curated files that pass :func:`check_real_file` to ``dest/real/<name>``.

    ``names`` restricts the selection (unknown names are looked up all the same); ``sample_only`` keeps the
    files marked ``in_sample``. Entry paths are relative to ``dest``. Missing or failing files are skipped and
    logged, and so is any file whose SOP Instance UID, or whose Study Instance UID with different patient
    values, repeats an earlier file's.
    """
    wanted = [f.name for f in CURATED if f.in_sample or not sample_only] if names is None else list(names)
    entries: list[CorpusEntry] = []
    seen_sops: set[str] = set()
    study_patients: dict[str, tuple[str, str]] = {}
    for name in wanted:
        path = locate(name)
        if path is None:
            log.warning("real corpus: skipping %s: not installed (pydicom-data missing?)", name)
            continue
        ds, problem = check_real_file(path)
        if ds is None:
            log.warning("real corpus: skipping %s: %s", name, problem)
            continue
        sop, study = str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)
        patient = (str(ds.get("PatientID") or ""), str(ds.get("PatientName") or ""))
        if sop in seen_sops:
            log.warning("real corpus: skipping %s: SOP Instance UID already selected", name)
            continue
        if study_patients.get(study, patient) != patient:
            log.warning("real corpus: skipping %s: Study Instance UID already selected with other patient values",
                        name)
            continue
        seen_sops.add(sop)
        study_patients[study] = patient
        rel = f"{REAL_DIR}/{name}"
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        data = target.read_bytes()
        entries.append(entry_for_bytes(
            rel, data, origin=Origin.REAL, expected=Expected.VALID, source=name,
            reason=next((f.why for f in CURATED if f.name == name), None),
            sop_class_uid=str(ds.SOPClassUID), sop_instance_uid=sop, study_instance_uid=study,
            series_instance_uid=str(ds.SeriesInstanceUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        ))
    return entries
