"""What the C-STORE receiver (`worker.receiver`) writes: the keys of received instances and its rejection records.

A received instance lands at ``<ingest prefix>dimse/<sha256(StudyUID)[:16]>/<sha256(SOPUID)[:40]>.dcm``: the key is
derived from the UIDs, so a re-sent instance overwrites its own object (the ingest workflow then sees a newer ETag
or a duplicate), and holds no UID or patient value (workflow ids, logs and reports may show keys).

Every C-STORE the receiver refuses is recorded, one JSON object per refusal under
``<work>/receiver/rejected/<YYYY-MM-DD>/``: when, who sent it, the status returned, a code and a reason. The record
names the instance only by a hash of its SOP Instance UID; it never holds the dataset or a patient value.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from contracts.s3uri import S3Location, parse_s3_uri

RECEIVED_FOLDER = "dimse"
#: S3 user metadata on every object the receiver writes: the ingest listener leaves such objects alone, because
#: the receiver has already handed them to their `IngestWorkflow` (no double delivery when the bucket notifies too).
DELIVERY_METADATA = "himig-delivered-by"
DELIVERED_BY_RECEIVER = "dimse-receiver"


class StoreStatus:
    """C-STORE response statuses the receiver answers with (PS3.4 B.2.3; the C2xx codes are ours, in the range the
    standard leaves to the SCP for "cannot understand")."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700  # not stored (S3) or not handed to ingestion (Temporal), or shutting down: re-send
    DOES_NOT_MATCH = 0xA900  # the dataset's SOP Class / Instance UID is missing or differs from the request's
    CANNOT_UNDERSTAND = 0xC210  # not DICOM, unreadable, or truncated
    MISSING_UID = 0xC212  # no Study or Series Instance UID: it cannot be filed


class RejectionCode(StrEnum):
    """Why a C-STORE was refused (the ``code`` of a rejection record)."""

    UNREADABLE = "unreadable"  # not DICOM, a header that cannot be parsed, or noise after Pixel Data
    TRUNCATED = "truncated"  # the dataset ends inside an element (header or Pixel Data)
    SOP_MISMATCH = "sop_mismatch"  # SOP Class / Instance UID missing or not the request's
    MISSING_UID = "missing_uid"  # no Study or Series Instance UID
    NOT_STORED = "not_stored"  # PutObject failed
    NOT_HANDED_OVER = "not_handed_over"  # stored, but the IngestWorkflow signal failed: the sender must re-send
    SHUTTING_DOWN = "shutting_down"


class Rejection(BaseModel):
    """One refused C-STORE, as recorded in S3 (no dataset, no patient value, no UID in clear)."""

    at: datetime
    calling_ae: str
    called_ae: str
    peer: str = Field(description="the sender's IP address and port")
    status: str = Field(description="the C-STORE status returned, e.g. 0xC210")
    code: RejectionCode
    reason: str
    sop_class_uid: str | None = Field(None, description="the request's Affected SOP Class UID (not patient data)")
    sop_instance_hash: str | None = Field(None, description="sha256 of the request's SOP Instance UID, first 24 hex")
    bytes: int = Field(0, description="size of the dataset as received")
    stored_key: str | None = Field(None, description="set when the object was written before the refusal "
                                   "(not_handed_over): a re-send overwrites it")


def uid_hash(uid: str, length: int) -> str:
    return hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:length]


def received_key(ingest_prefix: S3Location, study_uid: str, sop_instance_uid: str) -> S3Location:
    """Where a received instance lands, under the watched ingest prefix (see the module docstring)."""
    prefix = ingest_prefix.as_prefix()
    return prefix.join(RECEIVED_FOLDER, uid_hash(study_uid, 16), f"{uid_hash(sop_instance_uid, 40)}.dcm")


def rejection_key(work_s3_uri: str, at: datetime, record_id: str) -> S3Location:
    """``<work>/receiver/rejected/<YYYY-MM-DD>/<HHMMSS.ffffff>-<id>.json``: listed by day, in time order."""
    work = parse_s3_uri(work_s3_uri, field="work_s3_uri").as_prefix()
    return work.join("receiver", "rejected", at.strftime("%Y-%m-%d"), f"{at.strftime('%H%M%S.%f')}-{record_id}.json")
