"""The DIMSE connector (C-FIND + C-GET with pynetdicom) against a real Orthanc."""

from __future__ import annotations

import io
from typing import Any

import pydicom
import pytest
from temporalio.exceptions import ApplicationError

from activities.sources import dimse
from activities.sources.common import SourceUnavailable, UnitOutcome, marker
from activities.sources.dimse import DimseConnector
from contracts.sources import DimseSource
from tests.activities.sources import support
from tests.activities.sources.pacs import seed_two_studies
from tests.activities.sources.support import (
    RequestCounter,
    buckets,
    failures,
    inventory,
    landed,
    receive_input,
    run_receive,
)
from tests.support.dicom import make_instance, uid
from tests.support.orthanc import ORTHANC_AET, OUR_AET, Orthanc
from tests.support.servers import free_port


def _source(orthanc: Orthanc, **kw: Any) -> DimseSource:
    return DimseSource(kind="dimse", host="127.0.0.1", port=orthanc.dicom_port, called_ae=ORTHANC_AET,
                       calling_ae=OUR_AET, **kw)


def test_every_study_is_pulled_by_c_get_with_its_pixels(s3: Any, orthanc: Orthanc) -> None:
    seeded = seed_two_studies(orthanc)
    land, work = buckets(s3)
    counter = RequestCounter(s3)
    inp = receive_input(land, work, _source(orthanc), page_size=4)
    result, _ = run_receive(s3, inp)
    assert result is not None and result.source_failures == 0
    got = landed(s3, land)
    assert set(got) == seeded.landing_keys()
    for (study, series, sop), original in seeded.instances.items():
        ds = pydicom.dcmread(io.BytesIO(got[f"landed/{study}/{series}/{sop}.dcm"]))
        want = pydicom.dcmread(io.BytesIO(original))
        assert ds.SOPInstanceUID == sop and ds.file_meta.MediaStorageSOPInstanceUID == sop
        # The stored encoding was offered, so nothing was transcoded (JPEG 2000 stays JPEG 2000).
        assert ds.file_meta.TransferSyntaxUID == want.file_meta.TransferSyntaxUID
        assert ds.PixelData == want.PixelData
    assert result.files == 7 and result.pages == 2
    assert sorted(r["key"] for r in inventory(s3, inp)) == sorted(got)
    pulled_puts = counter.calls["PutObject"] - result.pages - 1
    assert pulled_puts == 7
    print(f"\nS3 writes per pulled instance (DIMSE): {pulled_puts / 7:.2f}")


def test_unknown_study_in_the_filter_is_a_failure_row(s3: Any, orthanc: Orthanc) -> None:
    seeded = seed_two_studies(orthanc)
    missing = uid()
    land, work = buckets(s3)
    inp = receive_input(land, work, _source(orthanc, study_uids=[missing, seeded.studies[1]]))
    result, _ = run_receive(s3, inp)
    assert result is not None and result.source_failures == 1
    assert set(landed(s3, land)) == {k for k in seeded.landing_keys() if k.startswith(f"landed/{seeded.studies[1]}/")}
    [row] = failures(s3, inp)
    assert (row["key"], row["code"]) == (f"landed/{missing}/", "StudyNotFound")


def test_rejected_association_is_a_retryable_error_naming_the_peer(s3: Any, orthanc: Orthanc) -> None:
    land, work = buckets(s3)
    inp = receive_input(land, work, DimseSource(kind="dimse", host="127.0.0.1", port=orthanc.dicom_port,
                                                 called_ae="NOT-ORTHANC", calling_ae=OUR_AET))
    with pytest.raises(ApplicationError) as info:
        run_receive(s3, inp)
    assert info.value.type == "SourceUnavailable" and not info.value.non_retryable
    assert f"DIMSE source NOT-ORTHANC@127.0.0.1:{orthanc.dicom_port}: the association was rejected" in str(info.value)


def test_unreachable_pacs_is_a_retryable_error(s3: Any) -> None:
    land, work = buckets(s3)
    port = free_port()
    inp = receive_input(land, work, DimseSource(kind="dimse", host="127.0.0.1", port=port, called_ae="PACS",
                                                 calling_ae=OUR_AET))
    with pytest.raises(ApplicationError) as info:
        run_receive(s3, inp)
    assert info.value.type == "SourceUnavailable" and not info.value.non_retryable
    assert f"DIMSE source PACS@127.0.0.1:{port}" in str(info.value)


class _RefusesMR(DimseConnector):
    """Negotiates no storage context for MR, so the PACS's C-STORE sub-operations for MR fail."""

    def _storage_classes(self, expected: dict[str, tuple[str | None, str | None]]) -> list[str]:
        return [c for c in super()._storage_classes(expected) if c != "1.2.840.10008.5.1.4.1.1.4"]


