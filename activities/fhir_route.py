"""route to HealthLake: one batch's studies as FHIR ImagingStudy resources, imported with StartFHIRImportJob.

Why here and not earlier: our intermediate records (parsed / validated / normalized NDJSON, ledgers) hold no
patient values, only fingerprints. An ImagingStudy needs the patient identifier, so it is assembled at route time
from HealthImaging's own metadata of the study's primary image sets, written once as the import job's NDJSON
input (the one artefact whose purpose is to carry it to HealthLake) and never into workflow history.

Three activities, each idempotent:

- ``start_fhir_import``: build the batch's studies (``activities.fhir``), optionally ``$validate`` each resource
  (refused ones are reported, not imported), write ``fhir/batch-NNNNN/imaging-studies.ndjson`` once (a retry reads
  it back, with its start record ``fhir/batch-NNNNN.start.json``) and start the job on that folder with a
  deterministic ``ClientToken`` and the configured ``ValidationLevel``;
- ``await_fhir_import``: poll ``DescribeFHIRImportJob`` by benign retry (no history per poll);
- ``review_fhir_import``: read the job's ``manifest.json`` and ``SUCCESS/`` / ``FAILURE/`` NDJSON, count imported
  and refused resources (with issue codes and element paths, never values) and write ``fhir/batch-NNNNN.result.json``
  for the report (``reviewed`` false while the review runs, and if it gives up).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from functools import partial
from typing import Any

from botocore.exceptions import ClientError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import benign_retry, classify, error_code, poll_delay
from activities.fhir import (
    DICOM_UID_SYSTEM,
    IMAGE_SET_SYSTEM,
    ImageSetDoc,
    build_imaging_study,
    endpoint_resource,
    structure_issues,
)
from activities.healthimaging import get_image_set_metadata, search_image_sets, with_local_retries
from activities.heartbeat import keeps_alive
from activities.import_index import ImportIndex
from activities.signed_http import SignedHttp
from activities.storage import get_bytes, get_json, is_missing, list_objects, put_json
from contracts import layout
from contracts.errors import ErrorType
from contracts.fhir import MAX_FAILURES, FhirFailure, FhirImportRef, FhirJobOutcome, FhirSummary
from contracts.s3uri import S3Location
from contracts.stages import FhirReviewInput, RouteInput

TERMINAL = {"COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "CANCEL_COMPLETED", "CANCEL_FAILED"}


def client_token(migration_id: str, batch_name: str, fhir_datastore_id: str) -> str:
    """Same batch, same token: a retried start returns the job already started instead of a second one."""
    return hashlib.sha256(f"{migration_id}|{batch_name}|{fhir_datastore_id}".encode()).hexdigest()[:64]


def issues_of(outcome: Any) -> list[str]:
    """``code at Element.path`` for each error issue of an OperationOutcome (diagnostics may quote values)."""
    issues = outcome.get("issue") if isinstance(outcome, dict) else None
    out = []
    for issue in issues if isinstance(issues, list) else []:
        if not isinstance(issue, dict) or issue.get("severity") not in ("error", "fatal"):
            continue
        where = issue.get("expression") or issue.get("location") or []
        where = where if isinstance(where, list) else [where]
        out.append(f"{issue.get('code', 'invalid')}" + (f" at {', '.join(str(w) for w in where)}" if where else ""))
    return out


@dataclass(frozen=True)
class BuiltInput:
    """One batch's import input: the NDJSON body and what building it counted."""

    body: bytes
    resources: int
    studies: int
    rejected: list[FhirFailure]


