"""C-STORE receive rate: instances/s from a sender through the receiver into moto S3 and Temporal.

The real receiver (`worker.receiver.StoreReceiver`) on 127.0.0.1, a real moto server for S3 and a real Temporal dev
server (payloads sealed as in production), each instance acknowledged only after its PutObject and its
`IngestWorkflow` signal-with-start (no worker runs the workflows: this measures the receive path). Senders:

- ``storescu``: ``python -m pynetdicom storescu`` over a directory, one association (process start included);
- 1 association / 4 associations: pynetdicom SCUs in threads, the same instances split between them.

Each is compared with the baseline of the same process doing nothing but PutObject of the same bytes to moto,
one after another and from 4 threads: the ratio says what the DICOM exchange, the header check and the hand-over
to Temporal cost on top of the S3 write that bounds any receiver.

    .venv/bin/python bench/receive_rate.py          (BENCH_INSTANCES=200, BENCH_STUDIES=4)
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import boto3
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from temporalio.testing import WorkflowEnvironment

from contracts import search
from contracts.ingest import IngestInput
from tests.support.dicom import make_instance, uid
from tests.support.servers import FAKE_AWS_ENV, free_port, start_moto
from worker.codec import KeyRing, data_converter
from worker.receiver import StoreReceiver
from worker.settings import ReceiverSettings

INSTANCES = int(os.environ.get("BENCH_INSTANCES", "200"))
STUDIES = int(os.environ.get("BENCH_STUDIES", "4"))
DATASTORE = "0" * 32


def send(port: int, bodies: list[Path]) -> int:
    """C-STORE every file over one association; return how many were acknowledged with 0x0000."""
    ae = AE(ae_title="BENCHSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="HIMIG")
    assert assoc.is_established, "the bench sender was refused"
    ok = 0
    try:
        for path in bodies:
            ok += int(assoc.send_c_store(path).Status) == 0
    finally:
        assoc.release()
    return ok


def scu_rate(port: int, files: list[Path], associations: int) -> float:
    shares = [files[i::associations] for i in range(associations)]
    started = time.perf_counter()
    with ThreadPoolExecutor(associations) as pool:
        acknowledged = sum(pool.map(lambda share: send(port, share), shares))
    elapsed = time.perf_counter() - started
    assert acknowledged == len(files), f"{len(files) - acknowledged} instances were not acknowledged"
    return len(files) / elapsed


def storescu_rate(port: int, directory: Path, count: int) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pynetdicom", "storescu", "127.0.0.1", str(port), str(directory),
                           "-r", "-aet", "BENCHSCU", "-aec", "HIMIG"], capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stdout + done.stderr
    return count / elapsed


def put_rate(s3: Any, bucket: str, files: list[Path], threads: int) -> float:
    bodies = [(f"baseline/{uuid.uuid4().hex}.dcm", path.read_bytes()) for path in files]
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda kb: s3.put_object(Bucket=bucket, Key=kb[0], Body=kb[1]), bodies))
    return len(bodies) / (time.perf_counter() - started)


async def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="himig-bench-receive-"))
    os.environ.update(FAKE_AWS_ENV)
    moto = start_moto(tmp / "logs")
    path = shutil.which("temporal", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=path, ui=False,
        data_converter=data_converter(KeyRing.parse(KeyRing.generate_entry("bench"))),
        dev_server_extra_args=["--sqlite-pragma", "journal_mode=wal", "--log-level", "error",
                               *search.dev_server_args()])
    try:
        s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(Bucket=bucket)
        studies = [uid() for _ in range(STUDIES)]
        directory = tmp / "instances"
        directory.mkdir()
        files = []
        for i in range(INSTANCES):
            files.append(directory / f"{i:05d}.dcm")
            files[-1].write_bytes(make_instance(studies[i % STUDIES], uid()))
        size = files[0].stat().st_size
        ingest = IngestInput(datastore_id=DATASTORE, source_s3_uri=f"s3://{bucket}/received/",
                             work_s3_uri=f"s3://{bucket}/work/")
        settings = ReceiverSettings(port=free_port(), allowed_calling_aes="BENCHSCU", max_associations=8)
        receiver = StoreReceiver(settings, ingest, s3, env.client, f"bench-{uuid.uuid4().hex[:6]}")
        receiver.start(asyncio.get_running_loop())
        try:
            print(f"{INSTANCES} instances of {size / 1000:.0f} KB in {STUDIES} studies; receiver -> moto S3 + "
                  "Temporal signal-with-start, acknowledged after both")
            base1 = await asyncio.to_thread(put_rate, s3, bucket, files, 1)
            base4 = await asyncio.to_thread(put_rate, s3, bucket, files, 4)
            print(f"  {'baseline: PutObject only, sequential':44}{base1:>8.1f} instances/s")
            print(f"  {'baseline: PutObject only, 4 threads':44}{base4:>8.1f} instances/s")
            rows = [("storescu (1 association, process start incl.)",
                     await asyncio.to_thread(storescu_rate, receiver.port, directory, INSTANCES), base1),
                    ("pynetdicom SCU, 1 association",
                     await asyncio.to_thread(scu_rate, receiver.port, files, 1), base1),
                    ("pynetdicom SCU, 4 associations",
                     await asyncio.to_thread(scu_rate, receiver.port, files, 4), base4)]
            for name, rate, base in rows:
                print(f"  {name:44}{rate:>8.1f} instances/s   ratio to its PutObject baseline {rate / base:.2f}")
            print(f"  receiver counters: {receiver.counters()}")
        finally:
            await asyncio.to_thread(receiver.stop)
    finally:
        await env.shutdown()
        moto.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
