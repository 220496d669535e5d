"""One method per HealthImaging operation (snake_case of the operation name), dict in, dict out (moto's
``responses.py`` role).

Requests arrive already parsed and validated against the botocore model by ``emulator.protocol``; a handler takes
the members it needs, calls the backend (``models.py``) or the mutations (``mutations.py``), and shapes their
records into a plain dict keyed by output member name, which the protocol serializes. All 18 operations of the
model are here (an operation without a method would answer ``NotImplementedException``, 501).
"""

from __future__ import annotations

from typing import Any

from emulator.medicalimaging.jobs import JobRunner
from emulator.medicalimaging.models import MedicalImagingBackend
from emulator.medicalimaging.mutations import ImageSetMutations, ImageSetStatus
from emulator.medicalimaging.records import Datastore, ImageSetVersion, ImportJob


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


def _copied_image_set_properties(s: ImageSetStatus) -> dict[str, Any]:
    return {"imageSetId": s.image_set_id, "latestVersionId": str(s.version), "imageSetState": s.state,
            "imageSetWorkflowStatus": s.workflow_status, "createdAt": s.created_at, "updatedAt": s.updated_at,
            "imageSetArn": s.arn}


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
                "storageTier": v.storage_tier, "lastAccessedAt": v.last_accessed_at, "deletedAt": v.deleted_at,
                "overrides": {"forced": True} if v.forced else None}

    def get_image_set_metadata(self, p: dict[str, Any]) -> dict[str, Any]:
        blob = self.backend.get_image_set_metadata(p["datastoreId"], p["imageSetId"], p.get("versionId"))
        self.backend.touch(p["datastoreId"], p["imageSetId"])  # a touch: back to Frequent Access (tiers.py)
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

    def get_image_frame(self, p: dict[str, Any]) -> dict[str, Any]:
        blob, content_type = self.backend.get_image_frame(p["datastoreId"], p["imageSetId"],
                                                          p["imageFrameInformation"]["imageFrameId"])
        self.backend.touch(p["datastoreId"], p["imageSetId"])
        return {"imageFrameBlob": blob, "contentType": content_type}

    # ---- image-set mutations (mutations.py)

    def update_image_set_metadata(self, p: dict[str, Any]) -> dict[str, Any]:
        updates = p["updateImageSetMetadataUpdates"]
        dicom = updates.get("DICOMUpdates") or {}
        s = self.mutations.update_image_set_metadata(
            p["datastoreId"], p["imageSetId"], p["latestVersionId"],
            updatable=dicom.get("updatableAttributes"), removable=dicom.get("removableAttributes"),
            revert=updates.get("revertToVersionId"), include=bool(p.get("includeStudyImageSets")),
            force=bool(p.get("force")))
        self.backend.touch(p["datastoreId"], p["imageSetId"])
        return {"datastoreId": s.datastore_id, "imageSetId": s.image_set_id, "latestVersionId": str(s.version),
                "imageSetState": s.state, "imageSetWorkflowStatus": s.workflow_status, "createdAt": s.created_at,
                "updatedAt": s.updated_at}

    def copy_image_set(self, p: dict[str, Any]) -> dict[str, Any]:
        info = p["copyImageSetInformation"]
        source = info["sourceImageSet"]
        dest = info.get("destinationImageSet") or {}
        copies = source.get("DICOMCopies") or {}
        result = self.mutations.copy_image_set(
            p["datastoreId"], p["sourceImageSetId"], source["latestVersionId"],
            copiable=copies.get("copiableAttributes"), dest_id=dest.get("imageSetId"),
            dest_version=dest.get("latestVersionId"), force=bool(p.get("force")),
            promote=bool(p.get("promoteToPrimary")))
        for touched in {result.source.image_set_id, result.destination.image_set_id}:
            self.backend.touch(p["datastoreId"], touched)
        return {"datastoreId": p["datastoreId"],
                "sourceImageSetProperties": _copied_image_set_properties(result.source),
                "destinationImageSetProperties": _copied_image_set_properties(result.destination)}

    def delete_image_set(self, p: dict[str, Any]) -> dict[str, Any]:
        s = self.mutations.delete_image_set(p["datastoreId"], p["imageSetId"])
        return {"datastoreId": s.datastore_id, "imageSetId": s.image_set_id, "imageSetState": s.state,
                "imageSetWorkflowStatus": s.workflow_status}

    # ---- tags

    def tag_resource(self, p: dict[str, Any]) -> dict[str, Any]:
        self.backend.tag_resource(p["resourceArn"], p["tags"])
        return {}

    def untag_resource(self, p: dict[str, Any]) -> dict[str, Any]:
        self.backend.untag_resource(p["resourceArn"], p["tagKeys"])
        return {}

    def list_tags_for_resource(self, p: dict[str, Any]) -> dict[str, Any]:
        return {"tags": self.backend.list_tags_for_resource(p["resourceArn"])}
