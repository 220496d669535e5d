"""End-to-end migrations through the real Temporal dev server, moto S3 and the HealthImaging emulator."""

from __future__ import annotations

import asyncio
import getpass
import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.worker import Worker

from contracts.common import FileState, ValidationLevel
from contracts.migration import MigrationInput, MigrationResult, OperatorCommand
from tests.support.dicom import make_instance, uid
from tests.support.eventually import assert_eventually
from tests.support.migrations import migrate, paused_start, report_rows, wait_phase
from workflows.batch import ImportBatchWorkflow
from workflows.migration import MigrationWorkflow


def _put(s3: Any, bucket: str, key: str, body: bytes) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=body)


class TestMigrationEndToEnd:
    async def test_every_file_has_exactly_one_outcome(self, client: Client, worker: Worker, buckets: dict[str, Any],
                                                      datastore_id: str) -> None:
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        study_a, study_b = uid(), uid()
        series = [uid(), uid(), uid()]
        good = {}
        for i in range(3):
            good[f"in/a/{i}.dcm"] = make_instance(study_a, series[0])
            good[f"in/a2/{i}.dcm"] = make_instance(study_a, series[1])
            good[f"in/b/{i}.dcm"] = make_instance(study_b, series[2], patient_id="SYNTH-0002")
        for key, body in good.items():
            _put(s3, src, key, body)
        _put(s3, src, "in/bad/zero.dcm", b"")
        _put(s3, src, "in/bad/readme.txt", b"this is not DICOM")
        _put(s3, src, "in/bad/no-series.dcm", make_instance(study_a, series[0], drop=("SeriesInstanceUID",)))
        _put(s3, src, "in/dup/copy-of-a0.dcm", good["in/a/0.dcm"])
        payload = MigrationInput(source_s3_uri=f"s3://{src}/in/", datastore_id=datastore_id,
                                 work_s3_uri=f"s3://{work}/runs/", max_files_per_batch=4,
                                 import_start_interval_seconds=0, inventory_page_size=5)
        wid, result = await migrate(client, worker, payload)

        rows = report_rows(s3, result)
        assert result.files_total == 13
        assert set(rows) == {*good, "in/bad/zero.dcm", "in/bad/readme.txt", "in/bad/no-series.dcm",
                             "in/dup/copy-of-a0.dcm"}
        for key in good:
            assert rows[key]["state"] == FileState.IMPORTED, rows[key]
            assert len(rows[key]["image_set_id"]) == 32
        assert rows["in/bad/zero.dcm"]["state"] == FileState.REJECTED
        assert "empty" in rows["in/bad/zero.dcm"]["reason"]
        assert "not a DICOM" in rows["in/bad/readme.txt"]["reason"]
        assert rows["in/bad/no-series.dcm"]["state"] == FileState.REJECTED
        assert "SeriesInstanceUID" in rows["in/bad/no-series.dcm"]["reason"]
        assert rows["in/dup/copy-of-a0.dcm"]["state"] == FileState.SKIPPED_DUPLICATE
        assert rows["in/dup/copy-of-a0.dcm"]["duplicate_of"] == "in/a/0.dcm"
        assert result.files_by_state[FileState.IMPORTED] == 9
        # Three series -> three image sets, all primary.
        assert len({rows[k]["image_set_id"] for k in good}) == 3
        # Study A (6 files) exceeds a 4-file batch and is split; study B fits whole.
        assert len({rows[k]["job_id"] for k in good}) >= 3

        progress = await client.get_workflow_handle(wid).query(MigrationWorkflow.progress)
        assert progress.phase == "completed"
        assert progress.files_done == 13

    async def test_clean_folder_is_imported_in_place_and_others_are_staged(
            self, client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str) -> None:
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        clean_study, mixed_study = uid(), uid()
        for i in range(3):
            _put(s3, src, f"d/clean/{i}.dcm", make_instance(clean_study, uid()))
        for i in range(2):
            _put(s3, src, f"d/mixed/{i}.dcm", make_instance(mixed_study, uid()))
        _put(s3, src, "d/mixed/notes.txt", b"not dicom")
        payload = MigrationInput(source_s3_uri=f"s3://{src}/d/", datastore_id=datastore_id,
                                 work_s3_uri=f"s3://{work}/w/", max_files_per_batch=3,
                                 import_start_interval_seconds=0)
        wid, result = await migrate(client, worker, payload)
        rows = report_rows(s3, result)
        assert [rows[f"d/clean/{i}.dcm"]["state"] for i in range(3)] == ["imported"] * 3
        assert [rows[f"d/mixed/{i}.dcm"]["state"] for i in range(2)] == ["imported"] * 2
        staged = [o["Key"] for o in s3.list_objects_v2(Bucket=work, Prefix=f"w/{wid}/staging/").get("Contents", [])]
        assert sorted(k.split("/staging/")[1].split("/", 1)[1] for k in staged) == ["d/mixed/0.dcm", "d/mixed/1.dcm"]

    async def test_service_failures_keep_the_service_reason_and_stages_are_visible(
            self, client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str) -> None:
        """At `minimal`, a file missing a UID reaches the service, which fails it with its own reason."""
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        study, series = uid(), uid()
        _put(s3, src, "x/ok.dcm", make_instance(study, series))
        _put(s3, src, "x/noseries.dcm", make_instance(study, series, drop=("SeriesInstanceUID",)))
        payload = MigrationInput(source_s3_uri=f"s3://{src}/x/", datastore_id=datastore_id,
                                 work_s3_uri=f"s3://{work}/w/", validation_level=ValidationLevel.MINIMAL,
                                 import_start_interval_seconds=0)
        wid, result = await migrate(client, worker, payload)
        rows = report_rows(s3, result)
        assert rows["x/ok.dcm"]["state"] == FileState.IMPORTED
        failed = rows["x/noseries.dcm"]
        assert failed["state"] == FileState.FAILED
        assert failed["code"] == "ValidationException"
        assert "SeriesInstanceUID" in failed["reason"]

        batch = await client.get_workflow_handle(f"{wid}.batch-00000").query(ImportBatchWorkflow.progress)
        stages = [t.stage.value for t in batch.transitions]
        assert stages.index("job_completed") < stages.index("manifest_reviewed")
        assert stages[-1] == "done"

    async def test_non_primary_image_set_is_reported(self, client: Client, worker: Worker, buckets: dict[str, Any],
                                                     datastore_id: str) -> None:
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        study, series = uid(), uid()
        _put(s3, src, "np/a_original.dcm", make_instance(study, series, patient_id="SYNTH-A"))
        _put(s3, src, "np/b_conflict.dcm", make_instance(study, series, patient_id="SYNTH-B"))
        payload = MigrationInput(source_s3_uri=f"s3://{src}/np/", datastore_id=datastore_id,
                                 work_s3_uri=f"s3://{work}/w/", import_start_interval_seconds=0)
        _, result = await migrate(client, worker, payload)
        rows = report_rows(s3, result)
        assert rows["np/a_original.dcm"]["is_primary"] is True
        assert rows["np/b_conflict.dcm"]["is_primary"] is False
        assert rows["np/a_original.dcm"]["image_set_id"] != rows["np/b_conflict.dcm"]["image_set_id"]
        summary_bucket, summary_key = result.report_uri[5:].split("/", 1)
        summary = json.loads(s3.get_object(Bucket=summary_bucket, Key=summary_key)["Body"].read())
        non_primary = rows["np/b_conflict.dcm"]["image_set_id"]
        assert summary["non_primary_image_sets"] == [non_primary]

        # The batch handed the set to a ReconciliationWorkflow; an operator decides it with `himig approve`.
        from typer.testing import CliRunner

        from cli.app import app
        from contracts.reconciliation import reconciliation_workflow_id

        recon_id = reconciliation_workflow_id(datastore_id, non_primary)
        desc = await client.get_workflow_handle(recon_id).describe()
        assert desc.workflow_type == "ReconciliationWorkflow"
        env = {"HIMIG_TEMPORAL_ADDRESS": client.service_client.config.target_host}
        cli = CliRunner()
        bad = await asyncio.to_thread(cli.invoke, app, ["approve", recon_id, "--action", "explode"], env=env)
        assert bad.exit_code == 2 and "action" in bad.output
        # This host holds HIMIG_REVIEWER_ATTESTATION_KEY (the test installation's): the OS user decides.
        result = await asyncio.to_thread(cli.invoke, app, ["approve", recon_id, "--action", "keep", "--reason",
                                                           "verified with the PACS team"], env=env)
        assert result.exit_code == 0, result.output
        assert '"kept"' in result.output
        assert f'"decided_by": "{getpass.getuser()}"' in result.output


