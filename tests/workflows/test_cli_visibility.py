"""`himig list` by visibility query on the search attributes, and clear CLI errors for unknown ids.

Against the real Temporal dev server of the workflow tests (the search attributes are registered there, as in the
local stack). The listed workflows are started on a task queue no worker polls, so they stay Running with the
search attributes they were started with; the test terminates them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from cli import app as cli_module
from cli.app import app, list_query
from contracts import search
from contracts.migration import MigrationInput
from contracts.reconciliation import ReconciliationInput
from tests.support.eventually import assert_eventually
from workflows.migration import MigrationWorkflow
from workflows.reconciliation import ReconciliationWorkflow

WAIT_LIMIT = 30.0


@pytest.fixture
def cli(temporal_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("HIMIG_TEMPORAL_ADDRESS", temporal_env.client.service_client.config.target_host)
    monkeypatch.setattr(cli_module.console, "width", 200)  # CliRunner is no terminal: states unfolded too
    return CliRunner()


def _flat(result: Any) -> str:
    return " ".join(result.output.split())


def _attrs(state: str, datastore: str, migration: str) -> TypedSearchAttributes:
    return TypedSearchAttributes([SearchAttributePair(search.STATE, state),
                                  SearchAttributePair(search.DATASTORE_ID, datastore),
                                  SearchAttributePair(search.MIGRATION_ID, migration)])


@pytest.fixture
async def parked(client: Client) -> AsyncIterator[dict[str, Any]]:
    """Workflows that never run (no worker on their queue), each with the attributes a live one would have."""
    tag = uuid.uuid4().hex[:8]
    ds, other_ds = f"{tag}{'d' * 24}", f"{tag}{'e' * 24}"
    queue = f"parked-{tag}"
    mig = f"m-{tag}"
    migration_input = MigrationInput(source_s3_uri="s3://src-b/in/", datastore_id=ds, work_s3_uri="s3://work-b/w/")
    handles: dict[str, WorkflowHandle[Any, Any]] = {}

    async def start(name: str, run: Any, arg: Any, state: str, datastore: str) -> None:
        handles[name] = await client.start_workflow(run, arg, id=f"{name}-{tag}", task_queue=queue,
                                                    search_attributes=_attrs(state, datastore, mig))

    await start("mig", MigrationWorkflow.run, migration_input, "importing", ds)
    await start("mig-other-ds", MigrationWorkflow.run, migration_input.model_copy(update={"datastore_id": other_ds}),
                "parsing", other_ds)
    for name, state in (("recon-waiting", "awaiting_decision"), ("recon-escalated", "escalated"),
                        ("recon-applying", "applying")):
        await start(name, ReconciliationWorkflow.run,
                    ReconciliationInput(datastore_id=ds, image_set_id="f" * 32, migration_id=mig), state, ds)
    yield {"tag": tag, "ds": ds, "other_ds": other_ds, "mig": mig, "ids": {k: h.id for k, h in handles.items()}}
    for handle in handles.values():
        await handle.terminate(reason="test done")


async def _eventually(cli: CliRunner, args: list[str], present: list[str]) -> str:
    """Visibility is eventually consistent: list until every expected id shows (bounded)."""

    async def listed() -> Any:
        result = await asyncio.to_thread(cli.invoke, app, ["list", *args])
        if result.exit_code == 0:  # a failing command is not retried: it stops the wait and fails below
            out = _flat(result)
            assert all(p in out for p in present), f"missing from `himig list {' '.join(args)}`: {present}\n{out}"
        return result

    result = await assert_eventually(listed, timeout=WAIT_LIMIT, interval=0.3)
    assert result.exit_code == 0, result.output
    return _flat(result)


class TestList:
    async def test_running_migrations_and_pending_reconciliations(self, cli: CliRunner, parked: dict[str, Any]) -> None:
        ids = parked["ids"]
        out = await _eventually(cli, ["--migration-id", parked["mig"]],
                                [ids["mig"], ids["mig-other-ds"], ids["recon-waiting"], ids["recon-escalated"]])
        assert ids["recon-applying"] not in out  # deciding already: nothing for an operator to do
        assert "awaiting_decision" in out and "escalated" in out and "importing" in out

        out = await _eventually(cli, ["--datastore-id", parked["ds"]], [ids["mig"], ids["recon-waiting"]])
        assert ids["mig-other-ds"] not in out

        out = await _eventually(cli, ["--all", "--migration-id", parked["mig"]], [ids["recon-applying"]])

    def test_bad_filters_name_the_flag(self, cli: CliRunner) -> None:
        result = cli.invoke(app, ["list", "--datastore-id", "x' OR '1'='1"])
        assert result.exit_code == 2 and "--datastore-id" in _flat(result)
        result = cli.invoke(app, ["list", "--migration-id", "a b"])
        assert result.exit_code == 2 and "--migration-id" in _flat(result)

    def test_query_shape(self) -> None:
        q = list_query(False, "a" * 32, "m-1")
        assert "HimigState IN ('awaiting_decision', 'escalated')" in q and "ExecutionStatus = 'Running'" in q
        assert q.endswith("HimigDatastoreId = '" + "a" * 32 + "' AND HimigMigrationId = 'm-1'")
        assert "Running" not in list_query(True)


class TestUnknownIds:
    @pytest.mark.parametrize("args,needle", [
        (["status", "no-such-migration"], "no migration with id 'no-such-migration'"),
        (["report", "no-such-migration"], "no migration with id 'no-such-migration'"),
        (["pause", "no-such-migration"], "no migration with id 'no-such-migration'"),
        (["approve", "recon-nope", "--action", "keep", "--reason", "x"], "no reconciliation with id 'recon-nope'"),
        (["approve-manifest", "m.batch-00000", "--approve"], "no batch with id 'm.batch-00000'"),
    ])
    def test_unknown_id_is_a_clear_error(self, cli: CliRunner, args: list[str], needle: str) -> None:
        result = cli.invoke(app, args)
        assert result.exit_code == 1, result.output
        assert needle in _flat(result)


class TestUnreachableTemporal:
    @pytest.mark.parametrize("args", [
        ["list"], ["report", "m-1"], ["pause", "m-1"], ["approve", "recon-x", "--action", "keep"],
        ["approve-manifest", "m-1.batch-00000", "--hold"],
    ])
    def test_names_the_address_and_the_variable(self, args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HIMIG_TEMPORAL_ADDRESS", "127.0.0.1:1")  # nothing listens here
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1, result.output
        assert "cannot reach Temporal at 127.0.0.1:1" in _flat(result) and "HIMIG_TEMPORAL_ADDRESS" in _flat(result)
