"""`VerifyWorkflow`: one verification of a finished migration against HealthImaging (`verify_migration`).

Started by `himig verify`, or periodically by a Temporal Schedule (`himig verify --every 24h`) as a standing check
that publishes each outcome as an EventBridge event. One activity: the check reads and compares, it changes
nothing, so a retried attempt simply checks again.

`SourceVerifyWorkflow`: the same check of a bare source (every object under an S3 prefix) against a data store,
without a migration (`verify_source`; started by ``himig verify --source``). A source named by a connector
(``himig verify --source-dir/--source-dicomweb/--source-dimse``) is, for a PACS, checked by what its QIDO-RS or
C-FIND listing names (`verify_listed_source`, nothing pulled); a directory, or a PACS with ``pull``, ``attributes``
or ``pixels``, is first pulled by the migration's own `receive_inventory` into
``<work>/verify-source/<run>/landing/``, and `verify_pulled_source` then checks what landed and lists what the
source would not deliver. That path is chosen by the input alone (an S3 source runs the one
activity it always ran), so histories of S3 verifications replay unchanged.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from contracts.activities import (
        check_verify_target,
        receive_inventory,
        verify_listed_source,
        verify_migration,
        verify_pulled_source,
        verify_source,
    )
    from contracts.stages import ReceiveInput
    from contracts.verify import (
        PulledSourceInput,
        SourceVerifyInput,
        VerifyInput,
        VerifyResult,
        verify_landing,
        verify_pull_id,
    )
    from workflows import policies

# The pull of a connector source: as a migration's receive (workflows/plan.py), but a PACS that stays unreachable
# fails the check after a few tries instead of holding the operator's `himig verify` for many minutes (the pull
# resumes from its heartbeat cursor on each try, so a retry repeats no delivered study).
PULL_TIMEOUT = timedelta(hours=6)
PULL_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                         maximum_interval=timedelta(seconds=30), maximum_attempts=3,
                         non_retryable_error_types=policies.FATAL)
INVENTORY_PAGE = 1000


@workflow.defn
class VerifyWorkflow:
    @workflow.run
    async def run(self, input: VerifyInput) -> VerifyResult:
        return await workflow.execute_activity(
            verify_migration, input, start_to_close_timeout=timedelta(hours=6), heartbeat_timeout=policies.HEARTBEAT,
            retry_policy=policies.STAGE_RETRY)


@workflow.defn
class SourceVerifyWorkflow:
    @workflow.run
    async def run(self, input: SourceVerifyInput) -> VerifyResult:
        if input.source_connector is None:
            return await workflow.execute_activity(
                verify_source, input, start_to_close_timeout=timedelta(hours=6), heartbeat_timeout=policies.HEARTBEAT,
                retry_policy=policies.STAGE_RETRY)
        if input.listed_only:
            return await workflow.execute_activity(
                verify_listed_source, input, start_to_close_timeout=timedelta(hours=6),
                heartbeat_timeout=policies.HEARTBEAT, retry_policy=PULL_RETRY)
        # A wrong data store or attribute is refused before the pull, not after moving the whole source.
        await workflow.execute_activity(
            check_verify_target, input, start_to_close_timeout=timedelta(minutes=2), retry_policy=PULL_RETRY)
        run_id = workflow.info().run_id
        landing, pull_id = verify_landing(input.work_s3_uri, run_id), verify_pull_id(run_id)
        await workflow.execute_activity(
            receive_inventory,
            ReceiveInput(migration_id=pull_id, source_s3_uri=landing, work_s3_uri=input.work_s3_uri,
                         page_size=INVENTORY_PAGE, source_connector=input.source_connector),
            start_to_close_timeout=PULL_TIMEOUT, heartbeat_timeout=policies.HEARTBEAT, retry_policy=PULL_RETRY)
        return await workflow.execute_activity(
            verify_pulled_source,
            PulledSourceInput(request=input, landing_s3_uri=landing, pull_id=pull_id),
            start_to_close_timeout=timedelta(hours=6), heartbeat_timeout=policies.HEARTBEAT,
            retry_policy=policies.STAGE_RETRY)
