"""S3 requests per file in every pipeline stage, against a naive boto3 migration script, measured in one run.

The local S3 is request-bound (research/local-stack.md), and so is a real bucket at millions of files: what a
stage costs is mostly how many S3 requests it makes per file. This script runs the real stage activities in
pipeline order (receive → parse → validate → normalize → plan → import → await → review → route → report) on a
fresh moto S3 and the HealthImaging emulator, counting every S3 API call and the bytes that pass through the
worker, stage by stage. Two source layouts:

* ``clean``: every file valid, one folder per source → the batch is imported in place (no staging copy);
* ``mixed``: the same files plus the malformed corpus → the batch is staged by server-side copy.

Baseline ("naive"): the script most teams write first: list the prefix, GET each whole object and
``dcmread(stop_before_pixels=True)`` it, PUT it into a staging prefix, start one import job, poll it, read its
output. Its requests and bytes are counted the same way.

Prints requests per file per stage, the totals, and the ratios ours/naive for requests and worker bytes.
``BENCH_N`` (default 200 valid files) configures it.

    .venv/bin/python bench/stage_requests.py
"""

from __future__ import annotations

import io
import os
import secrets
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

import boto3
import pydicom
from botocore.config import Config

from activities.await_job import AwaitActivities
from activities.importjob import ImportActivities
from activities.normalize import NormalizeActivities
from activities.parse import ParseActivities
from activities.plan import PlanActivities
from activities.receive import ReceiveActivities
from activities.report import ReportActivities
from activities.review import ReviewActivities
from activities.route import RouteActivities
from activities.validate import ValidateActivities
from contracts.batch import BatchInput, ImportJobRef
from contracts.stages import PageInput, PlanInput, ReceiveInput, ReportInput, ReviewInput, RouteInput
from corpus.malformed import generate_malformed
from corpus.models import CorpusEntry
from corpus.synthetic import generate_studies
from tests.support.servers import FAKE_AWS_ENV, start_emulator, start_moto

N = int(os.environ.get("BENCH_N", "200"))
ROLE = "arn:aws:iam::000000000000:role/HealthImagingImportRole"
PAGE = 1000


