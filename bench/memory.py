"""Worker memory of planning and reporting from 10k to 1M files: flat, or growing with the migration?

For each size N it writes a migration's pages straight into a local moto S3 (no DICOM: normalized records,
inventory pages and per-batch ledgers are formatted as the stages write them, in a study/series tree of
1,200-file studies of four 300-file series, with 0.5 % identical copies so planning's dedupe runs), then runs,
each in a fresh subprocess so every peak is its own:

* ``plan``: `PlanActivities.plan_batches` (the streaming planner);
* ``report``: `ReportActivities.write_report` (the streaming report);
* ``old-plan`` / ``old-report``: the same activities as they were before they streamed (``BEFORE_REF``, loaded
  from git), for the sizes in ``BENCH_BEFORE`` only: at a million files they need gigabytes.

Printed per size and step: seconds, the process's RSS after imports, its peak RSS (``VmHWM``, /proc), the
peak above that baseline and the largest size of the local spill database (the disk it trades memory for); then the spread of the streaming peaks over the sizes (target: within ±20 %) and,
for planning, the share of batches and of files imported in place and the staging copies per file.

    .venv/bin/python bench/memory.py        (BENCH_SIZES=10000,100000,1000000  BENCH_BEFORE=10000,100000)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The last commit before planning and reporting streamed: what "old-" runs.
BEFORE_REF = "cbba559"
PAGE = 1000
SERIES_FILES, SERIES_PER_STUDY = 300, 4
BUCKET = "bench-memory"
SOURCE, WORK, MIGRATION = f"s3://{BUCKET}/src/", f"s3://{BUCKET}/w/", "bench"


def s3_client(url: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing", config=Config(max_pool_connections=16))


# -- writing a migration's pages --------------------------------------------------------------------------------

_RECORD = ('{{"key":"{key}","size":{size},"etag":"{etag}","sop_instance_uid":"{sop}","study_instance_uid":"{study}",'
           '"series_instance_uid":"{series}","transfer_syntax_uid":"1.2.840.10008.1.2.1",'
           '"sop_class_uid":"1.2.840.10008.5.1.4.1.1.2","patient_fingerprint":"{pf}","study_fingerprint":"5f1d0c2a9b7e",'
           '"series_fingerprint":"a93c4e0b21d7","content_id":"{size}:{etag}:0d5e","dataset_fingerprint":"{etag}",'
           '"header_bytes":1480,"warnings":[],"predicted_non_primary":false}}')
_LEDGER = ('{{"key":"{key}","state":"imported","size":{size},"batch":{batch},"job_id":"{job}","image_set_id":"{iset}",'
           '"is_primary":true,"study_instance_uid":"{study}","series_instance_uid":"{series}"}}')


def file_of(n: int) -> dict[str, Any]:
    """The n-th file of the tree (a copy of every 200th file lands in zz-copies/, after the originals by key, with the same content)."""
    per_study = SERIES_FILES * SERIES_PER_STUDY
    study, rest = divmod(n, per_study)
    series, instance = divmod(rest, SERIES_FILES)
    study_uid = f"1.2.826.0.1.3680043.10.1.{study}"
    series_uid = f"{study_uid}.{series}"
    return {"key": f"src/p{study:06d}/st001/se{series:03d}/{instance:05d}.dcm", "size": 9000 + n % 997,
            "etag": f"{n:032x}", "sop": f"{series_uid}.{instance}", "study": study_uid, "series": series_uid,
            "pf": f"{study:012x}"}


def write_migration(s3: Any, files: int) -> int:
    """Normalized, inventory and ledger pages for ``files`` source files; returns the page count."""
    copies = files // 200
    originals = files - copies
    keys: list[dict[str, Any]] = [file_of(n) for n in range(originals)]
    keys += [{**keys[n * 199], "key": f"src/zz-copies/{n:07d}.dcm"} for n in range(copies)]
    keys.sort(key=lambda f: f["key"])
    pages = -(-len(keys) // PAGE)
    from contracts import layout

    def put(n: int) -> None:
        chunk = keys[n * PAGE:(n + 1) * PAGE]
        normalized = "".join(_RECORD.format(**f) + "\n" for f in chunk).encode()
        inventory = "".join(json.dumps({"key": f["key"], "size": f["size"], "etag": f["etag"]}) + "\n"
                            for f in chunk).encode()
        ledger = "".join(_LEDGER.format(batch=n, job=f"job-{n}", iset=f"is-{f['series']}", **f) + "\n"
                         for f in chunk).encode()
        for loc, body in ((layout.normalized_page(WORK, MIGRATION, n), normalized),
                          (layout.inventory_page(WORK, MIGRATION, n), inventory),
                          (layout.ledger_for_batch(WORK, MIGRATION, n), ledger)):
            s3.put_object(Bucket=loc.bucket, Key=loc.key, Body=body)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(pages)))
    return pages


# -- one step in a child process ----------------------------------------------------------------------------------

def _old_module(name: str, tmp: Path) -> Any:
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{BEFORE_REF}:activities/{name}.py"],
                            check=True, capture_output=True, text=True).stdout
    path = tmp / f"old_{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"old_{name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up while the class is built)
    spec.loader.exec_module(module)
    return module


class DiskSampler:
    """The largest size the spill databases (``himig-*`` under ``tempfile.gettempdir()``) reach, sampled."""

    def __init__(self) -> None:
        import threading

        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        root = Path(tempfile.gettempdir())
        while not self._stop.wait(0.25):
            size = 0
            for path in root.glob("himig-*/*"):
                with contextlib.suppress(OSError):
                    size += path.stat().st_size
            self.peak = max(self.peak, size)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def child(step: str, url: str, pages: int) -> None:
    from bench.lib.procfs import status_kib
    from contracts.stages import PlanInput, ReportInput

    s3 = s3_client(url)
    disk = DiskSampler()
    with tempfile.TemporaryDirectory() as tmp:
        if step.startswith("old-"):
            module = _old_module("plan" if step == "old-plan" else "report", Path(tmp))
            plan_cls, report_cls = getattr(module, "PlanActivities", None), getattr(module, "ReportActivities", None)
        else:
            from activities.plan import PlanActivities as plan_cls
            from activities.report import ReportActivities as report_cls
        baseline = status_kib(os.getpid(), "VmRSS")
        started = time.perf_counter()
        if step.endswith("plan"):
            assert plan_cls is not None
            result = plan_cls(s3).plan_batches(PlanInput(
                migration_id=MIGRATION, source_s3_uri=SOURCE, work_s3_uri=WORK, pages=pages,
                max_files_per_batch=1000, max_bytes_per_batch=10 * 1024**3)).model_dump()
        else:
            assert report_cls is not None
            result = report_cls(s3).write_report(ReportInput(
                migration_id=MIGRATION, work_s3_uri=WORK, datastore_id="ds", inventory_pages=pages)).model_dump(
                mode="json")
        seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "baseline_kib": baseline, "peak_kib": status_kib(os.getpid(), "VmHWM"),
                      "disk_bytes": disk.stop(), "result": result}))


def run_step(step: str, url: str, pages: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:  # (its own TMPDIR: the disk sampler's view)
        done = subprocess.run([sys.executable, __file__, "--child", step, "--url", url, "--pages", str(pages)],
                              check=True, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": tmp})
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


# -- the driver ---------------------------------------------------------------------------------------------------

def main() -> None:
    from tests.support.servers import start_moto

    sizes = [int(s) for s in os.environ.get("BENCH_SIZES", "10000,100000,1000000").split(",") if s]
    before = {int(s) for s in os.environ.get("BENCH_BEFORE", "10000,100000").split(",") if s}
    peaks: dict[str, dict[int, float]] = {"plan": {}, "report": {}}
    with tempfile.TemporaryDirectory() as logs:
        moto = start_moto(Path(logs))
        try:
            for files in sizes:
                urllib.request.urlopen(urllib.request.Request(f"{moto.url}/moto-api/reset", method="POST")).read()
                s3 = s3_client(moto.url)
                s3.create_bucket(Bucket=BUCKET)
                t = time.perf_counter()
                pages = write_migration(s3, files)
                print(f"{files:>9,} files: pages written in {time.perf_counter() - t:.1f} s ({pages} pages)",
                      flush=True)
                steps = ["plan", "report"] + (["old-plan", "old-report"] if files in before else [])
                for step in steps:
                    r = run_step(step, moto.url, pages)
                    above = (r["peak_kib"] - r["baseline_kib"]) / 1024
                    print(f"{files:>9,} files  {step:<10} {r['seconds']:8.1f} s   RSS after imports "
                          f"{r['baseline_kib'] / 1024:6.0f} MiB   peak {r['peak_kib'] / 1024:6.0f} MiB "
                          f"(+{above:.0f})   local disk {r.get('disk_bytes', 0) / 1024**2:.0f} MiB", flush=True)
                    if step in peaks:
                        peaks[step][files] = r["peak_kib"] / 1024
                    if step == "plan":
                        res, direct = r["result"], _direct_files(s3, r["result"])
                        print(f"{'':>16}batches {res['batches']}, in place {res['direct_batches']} "
                              f"({res['direct_batches'] / max(1, res['batches']):.0%}); files in place "
                              f"{direct / max(1, res['files']):.1%}; staging copies per file "
                              f"{(res['files'] - direct) / files:.3f}", flush=True)
                    if step == "old-plan":
                        res = r["result"]
                        print(f"{'':>16}before: batches {res['batches']}, in place {res['direct_batches']}; "
                              f"staging copies per file {res['files'] / files:.3f} (every batch staged)"
                              if not res["direct_batches"] else f"{'':>16}before: in place {res['direct_batches']}",
                              flush=True)
        finally:
            moto.stop()
    for step, by_size in peaks.items():
        if len(by_size) > 1:
            low, high = min(by_size.values()), max(by_size.values())
            mid = (low + high) / 2
            print(f"{step}: peak RSS {low:.0f} to {high:.0f} MiB over {len(by_size)} sizes "
                  f"(±{(high - low) / 2 / mid:.0%} around {mid:.0f} MiB)")


def _direct_files(s3: Any, result: dict[str, Any]) -> int:
    """Files in batches imported in place (summed from the batch plans)."""
    from contracts import layout
    from contracts.stages import BatchPlan

    total = 0
    for n in range(result["batches"]):
        loc = layout.batch_meta(WORK, MIGRATION, n)
        plan = BatchPlan.model_validate_json(s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read())
        total += plan.files if plan.direct_input_s3_uri else 0
    return total


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["plan", "report", "old-plan", "old-report"])
    parser.add_argument("--url")
    parser.add_argument("--pages", type=int)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.url, args.pages)
    else:
        main()