class TestFailedJobIsRetriedInHalves:
    async def _run(self, client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str,
                   emulator_url: str, fail_count: int) -> tuple[str, MigrationResult, dict[str, dict[str, Any]]]:
        from activities.importjob import job_name
        from contracts.batch import BatchInput
        from tests.conftest import emulator_admin

        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        for study in range(2):
            study_uid, series_uid = uid(), uid()
            for i in range(3):
                _put(s3, src, f"f/{study}/{i}.dcm", make_instance(study_uid, series_uid))
        wid = f"split-{uuid.uuid4().hex[:8]}"
        name = job_name(BatchInput(migration_id=wid, batch=0, source_s3_uri="s3://x-b/", work_s3_uri="s3://y-b/",
                                   datastore_id=datastore_id))
        # The whole batch's job fails; with fail_count 3 its two halves fail as well.
        emulator_admin(emulator_url, "faults", {"kind": "job_failed", "jobName": f"{name}*", "count": fail_count,
                                                "message": "Internal error (injected)"})
        result = await client.execute_workflow(
            MigrationWorkflow.run, MigrationInput(source_s3_uri=f"s3://{src}/f/", datastore_id=datastore_id,
                                                  work_s3_uri=f"s3://{work}/w/", import_start_interval_seconds=0),
            id=wid, task_queue=worker.task_queue, execution_timeout=timedelta(seconds=90))
        return wid, result, report_rows(s3, result)

    async def test_halves_import_after_a_failed_job(self, client: Client, worker: Worker, buckets: dict[str, Any],
                                                    datastore_id: str, emulator_url: str) -> None:
        wid, _, rows = await self._run(client, worker, buckets, datastore_id, emulator_url, 1)
        assert len(rows) == 6 and {r["state"] for r in rows.values()} == {"imported"}
        # Two new jobs, one per half (whole studies stay together), none of them the failed one.
        assert len({r["job_id"] for r in rows.values()}) == 2
        for study in range(2):
            assert len({rows[f"f/{study}/{i}.dcm"]["job_id"] for i in range(3)}) == 1
        batch = await client.get_workflow_handle(f"{wid}.batch-00000").query(ImportBatchWorkflow.progress)
        assert batch.failed_job is not None and batch.failed_job.status == "FAILED"
        assert [t.stage.value for t in batch.transitions].count("job_failed") == 1

    async def test_halves_that_fail_again_are_reported_failed_once(
            self, client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str, emulator_url: str) -> None:
        _, result, rows = await self._run(client, worker, buckets, datastore_id, emulator_url, 3)
        assert len(rows) == 6
        assert {r["state"] for r in rows.values()} == {"failed"}
        assert result.files_by_state[FileState.FAILED] == 6


