"""Handing one arrival to its study's `IngestWorkflow`: the one signal-with-start both arrival paths share.

The S3 event listener (`worker.listener`) and the C-STORE receiver (`worker.receiver`) each find an object's
StudyInstanceUID their own way and then call `signal_arrival`; the workflow id, the start options and the input are
the same for both, so an object reached by both paths lands in the same workflow (which drops the duplicate).
"""

from __future__ import annotations

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from contracts.ingest import Arrival, IngestInput, ingest_workflow_id
from workflows.ingest import IngestWorkflow


async def signal_arrival(client: Client, ingest: IngestInput, task_queue: str, bucket: str,
                         study_uid: str | None, arrival: Arrival) -> str:
    """Signal-with-start ``arrived(arrival)`` into the study's `IngestWorkflow`; return its workflow id.

    Returns once the server has recorded the signal (it is then durable in the workflow's history).
    """
    wid = ingest_workflow_id(ingest.datastore_id, study_uid, bucket, arrival.key)
    await client.start_workflow(
        IngestWorkflow.run, ingest, id=wid, task_queue=task_queue,
        start_signal="arrived", start_signal_args=[arrival],
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        # A completed ingest run is followed by a fresh one for the next arrival of the same study.
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE)
    return wid
