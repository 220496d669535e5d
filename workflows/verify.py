"""`VerifyWorkflow`: one verification of a finished migration against HealthImaging (`verify_migration`).

Started by `himig verify`, or periodically by a Temporal Schedule (`himig verify --every 24h`) as a standing check
that publishes each outcome as an EventBridge event. One activity: the check reads and compares, it changes
nothing, so a retried attempt simply checks again.

`SourceVerifyWorkflow`: the same check of a bare source (every object under an S3 prefix) against a data store,
without a migration (`verify_source`; started by ``himig verify --source``).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from contracts.activities import verify_migration, verify_source
    from contracts.verify import SourceVerifyInput, VerifyInput, VerifyResult
    from workflows import policies


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
        return await workflow.execute_activity(
            verify_source, input, start_to_close_timeout=timedelta(hours=6), heartbeat_timeout=policies.HEARTBEAT,
            retry_policy=policies.STAGE_RETRY)
