"""The pure FHIR pieces: ImagingStudy/Endpoint building, OperationOutcome reading, spot-check comparisons."""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B.endpoint import Endpoint
from fhir.resources.R4B.imagingstudy import ImagingStudy

from activities.fhir import (
    IMAGE_SET_SYSTEM,
    ImageSetDoc,
    build_imaging_study,
    endpoint_resource,
    endpoint_resource_id,
    patient_system,
    structure_issues,
    study_resource_id,
)
from activities.fhir_route import client_token, issues_of
from activities.healthimaging import metadata_sops
from activities.spotcheck import compare_metadata, imported_instances, sample
from contracts.common import FileState
from contracts.records import InstanceRecord, LedgerEntry

DS = "0123456789abcdef0123456789abcdef"
STUDY = "1.2.826.0.1.3680043.8.498.10"


def metadata(image_set: str, series: str, sops: list[str], *, patient: dict[str, Any] | None = None,
             study: dict[str, Any] | None = None, series_dicom: dict[str, Any] | None = None) -> ImageSetDoc:
    return ImageSetDoc(image_set, {
        "SchemaVersion": "1.1", "DatastoreID": DS, "ImageSetID": image_set,
        "Patient": {"DICOM": patient if patient is not None else {"PatientID": "SYNTH-1", "PatientName": "SYN^A"}},
        "Study": {"DICOM": study if study is not None else {"StudyInstanceUID": STUDY, "StudyDate": "20240131",
                                                            "AccessionNumber": "ACC-9", "StudyDescription": "CT"},
                  "Series": {series: {"DICOM": series_dicom if series_dicom is not None else
                                      {"Modality": "CT", "SeriesNumber": 2, "SeriesDescription": "axial"},
                                      "Instances": {sop: {"DICOM": {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
                                                                    "InstanceNumber": str(i + 1)}}
                                                    for i, sop in enumerate(sops)}}}},
    })


def test_imaging_study_links_study_series_image_sets_and_endpoint() -> None:
    sets = [metadata("b" * 32, f"{STUDY}.2", [f"{STUDY}.2.1"], series_dicom={"Modality": "MR", "SeriesNumber": "1"}),
            metadata("a" * 32, f"{STUDY}.1", [f"{STUDY}.1.1", f"{STUDY}.1.2"])]
    built = build_imaging_study(DS, STUDY, sets)
    study = built.resource
    assert study is not None and built.problems == [] and built.instances == 3
    assert study["id"] == study_resource_id(DS, STUDY) and len(study["id"]) == 64
    assert study["identifier"][0] == {"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY}"}
    assert study["identifier"][1]["type"]["coding"][0]["code"] == "ACSN"
    assert [i["value"] for i in study["identifier"] if i.get("system") == IMAGE_SET_SYSTEM] == ["a" * 32, "b" * 32]
    assert study["subject"] == {"identifier": {"system": "urn:dicom:issuer-of-patient-id:unknown", "value": "SYNTH-1"}}
    assert study["started"] == "2024-01-31" and study["numberOfSeries"] == 2 and study["numberOfInstances"] == 3
    # Series are ordered by SeriesNumber; each names its image set and the Endpoint.
    assert [s["uid"] for s in study["series"]] == [f"{STUDY}.2", f"{STUDY}.1"]
    first = study["series"][0]
    assert first["modality"]["code"] == "MR" and first["number"] == 1
    assert first["extension"] == [{"url": IMAGE_SET_SYSTEM, "valueString": "b" * 32}]
    assert first["endpoint"] == [{"reference": f"Endpoint/{endpoint_resource_id(DS)}"}] == study["endpoint"]
    assert [i["number"] for i in study["series"][1]["instance"]] == [1, 2]
    # Complete and valid by the FHIR model (fhir.resources R4B stands in for R4).
    ImagingStudy.model_validate(study)
    assert structure_issues(study) == []
    # The patient's name never makes it into the resource: only the identifier is needed.
    assert "SYN^A" not in str(study)


def test_endpoint_is_dicom_wado_rs_at_the_data_store() -> None:
    ep = endpoint_resource(DS, "https://dicom-medical-imaging.us-east-1.amazonaws.com/")
    Endpoint.model_validate(ep)
    assert ep["connectionType"]["code"] == "dicom-wado-rs"
    assert ep["address"] == f"https://dicom-medical-imaging.us-east-1.amazonaws.com/datastore/{DS}"
    assert ep["identifier"] == [{"system": "urn:aws:healthimaging:datastore", "value": DS}]


