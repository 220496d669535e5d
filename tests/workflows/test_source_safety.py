"""Source objects rewritten mid-migration, and migrations into a data store that already holds the files.

End to end through the real Temporal dev server, moto S3 and the HealthImaging emulator.
"""

from __future__ import annotations

import io
from typing import Any

import pydicom
from pydicom.uid import ExplicitVRBigEndian
from temporalio.client import Client
from temporalio.worker import Worker

from activities.import_index import ImportIndex
from activities.importjob import job_name
from activities.plan import PlanActivities
from activities.plan_store import PlanStore
from activities.storage import put_ndjson
from contracts import layout
from contracts.batch import BatchInput, BatchResult
from contracts.common import FileState
from contracts.migration import MigrationInput, OperatorCommand
from contracts.records import ImportedInstance, InstanceRecord
from contracts.stages import PlanInput
from tests.conftest import emulator_admin
from tests.support.dicom import make_instance, uid
from tests.support.eventually import assert_eventually
from tests.support.migrations import migrate, paused_start, report_rows, report_summary, wait_phase
from workflows.batch import ImportBatchWorkflow
from workflows.migration import MigrationWorkflow


def big_endian(data: bytes, series_description: str | None = None) -> bytes:
    """The instance in ``data`` written in explicit VR big endian (pixel values unchanged)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    pixels = ds.pixel_array
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()
    if series_description is not None:
        ds.SeriesDescription = series_description
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True, little_endian=False, implicit_vr=False)
    return buf.getvalue()


class TestSourceChanged:
    async def test_a_rewritten_source_object_is_reported_source_changed(
            self, client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str) -> None:
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        study, series = uid(), uid()
        for i in range(2):
            s3.put_object(Bucket=src, Key=f"sc/{i}.dcm", Body=make_instance(study, series))
        handle = await paused_start(client, worker, MigrationInput(
            source_s3_uri=f"s3://{src}/sc/", datastore_id=datastore_id, work_s3_uri=f"s3://{work}/w/",
            import_start_interval_seconds=0))
        await wait_phase(handle, "parsing")  # the inventory (keys and ETags) is written; nothing parsed yet
        s3.put_object(Bucket=src, Key="sc/1.dcm", Body=make_instance(study, series, patient_id="SYNTH-LATE"))
        await handle.signal(MigrationWorkflow.resume, OperatorCommand(reason="go"))
        result = await handle.result()
        rows = report_rows(s3, result)
        assert rows["sc/0.dcm"]["state"] == FileState.IMPORTED
        changed = rows["sc/1.dcm"]
        assert (changed["state"], changed["code"]) == (FileState.FAILED, "SourceChanged")
        assert "rewritten after it was validated" in changed["reason"]
        assert "image_set_id" not in changed
        assert result.files_by_state[FileState.FAILED] == 1 and result.files_total == 2
        summary = report_summary(s3, result)
        assert summary["unaccounted"] == 0 and summary["accounted_twice"] == 0
        staged = [o["Key"] for o in s3.list_objects_v2(Bucket=work, Prefix="w/").get("Contents", [])
                  if "/staging/" in o["Key"]]
        assert [k.rsplit("/", 1)[1] for k in staged] == ["0.dcm"]  # the changed file never reached the job

    async def test_a_batch_whose_every_source_changed_starts_no_job(
            self, client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str) -> None:
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        study, series = uid(), uid()
        s3.put_object(Bucket=src, Key="all/0.dcm", Body=make_instance(study, series))
        handle = await paused_start(client, worker, MigrationInput(
            source_s3_uri=f"s3://{src}/all/", datastore_id=datastore_id, work_s3_uri=f"s3://{work}/w/",
            import_start_interval_seconds=0))
        await wait_phase(handle, "parsing")
        s3.put_object(Bucket=src, Key="all/0.dcm", Body=make_instance(study, series, patient_id="SYNTH-LATE"))
        await handle.signal(MigrationWorkflow.resume, OperatorCommand(reason="go"))
        result = await handle.result()
        row = report_rows(s3, result)["all/0.dcm"]
        assert (row["state"], row["code"]) == (FileState.FAILED, "SourceChanged")
        batch = await client.get_workflow_handle(f"{handle.id}.batch-00000").query(ImportBatchWorkflow.progress)
        assert batch.job_id == "" and batch.stage.value == "done"
        stages = [t.stage.value for t in batch.transitions]
        assert "awaiting_job" not in stages and "routing" not in stages
        assert report_summary(s3, result)["jobs"] == []


    async def test_a_split_batch_still_counts_its_changed_sources(
            self, client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str,
            emulator_url: str) -> None:
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        study, series = uid(), uid()
        for i in range(3):
            s3.put_object(Bucket=src, Key=f"split/{i}.dcm", Body=make_instance(study, series))
        handle = await paused_start(client, worker, MigrationInput(
            source_s3_uri=f"s3://{src}/split/", datastore_id=datastore_id, work_s3_uri=f"s3://{work}/w/",
            import_start_interval_seconds=0))
        # The whole batch's job FAILS once (its halves, named ...-p1 / -p2, do not match): the batch is split.
        whole = job_name(BatchInput(migration_id=handle.id, batch=0, source_s3_uri="s3://b/", work_s3_uri="s3://w/",
                                    datastore_id=datastore_id))
        emulator_admin(emulator_url, "faults", {"kind": "job_failed", "jobName": whole, "count": 1})
        await wait_phase(handle, "parsing")
        s3.put_object(Bucket=src, Key="split/2.dcm", Body=make_instance(study, series, patient_id="SYNTH-LATE"))
        await handle.signal(MigrationWorkflow.resume, OperatorCommand(reason="go"))
        result = await handle.result()
        batch = await client.get_workflow_handle(f"{handle.id}.batch-00000", result_type=BatchResult).result()
        assert batch.failed_job is not None and batch.failed_job.status == "FAILED"
        counted = {state: n for state, n in batch.files_by_state.items() if n}
        assert counted == {FileState.IMPORTED: 2, FileState.FAILED: 1}
        assert result.files_by_state[FileState.FAILED] == 1 and report_summary(s3, result)["unaccounted"] == 0

class TestAcrossMigrations:
    async def test_a_second_migration_skips_what_the_first_imported(
            self, client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str,
            medical_imaging: Any) -> None:
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        study = uid()
        series = [uid(), uid()]
        for i in range(4):
            s3.put_object(Bucket=src, Key=f"again/{i}.dcm", Body=make_instance(study, series[i % 2]))
        payload = MigrationInput(source_s3_uri=f"s3://{src}/again/", datastore_id=datastore_id,
                                 work_s3_uri=f"s3://{work}/w/", import_start_interval_seconds=0)
        first_id, first = await migrate(client, worker, payload)
        assert first.files_by_state[FileState.IMPORTED] == 4
        first_rows = report_rows(s3, first)

        second_id, second = await migrate(client, worker, payload)
        rows = report_rows(s3, second)
        assert {r["state"] for r in rows.values()} == {FileState.SKIPPED_DUPLICATE}
        for key, row in rows.items():
            assert row["code"] == "already_imported" and row["duplicate_of"] == first_id
            assert row["image_set_id"] == first_rows[key]["image_set_id"] and first_id in row["reason"]
        summary = report_summary(s3, second)
        assert summary["jobs"] == [] and summary["already_imported"] == 4 and summary["image_sets"] == 0
        progress = await client.get_workflow_handle(second_id).query(MigrationWorkflow.progress)
        assert progress.batches_planned == 0 and progress.duplicates == 4

        # An image set deleted since (e.g. discarded in reconciliation) no longer counts: its files import again.
        gone = first_rows["again/0.dcm"]["image_set_id"]
        medical_imaging.delete_image_set(datastoreId=datastore_id, imageSetId=gone)

        async def deleted() -> None:
            try:
                state = medical_imaging.get_image_set(datastoreId=datastore_id, imageSetId=gone)["imageSetState"]
            except medical_imaging.exceptions.ResourceNotFoundException:
                return
            assert state == "DELETED", f"image set {gone} still {state}"

        await assert_eventually(deleted, timeout=60, interval=0.05)
        _, third = await migrate(client, worker, payload)
        rows = report_rows(s3, third)
        again = {k for k, r in rows.items() if r["state"] == FileState.IMPORTED}
        assert again == {k for k, r in first_rows.items() if r["image_set_id"] == gone}
        assert all(rows[k]["code"] == "already_imported" for k in set(rows) - again)

    async def test_a_re_run_under_another_work_prefix_imports_nothing_again(
            self, client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str) -> None:
        """The import index belongs to the data store: a second migration of the same source, keeping its work
        somewhere else (and even under the same migration id), finds what the first imported."""
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        study, series = uid(), uid()
        for i in range(3):
            s3.put_object(Bucket=src, Key=f"moved/{i}.dcm", Body=make_instance(study, series))
        first_payload = MigrationInput(source_s3_uri=f"s3://{src}/moved/", datastore_id=datastore_id,
                                       work_s3_uri=f"s3://{work}/first/", import_start_interval_seconds=0)
        first_id, first = await migrate(client, worker, first_payload)
        assert first.files_by_state[FileState.IMPORTED] == 3
        for work_prefix in ("second/", "first/deeper/"):
            payload = first_payload.model_copy(update={"work_s3_uri": f"s3://{work}/{work_prefix}"})
            _, again = await migrate(client, worker, payload)
            assert {state: n for state, n in again.files_by_state.items() if n} == {FileState.SKIPPED_DUPLICATE: 3}
            assert {r["duplicate_of"] for r in report_rows(s3, again).values()} == {first_id}
        # The same workflow id under another work prefix is another migration, not a re-run of the first.
        await client.get_workflow_handle(first_id).describe()
        same_id = await client.execute_workflow(
            MigrationWorkflow.run, first_payload.model_copy(update={"work_s3_uri": f"s3://{work}/third/"}),
            id=first_id, task_queue=worker.task_queue)
        assert {state: n for state, n in same_id.files_by_state.items() if n} == {FileState.SKIPPED_DUPLICATE: 3}

    async def test_throttled_image_set_checks_are_retried_inside_planning(
            self, client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str,
            emulator_url: str) -> None:
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        study, series = uid(), uid()
        for i in range(2):
            s3.put_object(Bucket=src, Key=f"thr/{i}.dcm", Body=make_instance(study, series))
        payload = MigrationInput(source_s3_uri=f"s3://{src}/thr/", datastore_id=datastore_id,
                                 work_s3_uri=f"s3://{work}/w/", import_start_interval_seconds=0)
        _, first = await migrate(client, worker, payload)
        image_set = next(iter(report_rows(s3, first).values()))["image_set_id"]
        # The second migration's planning checks that image set with GetImageSet: throttled more often than
        # botocore's own retries (3 attempts) absorb.
        emulator_admin(emulator_url, "faults", {"kind": "throttle", "operation": "GetImageSet",
                                                "imageSetId": image_set, "count": 5})
        second_id, second = await migrate(client, worker, payload)
        assert {state for state, n in second.files_by_state.items() if n} == {FileState.SKIPPED_DUPLICATE}
        # Waited out inside the activity: planning did not restart (and re-read the whole index) for it.
        history = await client.get_workflow_handle(second_id).fetch_history()
        scheduled = {e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
                     for e in history.events if e.HasField("activity_task_scheduled_event_attributes")}
        attempts = [e.activity_task_started_event_attributes.attempt for e in history.events
                    if e.HasField("activity_task_started_event_attributes")
                    and scheduled[e.activity_task_started_event_attributes.scheduled_event_id] == "plan_batches"]
        assert attempts == [1]

    async def test_other_content_under_an_imported_uid_is_rejected(
            self, client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str) -> None:
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        study, series, sop = uid(), uid(), uid()
        s3.put_object(Bucket=src, Key="v1/x.dcm", Body=make_instance(study, series, sop=sop))
        first_id, _ = await migrate(client, worker, MigrationInput(
            source_s3_uri=f"s3://{src}/v1/", datastore_id=datastore_id, work_s3_uri=f"s3://{work}/w/",
            import_start_interval_seconds=0))
        s3.put_object(Bucket=src, Key="v2/x.dcm", Body=make_instance(study, series, sop=sop, patient_name="SYNTH^FIXED"))
        _, result = await migrate(client, worker, MigrationInput(
            source_s3_uri=f"s3://{src}/v2/", datastore_id=datastore_id, work_s3_uri=f"s3://{work}/w/",
            import_start_interval_seconds=0))
        row = report_rows(s3, result)["v2/x.dcm"]
        assert (row["state"], row["code"], row["duplicate_of"]) == (
            FileState.REJECTED, "conflicting_already_imported", first_id)
        assert "SYNTH" not in row["reason"]
        # compared with the imported file, read where the index line (written by review) says
        assert row["differing_attributes"] == ["PatientName"] and "differs in PatientName" in row["reason"]

    async def test_the_same_instance_in_another_encoding_is_compared_with_the_imported_file(
            self, client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str) -> None:
        """A later migration's copy in big endian is the instance an earlier one imported; a copy that really
        differs names the attribute; once the imported file is rewritten, nothing is proven the same."""
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        study, series, sop = uid(), uid(), uid()
        original = make_instance(study, series, sop=sop)
        changed = make_instance(study, series, sop=sop)
        s3.put_object(Bucket=src, Key="e1/x.dcm", Body=original)

        async def run(prefix: str) -> tuple[str, dict[str, Any]]:
            wid, result = await migrate(client, worker, MigrationInput(
                source_s3_uri=f"s3://{src}/{prefix}/", datastore_id=datastore_id, work_s3_uri=f"s3://{work}/w/",
                import_start_interval_seconds=0))
            return wid, report_rows(s3, result)[f"{prefix}/x.dcm"]

        first_id, row = await run("e1")
        assert row["state"] == FileState.IMPORTED
        s3.put_object(Bucket=src, Key="e2/x.dcm", Body=big_endian(original))
        _, row = await run("e2")
        assert (row["state"], row["code"], row["duplicate_of"]) == (FileState.SKIPPED_DUPLICATE, "already_imported",
                                                                     first_id)
        assert "as the same instance in another encoding (transfer syntax" in row["reason"]
        s3.put_object(Bucket=src, Key="e3/x.dcm", Body=big_endian(changed, series_description="OTHER TEXT"))
        _, row = await run("e3")
        assert (row["state"], row["code"]) == (FileState.REJECTED, "conflicting_already_imported")
        assert row["differing_attributes"] == ["SeriesDescription"] and "OTHER TEXT" not in row["reason"]
        s3.put_object(Bucket=src, Key="e1/x.dcm", Body=original + b"\0" * 2)  # the imported file, rewritten
        s3.put_object(Bucket=src, Key="e4/x.dcm", Body=big_endian(original))
        _, row = await run("e4")
        assert (row["state"], row["code"]) == (FileState.REJECTED, "conflicting_already_imported")
        assert "not proven the same: a file changed or disappeared" in row["reason"]

    async def test_non_primary_is_predicted_per_file_and_confirmed(
            self, client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str) -> None:
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        study, series = uid(), uid()
        s3.put_object(Bucket=src, Key="p1/a.dcm", Body=make_instance(study, series, patient_id="SYNTH-P1"))
        await migrate(client, worker, MigrationInput(
            source_s3_uri=f"s3://{src}/p1/", datastore_id=datastore_id, work_s3_uri=f"s3://{work}/w/",
            import_start_interval_seconds=0))
        # The same series arrives later under another patient: the data store's import index predicts it.
        s3.put_object(Bucket=src, Key="p2/b.dcm", Body=make_instance(study, series, patient_id="SYNTH-P2"))
        s3.put_object(Bucket=src, Key="p2/c.dcm", Body=make_instance(uid(), uid(), patient_id="SYNTH-P3"))
        wid, result = await migrate(client, worker, MigrationInput(
            source_s3_uri=f"s3://{src}/p2/", datastore_id=datastore_id, work_s3_uri=f"s3://{work}/w/",
            import_start_interval_seconds=0))
        rows = report_rows(s3, result)
        b, c = rows["p2/b.dcm"], rows["p2/c.dcm"]
        assert b["predicted_non_primary"] is True and "already holds this series" in b["prediction_reason"]
        assert b["state"] == FileState.IMPORTED and b["is_primary"] is False  # the prediction came true
        assert "predicted_non_primary" not in c and c["is_primary"] is True
        summary = report_summary(s3, result)
        assert (summary["predicted_non_primary"], summary["predicted_non_primary_confirmed"],
                summary["non_primary_not_predicted"]) == (1, 1, 0)
        progress = await client.get_workflow_handle(wid).query(MigrationWorkflow.progress)
        assert progress.predicted_non_primary == 1 and progress.non_primary_image_sets == 1


def read_index(activities: PlanActivities, plan_input: PlanInput, instances: list[InstanceRecord],
               ) -> tuple[set[str], set[tuple[str, str]]]:
    """Planning's reading of the import index: the instances and the series it holds of ``instances``."""
    with PlanStore() as store:
        store.add_records(instances)
        store.finish_loading()
        activities._read_index(plan_input, store)
        return set(store.index_hits()), set(store.held_series_keys())