class TestManualReviewGate:
    async def test_batch_waits_for_approval_after_its_manifest_is_reviewed(
            self, client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str) -> None:
        from typer.testing import CliRunner

        from cli.app import app
        from contracts.batch import BatchProgress, BatchStage

        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        _put(s3, src, "g/1.dcm", make_instance(uid(), uid()))
        wid = f"gate-{uuid.uuid4().hex[:8]}"
        handle = await client.start_workflow(
            MigrationWorkflow.run, MigrationInput(source_s3_uri=f"s3://{src}/g/", datastore_id=datastore_id,
                                                  work_s3_uri=f"s3://{work}/w/", manual_review=True,
                                                  import_start_interval_seconds=0),
            id=wid, task_queue=worker.task_queue, execution_timeout=timedelta(seconds=90))
        batch = client.get_workflow_handle(f"{wid}.batch-00000")

        async def awaiting_approval() -> BatchProgress:
            try:
                progress = await batch.query(ImportBatchWorkflow.progress)
            except Exception as err:  # the batch workflow may not exist yet
                raise AssertionError(f"batch workflow not queryable: {err}") from err
            assert progress.stage is BatchStage.AWAITING_APPROVAL
            return progress

        progress = await assert_eventually(awaiting_approval, timeout=15, interval=0.05)
        assert progress.counters_consistent is True and progress.files_by_state == {FileState.IMPORTED: 1}
        env = {"HIMIG_TEMPORAL_ADDRESS": client.service_client.config.target_host}
        cli = CliRunner()
        result = await asyncio.to_thread(cli.invoke, app, ["approve-manifest", f"{wid}.batch-00000", "--approve",
                                                           "--by", "tester", "--reason", "counts match"], env=env)
        assert result.exit_code == 0, result.output
        migration = await handle.result()
        assert migration.files_by_state[FileState.IMPORTED] == 1
        final = await batch.query(ImportBatchWorkflow.progress)
        assert [t.stage for t in final.transitions][-3:] == [BatchStage.AWAITING_APPROVAL, BatchStage.ROUTING,
                                                             BatchStage.DONE]
        # A second decision is refused: the batch no longer waits at the gate.
        again = await asyncio.to_thread(cli.invoke, app, ["approve-manifest", f"{wid}.batch-00000", "--hold"], env=env)
        assert again.exit_code == 1 and "not awaiting approval" in again.output


