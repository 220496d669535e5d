"""Staging copy lanes (activities/copy_lanes.py): a bound across batches, and the earliest staging served first."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from activities.copy_lanes import CopyLanes
from activities.importjob import ImportActivities
from contracts import layout
from contracts.batch import BatchInput
from contracts.records import InstanceRecord


@pytest.mark.parametrize("lanes", [0, -1, True, 1.5, "8", None])
def test_lanes_must_be_a_whole_number_of_at_least_one(lanes: Any) -> None:
    with pytest.raises(ValueError, match="lanes must be a whole number of at least 1"):
        CopyLanes(lanes)


def _wait_until(condition: Any) -> None:
    done = threading.Event()
    for _ in range(2000):
        if condition():
            return
        done.wait(0.005)
    raise AssertionError("condition never held")


def _waiting(lanes: CopyLanes) -> int:
    with lanes._cond:
        return len(lanes._waiting)


class TestOrder:
    def test_a_freed_lane_goes_to_the_earliest_staging_whatever_the_arrival_order(self) -> None:
        lanes = CopyLanes(1)
        first, second, third = lanes.staging(), lanes.staging(), lanes.staging()
        release = threading.Event()
        ran: list[tuple[int, int]] = []

        def copy(staging: int, n: int) -> None:
            with lanes.lane(staging):
                ran.append((staging, n))
                if n < 0:
                    release.wait(10)

        with ThreadPoolExecutor(16) as pool:
            pool.submit(copy, first, -1)  # holds the only lane until released
            _wait_until(lambda: ran == [(first, -1)])
            # The latest staging queues first, the earliest last.
            for staging in (third, second, first):
                for n in range(4):
                    pool.submit(copy, staging, n)
                _wait_until(lambda staging=staging: sum(1 for _ in ran) == 1 and _waiting(lanes) >= 4 * (
                    (third, second, first).index(staging) + 1))
            release.set()
        assert ran[1:] == [(s, n) for s in (first, second, third) for n in range(4)]

    def test_never_more_copies_than_lanes_and_every_copy_runs(self) -> None:
        lanes = CopyLanes(3)
        lock = threading.Lock()
        inside, peak, ran = 0, 0, 0

        def copy(staging: int) -> None:
            nonlocal inside, peak, ran
            with lanes.lane(staging):
                with lock:
                    inside += 1
                    peak = max(peak, inside)
                threading.Event().wait(0.001)
                with lock:
                    inside -= 1
                    ran += 1

        stagings = [lanes.staging() for _ in range(4)]
        with ThreadPoolExecutor(24) as pool:
            list(pool.map(copy, [s for s in stagings for _ in range(25)]))
        assert ran == 100 and 1 <= peak <= 3 and inside == 0
        assert lanes._free == 3 and not lanes._waiting

    def test_a_copy_that_raises_gives_its_lane_back(self) -> None:
        lanes = CopyLanes(1)
        staging = lanes.staging()
        with pytest.raises(RuntimeError), lanes.lane(staging):
            raise RuntimeError("copy failed")
        with lanes.lane(staging):
            assert lanes._free == 0
        assert lanes._free == 1


def _inst(key: str, etag: str) -> InstanceRecord:
    return InstanceRecord(key=key, size=1, etag=etag, sop_instance_uid=key, study_instance_uid="1",
                          series_instance_uid="1.1", transfer_syntax_uid="1.2.840.10008.1.2.1", sop_class_uid="1.2",
                          patient_fingerprint="p", study_fingerprint="s", series_fingerprint="se", content_id=key)


def test_two_batches_staged_at_once_share_the_lanes_and_the_first_is_staged_first(s3: Any) -> None:
    """Real staging against moto: CopyObject calls in flight are counted by botocore's own event hooks."""
    bucket = f"lanes-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    files = {b: [_inst(f"src/{b}/{i:03}.dcm", s3.put_object(Bucket=bucket, Key=f"src/{b}/{i:03}.dcm",
                                                              Body=f"{b}{i}".encode())["ETag"].strip('"'))
                 for i in range(30)] for b in (0, 1)}
    lock = threading.Lock()
    inside, peak, order = 0, 0, []
    first_copied = threading.Event()

    def before(params: dict[str, Any], **_: Any) -> None:
        nonlocal inside, peak
        with lock:
            inside += 1
            peak = max(peak, inside)
            # CopySource is a dict or, once botocore has serialized it, "bucket/key".
            order.append(str(params["CopySource"]).split("src/", 1)[1].split("/", 1)[0])
        first_copied.set()

    def after(**_: Any) -> None:
        nonlocal inside
        with lock:
            inside -= 1

    s3.meta.events.register("before-parameter-build.s3.CopyObject", before)
    s3.meta.events.register("after-call.s3.CopyObject", after)
    activities = ImportActivities(s3, None, "arn:aws:iam::000000000000:role/r", lanes=CopyLanes(2))
    migration = f"m-{uuid.uuid4().hex[:8]}"

    def stage(b: int) -> tuple[str, list[Any]]:
        batch = BatchInput(migration_id=migration, batch=b, source_s3_uri=f"s3://{bucket}/src/",
                           work_s3_uri=f"s3://{bucket}/work/", datastore_id="0" * 32)
        return activities._stage(batch, files[b])

    try:
        with ThreadPoolExecutor(2) as pool:
            a = pool.submit(stage, 0)
            assert first_copied.wait(30)
            b = pool.submit(stage, 1)
            results = [a.result(), b.result()]
    finally:
        s3.meta.events.unregister("before-parameter-build.s3.CopyObject", before)
        s3.meta.events.unregister("after-call.s3.CopyObject", after)
    assert [changed for _, changed in results] == [[], []]
    assert 1 <= peak <= 2
    assert order == ["0"] * 30 + ["1"] * 30
    for b in (0, 1):
        staging = layout.staging_prefix(f"s3://{bucket}/work/", migration, b, None)
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=staging.key)
        assert listed["KeyCount"] == 30
