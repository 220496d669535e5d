"""FHIR R4 ImagingStudy and Endpoint resources for the studies a migration put into HealthImaging (pure: no I/O).

Built from HealthImaging's own image-set metadata documents (``GetImageSetMetadata``: Patient, Study, Series and
Instances levels), not from our intermediate records, which hold only fingerprints. One ImagingStudy per study
covers every primary image set of that study in the data store, so a study spread over several batches (or
migrations) is complete whichever batch routes it last. Links to HealthImaging (research/healthimaging.md §8.2):

- ``identifier``: ``urn:dicom:uid`` = ``urn:oid:<StudyInstanceUID>``, the accession number (type ``ACSN``), and one
  ``urn:aws:healthimaging:imageset`` identifier per image set;
- ``endpoint`` / ``series[].endpoint``: an Endpoint (``dicom-wado-rs``) whose address is the data store's DICOMweb
  base URL; each series also names its image set in an extension (WADO-RS takes ``?imageSetId=``);
- ``subject``: a logical reference by identifier (PatientID, system from IssuerOfPatientID); no Patient resource.

Ids are deterministic (a hash of data store and StudyInstanceUID), so routing a study again updates it.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from activities.healthimaging import dicomweb_address

IMAGE_SET_SYSTEM = "urn:aws:healthimaging:imageset"
DATASTORE_SYSTEM = "urn:aws:healthimaging:datastore"
DICOM_UID_SYSTEM = "urn:dicom:uid"
DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
ENDPOINT_CONNECTION_SYSTEM = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
# Patient ids without an issuer, and issuers that are neither OIDs nor URIs, get a system under this prefix.
ISSUER_SYSTEM_PREFIX = "urn:dicom:issuer-of-patient-id:"
# A series whose Modality is missing still needs a code (ImagingStudy.series.modality is 1..1): DICOM's "other".
UNKNOWN_MODALITY = "OT"

_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")
_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
# Pydantic error types that only mean "a 1..n element is absent": a cardinality rule, left to the validation level.
_REQUIRED_ERRORS = {"missing", "value_error.missing"}


def study_resource_id(datastore_id: str, study_uid: str) -> str:
    """The ImagingStudy id: 64 hex characters (FHIR's id limit), the same every time the study is routed."""
    return hashlib.sha256(f"{datastore_id}|{study_uid}".encode()).hexdigest()


def endpoint_resource_id(datastore_id: str) -> str:
    return f"healthimaging-{datastore_id}"[:64]


def patient_system(issuer: str | None) -> str:
    """A URI for the PatientID's namespace: the issuer itself when it is an OID or URI, else a urn naming it."""
    if issuer and _OID.match(issuer):
        return f"urn:oid:{issuer}"
    if issuer and _URI.match(issuer):
        return issuer
    return ISSUER_SYSTEM_PREFIX + urllib.parse.quote(issuer or "unknown", safe="")


@dataclass
class ImageSetDoc:
    """One primary image set: its id and its metadata document (the decoded GetImageSetMetadata JSON)."""

    image_set_id: str
    metadata: dict[str, Any]


@dataclass
class BuiltStudy:
    """The ImagingStudy for one study, with the problems found building it (paths only, no values)."""

    study_uid: str
    resource: dict[str, Any]
    instances: int = 0
    problems: list[str] = field(default_factory=list)


def _level(doc: Any, *path: str) -> dict[str, Any]:
    """``doc[path[0]][path[1]]...`` when each step is a JSON object, else {} (metadata is read defensively)."""
    for key in path:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc if isinstance(doc, dict) else {}


def _text(doc: dict[str, Any], name: str) -> str | None:
    """A DICOM JSON-ish value from a metadata level as text (PN may be a dict, multi-values a list)."""
    value = doc.get(name)
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, dict):  # PN in DICOM JSON form
        value = value.get("Alphabetic")
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _int(doc: dict[str, Any], name: str) -> int | None:
    text = _text(doc, name)
    try:
        number = int(float(text)) if text is not None else None
    except (ValueError, OverflowError):  # "abc", "nan", "inf"
        return None
    # FHIR unsignedInt: anything negative is not a number we can state.
    return number if number is not None and 0 <= number <= 2**31 - 1 else None


def _date(value: str | None) -> str | None:
    """DICOM DA (YYYYMMDD) as a FHIR date; time is left out because a FHIR time needs a zone DICOM rarely has."""
    m = _DATE.match(value or "")
    if not m:
        return None
    year, month, day = m.groups()
    if not ("01" <= month <= "12" and "01" <= day <= "31"):
        return None
    return f"{year}-{month}-{day}"


