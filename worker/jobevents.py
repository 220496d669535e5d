"""Import-job events wake waiting batches early: an SQS listener for HealthImaging's EventBridge job events.

EventBridge rule (source ``aws.medical-imaging``, detail-types "Import Job Completed" / "Import Job Failed") →
SQS (``HIMIG_JOB_EVENTS_QUEUE_URL``) → `JobEventListener` → signal `job_event` to the `ImportBatchWorkflow` that
started the job (its id follows from the event's ``outputS3Uri``, see `contracts.jobevents`). The batch then polls
GetDICOMImportJob at once; without events it still finds out by polling, just later.

Delivery rules: a malformed message is logged (message id and the reason, never the body) and deleted; an event
for a job himig did not start, or whose batch has already finished (it saw the job end by polling), is counted,
logged with the job id and deleted; when Temporal cannot be reached the message is kept and SQS re-delivers it.
Duplicates are harmless: the workflow counts and ignores what it does not need.
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from contracts.jobevents import RULE_PATTERN, MalformedJobEvent, ParsedJobEvent, parse_job_event
from worker.settings import JobEventSettings
from worker.sqs_poller import SqsPoller
from workflows.batch import JOB_EVENT_SIGNAL

log = structlog.get_logger("himig.jobevents")

def configure_job_events_rule(events: Any, sqs: Any, queue_name: str, bus: str = "default",
                              rule: str = "himig-import-job-events") -> str:
    """Create ``queue_name`` and an EventBridge rule on ``bus`` sending import-job events to it; return its URL.

    Used by the tests on moto; on AWS the same rule, target and queue policy are deployed by IaC.
    """
    queue_url: str = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    rule_arn = events.put_rule(Name=rule, EventBusName=bus, EventPattern=json.dumps(RULE_PATTERN))["RuleArn"]
    policy = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "events.amazonaws.com"}, "Action": "sqs:SendMessage",
        "Resource": arn, "Condition": {"ArnEquals": {"aws:SourceArn": rule_arn}}}]}
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(policy)})
    events.put_targets(Rule=rule, EventBusName=bus, Targets=[{"Id": "himig-job-events", "Arn": arn}])
    return queue_url


class JobEventListener(SqsPoller):
    """Signals `job_event` to the batch waiting on each import-job event's job."""

    kind = "job-events"
    queue_setting = "HIMIG_JOB_EVENTS_QUEUE_URL"

    def __init__(self, client: Client, sqs: Any, settings: JobEventSettings) -> None:
        if not settings.queue_url:
            raise ValueError("queue_url: the job-events listener needs HIMIG_JOB_EVENTS_QUEUE_URL")
        super().__init__(sqs, settings.queue_url, settings.wait_seconds, settings.visibility_timeout)
        self._client, self._settings = client, settings
        self.signalled = 0
        self.malformed = 0
        self.unknown_jobs = 0
        self.ignored = 0

    def counters(self) -> dict[str, int]:
        return {"signalled": self.signalled, "unknown_jobs": self.unknown_jobs, "malformed": self.malformed,
                "messages_deleted": self.messages_deleted}

    async def handle(self, message: dict[str, Any]) -> None:
        msg_id = message.get("MessageId", "?")
        try:
            parsed = parse_job_event(message.get("Body", ""))
        except MalformedJobEvent as err:
            self.malformed += 1
            log.warning("deleting a malformed job-event message", message_id=msg_id, reason=str(err))
            await self._delete(message)
            return
        if parsed is None:
            self.ignored += 1  # another event type routed to the queue: nothing waits on it
            await self._delete(message)
            return
        try:
            woken = await self._wake(parsed)
        except Exception as err:  # Temporal unavailable: keep the message, SQS re-delivers it
            log.warning("job-event message kept for re-delivery", message_id=msg_id, error=type(err).__name__)
            return
        if not woken:
            self.unknown_jobs += 1
            log.info("ignoring an event for a job no running batch waits on", message_id=msg_id,
                     job_id=parsed.event.job_id, status=parsed.event.status)
        await self._delete(message)

    async def _wake(self, parsed: ParsedJobEvent) -> bool:
        """Signal the batch that started the event's job; False when there is none (or it has finished)."""
        if parsed.batch_workflow_id is None:
            return False
        try:
            # By name: the workflow takes the payload raw (see ImportBatchWorkflow.job_event).
            await self._client.get_workflow_handle(parsed.batch_workflow_id).signal(JOB_EVENT_SIGNAL, parsed.event)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:  # no such workflow, or it has already completed
                return False
            raise
        self.signalled += 1
        log.info("import-job event signalled", workflow_id=parsed.batch_workflow_id, job_id=parsed.event.job_id,
                 status=parsed.event.status)
        return True
