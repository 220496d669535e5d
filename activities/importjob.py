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
from functools import partial
from typing import Any

from botocore.exceptions import ClientError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import phi
from activities.copy_lanes import CopyLanes
from activities.errors import classify, error_code
from activities.heartbeat import current, keeps_alive
from activities.job_admission import StartPacer, free_job_slot
from activities.storage import is_missing, list_objects, put_ndjson, read_batch_file, read_batch_models
from contracts import layout
from contracts.batch import BatchInput, ImportJobRef
from contracts.common import FileState
from contracts.errors import ErrorType
from contracts.records import InstanceRecord, LedgerEntry
from contracts.s3uri import parse_s3_uri
from contracts.stages import BatchPlan


def client_token(migration_id: str, batch: int, generation: int = 0) -> str:
    """Deterministic idempotency token (64 hex characters, within the API's 1-64 ``[A-Za-z0-9._-]``)."""
    return hashlib.sha256(f"himig/{migration_id}/batch/{batch}/gen/{generation}".encode()).hexdigest()


def job_name(batch: BatchInput) -> str:
    """Readable and unique per migration (no PHI): ``himig-<migration hash>-<batch>[-p<part>]``."""
    tag = hashlib.sha256(batch.migration_id.encode()).hexdigest()[:8]
    return f"himig-{tag}-{layout.batch_name(batch.batch, batch.part)}"


def input_owner(batch: BatchInput, direct: bool) -> dict[str, str]:
    """``inputOwnerAccountId`` when the job reads the source bucket of another account in place.

    A staged batch is read from the work bucket (ours), so the source's owner does not apply to it; an in-place
    batch from another account's bucket needs it, or HealthImaging would look for the bucket in our account.
    """
    return {"inputOwnerAccountId": batch.source_owner_account_id} if direct and batch.source_owner_account_id else {}


def _plain_md5(etag: str) -> bool:
    return len(etag) == 32 and "-" not in etag


def source_changed(s3: Any, bucket: str, key: str, source_bucket: str, inst: InstanceRecord) -> str | None:
    """Copy one source object to ``bucket/key`` only if it is still the object that was validated.

    ``CopySourceIfMatch`` makes S3 refuse the copy (412) when the source was rewritten since the inventory. Some
    S3 implementations ignore that header (moto 5.2 does), so the copy's own ETag is compared as well where
    it is comparable: a single-part source not under SSE-KMS, whose ETag is the MD5 of its bytes. A copy that
    turns out stale is deleted, so the import job never reads it. Returns the reason when the source changed.
    """
    extra = {"CopySourceIfMatch": f'"{inst.etag}"'} if inst.etag else {}
    try:
        resp = s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": source_bucket, "Key": inst.key}, **extra)
    except ClientError as err:
        code = error_code(err)
        if code in ("PreconditionFailed", "412"):
            reason = "the source object was rewritten after it was validated (its ETag changed); not imported"
        elif is_missing(err):
            reason = "the source object was deleted after it was validated; not imported"
        else:
            raise
        s3.delete_object(Bucket=bucket, Key=key)  # an earlier attempt may have staged the old bytes
        return reason
    copied = str((resp.get("CopyObjectResult") or {}).get("ETag", "")).strip('"')
    if (inst.etag and copied and _plain_md5(inst.etag) and _plain_md5(copied)
            and resp.get("ServerSideEncryption") != "aws:kms" and copied != inst.etag):
        s3.delete_object(Bucket=bucket, Key=key)
        return "the source object was rewritten after it was validated (its content changed); not imported"
    return None