def test_ids_and_tokens_are_deterministic() -> None:
    assert study_resource_id(DS, STUDY) == study_resource_id(DS, STUDY)
    assert study_resource_id(DS, STUDY) != study_resource_id("f" * 32, STUDY)
    assert study_resource_id(DS, STUDY) != study_resource_id(DS, STUDY + ".1")
    token = client_token("mig-1", "batch-00000", "hl")
    assert token == client_token("mig-1", "batch-00000", "hl") != client_token("mig-1", "batch-00000-p1", "hl")
    assert token.isalnum() and len(token) <= 64


@pytest.mark.parametrize("issuer,system", [
    ("1.2.3.4", "urn:oid:1.2.3.4"),
    ("https://hospital.example/mrn", "https://hospital.example/mrn"),
    ("HOSP A/B", "urn:dicom:issuer-of-patient-id:HOSP%20A%2FB"),
    (None, "urn:dicom:issuer-of-patient-id:unknown"),
    ("1.2..3", "urn:dicom:issuer-of-patient-id:1.2..3"),
])
def test_patient_system_is_always_a_uri(issuer: str | None, system: str) -> None:
    assert patient_system(issuer) == system


def test_missing_patient_id_leaves_subject_out_for_healthlake_to_judge() -> None:
    built = build_imaging_study(DS, STUDY, [metadata("a" * 32, f"{STUDY}.1", [f"{STUDY}.1.1"], patient={})])
    assert built.resource is not None and "subject" not in built.resource
    assert built.problems == ["no PatientID in the image set metadata: ImagingStudy.subject is missing"]
    # Only the missing 1..1 element: structure is fine (structure-only / minimal imports accept it).
    assert structure_issues(built.resource) == []


@pytest.mark.parametrize("series_dicom,study_dicom", [
    ({"Modality": None, "SeriesNumber": "abc"}, {"StudyDate": "2024-13-45"}),
    ({"Modality": ["CT", "PT"], "SeriesNumber": -5}, {"StudyDate": "20241399", "AccessionNumber": ""}),
    ({"Modality": "", "SeriesNumber": "1e99"}, {"StudyDate": 20240101, "StudyDescription": {"Alphabetic": "x"}}),
    ({"SeriesNumber": "inf", "Modality": {"Alphabetic": None}}, {"StudyDate": "nan"}),
    ({"SeriesNumber": "nan", "SeriesDescription": ["", None]}, {"StudyDate": ["20240101", "x"]}),
    ({}, {}),
])
def test_hostile_metadata_still_builds_a_structurally_valid_study(series_dicom: dict[str, Any],
                                                                   study_dicom: dict[str, Any]) -> None:
    doc = metadata("a" * 32, f"{STUDY}.1", [f"{STUDY}.1.1"], study=study_dicom, series_dicom=series_dicom)
    instance = doc.metadata["Study"]["Series"][f"{STUDY}.1"]["Instances"][f"{STUDY}.1.1"]
    instance["DICOM"] = {"InstanceNumber": "-1", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}
    built = build_imaging_study(DS, STUDY, [doc])
    assert built.resource is not None
    assert structure_issues(built.resource) == []
    ImagingStudy.model_validate(built.resource)


@pytest.mark.parametrize("doc", [
    {},
    {"Patient": [], "Study": "nope"},
    {"Patient": {"DICOM": None}, "Study": {"DICOM": [], "Series": None}},
    {"Study": {"Series": {"1.2.3": None}}},
    {"Study": {"Series": {"1.2.3": {"DICOM": "x", "Instances": [1, 2]}}}},
    {"Study": {"Series": {"1.2.3": {"Instances": {"1.2.3.4": None, "1.2.3.5": {"DICOM": 7}}}}}},
])
def test_malformed_metadata_documents_never_crash_the_builder(doc: dict[str, Any]) -> None:
    built = build_imaging_study(DS, STUDY, [ImageSetDoc("a" * 32, doc)])
    assert built.resource is not None and "subject" not in built.resource
    assert structure_issues(built.resource) == []


