"""Reconciliation of a non-primary image set: describe the conflict, then apply an operator's decision with
HealthImaging's own tools (UpdateImageSetMetadata with force, CopyImageSet with promoteToPrimary,
DeleteImageSet), each step safe to retry after a timeout or a worker crash.

Every mutation leaves its image sets LOCKED for a while (ConflictException meanwhile); that, and a stale
``latestVersionId``, are retried here with a short delay because every attempt re-reads the latest version.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from activities import phi
from activities.dicom_header import fingerprint_key_bytes
from activities.errors import classify, error_code
from activities.healthimaging import get_image_set_metadata, search_image_sets
from contracts import attestation
from contracts.errors import ErrorType
from contracts.reconciliation import (
    NORMALIZED_ATTRIBUTES,
    AttributeDifference,
    ConflictDescription,
    DeleteResult,
    EscalationInput,
    ImageSetStatus,
    ImageSetTarget,
    PromoteInput,
    PromoteResult,
    ReviewerClaim,
    ReviewerVerdict,
    UpdateFirstInput,
    UpdateFirstResult,
)

EVENT_SOURCE = "himig.migration"
ESCALATED_DETAIL_TYPE = "Reconciliation Escalated"
FINGERPRINT_CHARS = 12
# Tolerated clock difference between Temporal (decision time) and HealthImaging (createdAt) when looking for
# a copy made by an earlier attempt.
CLOCK_SKEW = timedelta(minutes=5)


# ---- pure helpers -------------------------------------------------------------------------------------------


def fingerprint(key: bytes, level: str, attribute: str, value: Any) -> str | None:
    """A short keyed hash of one attribute value: equal values give equal fingerprints, and without the key a
    fingerprint cannot be tested against guessed values (PatientIDs have little entropy)."""
    if value is None:
        return None
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hmac.new(key, f"{level}.{attribute}\x00{canonical}".encode(), hashlib.sha256).hexdigest()
    return digest[:FINGERPRINT_CHARS]


def _series_doc(doc: dict[str, Any], series_uid: str | None) -> tuple[str | None, dict[str, Any]]:
    series = doc.get("Study", {}).get("Series", {}) or {}
    if series_uid is not None and series_uid in series:
        return series_uid, series[series_uid]
    if series_uid is None and series:
        uid = sorted(series)[0]
        return uid, series[uid]
    return None, {}


def levels_of(doc: dict[str, Any], series_uid: str | None = None) -> dict[str, dict[str, Any]]:
    """The Patient, Study and (one) Series attribute documents of an image-set metadata document."""
    _, series = _series_doc(doc, series_uid)
    study = {k: v for k, v in (doc.get("Study", {}).get("DICOM") or {}).items() if k != "Series"}
    return {"Patient": dict(doc.get("Patient", {}).get("DICOM") or {}), "Study": study,
            "Series": dict(series.get("DICOM") or {})}


def diff_metadata(primary: dict[str, Any], non_primary: dict[str, Any], key: bytes,
                  same_series: bool = True) -> list[AttributeDifference]:
    """Attributes that differ between the primary (old) and non-primary (new) metadata documents.

    Only names and fingerprints leave this function. Series-level attributes are compared only when both
    documents are of the same series (against another series of the study they differ by definition).
    """
    series_uid, _ = _series_doc(non_primary, None)
    old, new = levels_of(primary, series_uid if same_series else None), levels_of(non_primary, series_uid)
    out: list[AttributeDifference] = []
    for level in ("Patient", "Study", "Series"):
        if level == "Series" and not same_series:
            continue
        a, b = old[level], new[level]
        for name in sorted(set(a) | set(b)):
            if a.get(name) != b.get(name):
                out.append(AttributeDifference(
                    level=level, attribute=name, normalized=name in NORMALIZED_ATTRIBUTES[level],  # type: ignore[arg-type]
                    primary_fingerprint=fingerprint(key, level, name, a.get(name)),
                    non_primary_fingerprint=fingerprint(key, level, name, b.get(name))))
    # The causes first, then context.
    out.sort(key=lambda d: (not d.normalized, d.level, d.attribute))
    return out


def sop_uids(doc: dict[str, Any]) -> set[str]:
    found: set[str] = set()
    for series in (doc.get("Study", {}).get("Series", {}) or {}).values():
        found.update((series.get("Instances") or {}).keys())
    return found


def _busy(what: str, code: str) -> ApplicationError:
    """A locked set or a stale version: wait a moment and retry (the next attempt re-reads the version)."""
    attempt = activity.info().attempt if activity.in_activity() else 1
    delay = timedelta(seconds=min(30.0, 0.5 * attempt))
    return ApplicationError(f"{what}: {code} (image set busy, retrying)", type=ErrorType.IMAGE_SET_BUSY,
                            next_retry_delay=delay, category=ApplicationErrorCategory.BENIGN)


def _refused(why: str, verified: str | None = None) -> ReviewerVerdict:
    """A refusal; ``verified``: the identity whose attestation did verify (recorded as who tried)."""
    activity.logger.warning("reconciliation decision refused", extra={"why": why})
    return ReviewerVerdict(accepted=False, reviewer=verified, error=why)


def _fail(err: ClientError, what: str) -> ApplicationError:
    code = error_code(err)
    if code == ErrorType.CONFLICT:
        return _busy(what, code)
    return classify(err, what)


class ReconcileActivities:
    """Activities of `ReconciliationWorkflow`, bound to a `medical-imaging` and an `events` client.

    ``fingerprint_key`` (HIMIG_FINGERPRINT_KEY, at least 16 bytes) keys the value fingerprints, the same on every
    worker so that fingerprints are comparable across workers.

    ``attestation_key`` (``HIMIG_REVIEWER_ATTESTATION_KEY``) and ``reviewers`` (``HIMIG_RECONCILIATION_REVIEWERS``)
    decide who may decide: without the key no decision verifies, with no reviewers nobody may decide.
    """

    def __init__(self, medical_imaging: Any, events: Any, event_bus_name: str | None, *,
                 fingerprint_key: bytes, attestation_key: bytes | None = None,
                 reviewers: tuple[str, ...] = ()) -> None:
        self._mi = medical_imaging
        self._events = events
        self._bus = event_bus_name
        self._key = fingerprint_key_bytes(fingerprint_key)
        self._attestation_key = attestation_key
        self._reviewers = frozenset(reviewers)

    # ---- reads

    def _get(self, datastore_id: str, image_set_id: str) -> dict[str, Any]:
        try:
            got: dict[str, Any] = self._mi.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)
            return got
        except ClientError as err:
            raise _fail(err, "GetImageSet") from None

    def _metadata(self, datastore_id: str, image_set_id: str) -> dict[str, Any]:
        try:
            return get_image_set_metadata(self._mi, datastore_id, image_set_id)
        except ClientError as err:
            raise _fail(err, "GetImageSetMetadata") from None

    def _primaries(self, datastore_id: str, tag: str, value: str) -> list[dict[str, Any]]:
        criteria = {"filters": [{"operator": "EQUAL", "values": [{tag: value}]},
                                {"operator": "EQUAL", "values": [{"isPrimary": True}]}]}
        try:
            return [s for s in search_image_sets(self._mi, datastore_id, criteria) if s.get("isPrimary")]
        except ClientError as err:
            raise _fail(err, "SearchImageSets") from None

    @activity.defn(name="describe_conflict")
    def describe_conflict(self, input: ImageSetTarget) -> ConflictDescription:
        """Read the non-primary set and the current primary set of its series (else of its study) and list what
        differs. A set that is no longer ACTIVE and non-primary is described as such, without a diff."""
        props = self._get(input.datastore_id, input.image_set_id)
        base = ConflictDescription(datastore_id=input.datastore_id, image_set_id=input.image_set_id,
                                   image_set_state=str(props.get("imageSetState")),
                                   is_primary=bool(props.get("isPrimary")), version=str(props.get("versionId")),
                                   instances=0)
        if not base.reconcilable:
            return base
        doc = self._metadata(input.datastore_id, input.image_set_id)
        series_uid, _ = _series_doc(doc, None)
        study_uid = (doc.get("Study", {}).get("DICOM") or {}).get("StudyInstanceUID")
        base.instances = len(sop_uids(doc))
        for scope, tag, value in (("series", "DICOMSeriesInstanceUID", series_uid),
                                  ("study", "DICOMStudyInstanceUID", study_uid)):
            if not value:
                continue
            found = [s for s in self._primaries(input.datastore_id, tag, str(value))
                     if s["imageSetId"] != input.image_set_id]
            if found:
                # The most recently updated primary is the one imports compare against now.
                primary = max(found, key=lambda s: (s.get("updatedAt") or datetime.min, s["imageSetId"]))
                primary_doc = self._metadata(input.datastore_id, primary["imageSetId"])
                base.primary_image_set_id = primary["imageSetId"]
                base.primary_version = str(primary.get("version"))
                base.compared_with = "series" if scope == "series" else "study"
                base.differences = diff_metadata(primary_doc, doc, self._key, same_series=scope == "series")
                break
        return base

    @activity.defn(name="await_image_set")
    def await_image_set(self, input: ImageSetTarget) -> ImageSetStatus:
        """Succeeds once the set is out of its transient (LOCKED) state; polled by retry, like import jobs."""
        props = self._get(input.datastore_id, input.image_set_id)
        status = ImageSetStatus(image_set_id=input.image_set_id, state=str(props.get("imageSetState")),
                                workflow_status=str(props.get("imageSetWorkflowStatus")),
                                is_primary=bool(props.get("isPrimary")), version=str(props.get("versionId")))
        if status.workflow_status.endswith("_FAILED"):
            raise ApplicationError(f"image set {input.image_set_id} ended {status.workflow_status}",
                                   type=ErrorType.IMAGE_SET_MUTATION_FAILED, non_retryable=True)
        if status.state == "LOCKED":
            raise ApplicationError(f"image set {input.image_set_id} is {status.workflow_status}",
                                   type=ErrorType.IMAGE_SET_NOT_READY, next_retry_delay=timedelta(seconds=0.5),
                                   category=ApplicationErrorCategory.BENIGN)
        return status

    # ---- mutations

    @activity.defn(name="update_before_promote")
    def update_before_promote(self, input: UpdateFirstInput) -> UpdateFirstResult:
        """UpdateImageSetMetadata(force) with the operator's attributes. Skipped when the latest version already
        has them, so a retry after a lost response does not make a second version."""
        for attrs in input.attributes.values():
            # The operator's corrections are patient values too: never in a log line or this activity's failure.
            phi.register_mapping(attrs.items())
        props = self._get(input.datastore_id, input.image_set_id)
        version = str(props.get("versionId"))
        current = levels_of(self._metadata(input.datastore_id, input.image_set_id))
        wanted = {level: {k: v for k, v in attrs.items() if current.get(level, {}).get(k) != v}
                  for level, attrs in input.attributes.items()}
        wanted = {level: attrs for level, attrs in wanted.items() if attrs}
        if not wanted:
            return UpdateFirstResult(version=version, changed=False)
        blob = json.dumps({"SchemaVersion": 1.1, **{level: {"DICOM": attrs} for level, attrs in wanted.items()}})
        try:
            got = self._mi.update_image_set_metadata(
                datastoreId=input.datastore_id, imageSetId=input.image_set_id, latestVersionId=version, force=True,
                updateImageSetMetadataUpdates={"DICOMUpdates": {"updatableAttributes": blob.encode()}})
        except ClientError as err:
            raise _fail(err, "UpdateImageSetMetadata") from None
        return UpdateFirstResult(version=str(got.get("latestVersionId")), changed=True)

    def _existing_copy(self, input: PromoteInput, series_uid: str, sops: set[str]) -> str | None:
        not_before = input.not_before - CLOCK_SKEW
        for summary in self._primaries(input.datastore_id, "DICOMSeriesInstanceUID", series_uid):
            set_id = summary["imageSetId"]
            created = summary.get("createdAt")
            if set_id in (input.image_set_id, input.primary_image_set_id) or not isinstance(created, datetime):
                continue
            if created < not_before:
                continue
            if sops <= sop_uids(self._metadata(input.datastore_id, set_id)):
                return str(set_id)
        return None

    @activity.defn(name="promote_image_set")
    def promote_image_set(self, input: PromoteInput) -> PromoteResult:
        """CopyImageSet(promoteToPrimary, force) of the non-primary set → the id of the new primary set.

        CopyImageSet has no client token, so first look for the copy an earlier attempt may have made: a primary
        set of the same series, created after the decision, holding every instance of the source.
        """
        props = self._get(input.datastore_id, input.image_set_id)
        doc = self._metadata(input.datastore_id, input.image_set_id)
        series_uid, _ = _series_doc(doc, None)
        if series_uid is None:
            raise ApplicationError("the image set has no series", type=ErrorType.VALIDATION_ERROR, non_retryable=True)
        existing = self._existing_copy(input, series_uid, sop_uids(doc))
        if existing:
            activity.logger.info("reusing the primary copy made by an earlier attempt")
            return PromoteResult(image_set_id=existing, reused_existing=True)
        if props.get("imageSetState") == "LOCKED":
            raise _busy("CopyImageSet", "LOCKED")
        try:
            got = self._mi.copy_image_set(
                datastoreId=input.datastore_id, sourceImageSetId=input.image_set_id,
                copyImageSetInformation={"sourceImageSet": {"latestVersionId": str(props.get("versionId"))}},
                force=True, promoteToPrimary=True)
        except ClientError as err:
            raise _fail(err, "CopyImageSet") from None
        return PromoteResult(image_set_id=str(got["destinationImageSetProperties"]["imageSetId"]),
                             reused_existing=False)

    @activity.defn(name="delete_image_set")
    def delete_image_set(self, input: ImageSetTarget) -> DeleteResult:
        """DeleteImageSet; a set that is already deleting, deleted or gone counts as success."""
        try:
            got = self._mi.delete_image_set(datastoreId=input.datastore_id, imageSetId=input.image_set_id)
        except ClientError as err:
            code = error_code(err)
            if code == ErrorType.RESOURCE_NOT_FOUND:
                return DeleteResult(already_deleted=True)
            if code == ErrorType.CONFLICT:
                props = self._get(input.datastore_id, input.image_set_id)
                if props.get("imageSetState") == "DELETED" or props.get("imageSetWorkflowStatus") == "DELETING":
                    return DeleteResult(already_deleted=True)
            raise _fail(err, "DeleteImageSet") from None
        # Repeating DeleteImageSet answers the current DELETING/DELETED state instead of an error.
        return DeleteResult(already_deleted=got.get("imageSetState") == "DELETED")

    # ---- who decides

    @activity.defn(name="verify_reviewer")
    def verify_reviewer(self, input: ReviewerClaim) -> ReviewerVerdict:
        """The attested identity of a decision, if its attestation verifies for this namespace and that identity
        is in HIMIG_RECONCILIATION_REVIEWERS; otherwise why the decision is refused (never an error: a refusal
        is an answer, recorded by the workflow)."""
        if not input.identity or not input.attestation:
            return _refused("not attested: decide through the codec server (Temporal UI / temporal CLI with "
                            "--codec-endpoint)")
        if self._attestation_key is None:
            return _refused(f"the worker has no {attestation.KEY_VARIABLE}: no decision can be verified")
        try:
            digest = bytes.fromhex(input.payload_sha256)
        except ValueError:
            return _refused("attestation does not verify")
        namespace = activity.info().namespace
        if not attestation.verifies(self._attestation_key, namespace, input.identity, digest, input.attestation):
            return _refused("attestation does not verify")
        if not self._reviewers:
            return _refused(f"{attestation.REVIEWERS_VARIABLE} is empty: nobody may decide reconciliations",
                            input.identity)
        if input.identity not in self._reviewers:
            return _refused(f"{input.identity!r} is not in {attestation.REVIEWERS_VARIABLE}", input.identity)
        return ReviewerVerdict(accepted=True, reviewer=input.identity)

    # ---- escalation

    @activity.defn(name="publish_escalation")
    def publish_escalation(self, input: EscalationInput) -> bool:
        """One EventBridge event (ids only) saying a reconciliation waited too long; False when no bus is set."""
        if not self._bus:
            return False
        detail = {"datastoreId": input.datastore_id, "imageSetId": input.image_set_id,
                  "workflowId": input.workflow_id, "migrationId": input.migration_id, "batch": input.batch,
                  "waitingSeconds": input.waiting_seconds}
        try:
            resp = self._events.put_events(Entries=[{
                "Source": EVENT_SOURCE, "DetailType": ESCALATED_DETAIL_TYPE, "EventBusName": self._bus,
                "Resources": [], "Detail": json.dumps(detail, sort_keys=True)}])
        except ClientError as err:
            raise classify(err, "publishing the escalation event") from None
        if resp.get("FailedEntryCount"):
            raise ApplicationError("EventBridge rejected the escalation event", type=ErrorType.PUT_EVENTS_FAILED)
        return True
