"""What instance identity costs: the header fingerprint at parse, and comparing two copies at planning.

CPU only, in memory, on the sample corpus (real pydicom files, the synthetic hierarchy, every malformed kind, the
identity cases) plus CT_small re-encoded in four transfer syntaxes:

* parse: ``parse_header`` per file with the fingerprint key, and the share of it spent in ``dataset_fingerprint``
  (measured on the same headers, read once more outside the timing);
* compare: ``instance_identity.compare`` of a pair whose headers differ (ranged header reads only) and of a pair
  whose headers agree (whole files read and pixels compared), per pair.

Prints microseconds per file and the fingerprint's share of the parse (the target: a small fraction, since every
file pays it). ``BENCH_ROUNDS`` (default 5) repeats each measurement; the best round is reported.

    .venv/bin/python bench/identity.py
"""

from __future__ import annotations

import copy
import io
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian

from activities.dicom_header import parse_header
from activities.instance_identity import compare, dataset_fingerprint
from activities.normalize import to_instance
from contracts.records import InstanceRecord, ParsedRecord
from corpus.sample import build_sample_corpus

KEY = b"bench-identity-key-0123456789"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))


def best(fn: Callable[[], object]) -> float:
    times = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def corpus() -> list[bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        manifest = build_sample_corpus(Path(tmp))
        return [(Path(tmp) / e.path).read_bytes() for e in manifest.entries]


def record(key: str, data: bytes) -> InstanceRecord:
    result = parse_header(data, len(data), key, KEY)
    return to_instance(ParsedRecord(key=key, size=len(data), etag=key, readable=True,
                                    header_bytes=result.header_bytes, header_sha256=key, **result.values))


def encode(ds: pydicom.Dataset, syntax: str) -> bytes:
    ds = copy.deepcopy(ds)
    if syntax == ExplicitVRBigEndian:
        ds.PixelData = ds.pixel_array.astype(">i2").tobytes()
    ds.file_meta.TransferSyntaxUID = syntax
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True, little_endian=syntax != ExplicitVRBigEndian)
    return buf.getvalue()


def main() -> None:
    warnings.simplefilter("ignore")
    files = corpus()
    headers = []
    for data in files:
        try:
            headers.append(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True))
        except Exception:
            continue  # not DICOM: parse reports it without fingerprinting
    parse_s = best(lambda: [parse_header(d, len(d), "k", KEY) for d in files])
    plain_s = best(lambda: [parse_header(d, len(d), "k") for d in files])
    fp_s = best(lambda: [dataset_fingerprint(h, KEY) for h in headers])
    print(f"parse_header with the fingerprint key: {parse_s / len(files) * 1e6:8.1f} us/file over {len(files)} files")
    print(f"parse_header without a key:            {plain_s / len(files) * 1e6:8.1f} us/file")
    print(f"dataset_fingerprint alone:             {fp_s / len(headers) * 1e6:8.1f} us/header "
          f"({fp_s / parse_s:.1%} of the parse with the key)")
    # Per file, so one outlier (a 3,000-item sequence, a 2 MiB private element) does not stand for the rest.
    per_file = sorted(best(lambda h=h: dataset_fingerprint(h, KEY)) for h in headers)  # type: ignore[misc]
    median, worst = per_file[len(per_file) // 2], per_file[-1]
    print(f"dataset_fingerprint per header: median {median * 1e6:.1f} us, worst {worst * 1e3:.2f} ms")

    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    data = {"a": encode(ct, ExplicitVRLittleEndian), "b": encode(ct, ExplicitVRBigEndian)}
    changed = copy.deepcopy(ct)
    changed.SeriesDescription = "OTHER"
    data["c"] = encode(changed, ExplicitVRBigEndian)
    recs = {k: record(k, v) for k, v in data.items()}

    def fetch(key: str, size: int, want: int | None) -> bytes | None:
        return data[key] if want is None else data[key][:want]

    same_s = best(lambda: compare(recs["a"], recs["b"], fetch))
    diff_s = best(lambda: compare(recs["a"], recs["c"], fetch))
    print(f"compare, headers agree (whole files, pixels): {same_s * 1e3:7.2f} ms/pair ({len(data['a'])} bytes each)")
    print(f"compare, headers differ (ranged headers):     {diff_s * 1e3:7.2f} ms/pair")


if __name__ == "__main__":
    main()
