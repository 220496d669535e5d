"""Tiny DICOM builders for tests (synthetic values only)."""

from __future__ import annotations

import io

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

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
