"""S3 edge cases of the parse and import activities, against the real moto server."""

from __future__ import annotations

import struct
import uuid
from typing import Any

from activities.dicom_header import TAIL_CAP, check_tail, parse_header
from activities.importjob import ImportActivities, source_changed
from activities.parse import ParseActivities, _RangeSizer
from activities.storage import object_size
from contracts.records import InstanceRecord, InventoryEntry
from tests.support.dicom import make_instance, uid
from tests.support.settings import FINGERPRINT_KEY


def _bucket(s3: Any) -> str:
    name = f"edge-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    return name


def test_object_emptied_after_listing_is_a_finding_not_a_crash(s3: Any) -> None:
    bucket = _bucket(s3)
    s3.put_object(Bucket=bucket, Key="x.dcm", Body=b"")
    record = ParseActivities(s3, fingerprint_key=FINGERPRINT_KEY.encode())._read(bucket, InventoryEntry(key="x.dcm", size=4096), [0, 0], _RangeSizer())
    assert not record.readable and [f.code for f in record.findings] == ["zero_byte"]



def test_object_size_comes_from_content_range_of_a_ranged_get(s3: Any) -> None:
    bucket = _bucket(s3)
    s3.put_object(Bucket=bucket, Key="x.dcm", Body=b"0123456789")
    assert object_size(s3.get_object(Bucket=bucket, Key="x.dcm", Range="bytes=0-3"), 4) == 10
    assert object_size(s3.get_object(Bucket=bucket, Key="x.dcm"), 10) == 10  # no Content-Range: the fallback
    assert object_size({"ContentRange": None}, 7) == 7


def test_object_deleted_after_listing_is_a_finding(s3: Any) -> None:
    bucket = _bucket(s3)
    record = ParseActivities(s3, fingerprint_key=FINGERPRINT_KEY.encode())._read(bucket, InventoryEntry(key="gone.dcm", size=10), [0, 0], _RangeSizer())
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


class _SmallFirstRange(_RangeSizer):
    """The first ranged GET covers only the header, as it does for large images, so a tail is never in it."""

    def first(self) -> int:
        return 8192


def _parse_with_tail(s3: Any, tail: bytes, padding_rejected: bool = False) -> tuple[list[tuple[str, str]], int]:
    bucket = _bucket(s3)
    data = make_instance(uid(), uid())  # CT_small ends with 138 bytes of Data Set Trailing Padding: cut them
    end = parse_header(data[:8192], len(data)).tail_start
    assert end is not None and check_tail(data[end:]) is None
    data = data[:end] + tail
    s3.put_object(Bucket=bucket, Key="t.dcm", Body=data)
    counter = [0, 0]
    record = ParseActivities(s3, fingerprint_key=FINGERPRINT_KEY.encode(), padding_rejected=padding_rejected)._read(
        bucket, InventoryEntry(key="t.dcm", size=len(data)), counter, _SmallFirstRange())
    assert record.readable
    return [(f.code, f.severity.value) for f in record.findings if f.severity != "warning" or "trailing" in f.code], counter[0]


def test_garbage_after_pixel_data_is_caught_with_one_extra_get(s3: Any) -> None:
    findings, gets = _parse_with_tail(s3, b"\x08\x00" + bytes(range(256)) * 4)
    assert findings == [("trailing_garbage", "error")] and gets == 2


def test_trailing_padding_after_pixel_data_passes(s3: Any) -> None:
    padding = struct.pack("<HH2sHI", 0xFFFC, 0xFFFC, b"OB", 0, 512) + b"\0" * 512
    findings, gets = _parse_with_tail(s3, padding)
    assert findings == [] and gets == 2
    findings, gets = _parse_with_tail(s3, padding, padding_rejected=True)  # the element is never rejected
    assert findings == [] and gets == 2
    findings, _ = _parse_with_tail(s3, b"\0" * 300)  # bare zero padding: noted, imported
    assert findings == [("trailing_padding", "info")]


def test_bare_zero_padding_is_rejected_at_parse_when_the_import_rejects_it(s3: Any) -> None:
    findings, gets = _parse_with_tail(s3, b"\0" * 8, padding_rejected=True)
    assert findings == [("trailing_padding_rejected", "error")] and gets == 2


def test_a_large_tail_is_not_fetched_but_reported(s3: Any) -> None:
    findings, gets = _parse_with_tail(s3, b"\x08\x00" + b"\x01" * (TAIL_CAP + 10))
    assert findings == [("trailing_data_not_inspected", "warning")] and gets == 1


def test_no_tail_no_extra_get(s3: Any) -> None:
    findings, gets = _parse_with_tail(s3, b"")
    assert findings == [] and gets == 1


def test_staging_copy_refuses_a_rewritten_source(s3: Any) -> None:
    bucket = _bucket(s3)
    etag = s3.put_object(Bucket=bucket, Key="src/a.dcm", Body=b"validated bytes")["ETag"].strip('"')
    inst = _inst("src/a.dcm", etag)
    assert source_changed(s3, bucket, "staging/src/a.dcm", bucket, inst) is None
    assert s3.get_object(Bucket=bucket, Key="staging/src/a.dcm")["Body"].read() == b"validated bytes"
    s3.put_object(Bucket=bucket, Key="src/a.dcm", Body=b"rewritten after validation")
    reason = source_changed(s3, bucket, "staging/src/a.dcm", bucket, inst)
    assert reason and "rewritten" in reason
    # The copy an earlier attempt made is gone, so the import job cannot read stale or unvalidated bytes.
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="staging/")
    s3.delete_object(Bucket=bucket, Key="src/a.dcm")
    assert "deleted" in (source_changed(s3, bucket, "staging/src/a.dcm", bucket, inst) or "")


def test_multipart_etags_are_left_to_the_copy_condition(s3: Any) -> None:
    """A multipart source's ETag is not an MD5, so the copy's ETag cannot be compared: no false SourceChanged."""
    bucket = _bucket(s3)
    upload = s3.create_multipart_upload(Bucket=bucket, Key="src/m.dcm")["UploadId"]
    part = s3.upload_part(Bucket=bucket, Key="src/m.dcm", UploadId=upload, PartNumber=1, Body=b"x")["ETag"]
    etag = s3.complete_multipart_upload(Bucket=bucket, Key="src/m.dcm", UploadId=upload, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": part}]})["ETag"].strip('"')
    assert etag.endswith("-1")
    assert source_changed(s3, bucket, "staging/src/m.dcm", bucket, _inst("src/m.dcm", etag)) is None
    assert s3.get_object(Bucket=bucket, Key="staging/src/m.dcm")["Body"].read() == b"x"
