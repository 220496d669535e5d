"""`RollbackWorkflow` on the real stack: a rollback deletes exactly the image sets its migration created, after a
confirmation that names their count, never a set that existed before, changed after, or whose series' primary
set belongs to someone else; it is idempotent and recorded next to the migration's report."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowUpdateFailedError
from temporalio.worker import Worker

from contracts.migration import MigrationInput, MigrationResult
from contracts.rollback import (
    KeepReason,
    RollbackConfirmation,
    RollbackInput,
    RollbackPhase,
    rollback_workflow_id,
)
from tests.support.cli import invoke
from tests.support.dicom import make_instance, uid
from tests.support.eventually import assert_eventually
from tests.support.migrations import migrate, report_rows, report_summary
from tests.workflows.conftest import active_datastore
from workflows.rollback import RollbackWorkflow


def _put(s3: Any, bucket: str, key: str, body: bytes) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=body)


async def _migrate(client: Client, worker: Worker, s3: Any, src: str, work: str, prefix: str,
                   datastore_id: str, files: dict[str, bytes]) -> tuple[str, MigrationResult]:
    for name, body in files.items():
        _put(s3, src, f"{prefix}/{name}", body)
    return await migrate(client, worker, MigrationInput(
        source_s3_uri=f"s3://{src}/{prefix}/", datastore_id=datastore_id, work_s3_uri=f"s3://{work}/w/",
        import_start_interval_seconds=0), prefix="rb")


async def _start_rollback(client: Client, worker: Worker, migration_id: str, datastore_id: str, work: str,
                          **extra: Any) -> Any:
    handle = await client.start_workflow(
        RollbackWorkflow.run, RollbackInput(migration_id=migration_id, datastore_id=datastore_id,
                                            work_s3_uri=f"s3://{work}/w/", **extra),
        id=rollback_workflow_id(migration_id), task_queue=worker.task_queue,
        execution_timeout=timedelta(seconds=90))

    async def planned() -> Any:
        p = await handle.query(RollbackWorkflow.progress)
        assert p.phase is not RollbackPhase.PLANNING, p
        return p

    return handle, await assert_eventually(planned, timeout=30)


def _state(mi: Any, datastore_id: str, image_set_id: str) -> str:
    try:
        got = mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)
    except mi.exceptions.ResourceNotFoundException:
        return "GONE"
    if got["imageSetState"] == "LOCKED" and got.get("imageSetWorkflowStatus") == "DELETING":
        return "DELETING"  # DeleteImageSet answered; the set is on its way out
    return str(got["imageSetState"])


GONE = {"DELETING", "DELETED", "GONE"}


@pytest.fixture
def own_datastore(emulator_url: str) -> str:
    return active_datastore(emulator_url, f"rollback-{uuid.uuid4().hex[:8]}")


async def test_rollback_deletes_what_the_migration_created_after_the_named_count(
        client: Client, worker: Worker, buckets: dict[str, Any], own_datastore: str, medical_imaging: Any) -> None:
    s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
    files = {f"s{n}/{i}.dcm": make_instance(study, series) for n, (study, series) in
             enumerate([(uid(), uid()), (uid(), uid())]) for i in range(2)}
    mid, result = await _migrate(client, worker, s3, src, work, "created", own_datastore, files)
    sets = {r["image_set_id"] for r in report_rows(s3, result).values()}
    assert len(sets) == 2

    handle, planned = await _start_rollback(client, worker, mid, own_datastore, work)
    assert planned.phase is RollbackPhase.AWAITING_CONFIRMATION and planned.plan.to_delete == 2
    assert planned.plan.kept == {}
    # A confirmation naming another count is refused (and changes nothing); so is a hostile one.
    with pytest.raises(WorkflowUpdateFailedError) as wrong:
        await handle.execute_update(RollbackWorkflow.confirm, RollbackConfirmation(count=3, by="tester"))
    assert "count: the plan deletes 2 image sets, not 3" in str(wrong.value.cause)
    assert all(_state(medical_imaging, own_datastore, s) == "ACTIVE" for s in sets)

    await handle.execute_update(RollbackWorkflow.confirm, RollbackConfirmation(count=2, by="tester"))
    done = await handle.result()
    assert (done.phase, done.deleted, done.already_deleted, done.confirmed_by) == (RollbackPhase.DONE, 2, 0, "tester")
    assert {_state(medical_imaging, own_datastore, s) for s in sets} <= GONE
    # Recorded in the report.
    summary = report_summary(s3, result)
    assert summary["rollback"]["deleted"] == 2 and summary["rollback"]["confirmed_by"] == "tester"

    # Idempotent: rolling back again finds nothing left to delete.
    again, planned = await _start_rollback(client, worker, mid, own_datastore, work)
    assert planned.plan.to_delete == 0 and planned.plan.kept == {KeepReason.ALREADY_DELETED: 2}
    with pytest.raises(WorkflowUpdateFailedError):
        await again.execute_update(RollbackWorkflow.confirm, RollbackConfirmation(count=2, by="tester"))
    await again.execute_update(RollbackWorkflow.confirm, RollbackConfirmation(count=0, by="tester"))
    assert (await again.result()).deleted == 0


async def test_rollback_keeps_sets_it_did_not_create_or_whose_primary_predates_it(
        client: Client, worker: Worker, buckets: dict[str, Any], own_datastore: str, medical_imaging: Any) -> None:
    s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
    study, series = uid(), uid()
    # An earlier migration creates the primary set of a series.
    _, earlier = await _migrate(client, worker, s3, src, work, "earlier", own_datastore,
                                {"a/1.dcm": make_instance(study, series)})
    earlier_set = next(iter(report_rows(s3, earlier).values()))["image_set_id"]
    # The migration to roll back: one more instance of that series (added to the earlier set: version 2), one of
    # that series under another patient (a non-primary set whose primary predates it), and a new study.
    new_study, new_series = uid(), uid()
    mid, result = await _migrate(client, worker, s3, src, work, "later", own_datastore, {
        "b/1.dcm": make_instance(study, series),
        "b/2.dcm": make_instance(study, series, patient_id="SYNTH-OTHER", patient_name="OTHER^PATIENT"),
        "c/1.dcm": make_instance(new_study, new_series)})
    rows = report_rows(s3, result)
    assert rows["later/b/1.dcm"]["image_set_id"] == earlier_set
    non_primary = rows["later/b/2.dcm"]["image_set_id"]
    assert rows["later/b/2.dcm"]["is_primary"] is False
    created = rows["later/c/1.dcm"]["image_set_id"]

    handle, planned = await _start_rollback(client, worker, mid, own_datastore, work)
    assert planned.plan.to_delete == 1
    assert planned.plan.kept == {KeepReason.EXISTED_BEFORE: 1, KeepReason.PRIMARY_PREDATES: 1}
    await handle.execute_update(RollbackWorkflow.confirm, RollbackConfirmation(count=1, by="tester"))
    assert (await handle.result()).deleted == 1
    assert _state(medical_imaging, own_datastore, created) in GONE
    assert _state(medical_imaging, own_datastore, earlier_set) == "ACTIVE"
    assert _state(medical_imaging, own_datastore, non_primary) == "ACTIVE"


async def test_a_set_changed_after_the_migration_is_kept(
        client: Client, worker: Worker, buckets: dict[str, Any], own_datastore: str, medical_imaging: Any) -> None:
    s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
    study, series = uid(), uid()
    mid, result = await _migrate(client, worker, s3, src, work, "mine", own_datastore,
                                 {"m/1.dcm": make_instance(study, series)})
    mine = next(iter(report_rows(s3, result).values()))["image_set_id"]
    # Another migration adds to the set afterwards: it is no longer only this migration's.
    await _migrate(client, worker, s3, src, work, "theirs", own_datastore, {"t/1.dcm": make_instance(study, series)})
    handle, planned = await _start_rollback(client, worker, mid, own_datastore, work)
    assert planned.plan.to_delete == 0 and planned.plan.kept == {KeepReason.CHANGED_AFTER: 1}
    await handle.execute_update(RollbackWorkflow.confirm, RollbackConfirmation(count=0, by="tester"))
    await handle.result()
    assert _state(medical_imaging, own_datastore, mine) == "ACTIVE"


async def test_unconfirmed_rollback_expires_and_deletes_nothing(
        client: Client, worker: Worker, buckets: dict[str, Any], own_datastore: str, medical_imaging: Any) -> None:
    s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
    mid, result = await _migrate(client, worker, s3, src, work, "expire", own_datastore,
                                 {"e/1.dcm": make_instance(uid(), uid())})
    handle, _ = await _start_rollback(client, worker, mid, own_datastore, work, confirm_timeout_seconds=1)
    done = await handle.result()
    assert done.phase is RollbackPhase.EXPIRED and done.deleted == 0
    assert report_summary(s3, result)["rollback"]["phase"] == "expired"
    image_set = next(iter(report_rows(s3, result).values()))["image_set_id"]
    assert _state(medical_imaging, own_datastore, image_set) == "ACTIVE"


async def test_rollback_of_a_migration_into_another_datastore_or_without_report_is_refused(
        client: Client, worker: Worker, buckets: dict[str, Any], own_datastore: str, datastore_id: str) -> None:
    s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
    mid, _ = await _migrate(client, worker, s3, src, work, "other", own_datastore,
                            {"o/1.dcm": make_instance(uid(), uid())})
    for migration_id, datastore, expected in (
            (mid, datastore_id, f"imported into another data store, not {datastore_id}"),
            ("never-ran-" + uuid.uuid4().hex[:6], own_datastore, "has no report")):
        with pytest.raises(WorkflowFailureError) as failed:
            await client.execute_workflow(
                RollbackWorkflow.run, RollbackInput(migration_id=migration_id, datastore_id=datastore,
                                                    work_s3_uri=f"s3://{work}/w/"),
                id=f"rollback-refused-{uuid.uuid4().hex[:6]}", task_queue=worker.task_queue,
                execution_timeout=timedelta(seconds=60))
        assert expected in str(failed.value.cause.cause)


@pytest.mark.parametrize("fields, where", [
    ({"migration_id": "../x"}, "migration_id"),
    ({"datastore_id": "ABC"}, "datastore_id"),
    ({"work_s3_uri": "http://x/"}, "work_s3_uri"),
    ({"confirm_timeout_seconds": float("nan")}, "confirm_timeout_seconds"),
    ({"requested_by": "a b"}, "requested_by"),
    ({"unexpected": 1}, "unexpected"),
])
def test_rollback_input_is_strict(fields: dict[str, Any], where: str) -> None:
    from pydantic import ValidationError

    base = {"migration_id": "m-1", "datastore_id": "a" * 32, "work_s3_uri": "s3://bkt/w/"}
    with pytest.raises(ValidationError) as err:
        RollbackInput(**{**base, **fields})
    assert where in str(err.value)


@pytest.mark.parametrize("count", [True, 1.0, "1", -1])
def test_confirmation_count_is_a_plain_int(count: Any) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="count"):
        RollbackConfirmation(count=count, by="tester")


class TestRollbackCommand:
    """`himig rollback` end to end against the same worker: plan shown, count confirmed, refusals in one line."""

    async def test_plan_then_wrong_count_then_the_named_count(
            self, himig_cli: Any, client: Client, worker: Worker, buckets: dict[str, Any], own_datastore: str,
            medical_imaging: Any) -> None:
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        mid, result = await _migrate(client, worker, s3, src, work, "cli", own_datastore,
                                     {"x/1.dcm": make_instance(uid(), uid())})
        shown = await invoke(himig_cli, "rollback", mid)  # no terminal, no --confirm: the plan, and the rollback waits
        assert shown.exit_code == 0, shown.output
        assert "1 image set(s) to delete" in shown.flat and "--confirm 1" in shown.flat
        wrong = await invoke(himig_cli, "rollback", mid, "--confirm", "7")
        assert wrong.exit_code == 1 and "the plan deletes 1 image sets, not 7" in wrong.flat
        done = await invoke(himig_cli, "rollback", mid, "--confirm", "1", "--by", "ops")
        assert done.exit_code == 0 and "done: 1 deleted" in done.flat, done.output
        image_set = next(iter(report_rows(s3, result).values()))["image_set_id"]
        assert _state(medical_imaging, own_datastore, image_set) in GONE

    async def test_unknown_running_and_non_migration_ids_are_refused(
            self, himig_cli: Any, client: Client, worker: Worker, buckets: dict[str, Any], own_datastore: str) -> None:
        from tests.support.migrations import paused_start

        unknown = await invoke(himig_cli, "rollback", "no-such-migration")
        assert unknown.exit_code == 1 and "no migration with id 'no-such-migration'" in unknown.flat
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        _put(s3, src, "run/1.dcm", make_instance(uid(), uid()))
        handle = await paused_start(client, worker, MigrationInput(
            source_s3_uri=f"s3://{src}/run/", datastore_id=own_datastore, work_s3_uri=f"s3://{work}/w/",
            import_start_interval_seconds=0))
        try:
            running = await invoke(himig_cli, "rollback", handle.id)
            assert running.exit_code == 1 and "is still running" in running.flat, running.output
        finally:
            await handle.terminate("test over")
        mid, _ = await _migrate(client, worker, s3, src, work, "batchid", own_datastore,
                                {"y/1.dcm": make_instance(uid(), uid())})
        batch = await invoke(himig_cli, "rollback", f"{mid}.batch-00000")
        assert batch.exit_code == 1 and "is a ImportBatchWorkflow, not a migration" in batch.flat
