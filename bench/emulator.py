"""Emulator import throughput against the raw S3 GET rate of the same objects, measured in the same run.

Starts its own moto server and emulator (127.0.0.1, free ports), uploads N small files (CT_small.dcm, ~39 KB) and
N larger ones (~512 KB synthetic 512x512 16-bit CT), then for each prefix:

* baseline: plain boto3 GETs of every object from moto with the emulator's thread count;
* emulator: one import job over the prefix, timed from StartDICOMImportJob to COMPLETED (polling).

Prints files/s for both, the ratio emulator/raw, the share of the emulator's worker time spent parsing vs
reading S3 (from ``/_emulator/stats``), and S3 GETs per file. ``BENCH_N`` (default 150) and ``BENCH_THREADS``
(default 8) configure it.

    .venv/bin/python bench/emulator.py
"""

from __future__ import annotations

import copy
import io
import json
import os
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import boto3
import pydicom
from botocore.config import Config
from pydicom.data import get_testdata_file

from tests.support.servers import FAKE_AWS_ENV, start_emulator, start_moto

N = int(os.environ.get("BENCH_N", "150"))
THREADS = int(os.environ.get("BENCH_THREADS", "8"))
ROLE = "arn:aws:iam::123456789012:role/bench"


def make_files(n: int, large: bool) -> list[bytes]:
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    if large:
        base.Rows = base.Columns = 512
        base.PixelData = os.urandom(512 * 512 * 2)
    out = []
    series = f"1.2.826.0.99.{int(large)}.1"
    for i in range(n):
        ds = copy.deepcopy(base) if i == 0 or not large else base  # large: reuse, only UIDs change
        ds.StudyInstanceUID = f"1.2.826.0.99.{int(large)}"
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = f"{series}.{i}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(buf.getvalue())
    return out


def stats_for(url: str, job_id: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/_emulator/stats?jobId={job_id}", timeout=30) as resp:
        job: dict[str, Any] = json.loads(resp.read())["jobs"][0]
    return job


def main() -> None:
    os.environ.update(FAKE_AWS_ENV)
    tmp = Path(tempfile.mkdtemp(prefix="bench-emulator-"))
    moto = start_moto(tmp / "logs")
    emu = start_emulator(tmp / "data", moto.url, tmp / "logs", extra_args=["--threads", str(THREADS), *os.environ.get("BENCH_EMULATOR_ARGS", "").split()])
    try:
        cfg = Config(max_pool_connections=THREADS + 4, retries={"mode": "standard", "max_attempts": 3})
        s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1", config=cfg)
        mi = boto3.client("medical-imaging", endpoint_url=emu.url, region_name="us-east-1",
                          config=Config(inject_host_prefix=False))
        s3.create_bucket(Bucket="bench-in")
        ds_id = mi.create_datastore(datastoreName="bench")["datastoreId"]
        while mi.get_datastore(datastoreId=ds_id)["datastoreProperties"]["datastoreStatus"] != "ACTIVE":
            time.sleep(0.05)
        print(f"N={N} files per set, {THREADS} threads, moto {moto.url}, emulator {emu.url}")
        print(f"{'set':<7}{'size':>9}{'raw GET/s':>11}{'import/s':>10}{'ratio':>7}{'parse%':>8}{'read%':>7}"
              f"{'store%':>8}{'GETs/file':>10}")
        for name, large in (("small", False), ("large", True)):
            files = make_files(N, large)
            prefix = f"{name}/"
            keys = [f"{prefix}{i:05d}.dcm" for i in range(N)]
            with ThreadPoolExecutor(THREADS) as pool:
                list(pool.map(lambda kv: s3.put_object(Bucket="bench-in", Key=kv[0], Body=kv[1]),
                              zip(keys, files, strict=True)))

            t = time.perf_counter()
            with ThreadPoolExecutor(THREADS) as pool:
                list(pool.map(lambda k: s3.get_object(Bucket="bench-in", Key=k)["Body"].read(), keys))
            raw_rate = N / (time.perf_counter() - t)

            t = time.perf_counter()
            job_id = mi.start_dicom_import_job(datastoreId=ds_id, dataAccessRoleArn=ROLE,
                                               inputS3Uri=f"s3://bench-in/{prefix}",
                                               outputS3Uri="s3://bench-in/out/")["jobId"]
            while True:
                status = mi.get_dicom_import_job(datastoreId=ds_id, jobId=job_id)["jobProperties"]["jobStatus"]
                if status in ("COMPLETED", "FAILED"):
                    break
                time.sleep(0.05)  # a polling client costs the emulator CPU too; real clients poll far slower
            emu_rate = N / (time.perf_counter() - t)
            st = stats_for(emu.url, job_id)
            busy = st["read_seconds"] + st["parse_seconds"] + st["store_seconds"]
            print(f"{name:<7}{len(files[0]) // 1024:>7}KB{raw_rate:>11.0f}{emu_rate:>10.0f}"
                  f"{emu_rate / raw_rate:>7.2f}{100 * st['parse_seconds'] / busy:>7.0f}%"
                  f"{100 * st['read_seconds'] / busy:>6.0f}%{100 * st['store_seconds'] / busy:>7.0f}%"
                  f"{st['s3_get_requests'] / st['files']:>10.2f}   [{status}, imported {st['imported']}]")
            print("    seconds:", {k: st[k] for k in ("list_seconds", "read_wall_seconds", "apply_seconds",
                                                "write_seconds", "parse_seconds", "read_seconds")})
    finally:
        emu.stop()
        moto.stop()


if __name__ == "__main__":
    main()