class S3Meter:
    """Counts S3 API calls (by operation) and the bytes the worker moves, per named stage."""

    def __init__(self, s3: Any) -> None:
        self.stage = "setup"
        self.calls: dict[str, Counter[str]] = {}
        self.bytes: Counter[str] = Counter()
        self._lock = threading.Lock()
        s3.meta.events.register("before-call.s3", self._call)
        s3.meta.events.register("after-call.s3.GetObject", self._got)

    def _call(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        with self._lock:
            self.calls.setdefault(self.stage, Counter())[model.name] += 1
            body = params.get("body")
            if model.name in ("PutObject", "UploadPart") and isinstance(body, bytes | bytearray):
                self.bytes[self.stage] += len(body)

    def _got(self, parsed: dict[str, Any], **_: Any) -> None:
        with self._lock:
            self.bytes[self.stage] += int(parsed.get("ContentLength") or 0)

    def total(self, stage: str) -> int:
        return sum(self.calls.get(stage, Counter()).values())


def build_corpus(root: Path, mixed: bool) -> list[CorpusEntry]:
    per_series = 10
    patients = max(1, N // (2 * 2 * per_series))
    entries = generate_studies(root / "synthetic", patients=patients, studies_per_patient=2, series_per_study=2,
                               instances_per_series=per_series, rows=256, cols=256, seed=11)
    entries = [e.with_path("synthetic/" + e.path) for e in entries][:N]
    if mixed:
        entries += [e.with_path("malformed/" + e.path) for e in generate_malformed(root / "malformed")]
    return [e for e in entries if (root / e.path).is_file()]


def upload(s3: Any, bucket: str, prefix: str, root: Path, entries: list[CorpusEntry]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda e: s3.put_object(Bucket=bucket, Key=prefix + e.path,
                                              Body=(root / e.path).read_bytes()), entries))


def wait_job(mi: Any, datastore_id: str, job_id: str) -> dict[str, Any]:
    for _ in range(600):
        props = mi.get_dicom_import_job(datastoreId=datastore_id, jobId=job_id)["jobProperties"]
        if props["jobStatus"] in ("COMPLETED", "FAILED"):
            return dict(props)
        time.sleep(0.2)
    raise TimeoutError(f"import job {job_id} did not finish")


def run_ours(s3: Any, mi: Any, events: Any, meter: S3Meter, ds: str, source: str, work: str, mid: str) -> int:
    def stage(name: str, fn: Callable[[], Any]) -> Any:
        meter.stage = name
        return fn()

    received = stage("receive", lambda: ReceiveActivities(s3).receive_inventory(
        ReceiveInput(migration_id=mid, source_s3_uri=source, work_s3_uri=work, page_size=PAGE)))
    pages = [PageInput(migration_id=mid, work_s3_uri=work, page=p, source_s3_uri=source) for p in range(received.pages)]
    parse, validate, normalize = ParseActivities(s3, 8, fingerprint_key=secrets.token_bytes(32)), ValidateActivities(s3), NormalizeActivities(s3)
    stage("parse", lambda: [parse.parse_headers(p) for p in pages])
    stage("validate", lambda: [validate.validate_page(p) for p in pages])
    stage("normalize", lambda: [normalize.normalize_page(p) for p in pages])
    plan = stage("plan", lambda: PlanActivities(s3).plan_batches(PlanInput(
        migration_id=mid, source_s3_uri=source, work_s3_uri=work, pages=received.pages, max_files_per_batch=1000,
        max_bytes_per_batch=10 * 1000**3)))
    importer, waiter, reviewer = ImportActivities(s3, mi, ROLE, 8), AwaitActivities(mi), ReviewActivities(s3, mi)
    router = RouteActivities(s3, events, "default")
    for n in range(plan.batches):
        batch = BatchInput(migration_id=mid, batch=n, source_s3_uri=source, work_s3_uri=work, datastore_id=ds)
        job: ImportJobRef = stage("import", lambda b=batch: importer.start_import_job(b))
        meter.stage = "await"
        wait_job(mi, ds, job.job_id)
        outcome = waiter.await_import_job(job)
        review = stage("review", lambda b=batch, j=job, o=outcome: reviewer.review_manifest(
            ReviewInput(batch=b, job=j, outcome=o)))
        stage("route", lambda b=batch, r=review: router.route_batch(RouteInput(batch=b, review=r)))
    stage("report", lambda: ReportActivities(s3).write_report(ReportInput(
        migration_id=mid, work_s3_uri=work, datastore_id=ds, inventory_pages=received.pages)))
    return int(received.files)


def run_naive(s3: Any, mi: Any, meter: S3Meter, ds: str, bucket: str, prefix: str, work_bucket: str) -> int:
    """List, GET + parse each file whole, PUT it to staging, one import job, read its output."""
    meter.stage = "naive"
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]

    def one(key: str) -> None:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds_ = pydicom.dcmread(io.BytesIO(body), stop_before_pixels=True)
            if "SOPInstanceUID" not in ds_:
                return
        except Exception:
            return
        s3.put_object(Bucket=work_bucket, Key="naive-staging/" + key, Body=body)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, keys))
    job = mi.start_dicom_import_job(datastoreId=ds, dataAccessRoleArn=ROLE, clientToken="naive-0",
                                    inputS3Uri=f"s3://{work_bucket}/naive-staging/",
                                    outputS3Uri=f"s3://{work_bucket}/naive-output/")
    props = wait_job(mi, ds, job["jobId"])
    out = props["outputS3Uri"].removeprefix(f"s3://{work_bucket}/").rstrip("/") + "/"
    for name in ("job-output-manifest.json", "SUCCESS/success.ndjson", "FAILURE/failure.ndjson"):
        with contextlib.suppress(s3.exceptions.NoSuchKey):
            s3.get_object(Bucket=work_bucket, Key=out + name)["Body"].read()
    return len(keys)


