"""Seeding the test Orthanc with synthetic studies (CT, MR and a JPEG 2000 secondary capture)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from tests.support.dicom import make_instance, uid
from tests.support.orthanc import Orthanc


def from_testdata(name: str, study: str, series: str, patient_id: str = "SYNTH-0001") -> bytes:
    """A pydicom test file re-identified into the given study/series (synthetic patient)."""
    ds = pydicom.dcmread(get_testdata_file(name))
    sop = str(generate_uid())
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.PatientID, ds.PatientName = patient_id, "SYNTH^PACS"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@dataclass
class Seeded:
    """What was stored in Orthanc: (study, series, sop) -> the uploaded bytes."""

    instances: dict[tuple[str, str, str], bytes] = field(default_factory=dict)

    def add(self, orthanc: Orthanc, body: bytes) -> None:
        assert orthanc.upload(body)["Status"] == "Success"
        ds = pydicom.dcmread(io.BytesIO(body), stop_before_pixels=True)
        self.instances[(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)] = body

    def landing_keys(self, prefix: str = "landed/") -> set[str]:
        return {f"{prefix}{st}/{se}/{sop}.dcm" for st, se, sop in self.instances}

    @property
    def studies(self) -> list[str]:
        return sorted({st for st, _, _ in self.instances})


def seed_two_studies(orthanc: Orthanc) -> Seeded:
    """Study A: 3 CT in one series + 1 MR in another; study B: 2 CT + 1 JPEG 2000 secondary capture."""
    orthanc.clear()
    seeded = Seeded()
    a, b = uid(), uid()
    ct_a, mr_a, ct_b, sc_b = uid(), uid(), uid(), uid()
    for _ in range(3):
        seeded.add(orthanc, make_instance(a, ct_a))
    seeded.add(orthanc, from_testdata("MR_small.dcm", a, mr_a))
    for _ in range(2):
        seeded.add(orthanc, make_instance(b, ct_b, patient_id="SYNTH-0002"))
    seeded.add(orthanc, from_testdata("JPEG2000.dcm", b, sc_b, patient_id="SYNTH-0002"))
    return seeded


def dated(orthanc: Orthanc, seeded: Seeded, study: str, day: str, series: str | None = None, instances: int = 1,
          modality: str = "CT") -> None:
    """Store ``instances`` CT instances of ``study`` dated ``day`` (YYYYMMDD; "" an empty StudyDate, "absent"
    none) in one series, with ``modality``."""
    series = series or uid()
    for _ in range(instances):
        ds = pydicom.dcmread(io.BytesIO(make_instance(study, series)))
        ds.StudyDate, ds.SeriesDate, ds.Modality = day, day, modality
        if day == "absent":
            del ds.StudyDate, ds.SeriesDate
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        seeded.add(orthanc, buf.getvalue())
