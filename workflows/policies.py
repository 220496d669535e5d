"""Retry policies and timeouts per stage, in one place so they are reviewed together."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

from contracts import errors

# Errors where a retry cannot help (`contracts.errors.FATAL`), in a fixed order: the list is part of each
# ScheduleActivityTask command, and a set's iteration order changes with the interpreter's hash seed.
FATAL = sorted(errors.FATAL)

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

# ---- ReconciliationWorkflow: reads of the conflict and the image set, and the mutations that apply a decision
READ_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                         maximum_interval=timedelta(seconds=30), maximum_attempts=10, non_retryable_error_types=FATAL)
# Mutations meet locked sets (ConflictException → "ImageSetBusy") and throttling (0.25 TPS): waited out within
# the schedule-to-close limit instead of failing the decision.
MUTATION_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                             maximum_interval=timedelta(seconds=30), maximum_attempts=0,
                             non_retryable_error_types=FATAL)
STEP_TIMEOUT = timedelta(minutes=2)
STEP_LIMIT = timedelta(hours=1)
COPY_WAIT_LIMIT = timedelta(hours=6)
