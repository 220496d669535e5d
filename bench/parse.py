"""Header-only parse through S3 against raw pydicom, on the same corpus, measured in the same run.

Corpus: N synthetic 512x512 CT files (~512 KB), the real pydicom test files of the sample corpus, and every
malformed file of the corpus generator (its truncated ones are the truncation targets). It is uploaded to a
fresh local moto S3, then:

* baseline ("raw"): for each object, one whole-object GET and ``dcmread(stop_before_pixels=True)``, with the same
  thread count; a file counts as caught when pydicom raises;
* ours: `ParseActivities.parse_headers` over the inventory pages (ranged 64 KiB GET, extended only when the
  header is longer; truncation probe), with its own request and byte counters;
* CPU only: ``parse_header`` vs ``dcmread(stop_before_pixels=True)`` on the same in-memory bytes, no S3.

Prints files/s and the ratio ours/raw (target >= 0.8), truncated files caught by each (target: all), bytes read
from S3 / corpus bytes (target <= 0.10) and GETs per file (target <= 1.1). ``BENCH_N`` (default 300) and
``BENCH_THREADS`` (default 8) configure it.

    .venv/bin/python bench/parse.py
"""

from __future__ import annotations

import io
import os
import secrets
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

import boto3
import pydicom
from botocore.config import Config

from activities.dicom_header import parse_header
from activities.parse import ParseActivities
from activities.storage import put_ndjson, read_models
from contracts import layout
from contracts.records import InventoryEntry, ParsedRecord
from contracts.stages import PageInput
from corpus.malformed import generate_malformed
from corpus.models import CorpusEntry
from corpus.real import select_real_files
from corpus.synthetic import generate_studies
from tests.support.servers import FAKE_AWS_ENV, start_moto

N = int(os.environ.get("BENCH_N", "300"))
THREADS = int(os.environ.get("BENCH_THREADS", "8"))
TRUNCATION_DEFECTS = {"truncated_in_meta", "truncated_mid_header", "truncated_before_pixeldata", "truncated_in_pixels",
                      "pixeldata_length_overrun", "element_length_overrun"}


def build_corpus(root: Path) -> list[CorpusEntry]:
    entries = generate_studies(root / "synthetic", patients=max(1, N // 50), studies_per_patient=1,
                               series_per_study=5, instances_per_series=10, rows=512, cols=512, seed=7)
    entries = [e.with_path("synthetic/" + e.path) for e in entries][:N]
    entries += [e.with_path("malformed/" + e.path) for e in generate_malformed(root / "malformed")]
    entries += [e.with_path("real/" + e.path.removeprefix("real/")) for e in select_real_files(root / "real")]
    return [e for e in entries if (root / e.path).is_file()]


def raw_read(s3: Any, bucket: str, key: str) -> bool:
    """Whole-object GET + dcmread(stop_before_pixels); True when pydicom raised (it caught a problem)."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pydicom.dcmread(io.BytesIO(body), stop_before_pixels=True)
        return False
    except Exception:
        return True


def main() -> None:
    os.environ.update(FAKE_AWS_ENV)
    tmp = Path(tempfile.mkdtemp(prefix="bench-parse-"))
    entries = build_corpus(tmp / "corpus")
    corpus_bytes = sum(e.size for e in entries)
    truncated = {e.path for e in entries if e.defect in TRUNCATION_DEFECTS}
    moto = start_moto(tmp / "logs")
    try:
        s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1",
                          config=Config(max_pool_connections=64))
        s3.create_bucket(Bucket="bench-src")
        s3.create_bucket(Bucket="bench-work")
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(lambda e: s3.put_object(Bucket="bench-src", Key=e.path,
                                                  Body=(tmp / "corpus" / e.path).read_bytes()), entries))
        inventory = [InventoryEntry(key=e.path, size=e.size) for e in entries]
        page_size = 1000
        pages = [inventory[i : i + page_size] for i in range(0, len(inventory), page_size)]
        for n, page in enumerate(pages):
            put_ndjson(s3, layout.inventory_page("s3://bench-work/", "bench", n), page)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(THREADS) as pool:
            raw_caught = dict(zip([e.path for e in entries],
                                  pool.map(lambda e: raw_read(s3, "bench-src", e.path), entries), strict=True))
        raw_s = time.perf_counter() - t0

        ours = ParseActivities(s3, THREADS, fingerprint_key=secrets.token_bytes(32))
        t0 = time.perf_counter()
        results = [ours.parse_headers(PageInput(migration_id="bench", work_s3_uri="s3://bench-work/", page=n,
                                                source_s3_uri="s3://bench-src/")) for n in range(len(pages))]
        ours_s = time.perf_counter() - t0
        records: list[ParsedRecord] = []
        for n in range(len(pages)):
            records += read_models(s3, layout.parsed_page("s3://bench-work/", "bench", n), ParsedRecord)
        ours_caught = {r.key for r in records if not r.readable or any(f.code == "truncated" for f in r.findings)}
        gets = sum(r.s3_requests for r in results)
        bytes_read = sum(r.bytes_read for r in results)

        blobs = [(tmp / "corpus" / e.path).read_bytes() for e in entries]
        t0 = time.perf_counter()
        for blob in blobs:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with contextlib.suppress(Exception):
                    pydicom.dcmread(io.BytesIO(blob), stop_before_pixels=True)
        cpu_raw = time.perf_counter() - t0
        t0 = time.perf_counter()
        for blob in blobs:
            parse_header(blob[:65536], len(blob)) if len(blob) > 65536 else parse_header(blob, len(blob))
        cpu_ours = time.perf_counter() - t0
    finally:
        moto.stop()

    n = len(entries)
    print(f"corpus: {n} files, {corpus_bytes / 1e6:.1f} MB ({len(truncated)} truncated), {THREADS} threads, moto S3")
    print(f"{'':24}{'files/s':>10}")
    print(f"{'raw GET+dcmread':24}{n / raw_s:>10.0f}")
    print(f"{'ours (parse activity)':24}{n / ours_s:>10.0f}   ratio ours/raw = {raw_s / ours_s:.2f} (target >= 0.8)")
    print(f"{'CPU raw dcmread':24}{n / cpu_raw:>10.0f}")
    print(f"{'CPU ours parse_header':24}{n / cpu_ours:>10.0f}   ratio = {cpu_raw / cpu_ours:.2f}")
    print(f"truncated caught: ours {len(truncated & ours_caught)}/{len(truncated)}, "
          f"raw dcmread {sum(raw_caught[p] for p in truncated)}/{len(truncated)} (target: all)")
    print(f"bytes read from S3 / corpus bytes: ours {bytes_read / corpus_bytes:.3f} (target <= 0.10), raw 1.000")
    print(f"GETs per file: ours {gets / n:.3f} (target <= 1.1), raw 1.000")


if __name__ == "__main__":
    main()
