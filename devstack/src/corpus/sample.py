"""The bundled demo corpus: real files, a small synthetic hierarchy, hostile files and the identity cases.

Layout under ``dest`` (all paths in the manifest are relative to ``dest``)::

    real/<upstream name>.dcm                 a few real files (valid)
    synthetic/p0001/st001/se001/00001.dcm    2 patients x 2 studies x 2 series x 3 instances (valid)
    malformed/<defect>.dcm ...               one file per registered defect (mostly reject)
    nonprimary/a_original.dcm                valid
    nonprimary/b_conflict.dcm                same Study/Series UID, other patient -> non-primary image set
    synthetic_copy/p0001/st001/se001/00001.dcm   byte-identical copy of the first synthetic file
    identity/a_original.dcm ... g_conflict_pixels.dcm   one instance re-encoded (duplicates) and changed
                                             (conflicts naming the attribute): see corpus.identity
    corpus-manifest.json

Paths that a pipeline should see second sort second (``b_conflict`` after ``a_original``; ``synthetic_copy/``
after ``synthetic/`` because ``/`` < ``_``), so listing order in S3 or on disk decides which copy is "first".
"""

from __future__ import annotations

import shutil
from pathlib import Path

from corpus.identity import write_identity_cases
from corpus.malformed import generate_malformed
from corpus.models import (
    CorpusEntry,
    CorpusManifest,
    Expected,
    Origin,
    entry_for_bytes,
    load_manifest,
    make_manifest,
)
from corpus.real import select_real_files
from corpus.synthetic import ImageProfile, InstanceFactory, InstanceKey, encode_dataset, generate_studies

__all__ = ["SAMPLE_SHAPE", "build_sample_corpus", "load_manifest", "write_duplicate", "write_nonprimary_pair"]

SAMPLE_SHAPE: dict[str, int] = {"patients": 2, "studies_per_patient": 2, "series_per_study": 2,
                                "instances_per_series": 3}
NONPRIMARY_DIR = "nonprimary"
NONPRIMARY_NAMESPACE = "NP"
DUPLICATE_DIR = "synthetic_copy"


def write_nonprimary_pair(dest: Path, *, seed: int = 0) -> list[CorpusEntry]:
    """Two instances of one series; the second names another patient, so HealthImaging makes it non-primary.

    Study and Series UIDs are equal, SOP Instance UIDs differ, and PatientID, PatientName, birth date and sex
    of ``b_conflict`` are those of a different synthetic patient. Returns entries relative to ``dest``.
    """
    factory = InstanceFactory(ImageProfile(), seed=seed, namespace=NONPRIMARY_NAMESPACE)
    original = factory.copy(InstanceKey(0, 0, 0, 0))
    conflict = factory.copy(InstanceKey(0, 0, 0, 1))  # same patient/study/series indices -> same Study/Series UIDs
    other = factory.copy(InstanceKey(1, 0, 0, 0))
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex"):
        setattr(conflict, keyword, getattr(other, keyword))
    a_path, b_path = f"{NONPRIMARY_DIR}/a_original.dcm", f"{NONPRIMARY_DIR}/b_conflict.dcm"
    entries: list[CorpusEntry] = []
    for rel, ds, expected, reason, related in (
        (a_path, original, Expected.VALID, "first instance of the series; becomes the primary image set", None),
        (b_path, conflict, Expected.NON_PRIMARY,
         f"same Study/Series Instance UID as {a_path} but a different PatientID/PatientName: HealthImaging "
         "stores it in a non-primary image set; the pipeline must report the conflict, not pick a winner",
         a_path),
    ):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        data = encode_dataset(ds)
        target.write_bytes(data)
        entries.append(entry_for_bytes(
            rel, data, origin=Origin.NONPRIMARY, expected=expected, reason=reason, related_to=related,
            sop_class_uid=str(ds.SOPClassUID), sop_instance_uid=str(ds.SOPInstanceUID),
            study_instance_uid=str(ds.StudyInstanceUID), series_instance_uid=str(ds.SeriesInstanceUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        ))
    return entries


def write_duplicate(dest: Path, source: CorpusEntry, rel: str) -> CorpusEntry:
    """Copy ``dest/source.path`` to ``dest/rel`` byte for byte and describe the copy as a duplicate."""
    target = dest / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(dest / source.path, target)
    return source.model_copy(update={
        "path": rel, "origin": Origin.DUPLICATE, "expected": Expected.DUPLICATE, "related_to": source.path,
        "reason": f"byte-identical copy of {source.path} (same SOP Instance UID): import once, report the copy",
    })


def build_sample_corpus(dest: Path, seed: int = 0) -> CorpusManifest:
    """Build the demo corpus under ``dest`` and write ``corpus-manifest.json`` there.

    Deterministic for a given seed and installed pydicom/pydicom-data (real files are copied when installed).
    About 135 files and 4 MB (every malformed kind is in it, including 2 MiB and 300 KiB headers).
    """
    dest.mkdir(parents=True, exist_ok=True)
    entries = select_real_files(dest, sample_only=True)
    synthetic = [e.with_path(f"synthetic/{e.path}")
                 for e in generate_studies(
                     dest / "synthetic", seed=seed, patients=SAMPLE_SHAPE["patients"],
                     studies_per_patient=SAMPLE_SHAPE["studies_per_patient"],
                     series_per_study=SAMPLE_SHAPE["series_per_study"],
                     instances_per_series=SAMPLE_SHAPE["instances_per_series"])]
    entries += synthetic
    entries += [e.with_path(f"malformed/{e.path}") for e in generate_malformed(dest / "malformed", seed=seed)]
    entries += write_nonprimary_pair(dest, seed=seed)
    entries += write_identity_cases(dest, seed=seed)
    first = synthetic[0]
    entries.append(write_duplicate(dest, first, f"{DUPLICATE_DIR}/{first.path.removeprefix('synthetic/')}"))
    manifest = make_manifest("sample", seed, entries)
    manifest.write(dest)
    return manifest
