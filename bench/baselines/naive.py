"""naive: the sequential boto3 script most teams write first.

List the prefix; copy every object (server-side, one at a time) into a staging prefix, one folder per 5,000 files
(the files-per-job quota); start one import job per folder; poll each every second until it ends; read each job's
manifest and SUCCESS output. No validation, no duplicate detection, no per-file accounting beyond the SUCCESS
count."""

from __future__ import annotations

import time

from bench.baselines.common import MAX_FILES_PER_JOB, Target, list_keys, token

POLL_SECONDS = 1.0


def run(t: Target) -> int:
    keys = list_keys(t)
    for n, key in enumerate(keys):
        folder = n // MAX_FILES_PER_JOB
        t.s3.copy_object(Bucket=t.work_bucket, Key=f"{t.work_prefix}staging/{folder:04d}/{n:08d}.dcm",
                         CopySource={"Bucket": t.source_bucket, "Key": key})
    folders = (len(keys) + MAX_FILES_PER_JOB - 1) // MAX_FILES_PER_JOB
    jobs = [t.start_job(f"{t.work_bucket}/{t.work_prefix}staging/{f:04d}/", f"naive-{f}", token())
            for f in range(folders)]
    imported = 0
    for job_id in jobs:
        while True:
            props = t.job(job_id)
            if props["jobStatus"] in ("COMPLETED", "FAILED"):
                imported += len(t.successes(props))
                break
            time.sleep(POLL_SECONDS)
    return imported
