"""Ledgers that one stage writes and other stages read back (the layout is in `contracts.layout`)."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from activities.errors import classify
from activities.storage import is_missing, iter_ndjson
from contracts import layout
from contracts.batch import BatchInput


def source_changed_keys(s3: Any, batch: BatchInput) -> set[str]:
    """Keys the staging step recorded as ``SourceChanged`` for this batch (or half); empty when none."""
    loc = layout.ledger_for_source_changed(batch.work_s3_uri, batch.migration_id, batch.batch, batch.part)
    try:
        return {str(row["key"]) for row in iter_ndjson(s3, loc)}
    except ClientError as err:
        if is_missing(err):
            return set()
        raise classify(err, "reading the source-changed ledger") from None
