"""``himig rollback``: undo a finished migration (its `RollbackWorkflow`), confirmed by naming the count.

The command finds the migration's data store and work prefix in its own start input (the workflow history), starts
(or finds) `rollback-<migration id>`, waits for its plan, prints it, and sends the ``confirm`` update only with the
count the operator typed (``--confirm N``, or at the prompt). Without a confirmation it leaves the rollback waiting
(it expires on its own and deletes nothing).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from rich.console import Console
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from cli.calls import CommandError
from cli.finished import migration_input
from contracts.rollback import (
    KeepReason,
    RollbackConfirmation,
    RollbackInput,
    RollbackPhase,
    RollbackProgress,
    rollback_workflow_id,
)
from workflows.rollback import RollbackWorkflow

KEEP_TEXT = {
    KeepReason.EXISTED_BEFORE: "existed before the migration (it only added a version)",
    KeepReason.CHANGED_AFTER: "changed by someone after the migration",
    KeepReason.PRIMARY_PREDATES: "non-primary, and its series' primary set is not the migration's",
    KeepReason.ALREADY_DELETED: "already deleted",
}
PLAN_WAIT_SECONDS = 600.0


def print_plan(progress: RollbackProgress, console: Console) -> None:
    assert progress.plan is not None
    console.print(f"rollback of {progress.migration_id}: {progress.plan.to_delete} image set(s) to delete")
    for reason, n in sorted(progress.plan.kept.items()):
        console.print(f"  kept {n}: {KEEP_TEXT[reason]}")


async def rollback(client: Client, migration_id: str, task_queue: str, confirm: int | None, by: str,
                   console: Console, ask: Callable[[int], int | None]) -> RollbackProgress:
    """Start or find the rollback, wait for its plan, confirm with the operator's count, wait for the end."""
    source = await migration_input(client, migration_id, "roll back")
    workflow_id = rollback_workflow_id(migration_id)
    try:
        handle = await client.start_workflow(
            RollbackWorkflow.run,
            RollbackInput(migration_id=migration_id, datastore_id=source.datastore_id,
                          work_s3_uri=source.work_s3_uri, requested_by=by),
            id=workflow_id, task_queue=task_queue)
    except WorkflowAlreadyStartedError:
        handle = client.get_workflow_handle_for(RollbackWorkflow.run, workflow_id)
    progress = await _planned(handle)
    if progress.phase is not RollbackPhase.AWAITING_CONFIRMATION:
        console.print(f"rollback of {migration_id} already {progress.phase.value}: {progress.deleted} deleted")
        return progress
    print_plan(progress, console)
    assert progress.plan is not None
    count = confirm if confirm is not None else ask(progress.plan.to_delete)
    if count is None:
        console.print(f"not confirmed: the rollback waits as {workflow_id}; run `himig rollback {migration_id} "
                      f"--confirm {progress.plan.to_delete}` to delete (it expires unconfirmed in 24 h)")
        return progress
    try:
        await handle.execute_update(RollbackWorkflow.confirm, RollbackConfirmation(count=count, by=by))
    except WorkflowUpdateFailedError as err:
        raise CommandError(f"confirmation refused: {err.cause}") from None
    done: RollbackProgress = await handle.result()
    console.print(f"rollback of {migration_id} {done.phase.value}: {done.deleted} deleted, "
                  f"{done.already_deleted} already gone; recorded in {done.record_uri}")
    return done


async def _planned(handle: Any) -> RollbackProgress:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PLAN_WAIT_SECONDS
    while True:
        desc = await handle.describe()
        if desc.status not in (WorkflowExecutionStatus.RUNNING, WorkflowExecutionStatus.COMPLETED):
            try:
                await handle.result()
            except Exception as err:  # the failure's cause is the message
                cause = getattr(getattr(err, "cause", None), "cause", None) or getattr(err, "cause", None) or err
                raise CommandError(f"the rollback ended {desc.status.name if desc.status else ''}: {cause}") from None
        try:
            progress: RollbackProgress = await handle.query(RollbackWorkflow.progress)
            if progress.phase is not RollbackPhase.PLANNING:
                return progress
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise
        except Exception:  # not started yet: the query is answered once the first task ran
            pass
        if loop.time() > deadline:
            raise CommandError("the rollback's plan is not ready after 10 minutes; is a worker running?")
        await asyncio.sleep(0.5)
