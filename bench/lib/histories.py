"""The histories of one migration: every run of its continue-as-new chain and every batch workflow."""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio.client import Client


async def migration_histories(client: Client, workflow_id: str, attempts: int = 100) -> list[Any]:
    """Histories of ``workflow_id``'s runs and of its ``<id>.batch-…`` children, once visibility lists them all
    closed (it is eventually consistent)."""
    query = f"WorkflowId = '{workflow_id}' OR WorkflowId STARTS_WITH '{workflow_id}.'"
    runs: list[Any] = []
    for _ in range(attempts):
        runs = [r async for r in client.list_workflows(query)]
        if runs and all(r.status and r.status.name != "RUNNING" for r in runs):
            break
        await asyncio.sleep(0.2)
    return [await client.get_workflow_handle(r.id, run_id=r.run_id).fetch_history() for r in runs]


def activity_identities(history: Any) -> set[str]:
    """The worker identities that started activities in a history."""
    return {e.activity_task_started_event_attributes.identity for e in history.events
            if e.HasField("activity_task_started_event_attributes")}