class TestSourceManifest:
    async def test_only_listed_objects_are_migrated(self, client: Client, worker: Worker, buckets: dict[str, Any],
                                                    datastore_id: str) -> None:
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        for i in range(3):
            _put(s3, src, f"m/{i}.dcm", make_instance(uid(), uid()))
        listed = [{"key": f"m/{i}.dcm", "size": 1, "etag": ""} for i in (0, 2, 2)]  # a repeat is harmless
        _put(s3, work, "manifests/one.ndjson", "\n".join(json.dumps(x) for x in listed).encode())
        payload = MigrationInput(source_s3_uri=f"s3://{src}/m/", source_manifest_uri=f"s3://{work}/manifests/one.ndjson",
                                 datastore_id=datastore_id, work_s3_uri=f"s3://{work}/w/", import_start_interval_seconds=0)
        _, result = await migrate(client, worker, payload)
        assert sorted(report_rows(s3, result)) == ["m/0.dcm", "m/2.dcm"]

    async def test_keys_outside_the_source_fail_the_migration_clearly(
            self, client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str) -> None:
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        _put(s3, work, "manifests/bad.ndjson", json.dumps({"key": "elsewhere/x.dcm", "size": 1}).encode())
        payload = MigrationInput(source_s3_uri=f"s3://{src}/m/", source_manifest_uri=f"s3://{work}/manifests/bad.ndjson",
                                 datastore_id=datastore_id, work_s3_uri=f"s3://{work}/w/")
        with pytest.raises(WorkflowFailureError) as info:
            await migrate(client, worker, payload)
        assert "outside source_s3_uri" in str(info.value.cause.cause)


class TestBadInput:
    async def test_invalid_json_input_fails_the_workflow_at_once(self, client: Client, worker: Worker) -> None:
        """Input as the `temporal` CLI would send it (plain JSON) with a bad field: fails, never retries forever."""
        handle = await client.start_workflow(
            "MigrationWorkflow", {"source_s3_uri": "not-a-uri", "datastore_id": "x", "work_s3_uri": "s3://w-b/"},
            id=f"bad-{uuid.uuid4().hex[:8]}", task_queue=worker.task_queue, execution_timeout=timedelta(seconds=60))
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
        text = str(info.value.cause)
        assert "source_s3_uri" in text and "datastore_id" in text

    @pytest.mark.parametrize("field,value,needle", [
        ("source_s3_uri", "s3://UPPER/x/", "source_s3_uri"),
        ("work_s3_uri", "http://x/", "work_s3_uri"),
        ("datastore_id", "short", "datastore_id"),
        ("max_files_per_batch", 5001, "max_files_per_batch"),
        ("validation_level", "lenient", "validation_level"),
        ("unknown_field", 1, "unknown_field"),
    ])
    def test_input_model_names_the_field(self, field: str, value: Any, needle: str) -> None:
        base: dict[str, Any] = {"source_s3_uri": "s3://src-b/in/", "datastore_id": "a" * 32,
                                "work_s3_uri": "s3://work-b/w/"}
        base[field] = value
        with pytest.raises(ValueError, match=needle):
            MigrationInput.model_validate(base)

    def test_work_prefix_may_not_overlap_source(self) -> None:
        with pytest.raises(ValueError, match="must not overlap"):
            MigrationInput(source_s3_uri="s3://same-b/dicom/", datastore_id="a" * 32, work_s3_uri="s3://same-b/dicom/work/")


