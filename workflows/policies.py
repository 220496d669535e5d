"""Retry policies and timeouts per stage, in one place so they are reviewed together."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

# Errors where a retry cannot help: the request or the data is wrong.
FATAL = ["ValidationException", "ResourceNotFoundException", "AccessDeniedException", "ConflictException",
         "EmptyBatch", "NoSuchBucket", "ValidationError"]

# Work on S3 objects (parse, stage, review): transient errors and throttling are retried with backoff.
STAGE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                          maximum_interval=timedelta(seconds=60), maximum_attempts=10, non_retryable_error_types=FATAL)
# Starting an import job: throttling (1 TPS) and the concurrent-job quota are waited out, never failed on.
START_JOB_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), backoff_coefficient=2.0,
                              maximum_interval=timedelta(seconds=60), maximum_attempts=0, non_retryable_error_types=FATAL)
# Steps that must not give up on transient trouble (a late manifest, throttling, S3 outages): waited out,
# bounded by the activity's schedule-to-close timeout rather than an attempt count.
PATIENT_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), backoff_coefficient=2.0,
                           maximum_interval=timedelta(seconds=60), maximum_attempts=0, non_retryable_error_types=FATAL)
# Polling a running job: the activity picks the delay itself (next_retry_delay); unlimited within the timeout.
POLL_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=1.5,
                         maximum_interval=timedelta(seconds=30), maximum_attempts=0, non_retryable_error_types=FATAL)

PAGE_TIMEOUT = timedelta(minutes=15)
# Every long activity heartbeats in the background (activities.heartbeat), so a killed worker's activity is
# retried elsewhere after this long, not after its start-to-close timeout.
HEARTBEAT = timedelta(seconds=20)
# One GetDICOMImportJob call: short, so a poll lost with its worker is retried quickly.
POLL_TIMEOUT = timedelta(seconds=20)
JOB_WAIT_LIMIT = timedelta(hours=24)