def endpoint_resource(datastore_id: str, dicomweb_base_url: str) -> dict[str, Any]:
    """The data store's DICOMweb WADO-RS Endpoint, referenced by every ImagingStudy and series."""
    return {
        "resourceType": "Endpoint",
        "id": endpoint_resource_id(datastore_id),
        "status": "active",
        "identifier": [{"system": DATASTORE_SYSTEM, "value": datastore_id}],
        "connectionType": {"system": ENDPOINT_CONNECTION_SYSTEM, "code": "dicom-wado-rs"},
        "name": f"AWS HealthImaging data store {datastore_id} (DICOMweb WADO-RS)",
        "payloadType": [{"text": "DICOM"}],
        "payloadMimeType": ["application/dicom", "application/dicom+json"],
        "address": dicomweb_address(dicomweb_base_url, datastore_id),
    }


def build_imaging_study(datastore_id: str, study_uid: str, image_sets: list[ImageSetDoc]) -> BuiltStudy:
    """One ImagingStudy for ``study_uid`` from the metadata of its primary image sets (one per series)."""
    instances = 0
    problems: list[str] = []
    ordered = sorted(image_sets, key=lambda s: s.image_set_id)
    endpoint_ref = {"reference": f"Endpoint/{endpoint_resource_id(datastore_id)}"}
    patient: dict[str, Any] = {}
    study: dict[str, Any] = {}
    series_out: list[tuple[tuple[int, str], dict[str, Any]]] = []
    for image_set in ordered:
        doc = image_set.metadata
        patient = patient or _level(doc, "Patient", "DICOM")
        study = study or _level(doc, "Study", "DICOM")
        for series_uid, series in sorted(_level(doc, "Study", "Series").items()):
            dicom = _level(series, "DICOM")
            rows = []
            for sop_uid, inst in sorted(_level(series, "Instances").items()):
                idicom = _level(inst, "DICOM")
                row: dict[str, Any] = {"uid": sop_uid}
                sop_class = _text(idicom, "SOPClassUID")
                if sop_class:  # 1..1 in R4: when absent, HealthLake judges it by validation level
                    row["sopClass"] = {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{sop_class}"}
                number = _int(idicom, "InstanceNumber")
                if number is not None:
                    row["number"] = number
                rows.append(row)
            entry: dict[str, Any] = {
                "uid": series_uid,
                "extension": [{"url": IMAGE_SET_SYSTEM, "valueString": image_set.image_set_id}],
                "modality": {"system": DCM_SYSTEM, "code": _text(dicom, "Modality") or UNKNOWN_MODALITY},
                "numberOfInstances": len(rows),
                "endpoint": [endpoint_ref],
                "instance": rows,
            }
            number = _int(dicom, "SeriesNumber")
            if number is not None:
                entry["number"] = number
            description = _text(dicom, "SeriesDescription")
            if description:
                entry["description"] = description
            body_part = _text(dicom, "BodyPartExamined")
            if body_part:
                entry["bodySite"] = {"system": DCM_SYSTEM, "display": body_part}
            series_out.append(((number if number is not None else 2**31, series_uid), entry))
            instances += len(rows)
    identifiers: list[dict[str, Any]] = [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"}]
    accession = _text(study, "AccessionNumber")
    if accession:
        identifiers.append({"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]}, "value": accession})
    identifiers += [{"system": IMAGE_SET_SYSTEM, "value": s.image_set_id} for s in ordered]
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": study_resource_id(datastore_id, study_uid),
        "identifier": identifiers,
        "status": "available",
        "endpoint": [endpoint_ref],
        "numberOfSeries": len(series_out),
        "numberOfInstances": instances,
        "series": [entry for _, entry in sorted(series_out, key=lambda x: x[0])],
    }
    patient_id = _text(patient, "PatientID")
    if patient_id:
        resource["subject"] = {"identifier": {"system": patient_system(_text(patient, "IssuerOfPatientID")),
                                              "value": patient_id}}
    else:
        # Left out rather than invented: HealthLake decides by validation level (strict refuses it).
        problems.append("no PatientID in the image set metadata: ImagingStudy.subject is missing")
    started = _date(_text(study, "StudyDate"))
    if started:
        resource["started"] = started
    description = _text(study, "StudyDescription")
    if description:
        resource["description"] = description
    return BuiltStudy(study_uid=study_uid, resource=resource, instances=instances, problems=problems)


def structure_issues(resource: dict[str, Any]) -> list[str]:
    """What fhir.resources' R4B model finds wrong with ``resource`` beyond missing required elements.

    Missing required elements are HealthLake's call at the job's validation level; anything else here is a bug
    in the builder. Issues name element paths and error kinds, never values.
    """
    from fhir.resources.R4B import get_fhir_model_class

    cls = get_fhir_model_class(str(resource["resourceType"]))
    try:
        cls.model_validate(resource)
    except ValidationError as err:
        return [f"{e['type']} at {resource['resourceType']}." + ".".join(str(p) for p in e["loc"])
                for e in err.errors(include_url=False) if e["type"] not in _REQUIRED_ERRORS]
    return []
