"""The listing behind the reconciliation sweep: a data store's non-primary image sets, one page at a time."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError
from temporalio import activity

from activities.errors import classify
from contracts.sweep import SWEEP_PAGE_SIZE, NonPrimaryPage, NonPrimaryPageInput

_NON_PRIMARY = {"filters": [{"operator": "EQUAL", "values": [{"isPrimary": False}]}]}


class SweepActivities:
    def __init__(self, medical_imaging: Any) -> None:
        self._mi = medical_imaging

    @activity.defn(name="list_non_primary")
    def list_non_primary(self, input: NonPrimaryPageInput) -> NonPrimaryPage:
        """One page of SearchImageSets(isPrimary = false): ids only, and where the next page starts."""
        kwargs: dict[str, Any] = {"datastoreId": input.datastore_id, "searchCriteria": _NON_PRIMARY,
                                  "maxResults": SWEEP_PAGE_SIZE}
        if input.next_token:
            kwargs["nextToken"] = input.next_token
        try:
            page = self._mi.search_image_sets(**kwargs)
        except ClientError as err:
            raise classify(err, "listing non-primary image sets") from None
        ids = [s["imageSetId"] for s in page.get("imageSetsMetadataSummaries", []) if not s.get("isPrimary")]
        return NonPrimaryPage(image_set_ids=ids, next_token=page.get("nextToken") or None)
