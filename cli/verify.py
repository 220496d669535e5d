"""``himig verify``: check a finished migration against HealthImaging now, or on a schedule.

Once: runs `VerifyWorkflow` (id `verify-<migration id>`; a new run each time) and prints what it found. With
``--every``: a Temporal Schedule `verify-<migration id>` runs the same check periodically and each run publishes
its outcome as an EventBridge event (``--every off`` deletes the schedule).
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

from rich.console import Console
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
    WorkflowFailureError,
)
from temporalio.service import RPCError, RPCStatusCode

from cli.calls import CommandError
from cli.finished import migration_input
from contracts.verify import VerifyInput, VerifyResult, verify_workflow_id
from workflows.verify import VerifyWorkflow

_EVERY = re.compile(r"^(\d{1,6})([mhd])$")
MIN_INTERVAL = timedelta(minutes=5)


def parse_every(text: str) -> timedelta:
    """``30m``, ``6h``, ``7d`` (at least 5 minutes: each run reads the migration's whole report)."""
    match = _EVERY.match(text.strip())
    if not match:
        raise CommandError(f"--every: {text!r} is not an interval like 30m, 6h or 7d", 2)
    n, unit = int(match.group(1)), match.group(2)
    every = timedelta(minutes=n) if unit == "m" else timedelta(hours=n) if unit == "h" else timedelta(days=n)
    if every < MIN_INTERVAL:
        raise CommandError("--every: at least 5 minutes", 2)
    return every


def print_result(r: VerifyResult, console: Console) -> None:
    mode = "deep (metadata read: touches)" if r.deep else "default (no touches)"
    console.print(f"verify {r.migration_id}, {mode}: {r.instances_verified} of {r.instances_expected} instances "
                  f"as reported, in {r.image_sets_checked} image set(s)")
    for kind, n in sorted(r.differences.items()):
        console.print(f"  {kind.value}: {n}")
    if r.clean:
        console.print("  no differences")
    console.print(f"  requests: {', '.join(f'{k} {v}' for k, v in sorted(r.requests.items())) or 'none'}; "
                  f"touches made {r.touches}; a deep check would touch {r.touches_for_deep} image set(s)")
    console.print(f"  differences listed in {r.differences_uri}")


async def verify(client: Client, migration_id: str, task_queue: str, deep: bool, attributes: list[str],
                 every: str | None, console: Console) -> VerifyResult | None:
    source = await migration_input(client, migration_id, "verify")
    if attributes and not deep:
        raise CommandError("--attribute needs --deep (attributes are read from the image sets' metadata)", 2)
    schedule_id = verify_workflow_id(migration_id)
    if every is not None and every.strip().lower() == "off":
        try:
            await client.get_schedule_handle(schedule_id).delete()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise CommandError(f"no verification schedule for {migration_id!r}") from None
            raise
        console.print(f"schedule {schedule_id} deleted")
        return None
    payload = VerifyInput(migration_id=migration_id, datastore_id=source.datastore_id,
                          work_s3_uri=source.work_s3_uri, source_s3_uri=source.source_s3_uri, deep=deep,
                          attributes=attributes, publish=every is not None)
    if every is not None:
        interval = parse_every(every)
        schedule = Schedule(
            action=ScheduleActionStartWorkflow(VerifyWorkflow.run, payload, id=schedule_id, task_queue=task_queue),
            spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=interval)]))
        try:
            await client.create_schedule(schedule_id, schedule)
            console.print(f"schedule {schedule_id}: verifies {migration_id} every {every}, publishing each outcome")
        except ScheduleAlreadyRunningError:
            def replace(_: ScheduleUpdateInput) -> ScheduleUpdate:
                return ScheduleUpdate(schedule=schedule)

            await client.get_schedule_handle(schedule_id).update(replace)
            console.print(f"schedule {schedule_id} updated: every {every}")
        return None
    try:
        result: VerifyResult = await client.execute_workflow(
            VerifyWorkflow.run, payload, id=f"{schedule_id}-{uuid.uuid4().hex[:8]}", task_queue=task_queue)
    except WorkflowFailureError as err:
        cause = getattr(err.cause, "cause", None) or err.cause
        raise CommandError(f"verify failed: {cause}") from None
    print_result(result, console)
    return result
