"""sample: the design of AWS's ingestion sample (aws-healthimaging-samples, dicom-ingestion-to-s3-healthimaging).

- A profiler (a Lambda per S3 notification, up to 100 at once) GETs each object and reads its header into a
  database; here a pool of ``PROFILERS`` threads and a dict.
- One import job per series, queued when the series is complete (its last file profiled), with the series'
  folder as ``inputS3Uri`` (the edge uploads study/series folders, so no copy); no bin-packing against the quotas.
- A job processor on a timer (an EventBridge schedule every minute): ``GetDICOMImportJob`` on each running job; on
  COMPLETED it reads SUCCESS/success.ndjson and calls ``GetImageSetMetadata`` once per image set to map it to its
  series; then it starts queued jobs up to 100 running, ``time.sleep(1)`` between starts, with no ``clientToken``.

The timer's minute is scaled as the emulator's job clock is to AWS's: an import job of a series takes minutes in
AWS and about a second in the emulator, so the tick is ``SAMPLE_POLL_SECONDS`` (default 1.0 = 60 s / 60)."""

from __future__ import annotations

import io
import os
import threading
import time
import warnings
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pydicom

from bench.baselines.common import Target, list_keys

POLL_SECONDS = float(os.environ.get("SAMPLE_POLL_SECONDS", "1.0"))
PROFILERS = 16
CONCURRENT_IMPORTS = 100
START_SPACING_SECONDS = 1.0  # the sample's time.sleep(1) between starts: real time, against the TPS quota


def _metadata(t: Target, image_set_id: str) -> None:
    for attempt in range(100):
        try:
            t.mi.get_image_set_metadata(datastoreId=t.datastore_id, imageSetId=image_set_id)["imageSetMetadataBlob"].read()
            return
        except t.mi.exceptions.ThrottlingException:
            time.sleep(min(0.05 * 2 ** attempt, 1.0))
    raise RuntimeError("GetImageSetMetadata stayed throttled")


def run(t: Target) -> int:
    keys = list_keys(t)  # the bench's stand-in for one S3 notification per object
    by_folder: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        by_folder[key.rsplit("/", 1)[0] + "/"].append(key)
    remaining = {folder: len(members) for folder, members in by_folder.items()}
    series_db: dict[str, dict[str, Any]] = {}
    queued: list[str] = []
    lock = threading.Lock()

    def profile(key: str) -> None:
        body = t.s3.get_object(Bucket=t.source_bucket, Key=key)["Body"].read()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(body), stop_before_pixels=True)
        folder = key.rsplit("/", 1)[0] + "/"
        with lock:
            series_db.setdefault(folder, {"study": ds.StudyInstanceUID, "series": ds.SeriesInstanceUID})
            remaining[folder] -= 1
            if remaining[folder] == 0:
                queued.append(folder)  # the series is complete: one Ahlijob row

    imported = 0
    running: dict[str, str] = {}
    profiling = ThreadPoolExecutor(PROFILERS)
    futures = [profiling.submit(profile, k) for k in keys]
    try:
        while True:
            tick = time.monotonic()
            for job_id in list(running):
                props = t.job(job_id)
                if props["jobStatus"] in ("COMPLETED", "FAILED"):
                    lines = t.successes(props)
                    imported += len(lines)
                    for image_set_id in {line["importResponse"]["imageSetId"] for line in lines
                                         if "importResponse" in line}:
                        _metadata(t, image_set_id)
                    del running[job_id]
            with lock:
                ready, queued[:] = list(queued), []
            for n, folder in enumerate(ready):
                if len(running) >= CONCURRENT_IMPORTS:
                    with lock:
                        queued[:0] = ready[n:]
                    break
                if n:
                    time.sleep(START_SPACING_SECONDS)
                running[t.start_job(f"{t.source_bucket}/{folder}", f"sample-{len(series_db)}-{n}")] = folder
            profiled = all(f.done() for f in futures)
            with lock:
                idle = not queued
            if profiled and idle and not running:
                break
            time.sleep(max(0.0, POLL_SECONDS - (time.monotonic() - tick)))
        for f in futures:
            f.result()
    finally:
        profiling.shutdown(wait=True)
    return imported
