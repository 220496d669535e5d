"""``himig verify``: check a finished migration, or a bare source, against HealthImaging now, or on a schedule.

Once: runs `VerifyWorkflow` (id `verify-<migration id>`; a new run each time) and prints what it found. With
``--every``: a Temporal Schedule `verify-<migration id>` runs the same check periodically and each run publishes
its outcome as an EventBridge event (``--every off`` deletes the schedule). With ``--source`` instead of a
migration id: `SourceVerifyWorkflow` (id `verify-source-<hash of source and data store>`) checks every object
under the prefix, no migration needed. With `himig start`'s connector flags instead (``--source-dir``,
``--source-dicomweb``, ``--source-dimse`` and theirs, read by cli/sources.py), the same workflow first pulls that
directory or PACS under ``--work`` and checks what it pulled.
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

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
from contracts.verify import (
    SourceVerifyInput,
    VerifyInput,
    VerifyResult,
    source_key,
    source_verify_workflow_id,
    verify_workflow_id,
)
from workflows.verify import SourceVerifyWorkflow, VerifyWorkflow

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
    what = r.migration_id or r.source_connector or r.source_s3_uri
    console.print(f"verify {what}, {mode}: {r.instances_verified} of {r.instances_expected} instances "
                  f"{'as reported' if r.migration_id else 'of the source found'}, in {r.image_sets_checked} "
                  "image set(s)")
    for kind, n in sorted(r.differences.items()):
        console.print(f"  {kind.value}: {n}")
    if r.clean:
        console.print("  no differences")
    console.print(f"  requests: {', '.join(f'{k} {v}' for k, v in sorted(r.requests.items())) or 'none'}; "
                  f"touches made {r.touches}; a deep check would touch {r.touches_for_deep} image set(s)")
    if r.frames_compared or r.frames_not_comparable:
        console.print(f"  pixels: {r.frames_compared} frame(s) equal to the source")
        for reason, n in sorted(r.frames_not_comparable.items()):
            console.print(f"  not comparable ({n} frame(s)): {reason}")
    for note in r.notes:
        console.print(f"  note: {note}")
    console.print(f"  differences listed in {r.differences_uri}")


def check_options(deep: bool, attributes: list[str], pixels: int) -> None:
    if attributes and not deep:
        raise CommandError("--attribute needs --deep (attributes are read from the image sets' metadata)", 2)
    if pixels and not deep:
        raise CommandError("--pixels needs --deep (frames are found through the image sets' metadata)", 2)


async def verify(client: Client, migration_id: str, task_queue: str, deep: bool, attributes: list[str],
                 every: str | None, console: Console, pixels: int = 0, pixel_seed: int = 0) -> VerifyResult | None:
    check_options(deep, attributes, pixels)
    source = await migration_input(client, migration_id, "verify")
    payload = VerifyInput(migration_id=migration_id, datastore_id=source.datastore_id,
                          work_s3_uri=source.work_s3_uri, source_s3_uri=source.source_s3_uri, deep=deep,
                          attributes=attributes, pixels=pixels, pixel_seed=pixel_seed, publish=every is not None)
    return await _once_or_scheduled(client, VerifyWorkflow.run, payload, verify_workflow_id(migration_id),
                                    migration_id, task_queue, every, console)


def source_input(source_s3_uri: str | None, connector: dict[str, Any] | None, datastore_id: str | None,
                 work_s3_uri: str | None, deep: bool, attributes: list[str], pixels: int, pixel_seed: int,
                 publish: bool, pull: bool = False) -> SourceVerifyInput:
    """The workflow input of a bare source (an S3 prefix, or a connector's JSON from cli/sources.py); raises
    `CommandError` (a flag missing or clashing) or pydantic's ValidationError (a value refused, by field)."""
    check_options(deep, attributes, pixels)
    what = "--source" if connector is None else f"--source-{'dir' if connector['kind'] == 'local' else connector['kind']}"
    if pull and (connector is None or connector["kind"] == "local"):
        raise CommandError("--pull: only with --source-dicomweb or --source-dimse (an S3 prefix is read in place, "
                           "a directory is always pulled)", 2)
    if source_s3_uri is not None and connector is not None:
        raise CommandError(f"--source and {what}: give one source, an S3 prefix or a connector (a connector's "
                           "source is pulled under --work)", 2)
    if not datastore_id:
        raise CommandError(f"{what} needs --datastore-id", 2)
    if not work_s3_uri:
        raise CommandError(f"{what} needs --work, the prefix where the result is written"
                           + (" and the source pulled" if connector is not None else ""), 2)
    return SourceVerifyInput.model_validate(
        {"source_s3_uri": source_s3_uri, "source_connector": connector, "datastore_id": datastore_id,
         "work_s3_uri": work_s3_uri, "deep": deep, "attributes": attributes, "pixels": pixels,
         "pixel_seed": pixel_seed, "publish": publish, "pull": pull})


async def verify_source(client: Client, payload: SourceVerifyInput, task_queue: str, every: str | None,
                        console: Console) -> VerifyResult | None:
    """A bare source against a data store (``--datastore-id``), the result written under ``--work``."""
    what = payload.source_s3_uri or "the connector's source"
    return await _once_or_scheduled(client, SourceVerifyWorkflow.run, payload,
                                    source_verify_workflow_id(source_key(payload), payload.datastore_id), what,
                                    task_queue, every, console)


async def _once_or_scheduled(client: Client, run: Any, payload: VerifyInput | SourceVerifyInput, schedule_id: str,
                             what: str, task_queue: str, every: str | None,
                             console: Console) -> VerifyResult | None:
    if every is not None and every.strip().lower() == "off":
        try:
            await client.get_schedule_handle(schedule_id).delete()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise CommandError(f"no verification schedule for {what!r}") from None
            raise
        console.print(f"schedule {schedule_id} deleted")
        return None
    if every is not None:
        interval = parse_every(every)
        schedule = Schedule(
            action=ScheduleActionStartWorkflow(run, payload, id=schedule_id, task_queue=task_queue),
            spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=interval)]))
        try:
            await client.create_schedule(schedule_id, schedule)
            console.print(f"schedule {schedule_id}: verifies {what} every {every}, publishing each outcome")
        except ScheduleAlreadyRunningError:
            def replace(_: ScheduleUpdateInput) -> ScheduleUpdate:
                return ScheduleUpdate(schedule=schedule)

            await client.get_schedule_handle(schedule_id).update(replace)
            console.print(f"schedule {schedule_id} updated: every {every}")
        return None
    try:
        result: VerifyResult = await client.execute_workflow(
            run, payload, id=f"{schedule_id}-{uuid.uuid4().hex[:8]}", task_queue=task_queue)
    except WorkflowFailureError as err:
        cause = getattr(err.cause, "cause", None) or err.cause
        raise CommandError(f"verify failed: {cause}") from None
    print_result(result, console)
    return result
