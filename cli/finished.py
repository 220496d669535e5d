"""The start input of a finished migration, for the commands that act on one (`rollback`, `verify`)."""

from __future__ import annotations

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from cli.calls import CommandError
from contracts.migration import MigrationInput
from workflows.migration import MigrationWorkflow


async def migration_input(client: Client, migration_id: str, action: str) -> MigrationInput:
    """The finished migration's own start input (data store and work prefix), from its latest run's history."""
    handle = client.get_workflow_handle(migration_id)
    try:
        desc = await handle.describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise CommandError(f"no migration with id {migration_id!r}") from None
        raise
    if desc.workflow_type != MigrationWorkflow.__name__:
        raise CommandError(f"{migration_id!r} is a {desc.workflow_type}, not a migration: {action} the migration "
                             "it belongs to")
    if desc.status == WorkflowExecutionStatus.RUNNING:
        raise CommandError(f"migration {migration_id!r} is still running: cancel it (`himig cancel {migration_id}`) "
                             f"or let it finish, then {action} it")
    if desc.status != WorkflowExecutionStatus.COMPLETED:
        state = desc.status.name if desc.status else "unknown"
        raise CommandError(f"migration {migration_id!r} ended {state} without a report: nothing to {action} "
                             "from (its imports are listed by `himig list --all --migration-id`)")
    history = await handle.fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    (payload,) = await client.data_converter.decode(started.input.payloads, [MigrationInput])
    assert isinstance(payload, MigrationInput)
    return payload
