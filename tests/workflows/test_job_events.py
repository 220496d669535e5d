"""Import-job events wake waiting batches early: emulator → EventBridge (moto) → rule → SQS → `JobEventListener`
→ signal `job_event` → the batch cancels its poll's back-off and polls GetDICOMImportJob at once.

Real Temporal dev server, moto, and an emulator whose jobs wait for the test (manual job clock). The batch's
first poll finds its job SUBMITTED and would poll again only after 120 s (`held_settings`); the assertions are on
the order of the batch's history events, never on durations.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import uuid
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.worker import Replayer, Worker

from contracts import search
from contracts.batch import BatchStage
from contracts.common import FileState
from contracts.jobevents import JobEvent, MalformedJobEvent, batch_of, parse_job_event
from contracts.migration import MigrationInput, batch_workflow_id
from tests.conftest import emulator_admin
from tests.support.dicom import make_instance, uid
from tests.support.eventually import wait_until_async
from tests.support.installation import converter, plain_history_json
from tests.support.listeners import running
from worker.jobevents import JobEventListener, configure_job_events_rule
from worker.registry import WORKFLOWS
from worker.settings import JobEventSettings
from worker.sqs_poller import in_daemon_thread
from workflows.batch import ImportBatchWorkflow
from workflows.migration import MigrationWorkflow

WAIT_LIMIT = 60.0  # seconds; every wait here is bounded, and far below the 120 s poll back-off


def running_listener(client: Client, sqs: Any, queue_url: str) -> AbstractAsyncContextManager[JobEventListener]:
    return running(JobEventListener(client, sqs, JobEventSettings(queue_url=queue_url, wait_seconds=1)))


def _job_event_body(job_id: str, status: str, output: str, datastore_id: str = "a" * 32,
                    detail_type: str = "Import Job Completed") -> str:
    return json.dumps({"version": "0", "id": str(uuid.uuid4()), "detail-type": detail_type,
                       "source": "aws.medical-imaging", "time": "2026-01-01T00:00:00Z",
                       "detail": {"imagingVersion": "1.0", "datastoreId": datastore_id, "jobId": job_id,
                                  "jobName": "x", "jobStatus": status, "inputS3Uri": "s3://b/i/",
                                  "outputS3Uri": output}})


@pytest.fixture
def job_queue(held_bus: dict[str, Any]) -> str:
    return configure_job_events_rule(held_bus["events"], held_bus["sqs"], f"job-events-{uuid.uuid4().hex[:8]}",
                                     bus=held_bus["name"], rule=f"jobs-{uuid.uuid4().hex[:8]}")


class TestEventWakesTheBatch:
    async def test_completed_event_cuts_the_poll_back_off_short(
            self, client: Client, held_worker: Worker, buckets: dict[str, Any], held_bus: dict[str, Any],
            held_emulator: str, held_datastore_id: str, job_queue: str) -> None:
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        s3.put_object(Bucket=src, Key="ev/0.dcm", Body=make_instance(uid(), uid()))
        mid = f"jobev-{uuid.uuid4().hex[:8]}"
        bid = batch_workflow_id(mid, 0)
        sqs = held_bus["sqs"]
        async with running_listener(client, sqs, job_queue) as listener:
            handle = await client.start_workflow(
                MigrationWorkflow.run,
                MigrationInput(source_s3_uri=f"s3://{src}/ev/", datastore_id=held_datastore_id,
                               work_s3_uri=f"s3://{work}/w/", import_start_interval_seconds=0),
                id=mid, task_queue=held_worker.task_queue, execution_timeout=timedelta(seconds=120))
            batch = client.get_workflow_handle(bid)

            async def in_back_off() -> Any:
                # The first poll found the job SUBMITTED; the activity now waits 120 s before its next attempt.
                try:
                    desc = await batch.describe()
                except RPCError:
                    return None
                pending = desc.raw_description.pending_activities
                return pending[0] if pending and pending[0].attempt >= 2 else None

            await wait_until_async(in_back_off, "the batch's first poll", timeout=WAIT_LIMIT, interval=0.2)
            progress = await batch.query(ImportBatchWorkflow.progress)
            assert progress.stage is BatchStage.AWAITING_JOB and progress.job_id
            # Hand-sent signals that must not wake it: malformed, another job's, a non-terminal status.
            await batch.signal("job_event", {"job_id": 5})
            await batch.signal("job_event", JobEvent(job_id="z" * 32, status="COMPLETED"))
            await batch.signal("job_event", JobEvent(job_id=progress.job_id, status="IN_PROGRESS"))

            async def ignored() -> bool:
                return (await batch.query(ImportBatchWorkflow.progress)).job_events_ignored == 3

            await wait_until_async(ignored, "the three signals to be ignored", timeout=WAIT_LIMIT, interval=0.2)
            assert (await in_back_off()) is not None  # still waiting in the same back-off: nothing woke it
            emulator_admin(held_emulator, f"jobs/{progress.job_id}/advance", {"to": "COMPLETED"})

            result = await asyncio.wait_for(handle.result(), timeout=WAIT_LIMIT)
            assert result.files_by_state[FileState.IMPORTED] == 1 and sum(result.files_by_state.values()) == 1
            assert listener.signalled >= 1

            # A late duplicate of the event: its batch has finished, so it is counted as unknown and dropped.
            output = f"s3://{work}/w/{mid}/import-output/batch-00000/"
            sqs.send_message(QueueUrl=job_queue, MessageBody=_job_event_body(progress.job_id, "COMPLETED", output))
            unknown_before = listener.unknown_jobs

            async def dropped() -> bool:
                return listener.unknown_jobs > unknown_before

            await wait_until_async(dropped, "the late duplicate to be dropped", timeout=WAIT_LIMIT, interval=0.2)

        events = (await batch.fetch_history()).events
        kinds = [(e.event_type, e) for e in events]
        signalled = [i for i, (t, e) in enumerate(kinds) if t == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
                     and e.workflow_execution_signaled_event_attributes.signal_name == "job_event"]
        polls = [i for i, (t, e) in enumerate(kinds) if t == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
                 and e.activity_task_scheduled_event_attributes.activity_type.name == "await_import_job"]
        cancels = [i for i, (t, _) in enumerate(kinds) if t == EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED]
        assert len(signalled) >= 1 and len(polls) == 2 and len(cancels) == 1
        # The event arrived while the first poll was in its back-off, which was cancelled; the second poll
        # (scheduled after the signal) is the one that saw the job COMPLETED.
        assert polls[0] < signalled[0] < cancels[0] < polls[1]
        first_poll_id = events[polls[0]].event_id
        completed = [e for t, e in kinds if t == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED]
        assert all(e.activity_task_completed_event_attributes.scheduled_event_id != first_poll_id for e in completed)
        assert any(e.activity_task_completed_event_attributes.scheduled_event_id == events[polls[1]].event_id
                   for e in completed)
        progress = await batch.query(ImportBatchWorkflow.progress)
        assert progress.job_events_received == 1 and progress.job_events_ignored == 3
        assert progress.job_status == "COMPLETED"

        # The wake-up path replays deterministically (and so does the migration that ran it).
        history = await batch.fetch_history()
        replayer = Replayer(workflows=WORKFLOWS, data_converter=converter())
        await replayer.replay_workflow(history)
        await replayer.replay_workflow(await handle.fetch_history())
        if os.environ.get("HIMIG_RECORD_HISTORIES"):
            path = Path(__file__).parent.parent / "histories" / "job-event-wake.batch-00000.json"
            path.write_text(plain_history_json(history))

        # Search attributes: the migration's phase and data store; the batch's migration (set by its parent).
        migration_attrs = (await handle.describe()).typed_search_attributes
        assert migration_attrs.get(search.STATE) == "completed"
        assert migration_attrs.get(search.DATASTORE_ID) == held_datastore_id
        assert (await batch.describe()).typed_search_attributes.get(search.MIGRATION_ID) == mid


class TestListenerDropsWhatItCannotUse:
    async def test_malformed_unknown_and_foreign_events(self, client: Client, held_bus: dict[str, Any]) -> None:
        sqs = held_bus["sqs"]
        # A queue no rule targets: the messages below are all it will ever hold. (A queue behind a rule on the
        # module's bus also gets whatever the held emulator still publishes there, such as an at-least-once
        # re-delivery of the previous test's "Import Job Completed" after a PutEvents that timed out under load,
        # which arrives in its own time and would be a message this test never sent.)
        job_queue = sqs.create_queue(QueueName=f"job-events-direct-{uuid.uuid4().hex[:8]}")["QueueUrl"]
        bodies = {
            "not json": "{{{",
            "no envelope": json.dumps({"Records": []}),
            "bad job id": _job_event_body("x'; DROP", "COMPLETED", "s3://w/m/import-output/batch-00000/"),
            "bad status": _job_event_body("j" * 32, "DONE", "s3://w/m/import-output/batch-00000/"),
            "no detail": json.dumps({"detail-type": "Import Job Completed", "source": "aws.medical-imaging"}),
        }
        unknown = [
            # himig's layout, but no such batch workflow
            _job_event_body("a" * 32, "COMPLETED", f"s3://w/nope-{uuid.uuid4().hex[:6]}/import-output/batch-00007/"),
            # a job some other system started
            _job_event_body("b" * 32, "FAILED", "s3://elsewhere/output/", detail_type="Import Job Failed"),
        ]
        ignored = [_job_event_body("c" * 32, "IN_PROGRESS", "s3://w/m/import-output/batch-00000/",
                                   detail_type="Import Job In Progress")]
        for body in [*bodies.values(), *unknown, *ignored]:
            sqs.send_message(QueueUrl=job_queue, MessageBody=body)
        total = len(bodies) + len(unknown) + len(ignored)
        with structlog.testing.capture_logs() as logs:
            async with running_listener(client, sqs, job_queue) as listener:
                async def drained() -> bool:
                    return listener.messages_deleted >= total and await asyncio.to_thread(_queued, sqs, job_queue) == 0

                await wait_until_async(drained, "every message to be deleted", timeout=WAIT_LIMIT, interval=0.2)
        # Each message handled and deleted exactly once: none counted twice, none left behind.
        assert listener.messages_deleted == total
        assert (listener.malformed, listener.unknown_jobs, listener.ignored, listener.signalled) == (5, 2, 1, 0)
        malformed_lines = [e for e in logs if e["event"] == "deleting a malformed job-event message"]
        assert len(malformed_lines) == 5 and all(e["reason"] and "DROP" not in e["reason"] for e in malformed_lines)
        assert sum(e["event"] == "ignoring an event for a job no running batch waits on" for e in logs) == 2
        assert _queued(sqs, job_queue) == 0


def _queued(sqs: Any, queue_url: str) -> int:
    """Messages still in the queue, visible or received and not yet deleted."""
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


class TestParsing:
    def test_batch_of_reads_requested_and_resolved_output_uris(self) -> None:
        assert batch_of("s3://w/x/m-1/import-output/batch-00003/") == "m-1.batch-00003"
        assert batch_of("s3://w/m-1/import-output/batch-00003-p2/" + "a" * 32 + "-DicomImport-" + "b" * 32 + "/") \
            == "m-1.batch-00003"
        assert batch_of("s3://w/m-1/output/batch-00003/") is None
        assert batch_of("s3://w/m 1/import-output/batch-00003/") is None

    @pytest.mark.parametrize("body,field", [
        ("", "JSON"), ("[]", "EventBridge"), ('{"detail-type": "Import Job Completed", "source": '
                                               '"aws.medical-imaging", "detail": []}', "detail"),
        (_job_event_body("", "COMPLETED", "s3://w/"), "detail.jobId"),
        (_job_event_body("j" * 65, "COMPLETED", "s3://w/"), "detail.jobId"),
        (_job_event_body("j" * 32, "", "s3://w/"), "detail.jobStatus"),
    ])
    def test_malformed_bodies_name_the_field(self, body: str, field: str) -> None:
        with pytest.raises(MalformedJobEvent, match=field):
            parse_job_event(body)

    def test_other_events_are_not_job_wake_ups(self) -> None:
        assert parse_job_event(json.dumps({"detail-type": "Object Created", "source": "aws.s3", "detail": {}})) is None
        assert parse_job_event(_job_event_body("j" * 32, "SUBMITTED", "s3://w/",
                                               detail_type="Import Job Submitted")) is None
        parsed = parse_job_event(_job_event_body("j" * 32, "FAILED", "s3://w/m/import-output/batch-00001/",
                                                 detail_type="Import Job Failed"))
        assert parsed is not None and parsed.event.status == "FAILED" and parsed.batch_workflow_id == "m.batch-00001"


class TestDaemonThreadPoll:
    async def test_result_error_and_an_abandoned_call(self) -> None:
        assert await in_daemon_thread(lambda: 42) == 42
        with pytest.raises(ValueError, match="boom"):
            await in_daemon_thread(lambda: (_ for _ in ()).throw(ValueError("boom")))
        release = threading.Event()
        abandoned = in_daemon_thread(lambda: release.wait(10))
        abandoned.cancel()  # what a stop does with a poll in flight
        release.set()  # its late answer arrives on a cancelled future: dropped, no error
        await asyncio.sleep(0.05)  # not a wait for a condition: a span for the late answer to land (and not raise)
        assert abandoned.cancelled()
        # A daemon thread: an abandoned long poll never holds up the process's exit.
        assert await in_daemon_thread(lambda: threading.current_thread().daemon) is True
