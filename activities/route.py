"""route: publish one domain event per image set a batch produced, and surface non-primary image sets.

Events carry ids and counts only (no PHI). Reconciliation of non-primary image sets is started by the
workflow from the ids returned here.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.exceptions import ClientError
from temporalio import activity

from activities.errors import classify
from activities.heartbeat import keeps_alive
from activities.storage import read_models
from contracts.records import LedgerEntry
from contracts.s3uri import parse_s3_uri
from contracts.stages import RouteInput, RouteResult

EVENT_SOURCE = "himig.migration"
DETAIL_TYPE = "Image Set Imported"


class RouteActivities:
    def __init__(self, s3: Any, events: Any, event_bus_name: str | None) -> None:
        self._s3 = s3
        self._events = events
        self._bus = event_bus_name

    @activity.defn(name="route_batch")
    @keeps_alive
    def route_batch(self, input: RouteInput) -> RouteResult:
        if not self._bus:
            return RouteResult(events_published=0, non_primary_for_reconciliation=len(input.review.non_primary_image_sets))
        ledger = read_models(self._s3, parse_s3_uri(input.review.ledger_uri), LedgerEntry)
        sets: dict[str, dict[str, Any]] = {}
        for entry in ledger:
            if entry.image_set_id:
                detail = sets.setdefault(entry.image_set_id, {
                    "migrationId": input.batch.migration_id, "batch": input.batch.batch,
                    "datastoreId": input.batch.datastore_id, "imageSetId": entry.image_set_id,
                    "isPrimary": entry.is_primary, "imageSetVersion": entry.image_set_version,
                    "jobId": entry.job_id, "instances": 0})
                detail["instances"] += 1
        entries = [{"Source": EVENT_SOURCE, "DetailType": DETAIL_TYPE, "EventBusName": self._bus,
                    "Detail": json.dumps(d, sort_keys=True)} for _, d in sorted(sets.items())]
        published = 0
        try:
            for i in range(0, len(entries), 10):  # PutEvents takes at most 10 entries
                resp = self._events.put_events(Entries=entries[i : i + 10])
                if resp.get("FailedEntryCount"):
                    raise RuntimeError(f"EventBridge rejected {resp['FailedEntryCount']} events")
                published += len(entries[i : i + 10])
        except ClientError as err:
            raise classify(err, "publishing image set events") from None
        return RouteResult(events_published=published,
                           non_primary_for_reconciliation=len(input.review.non_primary_image_sets))
