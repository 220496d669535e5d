"""How fast the synthetic corpus generator writes files (`corpus.synthetic.generate_studies`).

The generator feeds every benchmark and the local demo, so it should write 10,000 small files in well under a
minute. Writes ``BENCH_N`` (default 2,000) 64x64 CT files to a temporary directory, ``BENCH_ROUNDS`` (default 3)
times, and prints the best round as files/s and seconds per 10,000 files (measured here, never asserted in a test).

    .venv/bin/python bench/corpus_generation.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corpus.synthetic import generate_studies

N = int(os.environ.get("BENCH_N", "2000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
PER_SERIES = 50


def one_round() -> tuple[int, float]:
    series = max(1, N // PER_SERIES)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        entries = generate_studies(Path(tmp), patients=series, studies_per_patient=1, series_per_study=1,
                                   instances_per_series=PER_SERIES)
        return len(entries), time.perf_counter() - t0


def main() -> None:
    results = [one_round() for _ in range(ROUNDS)]
    files, seconds = min(results, key=lambda r: r[1])
    print(f"synthetic corpus: {files} files (64x64 CT) in {seconds:.2f}s, best of {ROUNDS}: "
          f"{files / seconds:,.0f} files/s, {10_000 * seconds / files:.1f}s per 10,000 files")


if __name__ == "__main__":
    main()
