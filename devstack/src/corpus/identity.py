"""Instance identity cases: one SOP instance stored several ways, and two files that only share its UID.

HealthImaging compares datasets, not bytes (see ``activities.instance_identity``), so every re-encoding of
``a_original`` is the same instance (expected ``duplicate``), and only a real change of elements or pixels is a
conflict (expected ``conflict``, with the attributes that differ)::

    identity/a_original.dcm            explicit VR little endian (valid; the one imported)
    identity/b_big_endian.dcm          explicit VR big endian, pixels byte-swapped as the syntax says
    identity/c_implicit.dcm            implicit VR little endian
    identity/d_deflated.dcm            deflated explicit VR little endian
    identity/e_other_file_meta.dcm     the same bytes of dataset, another file meta group
    identity/f_conflict_attribute.dcm  big endian AND another SeriesDescription: only the attribute differs
    identity/g_conflict_pixels.dcm     one pixel changed: PixelData differs

The verdict is the same at every validation level: it is decided when planning, after validation.
"""

from __future__ import annotations

import array
from collections.abc import Callable
from pathlib import Path

from pydicom.dataset import FileDataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from corpus.models import CorpusEntry, Expected, Origin, entry_for_bytes
from corpus.synthetic import ImageProfile, InstanceFactory, InstanceKey, encode_dataset

IDENTITY_DIR = "identity"
IDENTITY_NAMESPACE = "ID"


def _big_endian(ds: FileDataset) -> None:
    pixels = array.array("H", ds.PixelData)
    pixels.byteswap()  # OW is written as given: the values must be big endian already
    ds.PixelData = pixels.tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian


def _implicit(ds: FileDataset) -> None:
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian


def _deflated(ds: FileDataset) -> None:
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian


def _other_file_meta(ds: FileDataset) -> None:
    ds.file_meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.8.498.1")
    ds.file_meta.ImplementationVersionName = "OTHER_WRITER_2"
    ds.file_meta.SourceApplicationEntityTitle = "ARCHIVE2"


def _other_attribute(ds: FileDataset) -> None:
    _big_endian(ds)
    ds.SeriesDescription = "RE-EXPORTED WITH ANOTHER DESCRIPTION"


def _other_pixel(ds: FileDataset) -> None:
    pixels = array.array("H", ds.PixelData)
    pixels[len(pixels) // 2] ^= 0x0001
    ds.PixelData = pixels.tobytes()


CASES: tuple[tuple[str, Callable[[FileDataset], None], Expected, str, list[str] | None], ...] = (
    ("b_big_endian.dcm", _big_endian, Expected.DUPLICATE, "the same instance in explicit VR big endian", None),
    ("c_implicit.dcm", _implicit, Expected.DUPLICATE, "the same instance in implicit VR little endian", None),
    ("d_deflated.dcm", _deflated, Expected.DUPLICATE, "the same instance, deflated", None),
    ("e_other_file_meta.dcm", _other_file_meta, Expected.DUPLICATE,
     "the same dataset with another file meta group (implementation, source AE title)", None),
    ("f_conflict_attribute.dcm", _other_attribute, Expected.CONFLICT,
     "same SOP Instance UID, big endian, and another SeriesDescription: only the attribute is a difference",
     ["SeriesDescription"]),
    ("g_conflict_pixels.dcm", _other_pixel, Expected.CONFLICT, "same SOP Instance UID, one pixel value changed",
     ["PixelData"]),
)


def write_identity_cases(dest: Path, *, seed: int = 0) -> list[CorpusEntry]:
    """Write the identity cases under ``dest/identity/``; returns entries relative to ``dest``."""
    factory = InstanceFactory(ImageProfile(), seed=seed, namespace=IDENTITY_NAMESPACE)
    original_path = f"{IDENTITY_DIR}/a_original.dcm"
    entries: list[CorpusEntry] = []
    cases = [("a_original.dcm", None, Expected.VALID, "the instance every other identity case is compared with",
              None), *CASES]
    for name, change, expected, reason, differs in cases:
        ds = factory.copy(InstanceKey(0, 0, 0, 0))
        if change is not None:
            change(ds)
        data = encode_dataset(ds)
        rel = f"{IDENTITY_DIR}/{name}"
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        entries.append(entry_for_bytes(
            rel, data, origin=Origin.IDENTITY, expected=expected, reason=reason,
            related_to=None if change is None else original_path, differs_in=differs,
            sop_class_uid=str(ds.SOPClassUID), sop_instance_uid=str(ds.SOPInstanceUID),
            study_instance_uid=str(ds.StudyInstanceUID), series_instance_uid=str(ds.SeriesInstanceUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID)))
    return entries
