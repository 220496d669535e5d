"""Internal state cannot be set from outside, inputs are strict, and a missing batch file fails at once.

Inputs here are what `temporal workflow start --input` or the Temporal UI send: plain JSON, by type name.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities.importjob import ImportActivities
from activities.review import FailedBatchActivities
from contracts.batch import BatchInput
from contracts.errors import ErrorType
from contracts.stages import FailedBatchInput
from tests.support.dicom import make_instance, uid


def _base(buckets: dict[str, Any], datastore_id: str) -> dict[str, Any]:
    return {"source_s3_uri": f"s3://{buckets['source']}/in/", "datastore_id": datastore_id,
            "work_s3_uri": f"s3://{buckets['work']}/w/"}


async def _fails(client: Client, worker: Worker, workflow: str, payload: dict[str, Any]) -> BaseException:
    handle = await client.start_workflow(workflow, payload, id=f"hostile-{uuid.uuid4().hex[:8]}",
                                         task_queue=worker.task_queue, execution_timeout=timedelta(seconds=60))
    with pytest.raises(WorkflowFailureError) as info:
        await handle.result()
    assert info.value.cause is not None
    return info.value.cause


class TestCarriedStateFromACaller:
    @pytest.mark.parametrize("continued", [
        {"phase": "reporting"},  # would report "success" over zero files
        {"phase": "importing", "batches_planned": 3},  # would import batches that were never planned
        {},
    ])
    async def test_a_migration_refuses_it_and_touches_nothing(
            self, client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str,
            continued: dict[str, Any]) -> None:
        s3 = buckets["s3"]
        for i in range(3):
            s3.put_object(Bucket=buckets["source"], Key=f"in/{i}.dcm", Body=make_instance(uid(), uid()))
        cause = await _fails(client, worker, "MigrationWorkflow", _base(buckets, datastore_id) | {"continued": continued})
        assert isinstance(cause, ApplicationError) and cause.type == ErrorType.CALLER_SET_INTERNAL_STATE
        assert cause.non_retryable and cause.message.startswith("continued: ")
        # Refused before any activity: nothing was written under the work prefix.
        assert s3.list_objects_v2(Bucket=buckets["work"]).get("KeyCount") == 0

    async def test_an_ingest_refuses_it(self, client: Client, worker: Worker, buckets: dict[str, Any],
                                        datastore_id: str) -> None:
        cause = await _fails(client, worker, "IngestWorkflow",
                             _base(buckets, datastore_id) | {"continued": {"flushes": 7, "buffer": []}})
        assert isinstance(cause, ApplicationError) and cause.type == ErrorType.CALLER_SET_INTERNAL_STATE

    async def test_a_reconciliation_refuses_it(self, client: Client, worker: Worker, datastore_id: str) -> None:
        carry = {"state": "escalated", "decision_deadline": "2026-01-01T00:00:00Z",
                 "conflict": {"datastore_id": datastore_id, "image_set_id": "b" * 32, "image_set_state": "ACTIVE",
                              "is_primary": False, "version": "1", "instances": 1}}
        cause = await _fails(client, worker, "ReconciliationWorkflow",
                             {"datastore_id": datastore_id, "image_set_id": "b" * 32, "continued": carry})
        assert isinstance(cause, ApplicationError) and cause.type == ErrorType.CALLER_SET_INTERNAL_STATE


class TestStrictInputs:
    @pytest.mark.parametrize("field,value", [
        ("max_files_per_batch", True), ("max_files_per_batch", 1.0), ("max_concurrent_jobs", "4"),
        ("manual_review", 1), ("import_start_interval_seconds", "NaN"),
    ])
    async def test_a_coercible_value_fails_the_start_naming_the_field(
            self, client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str, field: str,
            value: Any) -> None:
        cause = await _fails(client, worker, "MigrationWorkflow", _base(buckets, datastore_id) | {field: value})
        assert field in str(cause)
        assert buckets["s3"].list_objects_v2(Bucket=buckets["work"]).get("KeyCount") == 0


class TestMissingBatchFile:
    """A batch whose manifest or plan is not in the work prefix fails at once, naming the object."""

    def _batch(self, buckets: dict[str, Any], datastore_id: str) -> BatchInput:
        return BatchInput(migration_id=f"m-{uuid.uuid4().hex[:8]}", batch=2, datastore_id=datastore_id,
                          source_s3_uri=f"s3://{buckets['source']}/in/", work_s3_uri=f"s3://{buckets['work']}/w/")

    def test_start_import_job_is_not_retried(self, buckets: dict[str, Any], datastore_id: str) -> None:
        batch = self._batch(buckets, datastore_id)
        activities = ImportActivities(buckets["s3"], None, "arn:aws:iam::000000000000:role/r")
        with pytest.raises(ApplicationError) as info:
            ActivityEnvironment().run(activities.start_import_job, batch)
        assert info.value.type == ErrorType.MISSING_BATCH_PLAN and info.value.non_retryable
        assert f"batch 2: s3://{buckets['work']}/w/{batch.migration_id}/" in str(info.value)

    def test_recording_a_failed_batch_is_not_retried(self, buckets: dict[str, Any], datastore_id: str) -> None:
        batch = self._batch(buckets, datastore_id)
        activities = FailedBatchActivities(buckets["s3"])
        with pytest.raises(ApplicationError) as info:
            ActivityEnvironment().run(activities.record_failed_batch, FailedBatchInput(batch=batch, reason="x"))
        assert info.value.type == ErrorType.MISSING_BATCH_PLAN and info.value.non_retryable
