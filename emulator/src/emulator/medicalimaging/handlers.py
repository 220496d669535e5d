"""One method per HealthImaging operation (snake_case of the operation name), dict in, dict out.

Requests arrive already parsed and validated against the botocore model by ``emulator.protocol``; responses are
plain dicts keyed by output member name that the protocol serializes. All 18 operations of the model are here
(an operation without a method would answer ``NotImplementedException``, 501); the mutating image-set
operations, GetImageFrame and tagging are implemented in ``mutations.py``.
"""

from __future__ import annotations

from typing import Any

from emulator.medicalimaging.jobs import JobRunner
from emulator.medicalimaging.models import Datastore, ImageSetVersion, ImportJob, MedicalImagingBackend
from emulator.medicalimaging.mutations import ImageSetMutations


def _datastore_summary(ds: Datastore) -> dict[str, Any]:
    return {"datastoreId": ds.id, "datastoreName": ds.name, "datastoreStatus": ds.status,
            "datastoreArn": ds.arn, "createdAt": ds.created_at, "updatedAt": ds.updated_at}


def _job_properties(job: ImportJob) -> dict[str, Any]:
    return {
        "jobId": job.id, "jobName": job.name, "jobStatus": job.status, "datastoreId": job.datastore_id,
        "dataAccessRoleArn": job.role_arn, "endedAt": job.ended_at, "submittedAt": job.submitted_at,
        "inputS3Uri": job.input_uri, "outputS3Uri": job.resolved_output_uri, "message": job.message,
        "importConfiguration": job.import_config,
    }


def _image_set_properties(v: ImageSetVersion) -> dict[str, Any]:
    return {"imageSetId": v.image_set_id, "versionId": str(v.version), "imageSetState": v.state,
            "ImageSetWorkflowStatus": v.workflow_status, "createdAt": v.created_at, "updatedAt": v.updated_at,
            "deletedAt": v.deleted_at, "message": v.message, "isPrimary": v.is_primary,
            "overrides": {"forced": True} if v.forced else None}


class MedicalImagingHandlers:
    def __init__(self, backend: MedicalImagingBackend, runner: JobRunner) -> None:
        self.backend = backend
        self.runner = runner
        self.mutations = ImageSetMutations(backend)

    # ---- data stores

    def create_datastore(self, p: dict[str, Any]) -> dict[str, Any]:
        ds = self.backend.create_datastore(p)
        return {"datastoreId": ds.id, "datastoreStatus": ds.status}

    def get_datastore(self, p: dict[str, Any]) -> dict[str, Any]:
        ds = self.backend.get_datastore(p["datastoreId"])
        props = _datastore_summary(ds)
        props.update(kmsKeyArn=ds.kms_key_arn, lambdaAuthorizerArn=ds.lambda_authorizer_arn,
                     losslessStorageFormat=ds.lossless_storage_format)
        return {"datastoreProperties": props}

    def list_datastores(self, p: dict[str, Any]) -> dict[str, Any]:
        items, token = self.backend.list_datastores(p.get("datastoreStatus"), p.get("nextToken"),
                                                    p.get("maxResults"))
        return {"datastoreSummaries": [_datastore_summary(d) for d in items], "nextToken": token}

    def delete_datastore(self, p: dict[str, Any]) -> dict[str, Any]:
        ds = self.backend.delete_datastore(p["datastoreId"])
        return {"datastoreId": ds.id, "datastoreStatus": ds.status}

    # ---- import jobs

    def start_dicom_import_job(self, p: dict[str, Any]) -> dict[str, Any]:
        # An idempotent retry must not re-list S3 (or trip a quota the first call passed).
        self.backend.get_datastore(p["datastoreId"])
        job = self.backend.check_job_token(p["datastoreId"], p)
        if job is None:
            self.runner.check_input_quotas(p["inputS3Uri"])
            job = self.backend.start_import_job(p)
            self.runner.wake()
        return {"datastoreId": job.datastore_id, "jobId": job.id, "jobStatus": job.status,
                "submittedAt": job.submitted_at}

    def get_dicom_import_job(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"jobProperties": _job_properties(self.backend.get_import_job(p["datastoreId"], p["jobId"]))}

    def list_dicom_import_jobs(self, p: dict[str, Any]) -> dict[str, Any]:
        jobs, token = self.backend.list_import_jobs(p["datastoreId"], p.get("jobStatus"), p.get("nextToken"),
                                                    p.get("maxResults"))
        summaries = [{k: v for k, v in _job_properties(j).items()
                      if k in ("jobId", "jobName", "jobStatus", "datastoreId", "dataAccessRoleArn", "endedAt",
                               "submittedAt", "message")} for j in jobs]
        return {"jobSummaries": summaries, "nextToken": token}

    # ---- image sets

    def get_image_set(self, p: dict[str, Any]) -> dict[str, Any]:
        v = self.backend.get_image_set(p["datastoreId"], p["imageSetId"], p.get("versionId"))
        return {"datastoreId": v.datastore_id, "imageSetId": v.image_set_id, "versionId": str(v.version),
                "imageSetState": v.state, "imageSetWorkflowStatus": v.workflow_status, "createdAt": v.created_at,
                "updatedAt": v.updated_at, "message": v.message, "imageSetArn": v.arn, "isPrimary": v.is_primary,
                "storageTier": "FREQUENT_ACCESS", "deletedAt": v.deleted_at,
                "overrides": {"forced": True} if v.forced else None}

    def get_image_set_metadata(self, p: dict[str, Any]) -> dict[str, Any]:
        blob = self.backend.get_image_set_metadata(p["datastoreId"], p["imageSetId"], p.get("versionId"))
        # The model documents text/plain as the default content type; the body is gzip, as the header says.
        return {"imageSetMetadataBlob": blob, "contentType": "text/plain", "contentEncoding": "gzip"}

    def list_image_set_versions(self, p: dict[str, Any]) -> dict[str, Any]:
        items, token = self.backend.list_image_set_versions(p["datastoreId"], p["imageSetId"], p.get("nextToken"),
                                                            p.get("maxResults"))
        return {"imageSetPropertiesList": [_image_set_properties(v) for v in items], "nextToken": token}

    def search_image_sets(self, p: dict[str, Any]) -> dict[str, Any]:
        items, token, sort = self.backend.search_image_sets(p["datastoreId"], p.get("searchCriteria"),
                                                            p.get("nextToken"), p.get("maxResults"))
        return {"imageSetsMetadataSummaries": items, "nextToken": token, "sort": sort}

    # ---- image-set mutations, frames, tags (mutations.py)

    def update_image_set_metadata(self, p: dict[str, Any]) -> dict[str, Any]:
        return self.mutations.update_image_set_metadata(p)

    def copy_image_set(self, p: dict[str, Any]) -> dict[str, Any]:
        return self.mutations.copy_image_set(p)

    def delete_image_set(self, p: dict[str, Any]) -> dict[str, Any]:
        return self.mutations.delete_image_set(p)

    def get_image_frame(self, p: dict[str, Any]) -> dict[str, Any]:
        return self.mutations.get_image_frame(p)

    def tag_resource(self, p: dict[str, Any]) -> dict[str, Any]:
        return self.mutations.tag_resource(p)

    def untag_resource(self, p: dict[str, Any]) -> dict[str, Any]:
        return self.mutations.untag_resource(p)

    def list_tags_for_resource(self, p: dict[str, Any]) -> dict[str, Any]:
        return self.mutations.list_tags_for_resource(p)