class TestImportIndex:
    """Planning's reading of the data store's import index, against moto and the emulator (activity level)."""

    def _index(self, s3: Any, work: str, datastore_id: str, rows: list[ImportedInstance]) -> None:
        put_ndjson(s3, layout.imported_index(work, datastore_id, "mig-earlier", 0), rows)

    def test_entries_whose_image_set_is_gone_are_ignored_and_throttling_is_retried(
            self, buckets: dict[str, Any], datastore_id: str, medical_imaging: Any, emulator_url: str) -> None:
        s3, work = buckets["s3"], f"s3://{buckets['work']}/w/"
        inst = InstanceRecord(key="k.dcm", size=1, etag="e", sop_instance_uid="1.2.3", study_instance_uid="1.2",
                              series_instance_uid="1.2.4", transfer_syntax_uid="1.2.840.10008.1.2.1",
                              sop_class_uid="1.2.840.10008.5.1.4.1.1.2", patient_fingerprint="p",
                              study_fingerprint="s", series_fingerprint="se", content_id="1:e:h")
        self._index(s3, work, datastore_id, [ImportedInstance(
            sop_instance_uid="1.2.3", content_id="1:e:h", image_set_id="0" * 32, is_primary=True,
            study_instance_uid="1.2", series_instance_uid="1.2.4", attributes_fingerprint="p/s/se",
            migration_id="mig-earlier", batch=0)])
        plan_input = PlanInput(migration_id="mig-now", source_s3_uri="s3://src/", work_s3_uri=work, pages=0,
                               max_files_per_batch=10, max_bytes_per_batch=10**6, datastore_id=datastore_id)
        activities = PlanActivities(s3, medical_imaging)
        # Throttled more often than the client's own retry absorbs: waited out inside the activity, which then
        # learns that the image set does not exist.
        emulator_admin(emulator_url, "faults", {"kind": "throttle", "operation": "GetImageSet", "count": 3})
        hits, series = read_index(activities, plan_input, [inst])
        assert all(f["remaining"] == 0 for f in emulator_admin(emulator_url, "faults")["faults"]
                   if f.get("operation") == "GetImageSet")
        assert hits == set() and series == set()
        # Without the existence check (no HealthImaging client) the entry would have counted.
        assert read_index(PlanActivities(s3), plan_input, [inst])[0] == {"1.2.3"}
        # The own migration's index is never "earlier".
        own = plan_input.model_copy(update={"migration_id": "mig-earlier"})
        assert read_index(PlanActivities(s3), own, [inst])[0] == set()

    def test_an_index_written_under_the_work_prefix_is_read_and_moved_into_place(
            self, buckets: dict[str, Any], datastore_id: str) -> None:
        """Indexes from before the move (``<work>/_datastores/<ds>/imported/``) still count, and planning copies
        them into the data store's index once, so a later run under another work prefix finds them too."""
        s3, work = buckets["s3"], f"s3://{buckets['work']}/w/"
        row = ImportedInstance(sop_instance_uid="1.2.9", content_id="1:e:h", image_set_id="0" * 32, is_primary=True,
                               study_instance_uid="1.2", series_instance_uid="1.2.4", attributes_fingerprint="p/s/se",
                               migration_id="mig-old", batch=0)
        legacy = layout.legacy_imported_index_prefix(work, datastore_id).join("mig-old", "batch-00000.ndjson")
        put_ndjson(s3, legacy, [row])
        inst = InstanceRecord(key="k.dcm", size=1, etag="e", sop_instance_uid="1.2.9", study_instance_uid="1.2",
                              series_instance_uid="1.2.4", transfer_syntax_uid="1.2.840.10008.1.2.1",
                              sop_class_uid="1.2.840.10008.5.1.4.1.1.2", patient_fingerprint="p",
                              study_fingerprint="s", series_fingerprint="se", content_id="1:e:h")
        plan_input = PlanInput(migration_id="mig-now", source_s3_uri="s3://src/", work_s3_uri=work, pages=0,
                               max_files_per_batch=10, max_bytes_per_batch=10**6, datastore_id=datastore_id)
        assert read_index(PlanActivities(s3), plan_input, [inst])[0] == {"1.2.9"}
        moved = layout.imported_index(work, datastore_id, "mig-old", 0)
        assert s3.get_object(Bucket=moved.bucket, Key=moved.key)["Body"].read() == \
            s3.get_object(Bucket=legacy.bucket, Key=legacy.key)["Body"].read()
        # Once: a second planning copies nothing, and reads the row once.
        index = ImportIndex(s3)
        assert index.adopt_legacy(work, datastore_id) == 0
        elsewhere = plan_input.model_copy(update={"work_s3_uri": f"s3://{buckets['work']}/other/"})
        assert read_index(PlanActivities(s3), elsewhere, [inst])[0] == {"1.2.9"}
        # The old migration re-run under its old work prefix does not count its own rows as earlier.
        assert read_index(PlanActivities(s3), plan_input.model_copy(update={"migration_id": "mig-old"}),
                          [inst])[0] == set()
        # A batch reviewed before the move is still read back where its review wrote it (FHIR routing).
        batch = BatchInput(migration_id="mig-old", batch=0, source_s3_uri="s3://src/", work_s3_uri=work,
                           datastore_id=datastore_id)
        s3.delete_object(Bucket=moved.bucket, Key=moved.key)
        assert index.read_batch(batch) == [row]
