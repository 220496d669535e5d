"""Admission of import jobs: the start pacer learns the rate the service accepts (AIMD), and a start waits while
the data store runs its cap of jobs, counted by the service (ListDICOMImportJobs), whoever started them."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError
from temporalio.exceptions import ApplicationError

from activities.job_admission import StartPacer, free_job_slot, open_jobs
from tests.conftest import make_medical_imaging
from tests.support.dicom import make_instance, uid
from tests.support.settings import TEST_ENV


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def _throttle() -> None:
    raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "StartDICOMImportJob")


def test_pacer_adds_on_success_halves_on_throttling_and_spaces_starts() -> None:
    clock = FakeClock()
    pacer = StartPacer(initial_rate=1.0, max_rate=4.0, min_rate=0.25, increase=1.0, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        pacer.call(lambda: "job")
    assert pacer.rate == 4.0  # 1 → 2 → 3 → 4, then capped
    assert clock.slept == [1.0, 0.5, round(1 / 3, 6), 0.25]  # each start one interval (at the rate then) later
    with pytest.raises(ClientError):
        pacer.call(_throttle)
    assert pacer.rate == 2.0
    for _ in range(5):
        with pytest.raises(ClientError):
            pacer.call(_throttle)
    assert pacer.rate == 0.25  # never below the floor
    slept = len(clock.slept)
    pacer.call(lambda: "job")
    assert clock.slept[slept:] and clock.slept[-1] >= 4.0 - 1e-9  # the throttle's back-off holds the next start


def test_pacer_refuses_nonsense_rates() -> None:
    for bad in ({"initial_rate": 0}, {"initial_rate": 5, "max_rate": 1}, {"min_rate": 2, "initial_rate": 1}):
        with pytest.raises(ValueError):
            StartPacer(**bad)


def test_a_start_waits_while_the_datastore_runs_its_cap(held_emulator: str, held_datastore_id: str,
                                                         buckets: dict[str, Any]) -> None:
    mi = make_medical_imaging(held_emulator)
    s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
    s3.put_object(Bucket=src, Key="adm/0.dcm", Body=make_instance(uid(), uid()))
    name = f"other-tool-{uuid.uuid4().hex[:6]}"
    # A job started by someone else, held SUBMITTED by the manual clock.
    mi.start_dicom_import_job(jobName=name, datastoreId=held_datastore_id,
                              dataAccessRoleArn=TEST_ENV["HIMIG_DATA_ACCESS_ROLE_ARN"],
                              clientToken=uuid.uuid4().hex, inputS3Uri=f"s3://{src}/adm/",
                              outputS3Uri=f"s3://{work}/adm-out/")
    running = len(open_jobs(mi, held_datastore_id))
    assert running >= 1
    with pytest.raises(ApplicationError) as full:
        free_job_slot(mi, held_datastore_id, running, "himig-mine-batch-00000")
    assert full.value.type == "JobSlotsFull" and not full.value.non_retryable
    assert f"runs {running} import jobs (cap {running})" in str(full.value)
    free_job_slot(mi, held_datastore_id, running + 1, "himig-mine-batch-00000")  # room for one more
    free_job_slot(mi, held_datastore_id, running, name)  # a retried start of a running job is never held back