def test_bad_uids_in_metadata_are_a_build_problem_not_a_crash() -> None:
    doc = metadata("a" * 32, "not a uid / with spaces", ["x" * 80])
    built = build_imaging_study(DS, STUDY, [doc])
    assert built.resource is not None
    issues = structure_issues(built.resource)
    assert issues and all("not a uid" not in i for i in issues)


def test_structure_issues_names_paths_not_values() -> None:
    study = build_imaging_study(DS, STUDY, [metadata("a" * 32, f"{STUDY}.1", [f"{STUDY}.1.1"])]).resource
    assert study is not None
    study["numberOfSeries"] = "SECRET-VALUE"
    issues = structure_issues(study)
    assert issues and all("SECRET" not in i for i in issues)
    assert any("ImagingStudy.numberOfSeries" in i for i in issues)


@pytest.mark.parametrize("outcome,expected", [
    ({"issue": [{"severity": "error", "code": "required", "expression": ["ImagingStudy.subject"],
                 "diagnostics": "patient SMITH is missing"}]}, ["required at ImagingStudy.subject"]),
    ({"issue": [{"severity": "information", "code": "informational", "diagnostics": "All OK"}]}, []),
    ({"issue": [{"severity": "fatal", "code": "structure"}, {"severity": "warning", "code": "x"}]}, ["structure"]),
    ({"issue": "not a list"}, []),
    ({"issue": [None, 3, {"severity": "error", "code": "value", "expression": "Endpoint.address"}]},
     ["value at Endpoint.address"]),
    (None, []),
    ("<html>", []),
])
def test_issues_of_reads_codes_and_paths_only(outcome: Any, expected: list[str]) -> None:
    assert issues_of(outcome) == expected


def _record(key: str, study: str = STUDY, series: str = f"{STUDY}.1", sop: str = f"{STUDY}.1.1") -> InstanceRecord:
    return InstanceRecord(key=key, size=1, etag="e", sop_instance_uid=sop, study_instance_uid=study,
                          series_instance_uid=series, transfer_syntax_uid="1.2.840.10008.1.2.1",
                          sop_class_uid="1.2.840.10008.5.1.4.1.1.2", patient_fingerprint="p", study_fingerprint="s",
                          series_fingerprint="r", content_id="c")


def test_spot_check_sample_is_deterministic_and_skips_unimported() -> None:
    files = [_record(f"k{i}", sop=f"{STUDY}.1.{i}") for i in range(6)]
    ledger = [LedgerEntry(key=f"k{i}", state=FileState.IMPORTED if i != 3 else FileState.FAILED,
                          image_set_id="a" * 32 if i != 3 else None) for i in range(6)]
    instances = imported_instances(files, ledger)
    assert [i.line for i in instances] == [1, 2, 3, 5, 6]
    picked = sample(instances, 2)
    assert len(picked) == 2 and picked == sample(list(reversed(instances)), 2)
    assert sample(instances, 0) == [] and len(sample(instances, 50)) == 5


def test_compare_metadata() -> None:
    rec = _record("k")

    def ds(study: str, series: str, sop: str) -> list[dict[str, Any]]:
        return [{"0020000D": {"vr": "UI", "Value": [study]}, "0020000E": {"vr": "UI", "Value": [series]},
                 "00080018": {"vr": "UI", "Value": [sop]}}]

    assert compare_metadata(ds(STUDY, f"{STUDY}.1", f"{STUDY}.1.1"), rec) is None
    assert compare_metadata(ds(STUDY, f"{STUDY}.9", f"{STUDY}.1.1"), rec) == \
        "DICOMweb metadata has a different SeriesInstanceUID"
    assert "SOPInstanceUID" in (compare_metadata([{"0020000D": {"Value": [STUDY]}}], rec) or "")
    for bad in ([], {}, None, [1], ds(STUDY, "", "") * 2):
        assert compare_metadata(bad, rec) == "DICOMweb metadata is not a one-element DICOM JSON array"


def test_metadata_sops_tolerates_missing_levels() -> None:
    assert metadata_sops({}) == {}
    assert metadata_sops({"Study": {"Series": {"1.2": {}}}}) == {"1.2": set()}
    doc = metadata("a" * 32, f"{STUDY}.1", [f"{STUDY}.1.1", f"{STUDY}.1.2"]).metadata
    assert metadata_sops(doc) == {f"{STUDY}.1": {f"{STUDY}.1.1", f"{STUDY}.1.2"}}


