"""``himig retry``: a new migration over exactly the files an earlier one did not import.

Reads the finished migration's per-file report, keeps the ``failed`` files (and with ``--include-rejected`` the
``rejected`` ones, for a source the operator fixed or a validation level they relax), checks each is still in the
source (HEAD: its current size and ETag, so a replaced file is read afresh), writes them as a source manifest
under the migration's work prefix and starts `<id>-retry-<n>` with the earlier migration's own settings over that
manifest. Files no longer in the source are listed and left out.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError
from rich.console import Console
from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.service import RPCError, RPCStatusCode

from activities.errors import error_code
from cli.calls import CommandError
from cli.finished import migration_input
from contracts import layout
from contracts.common import ValidationLevel
from contracts.migration import MigrationInput
from contracts.records import InventoryEntry
from contracts.s3uri import parse_s3_uri
from workflows.migration import MigrationWorkflow

MAX_RETRIES = 100


def retry_states(include_rejected: bool) -> set[str]:
    return {"failed", "rejected"} if include_rejected else {"failed"}


def select(s3: Any, source: MigrationInput, migration_id: str, states: set[str]) -> tuple[list[InventoryEntry], int]:
    """The files to retry as they are in the source now, and how many of the selected ones are gone from it."""
    loc = layout.report_files(source.work_s3_uri, migration_id)
    try:
        body = s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"]
    except ClientError as err:
        raise CommandError(f"cannot read the report of {migration_id!r} ({error_code(err)})") from None
    bucket = parse_s3_uri(source.source_s3_uri).bucket
    chosen: list[InventoryEntry] = []
    gone = 0
    for line in body.iter_lines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("state") not in states:
            continue
        try:
            head = s3.head_object(Bucket=bucket, Key=row["key"])
        except ClientError as err:
            if error_code(err) in ("404", "NoSuchKey", "NotFound"):
                gone += 1
                continue
            raise CommandError(f"cannot read the source ({error_code(err)})") from None
        chosen.append(InventoryEntry(key=row["key"], size=int(head["ContentLength"]),
                                     etag=str(head.get("ETag", "")).strip('"')))
    return chosen, gone


async def _free_id(client: Client, migration_id: str) -> str:
    for n in range(1, MAX_RETRIES + 1):
        candidate = f"{migration_id}-retry-{n}"
        try:
            await client.get_workflow_handle(candidate).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return candidate
            raise
    raise CommandError(f"{migration_id!r} was retried {MAX_RETRIES} times already")


async def retry(client: Client, s3: Any, migration_id: str, task_queue: str, include_rejected: bool,
                validation_level: ValidationLevel | None, new_id: str | None,
                console: Console) -> WorkflowHandle[Any, Any] | None:
    source = await migration_input(client, migration_id, "retry")
    chosen, gone = select(s3, source, migration_id, retry_states(include_rejected))
    if gone:
        console.print(f"{gone} file(s) to retry are no longer in the source and are left out")
    if not chosen:
        console.print(f"nothing to retry in {migration_id}: no {' or '.join(sorted(retry_states(include_rejected)))} "
                      "file is in the source")
        return None
    wid = new_id or await _free_id(client, migration_id)
    manifest = layout.root(source.work_s3_uri, migration_id).join("retries", f"{wid}.ndjson")
    s3.put_object(Bucket=manifest.bucket, Key=manifest.key, ContentType="application/x-ndjson",
                  Body="".join(e.model_dump_json() + "\n" for e in chosen).encode())
    # Unchanged files whose import failed for good are sent again only here (a plain re-run holds them back); and
    # a retry reads its files afresh: never through the plan the earlier migration may have started from.
    changes: dict[str, Any] = {"source_manifest_uri": manifest.uri, "source_connector": None, "continued": None,
                               "resend_failed": True, "from_plan": None}
    if validation_level is not None:
        changes["validation_level"] = validation_level
    payload = MigrationInput.model_validate({**source.model_dump(), **changes})
    try:
        handle = await client.start_workflow(MigrationWorkflow.run, payload, id=wid, task_queue=task_queue,
                                             id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE)
    except Exception as err:  # WorkflowAlreadyStartedError: a chosen --id in use
        raise CommandError(f"cannot start {wid!r}: {type(err).__name__}") from None
    console.print(f"{wid}: retrying {len(chosen)} file(s) of {migration_id}")
    return handle
