"""Review's read-back checks: are the instances a job reported really in HealthImaging, and served by DICOMweb?

Two checks, both reporting problems (never PHI: image set ids, counts and batch manifest line numbers only):

- every image set the job reported: ``GetImageSetMetadata`` (gzip JSON) must list every instance this batch put
  into it, per series (an image set may hold more: earlier imports of the same series);
- a deterministic sample of the batch's imported instances: WADO-RS ``.../instances/{sop}/metadata`` on the data
  store's DICOMweb endpoint (SigV4, service ``medical-imaging``, or an OIDC bearer token when the data store is
  configured for one: ``HIMIG_HEALTHIMAGING_OIDC_*``) must answer with the same Study / Series / SOP
  Instance UIDs. A 404 or a mismatch is a problem; throttling (429) and 5xx are retried, not problems.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial
from typing import Any

import urllib3
from botocore.exceptions import ClientError

from activities.bearer_http import BearerHttp
from activities.client_credentials import TokenRefused, TokenUnavailable
from activities.errors import benign_retry, classify, error_code
from activities.healthimaging import (
    LOCAL_RETRY_DELAYS,
    Throttled,
    dicomweb_address,
    get_image_set_metadata,
    metadata_sops,
    with_local_retries,
)
from activities.signed_http import Response, SignedHttp
from contracts.errors import BACKOFF, ErrorType
from contracts.records import InstanceRecord, LedgerEntry

STUDY_TAG, SERIES_TAG, SOP_TAG = "0020000D", "0020000E", "00080018"


@dataclass
class Imported:
    """One instance of the batch that the job imported: its manifest line and where it landed."""

    line: int
    record: InstanceRecord
    image_set_id: str


def imported_instances(files: list[InstanceRecord], ledger: list[LedgerEntry]) -> list[Imported]:
    """The batch's instances that the job output puts into an image set (``ledger`` is in ``files`` order)."""
    return [Imported(line=i + 1, record=f, image_set_id=e.image_set_id)
            for i, (f, e) in enumerate(zip(files, ledger, strict=True)) if e.image_set_id]


def sample(instances: list[Imported], size: int) -> list[Imported]:
    """A deterministic sample: the same batch always checks the same instances, whichever worker reviews it."""
    return sorted(instances, key=lambda x: hashlib.sha256(x.record.key.encode()).hexdigest())[:size]


def _value(dataset: dict[str, Any], tag: str) -> str | None:
    values = (dataset.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else None


def compare_metadata(body: Any, record: InstanceRecord) -> str | None:
    """What is wrong with a WADO-RS instance metadata answer for ``record`` (None: it matches)."""
    if not isinstance(body, list) or len(body) != 1 or not isinstance(body[0], dict):
        return "DICOMweb metadata is not a one-element DICOM JSON array"
    wrong = [name for name, tag, want in (("StudyInstanceUID", STUDY_TAG, record.study_instance_uid),
                                          ("SeriesInstanceUID", SERIES_TAG, record.series_instance_uid),
                                          ("SOPInstanceUID", SOP_TAG, record.sop_instance_uid))
             if _value(body[0], tag) != want]
    return f"DICOMweb metadata has a different {', '.join(wrong)}" if wrong else None


class SpotChecker:
    """Read-back checks for one reviewed batch. ``dicomweb`` None: only the metadata check runs."""

    def __init__(self, medical_imaging: Any, dicomweb: SignedHttp | BearerHttp | None = None, dicomweb_base_url: str | None = None,
                 retry_delays: tuple[float, ...] = LOCAL_RETRY_DELAYS):
        self._mi = medical_imaging
        self._http = dicomweb
        self._base = (dicomweb_base_url or "").rstrip("/")
        self._delays = retry_delays

    def check(self, datastore_id: str, files: list[InstanceRecord], ledger: list[LedgerEntry],
              sample_size: int) -> list[str]:
        instances = imported_instances(files, ledger)
        problems = self.check_instance_counts(datastore_id, instances)
        if sample_size > 0 and self._http is not None and self._base:
            problems += self.check_dicomweb(datastore_id, sample(instances, sample_size))
        return problems

    def check_instance_counts(self, datastore_id: str, instances: list[Imported]) -> list[str]:
        """Per image set: every instance the job reported in it is listed by GetImageSetMetadata, in its series."""
        by_set: dict[str, list[Imported]] = {}
        for inst in instances:
            by_set.setdefault(inst.image_set_id, []).append(inst)
        problems = []
        for image_set_id, members in sorted(by_set.items()):
            try:
                listed = metadata_sops(with_local_retries(
                    partial(get_image_set_metadata, self._mi, datastore_id, image_set_id), self._delays))
            except ClientError as err:
                if error_code(err) in BACKOFF:
                    raise classify(err, "reading image set metadata") from None
                problems.append(f"image set {image_set_id}: GetImageSetMetadata failed: {error_code(err)}")
                continue
            missing = [m for m in members
                       if m.record.sop_instance_uid not in listed.get(m.record.series_instance_uid, set())]
            if missing:
                problems.append(f"image set {image_set_id}: {len(missing)} of {len(members)} instances the job "
                                f"reported are not in GetImageSetMetadata (batch lines "
                                f"{', '.join(str(m.line) for m in missing[:10])})")
        return problems

    def _wado(self, url: str, image_set_id: str) -> Response:
        assert self._http is not None
        resp = self._http.request("GET", url, params={"imageSetId": image_set_id},
                                  headers={"Accept": "application/dicom+json"})
        if resp.status == 429 or resp.status >= 500:
            raise Throttled(resp.status)
        return resp

    def check_dicomweb(self, datastore_id: str, picked: list[Imported]) -> list[str]:
        assert self._http is not None
        problems = []
        for inst in picked:
            r = inst.record
            url = (f"{dicomweb_address(self._base, datastore_id)}/studies/{r.study_instance_uid}/series/"
                   f"{r.series_instance_uid}/instances/{r.sop_instance_uid}/metadata")
            try:
                resp = with_local_retries(partial(self._wado, url, inst.image_set_id), self._delays)
            except (urllib3.exceptions.HTTPError, OSError) as err:
                raise benign_retry(f"DICOMweb spot check: {type(err).__name__} (backing off)",
                                   ErrorType.DICOMWEB_UNAVAILABLE) from None
            except TokenUnavailable as err:
                raise benign_retry(f"DICOMweb spot check: no bearer token: {err} (backing off)",
                                   ErrorType.DICOMWEB_UNAVAILABLE) from None
            except TokenRefused as err:
                # Like a 401 from the data store: the check could not read back, which the review reports.
                problems.append(f"DICOMweb spot check: no bearer token: {err}")
                break
            except Throttled as err:
                raise benign_retry(f"DICOMweb spot check: HTTP {err.status} (backing off)", ErrorType.THROTTLING
                                   if err.status == 429 else ErrorType.DICOMWEB_UNAVAILABLE) from None
            where = f"image set {inst.image_set_id}: sampled instance (batch line {inst.line})"
            if resp.status != 200:
                code = resp.headers.get("x-amzn-errortype", "").split(":")[0] or "error"
                problems.append(f"{where}: DICOMweb metadata answered HTTP {resp.status} {code}")
                continue
            try:
                body = resp.json()
            except ValueError:
                body = None
            wrong = compare_metadata(body, r)
            if wrong:
                problems.append(f"{where}: {wrong}")
        return problems
