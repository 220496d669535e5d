"""What every baseline shares: where the corpus is, the clients, and reading an import job's outcome."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

# HealthImaging's files-per-import-job quota (DG, adjustable): every method must respect it.
MAX_FILES_PER_JOB = 5000


@dataclass
class Target:
    """One run of one method: the shared source corpus, a fresh data store, a work prefix of its own."""

    s3: Any
    mi: Any
    datastore_id: str
    role_arn: str
    source_bucket: str
    source_prefix: str  # "e2e/1000/" (ends with /)
    work_bucket: str
    work_prefix: str  # unique per run, ends with /
    # files per leaf folder (full key prefix ending in /): only `raw`, the ceiling, may use this knowledge.
    layout: dict[str, int] = field(default_factory=dict)
    starts: int = 0  # StartDICOMImportJob calls made (throttled ones included)

    def start_job(self, input_prefix: str, output_name: str, client_token: str | None = None) -> str:
        """StartDICOMImportJob, retried on throttling (no script fails a whole load on a 429)."""
        for attempt in range(600):
            self.starts += 1
            try:
                kwargs: dict[str, Any] = {"clientToken": client_token} if client_token else {}
                return str(self.mi.start_dicom_import_job(
                    datastoreId=self.datastore_id, dataAccessRoleArn=self.role_arn,
                    inputS3Uri=f"s3://{input_prefix}", jobName=output_name[:64],
                    outputS3Uri=f"s3://{self.work_bucket}/{self.work_prefix}output/{output_name}/",
                    **kwargs)["jobId"])
            except self.mi.exceptions.ThrottlingException:
                time.sleep(min(0.1 * 2 ** attempt, 2.0))
        raise RuntimeError("StartDICOMImportJob stayed throttled")

    def job(self, job_id: str) -> dict[str, Any]:
        for attempt in range(100):
            try:
                return dict(self.mi.get_dicom_import_job(datastoreId=self.datastore_id,
                                                         jobId=job_id)["jobProperties"])
            except self.mi.exceptions.ThrottlingException:
                time.sleep(min(0.05 * 2 ** attempt, 1.0))
        raise RuntimeError("GetDICOMImportJob stayed throttled")

    def successes(self, props: dict[str, Any]) -> list[dict[str, Any]]:
        """The lines of the job's SUCCESS/success.ndjson (and the manifest read, as every method reads it)."""
        if props["jobStatus"] != "COMPLETED":
            raise RuntimeError(f"import job {props['jobId']} ended {props['jobStatus']}: "
                               f"{props.get('message', '')}")
        base = props["outputS3Uri"].removeprefix("s3://").split("/", 1)
        bucket, out = base[0], base[1].rstrip("/") + "/"
        # GetDICOMImportJob answers the resolved output folder; a requested one still needs the job's folder.
        if f"-DicomImport-{props['jobId']}" not in out:
            out += f"{self.datastore_id}-DicomImport-{props['jobId']}/"
        json.loads(self.s3.get_object(Bucket=bucket, Key=out + "job-output-manifest.json")["Body"].read())
        body = self.s3.get_object(Bucket=bucket, Key=out + "SUCCESS/success.ndjson")["Body"].read()
        return [json.loads(line) for line in body.splitlines() if line.strip()]


def token() -> str:
    return uuid.uuid4().hex


def list_keys(t: Target) -> list[str]:
    keys: list[str] = []
    for page in t.s3.get_paginator("list_objects_v2").paginate(Bucket=t.source_bucket, Prefix=t.source_prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys
