"""Planning's guard against sending again what failed before: a file whose import into this data store the
service failed in an earlier migration, for a reason that would fail again (`activities.failed_index.fails_again`),
is not sent again by a plain re-run while it is unchanged (the same content id: size, ETag and header hash).

It is recorded ``failed`` again, code ``failed_before``, with a reason naming the earlier migration and the
service's exception type, and starts no import job; ``himig retry <that migration>`` sends it (its migration has
``resend_failed`` set). A changed file has another content id and is sent as any new file.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from typing import Any

from activities.failed_index import FailedIndex
from activities.heartbeat import current
from activities.storage import iter_ndjson
from contracts.common import FileState
from contracts.records import FailedFile, InstanceRecord, LedgerEntry

CODE = "failed_before"


def read_failed_before(s3: Any, index: FailedIndex, work_s3_uri: str, datastore_id: str, migration_id: str,
                       wanted: Container[str] | None = None) -> dict[str, FailedFile]:
    """Earlier failures into this data store (content id -> the first line found, in key order), of the
    ``wanted`` contents only when given. Held whole: it grows with the data store's lasting failures, not with
    the files planned."""
    found: dict[str, FailedFile] = {}
    for loc in index.earlier(work_s3_uri, datastore_id, migration_id):
        for row in iter_ndjson(s3, loc):
            line = FailedFile.model_validate(row)
            if wanted is None or line.content_id in wanted:
                found.setdefault(line.content_id, line)
        if keep := current():
            keep.record(loc.key)
    return found


def hold_failed_before(instances: Iterable[InstanceRecord], failed: dict[str, FailedFile],
                       ) -> tuple[list[InstanceRecord], list[LedgerEntry]]:
    """The instances to send, and a ``failed`` ledger line for each one held back."""
    kept: list[InstanceRecord] = []
    held: list[LedgerEntry] = []
    for inst in instances:
        earlier = failed.get(inst.content_id)
        if earlier is None:
            kept.append(inst)
            continue
        held.append(held_entry(inst, earlier))
    return kept, held


def held_entry(inst: InstanceRecord, earlier: FailedFile) -> LedgerEntry:
    return LedgerEntry(
        key=inst.key, state=FileState.FAILED, size=inst.size, code=CODE,
        reason=(f"not sent again: unchanged since its import into this data store failed in migration "
                f"{earlier.migration_id} ({earlier.code}), which would fail again; `himig retry "
                f"{earlier.migration_id}` sends it"),
        study_instance_uid=inst.study_instance_uid, series_instance_uid=inst.series_instance_uid)
