"""S3 edge cases of the parse and import activities, against the real moto server."""

from __future__ import annotations

import uuid
from typing import Any

from activities.importjob import ImportActivities
from activities.parse import ParseActivities, _RangeSizer
from contracts.records import InstanceRecord, InventoryEntry


def _bucket(s3: Any) -> str:
    name = f"edge-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    return name


def test_object_emptied_after_listing_is_a_finding_not_a_crash(s3: Any) -> None:
    bucket = _bucket(s3)
    s3.put_object(Bucket=bucket, Key="x.dcm", Body=b"")
    record = ParseActivities(s3)._read(bucket, InventoryEntry(key="x.dcm", size=4096), [0, 0], _RangeSizer())
    assert not record.readable and [f.code for f in record.findings] == ["zero_byte"]


def test_object_deleted_after_listing_is_a_finding(s3: Any) -> None:
    bucket = _bucket(s3)
    record = ParseActivities(s3)._read(bucket, InventoryEntry(key="gone.dcm", size=10), [0, 0], _RangeSizer())
    assert [f.code for f in record.findings] == ["source_missing"]


def _inst(key: str, etag: str) -> InstanceRecord:
    return InstanceRecord(key=key, size=1, etag=etag, sop_instance_uid=key, study_instance_uid="1",
                          series_instance_uid="1.1", transfer_syntax_uid="1.2.840.10008.1.2.1", sop_class_uid="1.2",
                          patient_fingerprint="p", study_fingerprint="s", series_fingerprint="se", content_id=key)


def test_in_place_import_only_when_the_folder_is_unchanged(s3: Any) -> None:
    bucket = _bucket(s3)
    etags = {k: s3.put_object(Bucket=bucket, Key=k, Body=k.encode())["ETag"].strip('"') for k in ("f/a", "f/b")}
    files = [_inst(k, e) for k, e in etags.items()]
    activities = ImportActivities(s3, None, "arn:aws:iam::000000000000:role/r")
    assert activities._folder_unchanged(f"s3://{bucket}/f/", files)
    s3.put_object(Bucket=bucket, Key="f/late-arrival", Body=b"new")
    assert not activities._folder_unchanged(f"s3://{bucket}/f/", files)
    s3.delete_object(Bucket=bucket, Key="f/late-arrival")
    s3.put_object(Bucket=bucket, Key="f/a", Body=b"rewritten")
    assert not activities._folder_unchanged(f"s3://{bucket}/f/", files)
