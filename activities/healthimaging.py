"""Reading HealthImaging: image-set metadata, image-set search and the DICOMweb address of a data store.

Shared by every stage that reads what an import put into HealthImaging (planning's import index check, review's
spot check, FHIR routing, reconciliation). Throttled reads are retried here a few times (`with_local_retries`)
before the activity is handed back to Temporal's retry, which would redo all the reads before it.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from activities import phi
from activities.errors import error_code
from contracts.errors import BACKOFF

# A throttled read is retried here a few times before the whole activity is handed back to Temporal's retry:
# a batch with hundreds of image sets would otherwise restart its review on every 429 and might never finish.
LOCAL_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)
T = TypeVar("T")


class Throttled(Exception):
    """An HTTP answer (429 or 5xx) that `with_local_retries` retries like a throttled AWS call."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def with_local_retries(call: Callable[[], T], delays: tuple[float, ...] = LOCAL_RETRY_DELAYS) -> T:
    """``call()``, retried after each delay while it is throttled (ClientError in BACKOFF or Throttled)."""
    for delay in (*delays, None):
        try:
            return call()
        except ClientError as err:
            if delay is None or error_code(err) not in BACKOFF:
                raise
        except Throttled:
            if delay is None:
                raise
        time.sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")


def get_image_set_metadata(medical_imaging: Any, datastore_id: str, image_set_id: str) -> dict[str, Any]:
    """The latest metadata document of an image set (``GetImageSetMetadata`` answers gzip JSON)."""
    resp = medical_imaging.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id)
    raw = resp["imageSetMetadataBlob"].read()
    if resp.get("contentEncoding") == "gzip" or raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    doc: dict[str, Any] = json.loads(raw)
    register_metadata(doc)
    return doc


def register_metadata(doc: dict[str, Any]) -> None:
    """Register the patient values of a metadata document for scrubbing from logs and errors (activities.phi)."""
    study = doc.get("Study") or {}
    levels = [(doc.get("Patient") or {}).get("DICOM"), study.get("DICOM"),
              *((s or {}).get("DICOM") for s in (study.get("Series") or {}).values())]
    for attrs in levels:
        if isinstance(attrs, dict):
            phi.register_mapping(attrs.items())


def metadata_sops(doc: dict[str, Any]) -> dict[str, set[str]]:
    """SOP Instance UIDs per SeriesInstanceUID in an image-set metadata document."""
    series = (doc.get("Study") or {}).get("Series") or {}
    return {uid: set((s.get("Instances") or {}).keys()) for uid, s in series.items()}


def search_image_sets(medical_imaging: Any, datastore_id: str, criteria: dict[str, Any]) -> list[dict[str, Any]]:
    """Every image-set summary ``SearchImageSets`` lists for ``criteria``, all pages (ClientError propagates)."""
    pages = medical_imaging.get_paginator("search_image_sets").paginate(datastoreId=datastore_id,
                                                                        searchCriteria=criteria)
    return [summary for page in pages for summary in page.get("imageSetsMetadataSummaries", [])]


def dicomweb_address(base_url: str, datastore_id: str) -> str:
    """``https://dicom-medical-imaging.<region>.amazonaws.com/datastore/<ds>`` in AWS (or the local emulator)."""
    return f"{base_url.rstrip('/')}/datastore/{datastore_id}"
