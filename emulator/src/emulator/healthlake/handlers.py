"""HealthLake json-protocol operations (one snake_case method each, dict in / dict out) and FHIR REST handlers.

Operation input arrives parsed and validated against botocore's ``healthlake`` model (``routes.py``); outputs are
dicts keyed by output member name. Model operations without a method answer ``NotImplementedException`` (501).
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import uuid
from typing import Any

from emulator.errors import ResourceNotFoundException
from emulator.healthlake.fhir import (
    FHIR_ID_RE,
    Issue,
    check_resource,
    has_errors,
    operation_outcome,
    parse_json,
    resource_class,
    shown_type,
)
from emulator.healthlake.jobs import FhirImportRunner
from emulator.healthlake.models import FhirDatastore, FhirImportJob, HealthLakeBackend, fhir_instant
from emulator.protocol import HttpRequest


def base_url(request: HttpRequest) -> str:
    """Scheme and authority the client used to reach us (the emulator's FHIR endpoint lives on the same port)."""
    host = request.headers.get("host") or "127.0.0.1"
    return f"http://{host}"


def _datastore_properties(ds: FhirDatastore, request: HttpRequest) -> dict[str, Any]:
    props: dict[str, Any] = {
        "DatastoreId": ds.id, "DatastoreArn": ds.arn, "DatastoreName": ds.name, "DatastoreStatus": ds.status,
        "CreatedAt": ds.created_at, "DatastoreTypeVersion": ds.type_version,
        "DatastoreEndpoint": f"{base_url(request)}/datastore/{ds.id}/r4/",
    }
    for key in ("SseConfiguration", "PreloadDataConfig", "IdentityProviderConfiguration", "AnalyticsConfiguration",
                "NlpConfiguration", "ProfileConfiguration"):
        if key in ds.config:
            props[key] = ds.config[key]
    return props


def _job_properties(job: FhirImportJob) -> dict[str, Any]:
    return {
        "JobId": job.id, "JobName": job.name, "JobStatus": job.status, "SubmitTime": job.submitted_at,
        "EndTime": job.ended_at, "DatastoreId": job.datastore_id, "InputDataConfig": {"S3Uri": job.input_uri},
        "JobOutputDataConfig": {"S3Configuration": {"S3Uri": job.output_uri, "KmsKeyId": job.kms_key_id}},
        "JobProgressReport": job.progress or None, "DataAccessRoleArn": job.role_arn, "Message": job.message,
        "ValidationLevel": job.validation_level,
    }


class HealthLakeHandlers:
    def __init__(self, backend: HealthLakeBackend, runner: FhirImportRunner) -> None:
        self.backend = backend
        self.runner = runner

    # ---- data stores

    def create_fhir_datastore(self, p: dict[str, Any], request: HttpRequest) -> dict[str, Any]:
        ds = self.backend.create_datastore(p)
        return {"DatastoreId": ds.id, "DatastoreArn": ds.arn, "DatastoreStatus": ds.status,
                "DatastoreEndpoint": f"{base_url(request)}/datastore/{ds.id}/r4/"}

    def describe_fhir_datastore(self, p: dict[str, Any], request: HttpRequest) -> dict[str, Any]:
        return {"DatastoreProperties": _datastore_properties(self.backend.get_datastore(p["DatastoreId"]), request)}

    def list_fhir_datastores(self, p: dict[str, Any], request: HttpRequest) -> dict[str, Any]:
        items, token = self.backend.list_datastores(p.get("Filter"), p.get("NextToken"), p.get("MaxResults"))
        return {"DatastorePropertiesList": [_datastore_properties(d, request) for d in items], "NextToken": token}

    def delete_fhir_datastore(self, p: dict[str, Any], request: HttpRequest) -> dict[str, Any]:
        ds = self.backend.delete_datastore(p["DatastoreId"])
        return {"DatastoreId": ds.id, "DatastoreArn": ds.arn, "DatastoreStatus": ds.status,
                "DatastoreEndpoint": f"{base_url(request)}/datastore/{ds.id}/r4/"}

    # ---- import jobs

    def start_fhir_import_job(self, p: dict[str, Any], request: HttpRequest) -> dict[str, Any]:
        job = self.backend.start_import(p)
        self.runner.wake()
        return {"JobId": job.id, "JobStatus": job.status, "DatastoreId": job.datastore_id}

    def describe_fhir_import_job(self, p: dict[str, Any], request: HttpRequest) -> dict[str, Any]:
        return {"ImportJobProperties": _job_properties(self.backend.get_job(p["DatastoreId"], p["JobId"]))}

    def list_fhir_import_jobs(self, p: dict[str, Any], request: HttpRequest) -> dict[str, Any]:
        jobs, token = self.backend.list_jobs(p["DatastoreId"], p)
        return {"ImportJobPropertiesList": [_job_properties(j) for j in jobs], "NextToken": token}


# ------------------------------------------------------------------------------------------ FHIR REST


class FhirError(Exception):
    """A FHIR REST failure: answered as an OperationOutcome with this HTTP status."""

    def __init__(self, status: int, code: str, diagnostics: str, aws_code: str) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.issue = Issue("error", code, diagnostics)
        self.aws_code = aws_code


def not_found(diagnostics: str) -> FhirError:
    return FhirError(404, "not-found", diagnostics, "ResourceNotFoundException")


def bad_request(code: str, diagnostics: str) -> FhirError:
    return FhirError(400, code, diagnostics, "ValidationException")


SEARCH_PARAMS = ("_id", "identifier", "_count")
_DATASTORE_ID_RE = re.compile(r"[0-9a-f]{32}")


class FhirRest:
    """``/datastore/{datastoreId}/r4/...``: read, search (``_id``, ``identifier``) and ``$validate``."""

    def __init__(self, backend: HealthLakeBackend, max_resource_bytes: int) -> None:
        self.backend = backend
        self.max_resource_bytes = max_resource_bytes

    def handle(self, request: HttpRequest, datastore_id: str, rest: list[str]) -> tuple[int, dict[str, Any]]:
        if not _DATASTORE_ID_RE.fullmatch(datastore_id):
            raise not_found("Datastore does not exist")
        try:
            ds = self.backend.get_datastore(datastore_id)
        except ResourceNotFoundException:
            raise not_found(f"Datastore {datastore_id} does not exist") from None
        if ds.status in ("DELETING", "DELETED"):
            raise not_found(f"Datastore {datastore_id} does not exist")
        if ds.status != "ACTIVE":
            raise bad_request("processing", f"Datastore {datastore_id} is not ACTIVE")
        if any(seg in ("", ".", "..") for seg in rest):
            raise bad_request("invalid", "Invalid request path")
        method = request.method
        if method == "POST" and rest and rest[-1] == "$validate" and len(rest) in (2, 3):
            return 200, self.validate(request, rest[0], rest[1] if len(rest) == 3 else None)
        if method == "GET" and len(rest) == 1:
            return 200, self.search(request, ds.id, self._type(rest[0]))
        if method == "GET" and len(rest) == 2:
            return 200, self.read(ds.id, self._type(rest[0]), rest[1])
        raise FhirError(501, "not-supported", "This FHIR interaction is not supported by the emulator",
                        "NotImplementedException")

    @staticmethod
    def _type(name: str) -> str:
        if resource_class(name) is None:
            raise bad_request("not-supported", f"Unknown FHIR R4 resource type '{shown_type(name)}'")
        return name

    def read(self, datastore_id: str, resource_type: str, resource_id: str) -> dict[str, Any]:
        if not FHIR_ID_RE.fullmatch(resource_id):
            raise bad_request("value", "Invalid resource id")
        doc = self.backend.read_resource(datastore_id, resource_type, resource_id)
        if doc is None:
            raise not_found(f"Resource {resource_type}/{resource_id} is not known")
        return doc

    def search(self, request: HttpRequest, datastore_id: str, resource_type: str) -> dict[str, Any]:
        unknown = sorted(k for k in request.query if k not in SEARCH_PARAMS)
        if unknown:
            names = ", ".join(k for k in unknown if re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", k)) or "<invalid>"
            raise bad_request("not-supported", f"Search parameters not supported by the emulator: {names}")
        ids: list[str] | None = None
        if "_id" in request.query:
            ids = [v for value in request.query["_id"] for v in value.split(",") if v]
        terms: list[list[tuple[str | None, str | None]]] = []
        for value in request.query.get("identifier", []):
            ors: list[tuple[str | None, str | None]] = []
            for token in _split_or(value):
                if "|" in token:
                    system, _, code = token.partition("|")
                    ors.append((system, code or None))  # "|v" → system "" (none); "s|" → any value
                else:
                    ors.append((None, token))
            terms.append(ors)
        count = 100
        if "_count" in request.query:
            try:
                count = int(request.query["_count"][-1])
            except ValueError:
                raise bad_request("value", "_count must be an integer") from None
            if count < 0:
                raise bad_request("value", "_count must not be negative")
        matches = self.backend.search(datastore_id, resource_type, ids, terms)
        base = f"{base_url(request)}/datastore/{datastore_id}/r4"
        query = urllib.parse.urlencode([(k, v) for k, vs in sorted(request.query.items()) for v in vs])
        return {
            "resourceType": "Bundle", "id": str(uuid.uuid4()), "meta": {"lastUpdated": fhir_instant(time.time())},
            "type": "searchset", "total": len(matches),
            "link": [{"relation": "self", "url": f"{base}/{resource_type}" + (f"?{query}" if query else "")}],
            "entry": [{"fullUrl": f"{base}/{resource_type}/{doc['id']}", "resource": doc,
                       "search": {"mode": "match"}} for doc in matches[:count]],
        }

    def validate(self, request: HttpRequest, type_name: str, resource_id: str | None) -> dict[str, Any]:
        """``$validate`` at the strict level: a direct resource or a Parameters with a ``resource`` part."""
        resource_type = self._type(type_name)
        if len(request.body) > self.max_resource_bytes:
            raise FhirError(413, "too-long", f"Resource exceeds the maximum size of {self.max_resource_bytes} bytes",
                            "RequestEntityTooLargeException")
        doc, issues = parse_json(request.body)
        if issues:
            raise bad_request("structure", issues[0].diagnostics)
        if isinstance(doc, dict) and doc.get("resourceType") == "Parameters" and resource_type != "Parameters":
            doc = _parameter_resource(doc)
        extra: list[Issue] = []
        if "profile" in request.query:
            extra.append(Issue("warning", "not-supported", "Profile validation is not performed by the emulator; "
                                                           "the resource was checked against base R4"))
        issues = check_resource(doc, "strict", require_id=resource_id is not None)
        if isinstance(doc, dict) and isinstance(doc.get("resourceType"), str) \
                and doc["resourceType"] != resource_type and not has_errors(issues):
            issues.append(Issue("error", "invalid", f"Resource type '{shown_type(doc['resourceType'])}' does not "
                                                    f"match the request path type '{resource_type}'", "resourceType"))
        if resource_id is not None and isinstance(doc, dict) and doc.get("id") != resource_id:
            issues.append(Issue("error", "invalid", "Resource id does not match the id in the request path",
                                f"{resource_type}.id"))
        return operation_outcome(issues + extra)


def _split_or(value: str) -> list[str]:
    """Split a search value on unescaped commas (FHIR escapes a literal comma as ``\\,``)."""
    parts = re.split(r"(?<!\\),", value)
    return [p.replace("\\,", ",") for p in parts if p]


def _parameter_resource(doc: dict[str, Any]) -> Any:
    for part in doc.get("parameter") or []:
        if isinstance(part, dict) and part.get("name") == "resource":
            return part.get("resource")
    raise bad_request("required", "Parameters must contain a 'resource' parameter")


def outcome_body(issue: Issue) -> bytes:
    return json.dumps(operation_outcome([issue]), separators=(",", ":")).encode()