def _resource_type(line: bytes) -> str | None:
    """The resourceType of one NDJSON line (None if it is not a JSON object)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return str(row.get("resourceType")) if isinstance(row, dict) else None


def _short(issues: list[str]) -> list[str]:
    """At most 10 issues of at most 200 characters each: what a refusal carries in payloads."""
    return [issue[:200] for issue in issues[:10]]


def capped_refusals(rejected: list[FhirFailure]) -> dict[str, Any]:
    """The ``FhirImportRef`` fields for resources refused before import: their counts and at most MAX_FAILURES."""
    return {"validate_rejected": rejected[:MAX_FAILURES],
            "rejected_by_validate": sum(1 for f in rejected if f.stage == "validate"),
            "refused_at_build": sum(1 for f in rejected if f.stage == "build")}


class FhirRouteActivities:
    def __init__(self, s3: Any, medical_imaging: Any, healthlake: Any, fhir_http: SignedHttp | None,
                 dicomweb_base_url: str, data_access_role_arn: str | None, kms_key_id: str | None,
                 initial_delay: float = 1.0, max_delay: float = 30.0, import_index_s3_uri: str | None = None) -> None:
        """``initial_delay`` / ``max_delay``: the job poll's back-off, as for ``AwaitActivities``.

        ``data_access_role_arn`` and ``kms_key_id`` are needed only to start a HealthLake import job: a worker
        without them fails that step (non-retryable) naming the variables to set.
        """
        self._s3 = s3
        self._index = ImportIndex(s3, import_index_s3_uri)
        self._mi = medical_imaging
        self._hl = healthlake
        self._http = fhir_http
        self._dicomweb = dicomweb_base_url
        self._role = data_access_role_arn
        self._kms = kms_key_id
        self._poll_delay = partial(poll_delay, initial=initial_delay, maximum=max(initial_delay, max_delay))

    # ---- building -------------------------------------------------------------------------------------------

    def _routed_studies(self, input: RouteInput) -> list[str]:
        """StudyInstanceUIDs with at least one instance of this batch imported into a primary image set.

        Read from the import index the review wrote (one row per instance it imported into an image set).
        """
        batch = input.batch
        imported = self._index.read_batch(batch)
        # Non-primary image sets wait for reconciliation; the study is routed once they are decided.
        return sorted({row.study_instance_uid for row in imported if row.is_primary})

    def _primary_image_set_ids(self, datastore_id: str, study_uid: str) -> list[str]:
        """Ids of every primary image set of the study in the data store, as SearchImageSets lists them now."""
        criteria = {"filters": [{"values": [{"DICOMStudyInstanceUID": study_uid}], "operator": "EQUAL"}]}
        try:
            return sorted(str(summary["imageSetId"]) for summary in search_image_sets(self._mi, datastore_id, criteria)
                          if summary.get("isPrimary", True))
        except ClientError as err:
            raise classify(err, "searching the study's image sets") from None

    def _primary_image_sets(self, datastore_id: str, study_uid: str) -> list[ImageSetDoc]:
        """Every primary image set of the study in the data store, with its metadata document."""
        try:
            return [ImageSetDoc(set_id, with_local_retries(partial(get_image_set_metadata, self._mi, datastore_id,
                                                                   set_id)))
                    for set_id in self._primary_image_set_ids(datastore_id, study_uid)]
        except ClientError as err:
            raise classify(err, "reading the study's image sets") from None

    def stale_studies(self, datastore_id: str, sent: list[dict[str, Any]], imported_ids: set[str]) -> int:
        """Imported ImagingStudy resources that no longer list every primary image set of their study.

        Another batch of the same study may have imported a series after this batch built its resource; if this
        job then ran after that batch's, HealthLake holds the older view. Counted here so the batch routes again.
        """
        stale = 0
        for resource in sent:
            if resource.get("resourceType") != "ImagingStudy" or resource.get("id") not in imported_ids:
                continue
            identifiers = resource.get("identifier") or []
            study_uid = next((str(i["value"]).removeprefix("urn:oid:") for i in identifiers
                              if i.get("system") == DICOM_UID_SYSTEM), None)
            listed = {i.get("value") for i in identifiers if i.get("system") == IMAGE_SET_SYSTEM}
            if study_uid and set(self._primary_image_set_ids(datastore_id, study_uid)) - listed:
                stale += 1
        return stale

    def _validate(self, fhir_base: str, resource: dict[str, Any]) -> list[str]:
        """HealthLake's ``$validate`` verdict on one resource: its error issues (empty: valid)."""
        if self._http is None:
            raise ApplicationError("fhir_validate_first needs signed HTTP to HealthLake", non_retryable=True)
        url = f"{fhir_base.rstrip('/')}/{resource['resourceType']}/$validate"
        resp = self._http.request("POST", url, body=json.dumps(resource).encode(),
                                  headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"})
        if resp.status == 429 or resp.status >= 500:
            raise benign_retry(f"$validate answered HTTP {resp.status}", ErrorType.THROTTLING if resp.status == 429
                               else ErrorType.HEALTHLAKE_UNAVAILABLE, poll_delay)
        try:
            outcome = resp.json()
        except ValueError:
            outcome = None
        issues = issues_of(outcome)
        if resp.status != 200 and not issues:
            issues = [f"HTTP {resp.status} {resp.headers.get('x-amzn-errortype', '')}".strip()]
        return issues

    def _build_input(self, input: RouteInput) -> BuiltInput:
        """Build the batch's Endpoint and ImagingStudy resources from HealthImaging as it is now."""
        batch = input.batch
        assert batch.fhir is not None
        fhir = batch.fhir
        resources: list[dict[str, Any]] = []
        rejected: list[FhirFailure] = []
        studies = 0
        for study_uid in self._routed_studies(input):
            built = build_imaging_study(batch.datastore_id, study_uid,
                                        self._primary_image_sets(batch.datastore_id, study_uid))
            studies += 1
            bug = structure_issues(built.resource)
            if bug:  # our builder made something the FHIR model refuses: report it, never send it
                rejected.append(FhirFailure(resource_type="ImagingStudy", resource_id=built.resource["id"],
                                            stage="build", issues=_short(bug)))
                continue
            resources.append(built.resource)
        if resources:
            resources.insert(0, endpoint_resource(batch.datastore_id, self._dicomweb))
        if fhir.validate_first and resources:
            try:
                props = self._hl.describe_fhir_datastore(DatastoreId=fhir.datastore_id)["DatastoreProperties"]
            except ClientError as err:
                raise classify(err, "describing the HealthLake data store") from None
            kept = []
            for resource in resources:
                issues = self._validate(props["DatastoreEndpoint"], resource)
                if issues:
                    rejected.append(FhirFailure(resource_type=resource["resourceType"], resource_id=resource["id"],
                                                stage="validate", issues=_short(issues)))
                else:
                    kept.append(resource)
            # An Endpoint alone links nothing: import it only alongside a study.
            resources = kept if any(r["resourceType"] == "ImagingStudy" for r in kept) else []
        body = "".join(json.dumps(r, separators=(",", ":"), sort_keys=True) + "\n" for r in resources).encode()
        return BuiltInput(body=body, resources=len(resources), studies=studies, rejected=rejected)

    def _written_input(self, in_loc: S3Location, record_loc: S3Location) -> BuiltInput | None:
        """The job input an earlier attempt wrote for this (batch, round), with its start record; None: none yet."""
        try:
            body = get_bytes(self._s3, in_loc)
        except ClientError as err:
            if is_missing(err):
                return None
            raise classify(err, "reading the HealthLake import input") from None
        lines = [line for line in body.splitlines() if line.strip()]
        try:
            record = get_json(self._s3, record_loc)
        except ClientError as err:
            if not is_missing(err):
                raise classify(err, "reading the HealthLake start record") from None
            record = None
        except ValueError:
            record = None  # not JSON: no record
        if isinstance(record, dict) and record.get("input_sha256") == hashlib.sha256(body).hexdigest():
            with contextlib.suppress(ValueError, TypeError, KeyError):
                return BuiltInput(body=body, resources=len(lines), studies=int(record["studies"]),
                                  rejected=[FhirFailure.model_validate(f) for f in record["rejected"]])
        # No usable record of this very input (a concurrent attempt's, or a crash between the two writes): the
        # input itself is the truth; only refusals before import are unknown.
        return BuiltInput(body=body, resources=len(lines), studies=sum(1 for line in lines
                                                                         if _resource_type(line) == "ImagingStudy"),
                          rejected=[])

    def _put_once(self, loc: S3Location, body: bytes) -> bool:
        """Create ``loc`` unless it exists (S3 conditional write); False: another attempt wrote it first."""
        try:
            self._s3.put_object(Bucket=loc.bucket, Key=loc.key, Body=body, ContentType="application/fhir+ndjson",
                                IfNoneMatch="*")
        except ClientError as err:
            if error_code(err) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return False
            raise classify(err, "writing the HealthLake import input") from None
        return True

    @activity.defn(name="start_fhir_import")
    @keeps_alive
    def start_fhir_import(self, input: RouteInput) -> FhirImportRef:
        """Build, write once and import the batch's resources; a retry imports exactly what the first attempt wrote.

        The ``ClientToken`` makes a retried start return the job the first attempt started, and that job reads the
        input folder: so the input is written once per (batch, round) and a retry reads it back (and counts it)
        instead of building again from HealthImaging's newer state. Job, input and counts always agree.
        """
        batch = input.batch
        assert batch.fhir is not None, "start_fhir_import is scheduled only for batches with FHIR routing"
        if self._role is None or self._kms is None:  # before anything is written: no retry can supply them
            raise ApplicationError("routing to HealthLake needs HIMIG_HEALTHLAKE_DATA_ACCESS_ROLE_ARN and "
                                   "HIMIG_HEALTHLAKE_KMS_KEY_ID on the worker", non_retryable=True)
        fhir = batch.fhir
        where = (batch.work_s3_uri, batch.migration_id, batch.batch, batch.part, fhir.round)
        name = layout.fhir_name(batch.batch, batch.part, fhir.round)
        in_folder, in_loc, out_loc = layout.fhir_input_prefix(*where), layout.fhir_input(*where), \
            layout.fhir_output_prefix(*where)
        record_loc = layout.fhir_start_record(*where)
        built = self._written_input(in_loc, record_loc)
        if built is None:
            built = self._build_input(input)
            # The record first, naming the input it describes: whichever write a crash interrupts, a retry finds
            # either no input (and builds) or the input with its record (or, rarely, without: see _written_input).
            put_json(self._s3, record_loc, {"input_sha256": hashlib.sha256(built.body).hexdigest(),
                                            "studies": built.studies, "resources": built.resources,
                                            "rejected": [f.model_dump(mode="json") for f in built.rejected]})
            if not self._put_once(in_loc, built.body):
                built = self._written_input(in_loc, record_loc)
                if built is None:
                    raise ApplicationError("HealthLake import input is being written by another attempt",
                                           type=ErrorType.INPUT_WRITE_CONFLICT)
        ref = FhirImportRef(datastore_id=fhir.datastore_id, job_id=None, input_s3_uri=in_folder.uri,
                            output_s3_uri=out_loc.uri, studies=built.studies, resources=built.resources,
                            validation_level=fhir.validation_level, **capped_refusals(built.rejected))
        if not built.resources:
            return ref
        try:
            resp = self._hl.start_fhir_import_job(
                JobName=f"{batch.migration_id}-{name}"[:64], DatastoreId=fhir.datastore_id,
                InputDataConfig={"S3Uri": in_folder.uri},
                JobOutputDataConfig={"S3Configuration": {"S3Uri": out_loc.uri, "KmsKeyId": self._kms}},
                DataAccessRoleArn=self._role, ClientToken=client_token(batch.migration_id, name, fhir.datastore_id),
                ValidationLevel=fhir.validation_level.value)
        except ClientError as err:
            raise classify(err, "starting the HealthLake import job") from None
        return ref.model_copy(update={"job_id": resp["JobId"]})

    # ---- awaiting -------------------------------------------------------------------------------------------

    @activity.defn(name="await_fhir_import")
    def await_fhir_import(self, ref: FhirImportRef) -> FhirJobOutcome:
        assert ref.job_id is not None
        try:
            props = self._hl.describe_fhir_import_job(DatastoreId=ref.datastore_id,
                                                      JobId=ref.job_id)["ImportJobProperties"]
        except ClientError as err:
            raise classify(err, f"polling HealthLake import job {ref.job_id}") from None
        status = str(props["JobStatus"])
        if status not in TERMINAL:
            raise benign_retry(f"HealthLake import job {ref.job_id} is {status}", ErrorType.JOB_STILL_RUNNING,
                               self._poll_delay)
        message = props.get("Message")
        return FhirJobOutcome(job_id=ref.job_id, status=status, message=str(message)[:500] if message else None)

    # ---- reviewing ------------------------------------------------------------------------------------------

    def _ndjson_under(self, prefix: S3Location) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for obj in list_objects(self._s3, prefix):
            body = get_bytes(self._s3, S3Location(prefix.bucket, obj["Key"]))
            rows += [json.loads(line) for line in body.splitlines() if line.strip()]
        return rows

    @activity.defn(name="review_fhir_import")
    @keeps_alive
    def review_fhir_import(self, input: FhirReviewInput) -> FhirSummary:
        """Count what the job imported and refused and write the batch's ``result.json`` for the report.

        While the job's output is being reviewed, ``result.json`` already holds the batch with ``reviewed`` false
        and the reason: if the review gives up (its retries run out), the report still counts the batch, as one
        with a problem.
        """
        batch, ref = input.batch, input.ref
        fhir_round = batch.fhir.round if batch.fhir else 1
        loc = layout.fhir_summary(batch.work_s3_uri, batch.migration_id, batch.batch, batch.part, fhir_round)
        summary = FhirSummary(summary_uri=loc.uri) if ref is None else FhirSummary(
            job_id=ref.job_id, studies=ref.studies, resources=ref.resources,
            rejected_by_validate=ref.rejected_by_validate, failures=list(ref.validate_rejected), summary_uri=loc.uri)
        if input.error:
            summary.problems.append(f"HealthLake import not done: {input.error[:500]}")
        if input.outcome is not None and ref is not None and ref.job_id is not None:
            summary.job_status = input.outcome.status
            pending = summary.model_copy(deep=True, update={"reviewed": False})
            self._write_unreviewed(loc, pending, "review in progress")
            try:
                imported_ids = self._review_output(ref, input.outcome, summary)
                if imported_ids:
                    body = get_bytes(self._s3, layout.fhir_input(batch.work_s3_uri, batch.migration_id, batch.batch,
                                                                 batch.part, fhir_round))
                    sent = [json.loads(line) for line in body.splitlines() if line.strip()]
                    summary.stale_studies = self.stale_studies(batch.datastore_id, sent, imported_ids)
            except Exception as exc:
                failure = classify(exc, "reading the HealthLake import output") if isinstance(exc, ClientError) \
                    else exc
                self._write_unreviewed(loc, pending, str(failure))
                if failure is exc:
                    raise
                raise failure from None
        summary.failures = summary.failures[:MAX_FAILURES]
        put_json(self._s3, loc, summary.model_dump(mode="json"))
        return summary

    def _write_unreviewed(self, loc: S3Location, pending: FhirSummary, reason: str) -> None:
        """``result.json`` for a batch whose job output is not reviewed (yet): the counts known before the job."""
        unreviewed = pending.model_copy(update={
            "failures": pending.failures[:MAX_FAILURES],
            "problems": [*pending.problems, f"HealthLake import output not reviewed: {reason[:500]}"]})
        # Best effort: a failure to write must not hide the error that made the review fail.
        with contextlib.suppress(ClientError):
            put_json(self._s3, loc, unreviewed.model_dump(mode="json"))

    def _review_output(self, ref: FhirImportRef, outcome: FhirJobOutcome, summary: FhirSummary) -> set[str]:
        """Fill ``summary`` from the job's output; returns the ids of the ImagingStudy resources imported."""
        assert ref.job_id is not None
        folder = layout.fhir_job_output(ref.output_s3_uri, ref.datastore_id, ref.job_id)
        try:
            manifest = json.loads(get_bytes(self._s3, folder.join("manifest.json")))
        except ClientError as err:
            if not is_missing(err):
                raise
            if outcome.status != "FAILED":
                raise benign_retry(f"HealthLake import output not yet visible under {folder.uri}",
                                   ErrorType.MANIFEST_NOT_YET_VISIBLE, poll_delay) from None
            manifest = {}
        success = self._ndjson_under(folder.join("SUCCESS").as_prefix())
        failure = self._ndjson_under(folder.join("FAILURE").as_prefix())
        summary.imported = sum(1 for row in success if row.get("resourceType") == "ImagingStudy")
        summary.failed = sum(1 for row in failure if row.get("resourceType", "ImagingStudy") == "ImagingStudy")
        for row in failure:
            summary.failures.append(FhirFailure(
                resource_type=str(row.get("resourceType") or "unknown"),
                resource_id=str(row["id"]) if row.get("id") else None, stage="import",
                issues=issues_of(row.get("operationOutcome"))[:10] or [str(row.get("errorType", "error"))]))
        if outcome.status == "FAILED":
            summary.problems.append(f"HealthLake import job {ref.job_id} FAILED: {outcome.message or 'no message'}")
        expect = {"numberOfResourcesImportedSuccessfully": len(success),
                  "numberOfResourcesWithCustomerError": len(failure)}
        for key, seen in expect.items():
            if key in manifest and int(manifest[key]) != seen:
                summary.problems.append(f"manifest {key}={manifest[key]} but the output lists {seen}")
        if manifest and int(manifest.get("numberOfResourcesScanned", ref.resources)) != ref.resources:
            summary.problems.append(f"HealthLake scanned {manifest['numberOfResourcesScanned']} resources but "
                                    f"{ref.resources} were written")
        return {str(row.get("id")) for row in success if row.get("resourceType") == "ImagingStudy"}
