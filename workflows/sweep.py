"""`ReconciliationSweepWorkflow`: start a reconciliation for every non-primary image set that has none.

Per page of non-primary image sets (activity `list_non_primary`), one child `ReconciliationWorkflow` start per
set under its usual id (`recon-<datastore>-<image set>`), abandoned on close, with the id reuse policy
ALLOW_DUPLICATE_FAILED_ONLY: a set whose reconciliation is running, or completed (it was decided), is left
alone; one whose last reconciliation failed, was terminated (e.g. by the history limit) or timed out gets a new
one. The listing continues as new with its page token when history should roll over.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from contracts.activities import list_non_primary
    from contracts.reconciliation import ReconciliationInput, reconciliation_workflow_id
    from contracts.sweep import NonPrimaryPage, NonPrimaryPageInput, SweepCarry, SweepInput, SweepResult
    from workflows import carried, policies
    from workflows.history import should_roll_over
    from workflows.reconciliation import ReconciliationWorkflow


@workflow.defn
class ReconciliationSweepWorkflow:
    @workflow.run
    async def run(self, input: SweepInput) -> SweepResult:
        if carried.written_by_caller(input.continued):
            carried.refuse()
        before = input.continued
        found, started, already = (before.found, before.started, before.already) if before else (0, 0, 0)
        token = before.next_token if before else None
        while True:
            page: NonPrimaryPage = await workflow.execute_activity(
                list_non_primary, NonPrimaryPageInput(datastore_id=input.datastore_id, next_token=token),
                start_to_close_timeout=timedelta(minutes=2), retry_policy=policies.READ_RETRY)
            found += len(page.image_set_ids)
            for image_set_id in page.image_set_ids:
                if await self._start(input, image_set_id):
                    started += 1
                else:
                    already += 1
            token = page.next_token
            if token is None:
                return SweepResult(datastore_id=input.datastore_id, found=found, started=started, already=already)
            if should_roll_over():
                carry = SweepCarry(next_token=token, found=found, started=started, already=already)
                workflow.continue_as_new(input.model_copy(update={"continued": carry}))

    async def _start(self, input: SweepInput, image_set_id: str) -> bool:
        with contextlib.suppress(WorkflowAlreadyStartedError):
            await workflow.start_child_workflow(
                ReconciliationWorkflow.run,
                ReconciliationInput(datastore_id=input.datastore_id, image_set_id=image_set_id,
                                    timeout_seconds=input.timeout_seconds),
                id=reconciliation_workflow_id(input.datastore_id, image_set_id),
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                parent_close_policy=ParentClosePolicy.ABANDON)
            return True
        return False
