"""C-GET against C-MOVE from a real Orthanc, one study at a time and several at once.

Corpus: ``BENCH_STUDIES`` (default 10) studies of ``BENCH_INSTANCES`` (default 20) synthetic CT instances
(pydicom's CT_small, ~38 KB) uploaded to a fresh Orthanc. Each mode pulls every study through
`DimseConnector.pull` (the connector the receive activity runs) into

* a landing that discards what it receives (the DICOM transport alone), and
* a fresh moto S3 (one PutObject per instance, what a migration pays),

sequentially and with ``parallel`` = 4 (`pull_all`'s window; bounded by the per-PACS semaphore). Prints
instances/s per mode and C-MOVE / C-GET ratios. Orthanc listens on 0.0.0.0, so the script runs itself inside a
private network namespace (`tests/support/in_private_netns.sh`), like the test suite.

    .venv/bin/python bench/pacs_retrieval.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402

from activities.sources import move_receiver  # noqa: E402
from activities.sources.common import Landing, PullCursor, pull_all  # noqa: E402
from activities.sources.dimse import DimseConnector  # noqa: E402
from activities.sources.move_receiver import MoveDestination  # noqa: E402
from contracts.s3uri import parse_s3_uri  # noqa: E402
from contracts.sources import DimseSource  # noqa: E402
from tests.support.dicom import make_instance, uid  # noqa: E402
from tests.support.orthanc import ORTHANC_AET, OUR_AET, network_interfaces, skip_reason, start_orthanc  # noqa: E402
from tests.support.servers import FAKE_AWS_ENV, free_port, start_moto  # noqa: E402

STUDIES = int(os.environ.get("BENCH_STUDIES", "10"))
INSTANCES = int(os.environ.get("BENCH_INSTANCES", "20"))


class Discard(Landing):
    """Counts what arrives and keeps nothing: the DICOM transport without S3."""

    def put(self, key: str, body: IO[bytes], size: int) -> None:
        with self._lock:
            self.objects += 1
            self.bytes_written += size


def run(connector: DimseConnector, studies: list[str], landing: Landing, s3: Any, work: str) -> float:
    """Instances per second pulling ``studies`` through the pull loop (its parallel window)."""

    class Listed:
        parallel = connector.parallel

        def describe(self) -> str:
            return connector.describe()

        def units(self) -> Any:
            return iter(studies)

        def pull(self, unit: str, landing: Landing) -> Any:
            return connector.pull(unit, landing)

        def probe(self) -> None:
            connector.probe()

        def unit_key(self, unit: str, landing: Landing) -> str:
            return connector.unit_key(unit, landing)

    start = time.perf_counter()
    pull_all(s3, Listed(), landing, work, f"bench-{uid()[-8:]}", PullCursor(), lambda _: None)
    elapsed = time.perf_counter() - start
    assert landing.objects == STUDIES * INSTANCES, (landing.objects, STUDIES * INSTANCES)
    return landing.objects / elapsed


def main() -> None:
    reason = skip_reason()
    if reason:
        print(f"pacs_retrieval: skipped, Orthanc cannot run here: {reason}")
        return
    os.environ.update(FAKE_AWS_ENV)
    with tempfile.TemporaryDirectory() as tmp:
        orthanc = start_orthanc(Path(tmp) / "orthanc", Path(tmp))
        moto = start_moto(Path(tmp))
        try:
            s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1",
                              config=Config(max_pool_connections=32))
            s3.create_bucket(Bucket="land")
            s3.create_bucket(Bucket="work")
            studies = [uid() for _ in range(STUDIES)]
            for study in studies:
                series = uid()
                for _ in range(INSTANCES):
                    orthanc.upload(make_instance(study, series))
            dest = MoveDestination("HIMIGBENCH", "127.0.0.1", free_port())
            orthanc.put_modality("bench", dest.ae_title, dest.port)
            print(f"{STUDIES} studies x {INSTANCES} CT instances (~38 KB) from Orthanc, "
                  f"{os.cpu_count()} cores shared")
            rates: dict[tuple[str, str, int], float] = {}
            for sink in ("transport", "moto S3"):
                for parallel in (1, 4):
                    for mode in ("get", "move"):
                        config = DimseSource(kind="dimse", host="127.0.0.1", port=orthanc.dicom_port,
                                             called_ae=ORTHANC_AET, calling_ae=OUR_AET, retrieve=mode,  # type: ignore[arg-type]
                                             parallel=parallel)
                        connector = DimseConnector(config, move=dest, retrievals_per_source=4)
                        prefix = parse_s3_uri(f"s3://land/{mode}-{parallel}-{uid()[-6:]}/").as_prefix()
                        landing = Discard(s3, prefix) if sink == "transport" else Landing(s3, prefix)
                        rate = run(connector, studies, landing, s3, "s3://work/runs/")
                        rates[(sink, mode, parallel)] = rate
                        print(f"  {sink:9}  C-{mode.upper():4}  parallel {parallel}:  {rate:7.1f} instances/s")
            for sink in ("transport", "moto S3"):
                for parallel in (1, 4):
                    ratio = rates[(sink, "move", parallel)] / rates[(sink, "get", parallel)]
                    print(f"  C-MOVE / C-GET, {sink}, parallel {parallel}: {ratio:.2f}")
        finally:
            move_receiver._receivers.clear()
            moto.stop()
            orthanc.server.stop()


if __name__ == "__main__":
    if network_interfaces() != ["lo"] and os.environ.get("HIMIG_PRIVATE_NETNS") != "1":
        sys.exit(subprocess.call(["bash", str(ROOT / "tests/support/in_private_netns.sh"), sys.executable,
                                  *sys.argv]))
    main()
