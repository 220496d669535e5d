"""The botocore handlers that count S3 requests and throttles (`worker.metrics.instrument`) never change an AWS
call: not its answer, not its error, not even when the metric itself fails."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from tests.conftest import emulator_admin
from worker.aws import AwsClients
from worker.metrics import instrument
from worker.settings import Settings


class _Counter:
    def __init__(self, calls: list[tuple[int, dict[str, str]]], broken: bool) -> None:
        self._calls, self._broken = calls, broken

    def add(self, value: int, labels: dict[str, str] | None = None) -> None:
        if self._broken:
            raise RuntimeError("the metrics backend is gone")
        self._calls.append((value, dict(labels or {})))


class _Meter:
    """Stands in for the runtime's meter: records what each counter is given, or fails on every add."""

    def __init__(self, broken: bool = False) -> None:
        self.added: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self._broken = broken

    def create_counter(self, name: str, description: str | None = None, unit: str | None = None) -> _Counter:
        return _Counter(self.added.setdefault(name, []), self._broken)


def _clients(moto_url: str) -> AwsClients:
    return AwsClients.from_settings(Settings(s3_endpoint_url=moto_url, eventbridge_endpoint_url=moto_url))


class TestInstrument:
    def test_each_s3_request_is_counted_by_operation(self, moto_url: str) -> None:
        meter, clients = _Meter(), _clients(moto_url)
        instrument(meter, clients)  # type: ignore[arg-type]
        clients.s3.list_buckets()
        with pytest.raises(ClientError):
            clients.s3.head_object(Bucket="no-such-bucket-metrics", Key="k")
        assert meter.added["himig_s3_requests"] == [(1, {"operation": "ListBuckets"}),
                                                    (1, {"operation": "HeadObject"})]
        assert meter.added["himig_throttles"] == []

    def test_a_failing_metric_never_fails_the_call(self, moto_url: str) -> None:
        clients = _clients(moto_url)
        instrument(_Meter(broken=True), clients)  # type: ignore[arg-type]
        assert "Buckets" in clients.s3.list_buckets()
        with pytest.raises(ClientError) as caught:
            clients.s3.head_object(Bucket="no-such-bucket-metrics", Key="k")
        assert caught.value.response["Error"]["Code"] in ("404", "NoSuchBucket")

    def test_a_throttle_botocore_retries_is_counted_and_the_call_succeeds(self, moto_url: str,
                                                                         emulator_url: str) -> None:
        meter = _Meter()
        clients = AwsClients.from_settings(Settings(s3_endpoint_url=moto_url,
                                                    medical_imaging_endpoint_url=emulator_url))
        instrument(meter, clients)  # type: ignore[arg-type]
        emulator_admin(emulator_url, "faults", {"kind": "throttle", "operation": "ListDatastores", "count": 1})
        assert "datastoreSummaries" in clients.medical_imaging.list_datastores()
        assert meter.added["himig_throttles"] == [(1, {"service": "medical-imaging", "operation": "ListDatastores"})]
        assert meter.added["himig_s3_requests"] == []  # only the S3 client's calls are S3 requests