class ImportActivities:
    def __init__(self, s3: Any, medical_imaging: Any, default_role_arn: str, concurrency: int = 8,
                 pacer: StartPacer | None = None, datastore_max_running_jobs: int | None = None,
                 lanes: CopyLanes | None = None) -> None:
        self._s3 = s3
        self._mi = medical_imaging
        self._role = default_role_arn
        # Shared by every batch this worker stages (activities/copy_lanes.py): the first batch is staged first.
        self._lanes = lanes or CopyLanes(concurrency)
        self._pacer = pacer or StartPacer()
        self._job_cap = datastore_max_running_jobs

    def _stage(self, batch: BatchInput, files: list[InstanceRecord]) -> tuple[str, list[LedgerEntry]]:
        """Copy every file into the batch's staging prefix; files whose source changed are left out and returned."""
        staging = layout.staging_prefix(batch.work_s3_uri, batch.migration_id, batch.batch, batch.part)
        source_bucket = parse_s3_uri(batch.source_s3_uri, field="source_s3_uri").bucket
        done = 0
        lock = threading.Lock()
        keep = current()  # captured here: the pool threads below have no activity context
        order = self._lanes.staging()

        def copy(inst: InstanceRecord) -> LedgerEntry | None:
            nonlocal done
            # Copying again is harmless: same source, same key, same bytes.
            key = layout.job_input_key(staging.key, inst.key)
            with self._lanes.lane(order):
                changed = source_changed(self._s3, staging.bucket, key, source_bucket, inst)
            with lock:
                done += 1
                if keep and done % 100 == 0:
                    keep.record(done)
            if changed is None:
                return None
            return LedgerEntry(key=inst.key, state=FileState.FAILED, size=inst.size, batch=batch.batch,
                               code="SourceChanged", reason=changed, study_instance_uid=inst.study_instance_uid,
                               series_instance_uid=inst.series_instance_uid)

        # Twice the lanes: while its copies run, a staging always has copies waiting at the head of the line, so
        # a lane it frees goes to its next copy, not to a later staging's.
        with ThreadPoolExecutor(2 * self._lanes.lanes) as pool:
            # In copies of this context: third-party lines from the copies keep the activity's log ids.
            changed = [e for e in pool.map(phi.in_context(copy), files) if e is not None]
        # Rewritten whole on every attempt, so a retried activity never records a file twice.
        put_ndjson(self._s3, layout.ledger_for_source_changed(batch.work_s3_uri, batch.migration_id, batch.batch,
                                                              batch.part), changed)
        return staging.uri, changed

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
            files = read_batch_models(self._s3, manifest, InstanceRecord, batch.batch)
            if not files:
                raise ApplicationError(f"batch {batch.batch} has no files", type=ErrorType.EMPTY_BATCH, non_retryable=True)
            plan = BatchPlan.model_validate_json(read_batch_file(
                self._s3, layout.batch_meta(batch.work_s3_uri, batch.migration_id, batch.batch, batch.part), batch.batch))
            changed: list[LedgerEntry] = []
            if plan.direct_input_s3_uri and self._folder_unchanged(plan.direct_input_s3_uri, files):
                input_uri, key_prefix, direct = plan.direct_input_s3_uri, "", True
            else:
                input_uri, changed = self._stage(batch, files)
                key_prefix, direct = parse_s3_uri(input_uri).key, False
            output = layout.import_output_prefix(batch.work_s3_uri, batch.migration_id, batch.batch, batch.part)
            job_id = ""  # nothing left to import: no job (a job over an empty prefix would fail), the ledger says why
            if len(changed) < len(files):
                if self._job_cap is not None:
                    free_job_slot(self._mi, batch.datastore_id, self._job_cap, job_name(batch))
                job_id = self._pacer.call(partial(
                    self._mi.start_dicom_import_job,
                    jobName=job_name(batch),
                    datastoreId=batch.datastore_id,
                    dataAccessRoleArn=batch.data_access_role_arn or self._role,
                    clientToken=client_token(batch.migration_id, batch.batch, batch.part or 0),
                    inputS3Uri=input_uri,
                    outputS3Uri=output.uri,
                    **input_owner(batch, direct),
                ))["jobId"]
        except ClientError as err:
            raise classify(err, f"starting the import job of batch {batch.batch}") from None
        return ImportJobRef(datastore_id=batch.datastore_id, job_id=job_id, input_s3_uri=input_uri,
                            input_key_prefix=key_prefix, direct=direct, staged_files=len(files) - len(changed),
                            output_s3_uri=output.uri, source_changed=len(changed))
