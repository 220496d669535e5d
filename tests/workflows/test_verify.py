"""`VerifyWorkflow` / `himig verify` on the real stack: a finished migration checks clean; deleted sets, removed
instances and changed attributes are found and named (attribute names only); the default check touches no image
set (its storage tier and lastAccessedAt are unchanged), the deep one touches each once; a schedule runs it."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.worker import Worker

from contracts.migration import MigrationInput, MigrationResult
from contracts.verify import DifferenceKind, VerifyInput, VerifyResult, verify_workflow_id
from tests.support.cli import invoke
from tests.support.eventually import assert_eventually
from tests.support.migrations import migrate_small_source, report_rows
from tests.workflows.conftest import active_datastore
from workflows.verify import VerifyWorkflow


@pytest.fixture
def own_datastore(emulator_url: str) -> str:
    return active_datastore(emulator_url, f"verify-{uuid.uuid4().hex[:8]}")


async def _migrated(client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str,
                    studies: int = 2, per_series: int = 3) -> tuple[str, MigrationResult, MigrationInput]:
    mid, _, result, payload = await migrate_small_source(client, worker, buckets, datastore_id, studies, per_series)
    return mid, result, payload


def _input(mid: str, payload: MigrationInput, **extra: Any) -> VerifyInput:
    return VerifyInput(migration_id=mid, datastore_id=payload.datastore_id, work_s3_uri=payload.work_s3_uri,
                       source_s3_uri=payload.source_s3_uri, **extra)


async def _verify(client: Client, worker: Worker, payload: VerifyInput) -> VerifyResult:
    return await client.execute_workflow(VerifyWorkflow.run, payload, id=f"verify-t-{uuid.uuid4().hex[:8]}",
                                         task_queue=worker.task_queue, execution_timeout=timedelta(seconds=90))


def _access(mi: Any, ds: str, image_set: str) -> tuple[str, Any]:
    got = mi.get_image_set(datastoreId=ds, imageSetId=image_set)
    return got["storageTier"], got["lastAccessedAt"]


async def test_clean_migration_and_what_each_check_costs(
        client: Client, worker: Worker, buckets: dict[str, Any], own_datastore: str, medical_imaging: Any) -> None:
    mid, result, payload = await _migrated(client, worker, buckets, own_datastore)
    sets = sorted({r["image_set_id"] for r in report_rows(buckets["s3"], result).values()})
    before = {s: _access(medical_imaging, own_datastore, s) for s in sets}

    default = await _verify(client, worker, _input(mid, payload))
    assert default.clean and (default.instances_expected, default.instances_verified) == (6, 6)
    assert default.touches == 0 and default.touches_for_deep == 2
    assert set(default.requests) == {"GetImageSet", "SearchImageSets"}
    assert {s: _access(medical_imaging, own_datastore, s) for s in sets} == before  # nothing touched
    # The latest outcome is where the report page reads it.
    from contracts import layout
    from contracts.report import VerifyResult as ReportVerify

    shown = layout.report_verify(payload.work_s3_uri, mid)
    page = ReportVerify.model_validate_json(buckets["s3"].get_object(Bucket=shown.bucket, Key=shown.key)["Body"].read())
    assert page.passed and page.counts["instances_verified"] == 6

    deep = await _verify(client, worker, _input(mid, payload, deep=True, attributes=["Modality", "StudyDate"]))
    assert deep.clean and deep.instances_verified == 6 and deep.touches == 2
    assert deep.requests["GetImageSetMetadata"] == 2
    after = {s: _access(medical_imaging, own_datastore, s) for s in sets}
    assert all(after[s][1] > before[s][1] for s in sets)  # each set touched by the deep check


async def test_deleted_set_removed_instance_and_changed_attribute_are_found(
        client: Client, worker: Worker, buckets: dict[str, Any], own_datastore: str, medical_imaging: Any) -> None:
    s3 = buckets["s3"]
    mid, result, payload = await _migrated(client, worker, buckets, own_datastore)
    rows = report_rows(s3, result)
    by_set: dict[str, list[str]] = {}
    for key, row in sorted(rows.items()):
        by_set.setdefault(row["image_set_id"], []).append(key)
    gone_set, changed_set = sorted(by_set)
    medical_imaging.delete_image_set(datastoreId=own_datastore, imageSetId=gone_set)
    # On the other set: a new StudyDescription, and one SOP instance removed.
    doc = json.loads(__import__("gzip").decompress(medical_imaging.get_image_set_metadata(
        datastoreId=own_datastore, imageSetId=changed_set)["imageSetMetadataBlob"].read()))
    series_uid, series = next(iter(doc["Study"]["Series"].items()))
    removed_sop = sorted(series["Instances"])[0]

    def update(updatable: dict[str, Any] | None, removable: dict[str, Any] | None) -> None:
        version = medical_imaging.get_image_set(datastoreId=own_datastore, imageSetId=changed_set)["versionId"]
        dicom: dict[str, Any] = {}
        if updatable:
            dicom["updatableAttributes"] = json.dumps(updatable).encode()
        if removable:
            dicom["removableAttributes"] = json.dumps(removable).encode()
        medical_imaging.update_image_set_metadata(
            datastoreId=own_datastore, imageSetId=changed_set, latestVersionId=version,
            updateImageSetMetadataUpdates={"DICOMUpdates": dicom})

        async def settled() -> None:
            got = medical_imaging.get_image_set(datastoreId=own_datastore, imageSetId=changed_set)
            assert got["imageSetState"] == "ACTIVE", got["imageSetState"]

        return settled

    await assert_eventually(update({"SchemaVersion": 1.1, "Study": {"DICOM": {"StudyDescription": "CHANGED"}}}, None),
                            timeout=10)
    await assert_eventually(update(None, {"SchemaVersion": 1.1, "Study": {"Series": {series_uid: {"Instances": {
        removed_sop: {}}}}}}), timeout=10)

    default = await _verify(client, worker, _input(mid, payload))
    assert default.differences == {DifferenceKind.IMAGE_SET_GONE: 3, DifferenceKind.MISSING: 1}
    assert default.instances_verified == 2 and default.touches == 0

    deep = await _verify(client, worker, _input(mid, payload, deep=True,
                                                attributes=["StudyDescription", "Modality"]))
    assert deep.differences == {DifferenceKind.IMAGE_SET_GONE: 3, DifferenceKind.MISSING: 1,
                                DifferenceKind.METADATA_DIFFERS: 2}
    lines = [json.loads(x) for x in s3.get_object(Bucket=buckets["work"], Key=deep.differences_uri.split("/", 3)[3])[
        "Body"].read().splitlines()]
    differing = [x for x in lines if x["kind"] == "metadata_differs"]
    assert all(x["attributes"] == ["StudyDescription"] for x in differing)
    assert "CHANGED" not in json.dumps(lines)  # names, never values
    assert {x["key"] for x in differing} < set(by_set[changed_set])
    gone = next(x for x in lines if x["kind"] == "image_set_gone")
    assert sorted(gone["keys"]) == by_set[gone_set]


async def test_verify_refuses_unknown_attributes_and_unfinished_migrations(
        client: Client, worker: Worker, buckets: dict[str, Any], own_datastore: str) -> None:
    mid, _, payload = await _migrated(client, worker, buckets, own_datastore, studies=1, per_series=1)
    with pytest.raises(WorkflowFailureError) as failed:
        await _verify(client, worker, _input(mid, payload, deep=True, attributes=["NotAKeyword"]))
    assert "attributes: not DICOM keywords: NotAKeyword" in str(failed.value.cause.cause)
    with pytest.raises(WorkflowFailureError) as failed:
        await _verify(client, worker, _input("never-ran-x", payload))
    assert "has no report" in str(failed.value.cause.cause)


@pytest.mark.parametrize("fields, where", [
    ({"attributes": ["studydate"]}, "attributes"),
    ({"attributes": ["A"] * 33}, "attributes"),
    ({"deep": "yes"}, "deep"),
    ({"source_s3_uri": "file:///etc"}, "source_s3_uri"),
    ({"datastore_id": "x"}, "datastore_id"),
])
def test_verify_input_is_strict(fields: dict[str, Any], where: str) -> None:
    from pydantic import ValidationError

    base = {"migration_id": "m-1", "datastore_id": "a" * 32, "work_s3_uri": "s3://bkt/w/", "source_s3_uri": "s3://bkt/s/"}
    with pytest.raises(ValidationError) as err:
        VerifyInput(**{**base, **fields})
    assert where in str(err.value)


class TestVerifyCommand:
    async def test_once_then_on_a_schedule(self, himig_cli: Any, client: Client, worker: Worker,
                                           buckets: dict[str, Any], own_datastore: str) -> None:
        mid, _, _ = await _migrated(client, worker, buckets, own_datastore, studies=1, per_series=2)
        once = await invoke(himig_cli, "verify", mid)
        assert once.exit_code == 0 and "2 of 2 instances as reported" in once.flat and "no differences" in once.flat
        assert "touches made 0; a deep check would touch 1 image set(s)" in once.flat
        bad = await invoke(himig_cli, "verify", mid, "--attribute", "Modality")
        assert bad.exit_code == 2 and "--attribute needs --deep" in bad.flat
        for wrong in ("1s", "often", "2m"):
            refused = await invoke(himig_cli, "verify", mid, "--every", wrong)
            assert refused.exit_code == 2 and "--every" in refused.flat, refused.flat

        scheduled = await invoke(himig_cli, "verify", mid, "--every", "6h")
        assert scheduled.exit_code == 0 and f"schedule {verify_workflow_id(mid)}" in scheduled.flat
        schedule = client.get_schedule_handle(verify_workflow_id(mid))
        try:
            await schedule.trigger()

            async def ran() -> VerifyResult:
                desc = await schedule.describe()
                assert desc.info.recent_actions, "no run yet"
                action = desc.info.recent_actions[-1].action
                handle = client.get_workflow_handle_for(VerifyWorkflow.run, action.workflow_id,
                                                        run_id=action.first_execution_run_id)
                return await handle.result()

            result = await assert_eventually(ran, timeout=60)
            assert result.clean and result.published
        finally:
            stopped = await invoke(himig_cli, "verify", mid, "--every", "off")
        assert stopped.exit_code == 0

    async def test_unknown_and_running_ids(self, himig_cli: Any) -> None:
        unknown = await invoke(himig_cli, "verify", "nope-" + uuid.uuid4().hex[:6])
        assert unknown.exit_code == 1 and "no migration with id" in unknown.flat
