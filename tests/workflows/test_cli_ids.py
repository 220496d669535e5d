"""Every `himig` command that takes an id, given every kind of id (migration, batch, reconciliation, ingest, a
workflow that is not ours, none at all): one clear sentence, the right exit code, never a traceback. And a
Temporal that hangs or goes away in the middle of `status --watch` ends it with one line.

Against the real Temporal dev server with an in-process worker (tests/workflows/conftest.py), moto and the
emulator; a TCP proxy in front of the server plays the hanging and the vanishing Temporal.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.worker import Worker
from typer.testing import CliRunner

from cli import app as cli_module
from cli.app import app
from contracts.ingest import IngestInput
from contracts.migration import MigrationInput, batch_workflow_id
from contracts.reconciliation import ReconciliationInput
from tests.support.dicom import make_instance, uid
from tests.support.eventually import assert_eventually
from tests.support.migrations import migrate, paused_start, wait_phase
from tests.support.silent_server import FreezableProxy
from workflows.ingest import IngestWorkflow
from workflows.migration import MigrationWorkflow
from workflows.reconciliation import ReconciliationWorkflow


def _flat(result: Any) -> str:
    return " ".join(result.output.split())


@pytest.fixture
def env(client: Client, moto_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setattr(cli_module.console, "width", 200)
    monkeypatch.setattr(cli_module.err_console, "width", 200)
    return {"HIMIG_TEMPORAL_ADDRESS": client.service_client.config.target_host, "HIMIG_CLI_TIMEOUT_SECONDS": "10",
            "AWS_ENDPOINT_URL_S3": moto_url}


async def himig(env: dict[str, str], *args: str) -> Any:
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)
    assert isinstance(result.exception, SystemExit | None), result.exception  # nothing escaped: no traceback
    assert "Traceback" not in result.output
    return result


@pytest.fixture
async def ids(client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str) -> AsyncIterator[dict[str, str]]:
    """A finished migration and its batch, a running ingest, a finished reconciliation, a foreign workflow."""
    s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
    s3.put_object(Bucket=src, Key="ids/0.dcm", Body=make_instance(uid(), uid()))
    mig, _ = await migrate(client, worker, MigrationInput(
        source_s3_uri=f"s3://{src}/ids/", datastore_id=datastore_id, work_s3_uri=f"s3://{work}/w/",
        import_start_interval_seconds=0), prefix="ids")
    tag = uuid.uuid4().hex[:8]
    ingest = await client.start_workflow(
        IngestWorkflow.run, IngestInput(source_s3_uri=f"s3://{src}/arrivals/", datastore_id=datastore_id,
                                        work_s3_uri=f"s3://{work}/ingest/"),
        id=f"ingest-{tag}", task_queue=worker.task_queue)
    parked = f"parked-{tag}"  # no worker polls it
    recon = await client.start_workflow(
        ReconciliationWorkflow.run, ReconciliationInput(datastore_id=datastore_id, image_set_id="f" * 32,
                                                        migration_id=mig),
        id=f"recon-{datastore_id}-{tag}", task_queue=parked)
    await recon.terminate(reason="finished before the operator came")
    foreign = await client.start_workflow("SomeoneElsesWorkflow", id=f"foreign-{tag}", task_queue=parked)
    yield {"mig": mig, "batch": batch_workflow_id(mig, 0), "ingest": ingest.id, "recon": recon.id,
           "foreign": foreign.id}
    await ingest.terminate(reason="test done")
    await foreign.terminate(reason="test done")


class TestEveryKindOfId:
    async def test_status_shows_each_kinds_own_progress(self, env: dict[str, str], ids: dict[str, str]) -> None:
        result = await himig(env, "status", ids["mig"])
        assert result.exit_code == 0 and "completed" in _flat(result)
        result = await himig(env, "status", ids["mig"], "--watch")
        assert result.exit_code == 0 and "completed" in _flat(result) and "1/1" in _flat(result)

        result = await himig(env, "status", ids["batch"])
        assert result.exit_code == 0, result.output
        assert f"'{ids['batch']}' is a batch of migration '{ids['mig']}'" in _flat(result)
        assert f"batch {ids['batch']} — done" in _flat(result)
        result = await himig(env, "status", ids["batch"], "--json")
        assert result.exit_code == 0 and json.loads(result.stdout)["stage"] == "done"

        result = await himig(env, "status", ids["ingest"])
        assert result.exit_code == 0, result.output
        assert f"'{ids['ingest']}' is an ingest" in _flat(result) and "buffered arrivals" in _flat(result)

        result = await himig(env, "status", ids["foreign"])
        assert result.exit_code == 1 and "is a SomeoneElsesWorkflow workflow, not one of himig's" in _flat(result)

        result = await himig(env, "status", ids["batch"], "--watch")
        assert result.exit_code == 1 and "is a batch" in _flat(result) and f"himig status --watch {ids['mig']}" \
            in _flat(result)

    async def test_report_of_a_batch_explains_and_shows_its_progress(self, env: dict[str, str],
                                                                     ids: dict[str, str]) -> None:
        result = await himig(env, "report", ids["batch"])
        assert result.exit_code == 1
        flat = _flat(result)
        assert f"is a batch of migration '{ids['mig']}', not a migration" in flat
        assert f"himig report {ids['mig']}" in flat and f"batch {ids['batch']} — done" in flat

        result = await himig(env, "report", ids["ingest"])
        assert result.exit_code == 1 and "is an ingest, not a migration" in _flat(result)
        result = await himig(env, "report", ids["mig"], "--json")
        assert result.exit_code == 0 and '"files_total": 1' in result.output

    @pytest.mark.parametrize("command", ["pause", "resume", "cancel"])
    async def test_operator_signals_take_running_migrations_only(self, env: dict[str, str], ids: dict[str, str],
                                                                 command: str) -> None:
        result = await himig(env, command, ids["batch"])
        assert result.exit_code == 1 and f"(its migration: `himig {command} {ids['mig']}`)" in _flat(result)
        result = await himig(env, command, ids["mig"])
        assert result.exit_code == 1 and f"migration '{ids['mig']}' is not running (it is COMPLETED)" in _flat(result)
        result = await himig(env, command, ids["recon"])
        assert result.exit_code == 1 and "is a reconciliation" in _flat(result) and "himig approve" in _flat(result)
        result = await himig(env, command, ids["ingest"])
        assert result.exit_code == 1 and "is an ingest, not a migration" in _flat(result)

    async def test_approve_takes_open_reconciliations_only(self, env: dict[str, str], ids: dict[str, str]) -> None:
        result = await himig(env, "approve", ids["mig"], "--action", "keep")
        assert result.exit_code == 1 and "is a migration, not a reconciliation" in _flat(result)
        result = await himig(env, "approve", ids["batch"], "--action", "discard")
        assert result.exit_code == 1 and "is a batch" in _flat(result)
        result = await himig(env, "approve", ids["recon"], "--action", "keep")
        assert result.exit_code == 1, result.output
        assert f"reconciliation '{ids['recon']}' has finished (it is TERMINATED" in _flat(result)
        assert "nothing left to decide" in _flat(result)

    async def test_approve_manifest_takes_batches_awaiting_approval_only(self, env: dict[str, str],
                                                                         ids: dict[str, str]) -> None:
        result = await himig(env, "approve-manifest", ids["mig"], "--approve")
        assert result.exit_code == 1 and "is a migration, not a batch" in _flat(result)
        result = await himig(env, "approve-manifest", ids["batch"], "--hold")
        assert result.exit_code == 1 and "is not awaiting approval (it has finished: COMPLETED)" in _flat(result)

    @pytest.mark.parametrize("args,needle", [
        (["status", "nothing-here"], "no migration with id 'nothing-here'"),
        (["status", "nothing-here", "--watch"], "no migration with id 'nothing-here'"),
        (["report", "nothing-here"], "no migration with id 'nothing-here'"),
        (["pause", "nothing-here"], "no migration with id 'nothing-here'"),
        (["approve", "recon-nothing", "--action", "promote"], "no reconciliation with id 'recon-nothing'"),
        (["approve-manifest", "nothing.batch-00000", "--approve"], "no batch with id 'nothing.batch-00000'"),
    ])
    async def test_unknown_ids(self, env: dict[str, str], args: list[str], needle: str) -> None:
        result = await himig(env, *args)
        assert result.exit_code == 1 and needle in _flat(result)
        assert len(result.output.strip().splitlines()) <= 2  # one sentence (wrapped at most once)


    @pytest.mark.parametrize("args", [
        ["status", ""], ["status", "x" * 5000], ["report", "../../etc/passwd"], ["pause", "m' OR '1'='1"],
        ["approve", "\u202erecon", "--action", "keep"], ["approve-manifest", "\x00", "--hold"],
        ["status", "line\nbreak"],
    ], ids=["empty", "long", "path", "quote", "bidi", "nul", "newline"])
    async def test_hostile_ids_are_one_line(self, env: dict[str, str], args: list[str]) -> None:
        result = await himig(env, *args)
        assert result.exit_code in (1, 2), result.output
        assert result.output.lstrip().startswith("error:") or "Usage" in result.output, result.output


class TestTemporalFailsMidCommand:
    @pytest.fixture
    async def running(self, client: Client, worker: Worker, buckets: dict[str, Any],
                      datastore_id: str) -> AsyncIterator[Any]:
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        s3.put_object(Bucket=src, Key="hang/0.dcm", Body=make_instance(uid(), uid()))
        handle = await paused_start(client, worker, MigrationInput(
            source_s3_uri=f"s3://{src}/hang/", datastore_id=datastore_id, work_s3_uri=f"s3://{work}/w/"))
        await wait_phase(handle, "parsing")
        yield handle
        await handle.terminate(reason="test done")

    async def test_pause_without_login_variables_records_the_os_user(self, client: Client, running: Any) -> None:
        env = {"HIMIG_TEMPORAL_ADDRESS": client.service_client.config.target_host,
               **dict.fromkeys(("USER", "LOGNAME", "LNAME", "USERNAME"))}  # None: unset for the command
        result = await himig(env, "resume", running.id, "--reason", "go on")
        assert result.exit_code == 0, result.output
        progress = await running.query(MigrationWorkflow.progress)
        assert progress.operator_log[-1].action == "resume"
        assert progress.operator_log[-1].by == pwd.getpwuid(os.getuid()).pw_name

    async def _watch_then(self, client: Client, handle: Any, act: str) -> Any:
        proxy = FreezableProxy(client.service_client.config.target_host)
        env = {"HIMIG_TEMPORAL_ADDRESS": proxy.address, "HIMIG_CLI_TIMEOUT_SECONDS": "2"}
        try:
            watch = asyncio.ensure_future(himig(env, "status", handle.id, "--watch"))
            base = proxy.forwarded

            async def polling() -> None:  # the watch is past its connect and asks again and again
                assert proxy.forwarded > base + 40, "the watch is not polling through the proxy"

            await assert_eventually(polling, timeout=20)
            proxy.freeze() if act == "freeze" else proxy.close()
            return await asyncio.wait_for(watch, timeout=60)
        finally:
            proxy.close()

    async def test_a_hang_during_watch_is_one_line(self, client: Client, running: Any) -> None:
        result = await self._watch_then(client, running, "freeze")
        assert result.exit_code == 1
        assert "ETA" in result.output  # the bar shows the workflow's estimate (none yet: "ETA -")
        assert "did not answer" in _flat(result) and "within 2s" in _flat(result)

    async def test_temporal_going_away_during_watch_is_one_line(self, client: Client, running: Any) -> None:
        result = await self._watch_then(client, running, "close")
        assert result.exit_code == 1
        assert "Temporal at 127.0.0.1:" in _flat(result) and "RPCError" not in result.output
