"""Tiny DICOM builders for tests (synthetic values only)."""

from __future__ import annotations

import io
import warnings

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from activities.dicom_header import parse_header
from activities.validate import rejects
from contracts.common import ValidationLevel

_BASE = pydicom.dcmread(get_testdata_file("CT_small.dcm"))


def make_instance(study: str, series: str, sop: str | None = None, patient_id: str = "SYNTH-0001",
                  patient_name: str = "SYNTH^PATIENT", drop: tuple[str, ...] = ()) -> bytes:
    """A valid CT instance (from pydicom's CT_small) with the given hierarchy and synthetic patient."""
    ds = _BASE.copy()
    ds.file_meta = _BASE.file_meta.copy()
    sop = sop or generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.PatientID, ds.PatientName = patient_id, patient_name
    for name in drop:
        if name in ds:
            delattr(ds, name)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def uid() -> str:
    return str(generate_uid())


def verdict(data: bytes, level: ValidationLevel, *, padding_rejected: bool = False) -> tuple[bool, list[str]]:
    """(rejected at ``level``, finding codes) of a file's header, read the way the parse activity reads it: a
    64 KiB first range, extended while the header asks for more. ``padding_rejected``: as with
    HIMIG_IMPORT_REJECTS_TRAILING_PADDING."""
    buf = data[:65536]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while True:
            result = parse_header(buf, len(data), padding_rejected=padding_rejected)
            if result.need_bytes and len(buf) < len(data):
                buf = data[: result.need_bytes]
                continue
            break
    codes = [f.code for f in result.findings]
    return (not result.readable or any(rejects(c, level) for c in codes)), codes