def test_report_fhir_section_totals_batches_and_tolerates_missing_counts() -> None:
    from activities.report import fhir_section, render_summary

    assert fhir_section({}) is None
    rerouted = fhir_section({"batch-00004": {"imported": 1, "problems": []},
                             "batch-00004-r2": {"job_status": "COMPLETED", "imported": 1, "problems": []}})
    assert rerouted is not None and rerouted["imaging_studies_imported"] == 1 and list(rerouted["batches"]) == [
        "batch-00004-r2"]
    section = fhir_section({
        "batch-00000": {"job_id": "j1", "job_status": "COMPLETED", "studies": 2, "imported": 2, "failed": 0,
                        "rejected_by_validate": 0, "problems": []},
        "batch-00001-p1": {"job_status": "COMPLETED_WITH_ERRORS", "imported": 1, "failed": 1,
                           "rejected_by_validate": 2, "problems": ["x"]},
        "batch-00002": {"problems": ["HealthLake import not done: ResourceNotFoundException"]},
    })
    assert section is not None
    assert (section["imaging_studies_imported"], section["imaging_studies_failed"],
            section["rejected_by_validate"], section["batches_with_problems"]) == (3, 1, 2, 2)
    assert section["batches"]["batch-00002"] == {"job_id": None, "job_status": None, "studies": None,
                                                 "imported": None, "failed": None, "rejected_by_validate": None,
                                                 "problems": 1}
    summary = {"files_total": 0, "bytes_total": 0, "files_by_state": {}, "image_sets": 0, "primary_image_sets": 0,
               "non_primary_image_sets": [], "reasons": {}, "unaccounted": 0, "accounted_twice": 0, "fhir": section}
    assert ("FHIR ImagingStudy (HealthLake): 3 imported, 1 refused by the import, 2 refused by $validate, "
            "2 batches with problems") in render_summary("m", summary)


def test_local_retries_wait_out_throttling_only() -> None:
    from botocore.exceptions import ClientError

    from activities.healthimaging import with_local_retries

    def throttled(code: str) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "Rate exceeded"}}, "GetImageSetMetadata")

    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise throttled("ThrottlingException")
        return "ok"

    assert with_local_retries(flaky, (0.0, 0.0, 0.0)) == "ok" and len(calls) == 3

    def always(code: str) -> None:
        calls.append(1)
        raise throttled(code)

    calls.clear()
    with pytest.raises(ClientError):
        with_local_retries(lambda: always("ThrottlingException"), (0.0, 0.0))
    assert len(calls) == 3  # bounded: one try per delay, plus the last
    calls.clear()
    with pytest.raises(ClientError):
        with_local_retries(lambda: always("ResourceNotFoundException"), (0.0, 0.0))
    assert len(calls) == 1  # not throttling: no retry


def _round(status: str | None, imported: int, problems: list[str], **more: Any) -> dict[str, Any]:
    return {"job_id": "j" if status else None, "job_status": status, "studies": 1, "imported": imported,
            "failed": 0, "rejected_by_validate": 0, "problems": problems, **more}


@pytest.mark.parametrize("second,counted,imported,problems", [
    # Round 2 ran to its end: it re-sent every study, so it is the batch's count; round 1's problems stay.
    (_round("COMPLETED", 1, []), "batch-00004-r2", 1, 1),
    (_round("COMPLETED_WITH_ERRORS", 0, []), "batch-00004-r2", 0, 1),
    # Round 2 could not start, imported nothing, FAILED or was never reviewed: round 1's import stands.
    (_round(None, 0, ["HealthLake import not done: ThrottlingException"]), "batch-00004", 1, 2),
    (_round(None, 0, []), "batch-00004", 1, 1),
    (_round("FAILED", 0, ["HealthLake import job j FAILED: x"]), "batch-00004", 1, 2),
    (_round("COMPLETED", 0, ["HealthLake import output not reviewed: x"], reviewed=False), "batch-00004", 1, 2),
])
def test_report_counts_round_1_unless_round_2_ran_to_its_end(second: dict[str, Any], counted: str, imported: int,
                                                              problems: int) -> None:
    from activities.report import fhir_section

    first = _round("COMPLETED", 1, ["manifest numberOfResourcesScanned=3 but the output lists 2"])
    section = fhir_section({"batch-00004": first, "batch-00004-r2": second,
                            "batch-00005": _round("COMPLETED", 2, [])})
    assert section is not None
    assert sorted(section["batches"]) == sorted([counted, "batch-00005"])
    assert section["imaging_studies_imported"] == imported + 2
    assert section["batches"][counted]["problems"] == problems
    assert section["batches_with_problems"] == 1