def test_failed_c_get_sub_operations_become_failure_rows(s3: Any, orthanc: Orthanc) -> None:
    seeded = seed_two_studies(orthanc)
    land, _ = buckets(s3)
    study_a = next(st for st, _, _ in seeded.instances if sum(1 for k in seeded.instances if k[0] == st) == 4)
    landing = support.landing(s3, land)
    out: UnitOutcome = _RefusesMR(_source(orthanc)).pull(study_a, landing)
    # Orthanc fails the whole C-GET (status 0xC000) when one SOP class has no context: all four instances of the
    # study must come back as failure rows naming the PACS status, none silently missing.
    expected = {f"landed/{st}/{se}/{sop}.dcm" for st, se, sop in seeded.instances if st == study_a}
    assert {f.key for f in out.failures} | set(landed(s3, land)) == expected
    assert len(out.failures) + out.pulled == 4 and out.failures
    for row in out.failures:
        assert row.state == "failed" and row.code == "RetrieveFailed"
        assert "C-GET final status 0x" in (row.reason or "")


@pytest.mark.parametrize("classes", [1, 12, 13, 40, 127, 200])
def test_context_budget_keeps_the_uncompressed_pair_for_every_class(classes: int) -> None:
    groups = dimse.context_groups(classes)
    assert groups[0] == [str(dimse.ExplicitVRLittleEndian), str(dimse.ImplicitVRLittleEndian)]
    assert min(classes, dimse.MAX_CONTEXTS - 1) * len(groups) <= dimse.MAX_CONTEXTS - 1 or len(groups) == 1
    assert len(groups) == (len(dimse.TRANSFER_GROUPS) if classes <= 12 else max(1, 127 // classes))


def test_two_objects_with_one_sop_uid_both_land_under_distinct_keys(s3: Any, orthanc: Orthanc) -> None:
    """Orthanc keeps one SOP Instance UID under two PatientIDs; its C-GET sends both, and the second must not
    overwrite the first (a content-hash suffix, as the DICOMweb connector does)."""
    orthanc.clear()
    study, series, sop = uid(), uid(), uid()
    bodies = [make_instance(study, series, sop=sop, patient_id=p) for p in ("SYNTH-A", "SYNTH-B")]
    for body in bodies:
        assert orthanc.upload(body)["Status"] == "Success"
    land, _ = buckets(s3)
    landing = support.landing(s3, land)
    out = DimseConnector(_source(orthanc)).pull(study, landing)
    got = landed(s3, land)
    plain = f"landed/{study}/{series}/{sop}.dcm"
    assert out.pulled == len(got) == 2 and not out.failures
    assert plain in got and any(k.startswith(plain[: -len(".dcm")] + ".") and k != plain for k in got)
    patients = {pydicom.dcmread(io.BytesIO(b)).PatientID for b in got.values()}
    assert patients == {"SYNTH-A", "SYNTH-B"}


def test_a_study_the_pacs_cannot_serve_is_reported_and_the_rest_migrates(s3: Any, orthanc: Orthanc) -> None:
    seeded = seed_two_studies(orthanc)
    broken_study = seeded.studies[1]
    broken_sop = next(sop for st, _, sop in seeded.instances if st == broken_study)
    orthanc.break_storage(broken_sop)
    land, work = buckets(s3)
    inp = receive_input(land, work, _source(orthanc))
    result, _ = run_receive(s3, inp)
    # Orthanc reads the files to answer an IMAGE-level C-FIND, so the study's enumeration fails each time; the
    # PACS still answers a C-ECHO, so the study becomes one row and the other study migrates.
    assert result is not None and result.source_failures == 1
    [row] = failures(s3, inp)
    assert (row["key"], row["state"], row["code"]) == (f"landed/{broken_study}/", "failed", "SourceUnavailable")
    assert "C-FIND failed with status 0xC000" in row["reason"]
    other = {k for k in seeded.landing_keys() if not k.startswith(f"landed/{broken_study}/")}
    assert set(landed(s3, land)) == other


def test_the_probe_is_a_c_echo(orthanc: Orthanc) -> None:
    DimseConnector(_source(orthanc)).probe()
    # Orthanc rejects an unknown called AE; on a loaded machine the reject can arrive as an abort (see _associate).
    with pytest.raises(SourceUnavailable, match=r"the association was (rejected|aborted before it was established) "
                                                r"\(check called_ae/calling_ae"):
        DimseConnector(DimseSource(kind="dimse", host="127.0.0.1", port=orthanc.dicom_port, called_ae="NOT-ORTHANC",
                                   calling_ae=OUR_AET)).probe()


def test_a_study_listing_with_uid_less_matches_becomes_an_unusable_listing_row(s3: Any) -> None:
    """``units`` ends with a marker unit when C-FIND matches had no StudyInstanceUID; pulling it makes no call."""
    land, _ = buckets(s3)
    landing = support.landing(s3, land)
    connector = DimseConnector(DimseSource(kind="dimse", host="127.0.0.1", port=free_port(), called_ae="PACS",
                                           calling_ae=OUR_AET))
    out = connector.pull(marker("unusable-studies", "4"), landing)
    assert [(f.key, f.code) for f in out.failures] == [("landed/unusable-study-listing", "UnusableListing")]
    assert "listed 4 matches without a StudyInstanceUID" in (out.failures[0].reason or "")