class TestCliAgainstTemporal:
    """`himig start/status/report` against the real dev server and a real migration."""

    async def test_start_status_report_and_unknown_id(self, client: Client, worker: Worker, buckets: dict[str, Any],
                                                datastore_id: str, temporal_env: Any,
                                                monkeypatch: pytest.MonkeyPatch, moto_url: str) -> None:
        from typer.testing import CliRunner

        from cli.app import app

        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        _put(s3, src, "c/1.dcm", make_instance(uid(), uid()))
        _put(s3, src, "c/bad.txt", b"not dicom")
        monkeypatch.setenv("HIMIG_TEMPORAL_ADDRESS", temporal_env.client.service_client.config.target_host)
        monkeypatch.setenv("HIMIG_TASK_QUEUE", worker.task_queue)
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_url)
        cli = CliRunner()

        async def invoke(args: list[str]) -> Any:
            # The CLI runs its own event loop; the in-process worker needs this one to keep running.
            return await asyncio.to_thread(cli.invoke, app, args)

        wid = f"cli-{uuid.uuid4().hex[:8]}"
        result = await invoke(["start", "--source", f"s3://{src}/c/", "--datastore-id", datastore_id,
                                     "--work", f"s3://{work}/w/", "--import-start-interval", "0", "--id", wid,
                                     "--wait"])
        assert result.exit_code == 0, result.output
        assert wid in result.output
        result = await invoke(["start", "--source", f"s3://{src}/c/", "--datastore-id", datastore_id,
                                     "--work", f"s3://{work}/w/", "--id", wid])
        assert result.exit_code == 2 and "already exists" in " ".join(result.output.split())
        result = await invoke(["status", wid, "--json"])
        assert result.exit_code == 0, result.output
        assert '"phase": "completed"' in result.output
        result = await invoke(["report", wid, "--json"])
        assert result.exit_code == 0, result.output
        assert '"imported": 1' in result.output and '"rejected": 1' in result.output
        result = await invoke(["report", wid, "--files"])
        assert result.exit_code == 0 and result.output.count('"key"') == 2
        result = await invoke(["list", "--all"])
        assert result.exit_code == 0 and wid in result.output
        result = await invoke(["status", "no-such-migration"])
        assert result.exit_code == 1 and "no migration with id" in result.output


class TestOperatorControls:
    async def test_pause_holds_and_resume_finishes(self, client: Client, worker: Worker, buckets: dict[str, Any],
                                                   datastore_id: str) -> None:
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        for i in range(3):
            _put(s3, src, f"pr/{i}.dcm", make_instance(uid(), uid()))
        handle = await paused_start(client, worker, MigrationInput(
            source_s3_uri=f"s3://{src}/pr/", datastore_id=datastore_id, work_s3_uri=f"s3://{work}/w/",
            import_start_interval_seconds=0))
        progress = await wait_phase(handle, "parsing")
        # Not a wait for a condition: a paused workflow shows nothing to poll for, so this is a fixed span in which
        # a wrongly unpaused one would move on.
        await asyncio.sleep(1.0)
        progress = await handle.query(MigrationWorkflow.progress)
        assert progress.paused and progress.pages_done == 0 and progress.phase == "parsing"
        assert progress.operator_log[0].action == "pause" and progress.operator_log[0].by == "tester"
        await handle.signal(MigrationWorkflow.resume, OperatorCommand(reason="go"))
        result = await handle.result()
        assert result.files_by_state[FileState.IMPORTED] == 3

    async def test_cancel_drains_and_reports_every_file(self, client: Client, worker: Worker,
                                                        buckets: dict[str, Any], datastore_id: str) -> None:
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        for i in range(4):
            _put(s3, src, f"cx/{i}.dcm", make_instance(uid(), uid()))
        handle = await paused_start(client, worker, MigrationInput(
            source_s3_uri=f"s3://{src}/cx/", datastore_id=datastore_id, work_s3_uri=f"s3://{work}/w/",
            inventory_page_size=2, import_start_interval_seconds=0))
        await wait_phase(handle, "parsing")
        await handle.signal(MigrationWorkflow.cancel)  # a bare signal, as `temporal workflow signal` sends it
        result = await handle.result()
        rows = report_rows(s3, result)
        assert len(rows) == 4
        assert {r["code"] for r in rows.values()} == {"Cancelled"}
        assert result.files_by_state[FileState.FAILED] == 4