def test_report_counts_a_started_batch_whose_review_never_wrote_a_result() -> None:
    from activities.report import fhir_section

    started = {"batch-00001": {"studies": 3, "resources": 3,
                               "rejected": [{"resource_type": "ImagingStudy", "stage": "validate"},
                                            {"resource_type": "ImagingStudy", "stage": "build"}]},
               "batch-00000": {"studies": 1, "resources": 2, "rejected": []}}
    section = fhir_section({"batch-00000": _round("COMPLETED", 1, [])}, started)
    assert section is not None and sorted(section["batches"]) == ["batch-00000", "batch-00001"]
    assert section["batches"]["batch-00001"] == {
        "job_id": None, "job_status": None, "studies": 3, "imported": None, "failed": None,
        "rejected_by_validate": 1, "problems": 1}
    assert section["batches_with_problems"] == 1 and section["imaging_studies_imported"] == 1
    # Only start records: FHIR routing was on, every review gave up.
    only = fhir_section({}, {"batch-00000": {"studies": 1, "rejected": "not a list"}})
    assert only is not None and only["batches_with_problems"] == 1 and only["rejected_by_validate"] == 0


def test_refusals_before_import_are_capped_in_the_payload_and_counted_in_full() -> None:
    from activities.fhir_route import MAX_FAILURES, capped_refusals
    from contracts.common import ValidationLevel
    from contracts.fhir import FhirFailure, FhirImportRef

    refused = [FhirFailure(resource_type="ImagingStudy", resource_id=f"{n:064x}", stage="validate",
                           issues=["required at ImagingStudy.subject"] * 10) for n in range(500)]
    refused += [FhirFailure(resource_type="ImagingStudy", resource_id="b" * 64, stage="build", issues=["x"])]
    fields = capped_refusals(refused)
    assert len(fields["validate_rejected"]) == MAX_FAILURES
    assert (fields["rejected_by_validate"], fields["refused_at_build"]) == (500, 1)
    ref = FhirImportRef(datastore_id=DS, job_id=None, input_s3_uri="s3://w-b/f/", output_s3_uri="s3://w-b/o/",
                        studies=501, resources=0, validation_level=ValidationLevel.STRICT, **fields)
    # What goes into history is bounded (20 refusals of at most 10 issues), whatever the batch size.
    more = capped_refusals(refused * 10)
    assert more["validate_rejected"] == fields["validate_rejected"] and more["rejected_by_validate"] == 5000
    assert len(ref.model_dump_json()) < 16_000
    assert capped_refusals([]) == {"validate_rejected": [], "rejected_by_validate": 0, "refused_at_build": 0}


@pytest.mark.parametrize("status,reviewed,counted", [
    ("COMPLETED", True, 2), ("COMPLETED_WITH_ERRORS", True, 2),
    (None, True, 1), ("FAILED", True, 1), ("COMPLETED", False, 1),
])
def test_batch_progress_keeps_round_1_unless_round_2_ran_to_its_end(status: str | None, reviewed: bool,
                                                                     counted: int) -> None:
    from contracts.fhir import FhirSummary
    from workflows.batch import after_round_2

    first = FhirSummary(job_id="j1", job_status="COMPLETED", studies=1, imported=1, stale_studies=1,
                        problems=["from round 1"])
    second = FhirSummary(job_id="j2" if status else None, job_status=status, studies=1,
                         imported=1 if status and status.startswith("COMPLETED") and reviewed else 0,
                         reviewed=reviewed, problems=["from round 2"])
    summary = after_round_2(first, second)
    assert summary.job_id == f"j{counted}" and summary.imported == 1 and summary.rerouted is True
    assert summary.problems == ["from round 1", "from round 2"]
