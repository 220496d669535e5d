"""import: start the HealthImaging import job of one planned batch.

A batch that is exactly one clean source folder is imported in place; any other batch is first staged by
server-side S3 copy into its own prefix (no bytes pass through the worker).

The job's ``clientToken`` is derived from the migration and batch, so a retried activity or a restarted worker
gets the same job back instead of starting a second one.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import ClientError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import classify
from activities.heartbeat import current, keeps_alive
from activities.storage import get_bytes, list_objects, read_models
from contracts import layout
from contracts.pipeline import BatchInput, BatchPlan, ImportJobRef
from contracts.records import InstanceRecord
from contracts.s3uri import parse_s3_uri


def client_token(migration_id: str, batch: int, generation: int = 0) -> str:
    """Deterministic idempotency token (64 hex characters, within the API's 1-64 ``[A-Za-z0-9._-]``)."""
    return hashlib.sha256(f"himig/{migration_id}/batch/{batch}/gen/{generation}".encode()).hexdigest()


def job_name(batch: BatchInput) -> str:
    """Readable and unique per migration (no PHI): ``himig-<migration hash>-<batch>[-p<part>]``."""
    tag = hashlib.sha256(batch.migration_id.encode()).hexdigest()[:8]
    return f"himig-{tag}-{layout.batch_name(batch.batch, batch.part)}"


def staged_key(staging_prefix: str, source_key: str) -> str:
    return staging_prefix + source_key


class ImportActivities:
    def __init__(self, s3: Any, medical_imaging: Any, default_role_arn: str, concurrency: int = 8) -> None:
        self._s3 = s3
        self._mi = medical_imaging
        self._role = default_role_arn
        self._concurrency = concurrency

    def _stage(self, batch: BatchInput, files: list[InstanceRecord]) -> str:
        staging = layout.staging_prefix(batch.work_s3_uri, batch.migration_id, batch.batch, batch.part)
        source_bucket = parse_s3_uri(batch.source_s3_uri, field="source_s3_uri").bucket
        done = 0
        lock = threading.Lock()
        keep = current()  # captured here: the pool threads below have no activity context

        def copy(inst: InstanceRecord) -> None:
            nonlocal done
            # Copying again is harmless: same source, same key, same bytes.
            self._s3.copy_object(Bucket=staging.bucket, Key=staged_key(staging.key, inst.key),
                                 CopySource={"Bucket": source_bucket, "Key": inst.key})
            with lock:
                done += 1
                if keep and done % 100 == 0:
                    keep.record(done)

        with ThreadPoolExecutor(self._concurrency) as pool:
            list(pool.map(copy, files))
        return staging.uri

    def _folder_unchanged(self, folder_uri: str, files: list[InstanceRecord]) -> bool:
        """True when the folder still holds exactly the validated objects (same keys, same ETags).

        The job reads the folder as it is at import time; anything added or rewritten since the inventory would be
        imported unvalidated, so then the batch is staged instead (one LIST per 1,000 objects decides it).
        """
        folder = parse_s3_uri(folder_uri, field="direct_input_s3_uri")
        now = {o["Key"]: o.get("ETag", "").strip('"') for o in list_objects(self._s3, folder)}
        return now == {f.key: f.etag for f in files}

    @activity.defn(name="start_import_job")
    @keeps_alive
    def start_import_job(self, batch: BatchInput) -> ImportJobRef:
        manifest = layout.batch_manifest(batch.work_s3_uri, batch.migration_id, batch.batch, batch.part)
        try:
            files = read_models(self._s3, manifest, InstanceRecord)
            if not files:
                raise ApplicationError(f"batch {batch.batch} has no files", type="EmptyBatch", non_retryable=True)
            plan = BatchPlan.model_validate_json(
                get_bytes(self._s3, layout.batch_meta(batch.work_s3_uri, batch.migration_id, batch.batch, batch.part)))
            if plan.direct_input_s3_uri and self._folder_unchanged(plan.direct_input_s3_uri, files):
                input_uri, key_prefix = plan.direct_input_s3_uri, ""
            else:
                input_uri = self._stage(batch, files)
                key_prefix = parse_s3_uri(input_uri).key
            output = layout.import_output_prefix(batch.work_s3_uri, batch.migration_id, batch.batch, batch.part)
            resp = self._mi.start_dicom_import_job(
                jobName=job_name(batch),
                datastoreId=batch.datastore_id,
                dataAccessRoleArn=batch.data_access_role_arn or self._role,
                clientToken=client_token(batch.migration_id, batch.batch, batch.part or 0),
                inputS3Uri=input_uri,
                outputS3Uri=output.uri,
            )
        except ClientError as err:
            raise classify(err, f"starting the import job of batch {batch.batch}") from None
        return ImportJobRef(datastore_id=batch.datastore_id, job_id=resp["jobId"], input_s3_uri=input_uri,
                            input_key_prefix=key_prefix, direct=plan.direct_input_s3_uri is not None,
                            staged_files=len(files), output_s3_uri=output.uri)
