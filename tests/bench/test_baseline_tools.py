"""The benchmark's own instruments: the S3 latency proxy must be transparent, count S3 requests only, and delay only
them; raw's job split must respect the files-per-job quota at every corpus shape."""

from __future__ import annotations

import time

import boto3
import pytest
from botocore.config import Config

from bench.baselines.common import MAX_FILES_PER_JOB
from bench.baselines.raw import job_prefixes
from bench.lib.latency_proxy import LatencyProxy, free_port


@pytest.fixture
def proxy(moto_url: str) -> LatencyProxy:
    upstream = int(moto_url.rsplit(":", 1)[1])
    p = LatencyProxy(free_port(), upstream, latency_ms=30).start()
    yield p
    p.stop()


def test_proxy_is_transparent_and_counts_only_s3(proxy: LatencyProxy) -> None:
    url = f"http://127.0.0.1:{proxy.server.server_address[1]}"
    cfg = Config(retries={"max_attempts": 1})
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", config=cfg)
    sqs = boto3.client("sqs", endpoint_url=url, region_name="us-east-1", config=cfg)
    s3.create_bucket(Bucket="proxy-check")
    body = bytes(range(256)) * 1000
    s3.put_object(Bucket="proxy-check", Key="a/b.dcm", Body=body)
    assert s3.get_object(Bucket="proxy-check", Key="a/b.dcm")["Body"].read() == body
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket="proxy-check", Key="missing")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="proxy-check")["Contents"]] == ["a/b.dcm"]
    queue = sqs.create_queue(QueueName="proxy-check")["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody="x")
    stats = proxy.state.stats()
    assert stats["s3_requests"] == 5, stats  # create, put, get, get (404), list
    assert stats["s3_by_method"] == {"PUT": 2, "GET": 3}
    assert stats["other_requests"] == 2  # SQS: neither counted nor delayed as S3

    proxy.state.reset()
    assert proxy.state.stats()["s3_requests"] == 0


def test_proxy_delays_s3_requests_only(proxy: LatencyProxy) -> None:
    url = f"http://127.0.0.1:{proxy.server.server_address[1]}"
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    s3.create_bucket(Bucket="proxy-delay")
    started = time.perf_counter()
    for _ in range(5):
        s3.head_bucket(Bucket="proxy-delay")
    # At least the injected latency per request (a lower bound, never an upper one: no wall-clock target).
    assert time.perf_counter() - started >= 5 * 0.030


@pytest.mark.parametrize("layout", [
    {"src/p1/st1/se1/": 1000},
    {"src/p1/st1/se1/": 5000},
    {f"src/p{p}/st1/se{s}/": 2500 for p in range(4) for s in range(2)},
    {f"src/p{p}/st{t}/se{s}/": 1700 for p in range(3) for t in range(2) for s in range(2)},
    {f"src/p{p}/st1/se{s}/": 5000 for p in range(10) for s in range(2)},
])
def test_raw_splits_only_along_folders_within_the_quota(layout: dict[str, int]) -> None:
    prefixes = job_prefixes("src/", layout)
    covered = {folder: [p for p in prefixes if folder.startswith(p)] for folder in layout}
    assert all(len(owners) == 1 for owners in covered.values()), covered  # every folder in exactly one job
    for p in prefixes:
        assert sum(n for folder, n in layout.items() if folder.startswith(p)) <= MAX_FILES_PER_JOB
    if sum(layout.values()) <= MAX_FILES_PER_JOB:
        assert prefixes == ["src/"]


def test_raw_refuses_a_folder_above_the_quota() -> None:
    with pytest.raises(RuntimeError, match="more than 5,000"):
        job_prefixes("src/", {"src/p1/se1/": 5001, "src/p2/se1/": 10})
