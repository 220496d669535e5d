"""What an id given to `himig` names: a migration, one of its batches, a reconciliation, an ingest, or nothing.

Every command that takes an id asks here first (one `describe`, no worker needed), so an id of the wrong kind
gets one sentence saying what it is and which command fits it, and an unknown id one sentence too, instead of
whatever the first query or update happens to raise.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from temporalio.client import Client, WorkflowExecutionDescription, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from cli.calls import Calls, CommandError
from contracts import search


class Kind(StrEnum):
    MIGRATION = "migration"
    BATCH = "batch"
    RECONCILIATION = "reconciliation"
    INGEST = "ingest"
    ROLLBACK = "rollback"
    VERIFICATION = "verification"
    SWEEP = "reconciliation sweep"
    PLAN = "plan"


WORKFLOW_KINDS = {"MigrationWorkflow": Kind.MIGRATION, "ImportBatchWorkflow": Kind.BATCH,
                  "ReconciliationWorkflow": Kind.RECONCILIATION, "IngestWorkflow": Kind.INGEST,
                  "RollbackWorkflow": Kind.ROLLBACK, "VerifyWorkflow": Kind.VERIFICATION,
                  "ReconciliationSweepWorkflow": Kind.SWEEP, "SourceVerifyWorkflow": Kind.VERIFICATION,
                  "PlanWorkflow": Kind.PLAN}


@dataclass(frozen=True)
class Target:
    id: str
    kind: Kind | None  # None: a workflow of a type that is not ours
    workflow_type: str
    status: WorkflowExecutionStatus | None
    state: str | None  # HimigState: the phase, stage or reconciliation state last published
    migration_id: str | None  # HimigMigrationId: the migration a batch or reconciliation belongs to

    @property
    def running(self) -> bool:
        return self.status == WorkflowExecutionStatus.RUNNING

    @property
    def status_name(self) -> str:
        return self.status.name if self.status is not None else "unknown"

    def what(self) -> str:
        """``'x' is a batch of migration 'm'``-style description of this id."""
        if self.kind is None:
            return f"{self.id!r} is a {self.workflow_type} workflow, not one of himig's"
        of = f" of migration {self.migration_id!r}" if self.migration_id and self.kind is not Kind.MIGRATION else ""
        return f"{self.id!r} is {'an' if self.kind is Kind.INGEST else 'a'} {self.kind.value}{of}"


def target_of(workflow_id: str, desc: WorkflowExecutionDescription) -> Target:
    attrs = desc.typed_search_attributes
    return Target(id=workflow_id, kind=WORKFLOW_KINDS.get(desc.workflow_type), workflow_type=desc.workflow_type,
                  status=desc.status, state=attrs.get(search.STATE), migration_id=attrs.get(search.MIGRATION_ID))


def not_found(workflow_id: str, wanted: Kind) -> CommandError:
    return CommandError(f"no {wanted.value} with id {workflow_id!r} (no workflow has that id; "
                        "`himig list --all` lists migrations and reconciliations)")


async def find(client: Client, calls: Calls, workflow_id: str, wanted: Kind) -> Target:
    """What ``workflow_id`` names; `CommandError` when nothing has that id (naming the ``wanted`` kind)."""

    async def describe() -> WorkflowExecutionDescription | None:
        try:
            return await client.get_workflow_handle(workflow_id).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return None
            raise

    desc = await calls.bounded(describe(), f"a describe of {workflow_id!r}")
    if desc is None:
        raise not_found(workflow_id, wanted)
    return target_of(workflow_id, desc)


# Which command fits each kind of id (said when an id of another kind is given).
COMMANDS = {
    Kind.MIGRATION: "`himig status`, `himig report`, `himig pause`/`resume`/`cancel`",
    Kind.BATCH: "`himig status` (its stage) and `himig approve-manifest`",
    Kind.RECONCILIATION: "`himig status` (its conflict and decisions) and `himig approve`",
    Kind.INGEST: "`himig status` (its buffer and flushes)",
    Kind.ROLLBACK: "`himig status` (its plan and deletions) and `himig rollback <migration id>` to confirm it",
    Kind.VERIFICATION: "`himig verify <migration id>` or `himig verify --source ...` (its result: `temporal workflow show -w <id>`)",
    Kind.SWEEP: "`temporal workflow show -w <id>` (it starts reconciliations)",
    Kind.PLAN: "`himig status` (its phase), `himig plan --show <id>` and `himig start --from-plan <id>`",
}


def wrong_kind(target: Target, wanted: Kind, command: str) -> CommandError:
    """`himig <command>` takes a ``wanted`` id and was given ``target``: say what it is and what fits."""
    text = f"{target.what()}, not a {wanted.value}: `himig {command}` takes a {wanted.value} id"
    if target.kind is Kind.BATCH and target.migration_id and wanted is Kind.MIGRATION:
        text += f" (its migration: `himig {command} {target.migration_id}`)"
    elif target.kind is not None:
        text += f"; for a {target.kind.value} use {COMMANDS[target.kind]}"
    return CommandError(text)


def expect(target: Target, wanted: Kind, command: str) -> Target:
    if target.kind is not wanted:
        raise wrong_kind(target, wanted, command)
    return target