STAGES = ["receive", "parse", "validate", "normalize", "plan", "import", "await", "review", "route", "report"]


def scenario(name: str, mixed: bool, tmp: Path, moto_url: str, emu_url: str) -> tuple[float, float, float, float]:
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1", config=Config(max_pool_connections=32))
    mi = boto3.client("medical-imaging", endpoint_url=emu_url, region_name="us-east-1",
                      config=Config(inject_host_prefix=False))
    events = boto3.client("events", endpoint_url=moto_url, region_name="us-east-1")
    src, work = f"src-{name}", f"work-{name}"
    s3.create_bucket(Bucket=src)
    s3.create_bucket(Bucket=work)
    root = tmp / name
    entries = build_corpus(root, mixed)
    upload(s3, src, "ours/", root, entries)
    upload(s3, src, "naive/", root, entries)
    ds = mi.create_datastore(datastoreName=f"bench-{name}")["datastoreId"]
    while mi.get_datastore(datastoreId=ds)["datastoreProperties"]["datastoreStatus"] != "ACTIVE":
        time.sleep(0.1)

    meter = S3Meter(s3)
    files = run_ours(s3, mi, events, meter, ds, f"s3://{src}/ours/", f"s3://{work}/m/", f"bench-{name}")
    corpus_bytes = sum(e.size for e in entries)
    ours = sum(meter.total(s) for s in STAGES)
    ours_bytes = sum(meter.bytes[s] for s in STAGES)
    run_naive(s3, mi, meter, ds, src, "naive/", work)
    naive, naive_bytes = meter.total("naive"), meter.bytes["naive"]

    print(f"\n[{name}] {files} files, {corpus_bytes / 1e6:.1f} MB"
          f" ({'valid + malformed: staged by server-side copy' if mixed else 'all valid: imported in place'})")
    print(f"  {'stage':10}{'S3 requests':>12}{'per file':>10}{'worker MB':>11}   calls")
    for s in STAGES:
        calls = meter.calls.get(s, Counter())
        detail = ", ".join(f"{op} {n}" for op, n in sorted(calls.items()))
        print(f"  {s:10}{meter.total(s):>12}{meter.total(s) / files:>10.3f}{meter.bytes[s] / 1e6:>11.2f}   {detail}")
    print(f"  {'ours':10}{ours:>12}{ours / files:>10.3f}{ours_bytes / 1e6:>11.2f}")
    print(f"  {'naive':10}{naive:>12}{naive / files:>10.3f}{naive_bytes / 1e6:>11.2f}   "
          + ", ".join(f"{op} {n}" for op, n in sorted(meter.calls.get('naive', Counter()).items())))
    print(f"  ratio ours/naive: S3 requests {ours / naive:.2f}, bytes through the worker {ours_bytes / naive_bytes:.3f}")
    return ours / files, naive / files, ours_bytes / corpus_bytes, naive_bytes / corpus_bytes


def main() -> None:
    os.environ.update(FAKE_AWS_ENV)
    tmp = Path(tempfile.mkdtemp(prefix="bench-requests-"))
    moto = start_moto(tmp / "logs")
    emu = start_emulator(tmp / "emulator", moto.url, tmp / "logs")
    try:
        os.environ["AWS_ENDPOINT_URL_S3"] = moto.url
        results = {name: scenario(name, mixed, tmp, moto.url, emu.url) for name, mixed in (("clean", False),
                                                                                         ("mixed", True))}
    finally:
        emu.stop()
        moto.stop()
    print("\nsummary (per file):")
    for name, (ours, naive, ob, nb) in results.items():
        print(f"  {name:6} S3 requests ours {ours:.3f} vs naive {naive:.3f} (ratio {ours / naive:.2f}); "
              f"bytes through the worker / corpus bytes ours {ob:.3f} vs naive {nb:.3f}")


if __name__ == "__main__":
    main()
