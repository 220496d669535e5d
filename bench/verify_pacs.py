"""What `himig verify` of a PACS costs: checked by its listing (the default) against pulled (``--pull``).

Corpus: ``BENCH_STUDIES`` (default 10) studies of ``BENCH_INSTANCES`` (default 20) synthetic CT instances
(pydicom's CT_small, ~38 KB) uploaded to a fresh Orthanc and, the same bytes, imported into a fresh data store on
the HealthImaging emulator (moto S3 underneath) with one StartDICOMImportJob. Then, in Temporal's
`ActivityEnvironment` (no server), the activities `SourceVerifyWorkflow` runs:

* listed, DICOMweb: `verify_listed_source` (QIDO-RS study search, one instance search per study);
* listed, DIMSE: the same through C-FIND (STUDY, then IMAGE level per study);
* pulled, DICOMweb: `receive_inventory` (WADO-RS of every study into a landing prefix) + `verify_pulled_source`
  (one ranged GET per landed file).

Prints per mode the wall time, the bytes written to S3 and the requests the check made; every mode must come out
clean. Orthanc listens on 0.0.0.0, so the script runs itself inside a private network namespace
(`tests/support/in_private_netns.sh`), like the test suite. Times are indicative (a shared machine).

    .venv/bin/python bench/verify_pacs.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from temporalio.testing import ActivityEnvironment  # noqa: E402

from activities.receive import ReceiveActivities  # noqa: E402
from activities.sources.registry import SourceSettings  # noqa: E402
from activities.verify import VerifyActivities  # noqa: E402
from contracts.sources import DicomwebSource, DimseSource  # noqa: E402
from contracts.stages import ReceiveInput  # noqa: E402
from contracts.verify import (  # noqa: E402
    PulledSourceInput,
    SourceVerifyInput,
    VerifyResult,
    verify_landing,
    verify_pull_id,
)
from tests.conftest import make_medical_imaging, make_s3  # noqa: E402
from tests.support.dicom import make_instance, uid  # noqa: E402
from tests.support.orthanc import ORTHANC_AET, OUR_AET, network_interfaces, skip_reason, start_orthanc  # noqa: E402
from tests.support.servers import FAKE_AWS_ENV, start_emulator, start_moto  # noqa: E402

STUDIES = int(os.environ.get("BENCH_STUDIES", "10"))
INSTANCES = int(os.environ.get("BENCH_INSTANCES", "20"))
ROLE = "arn:aws:iam::123456789012:role/bench-import"


def seed(orthanc: Any, s3: Any, mi: Any, bucket: str) -> str:
    """The corpus in Orthanc and, imported, in a data store of its own (returned)."""
    for n in range(STUDIES):
        study, series = uid(), uid()
        for i in range(INSTANCES):
            body = make_instance(study, series, patient_id=f"SYNTH-{n:04d}")
            orthanc.upload(body)
            s3.put_object(Bucket=bucket, Key=f"src/{n:04d}/{i:04d}.dcm", Body=body)
    ds = mi.create_datastore(datastoreName=bucket, clientToken=uuid.uuid4().hex)["datastoreId"]
    while mi.get_datastore(datastoreId=ds)["datastoreProperties"]["datastoreStatus"] != "ACTIVE":
        time.sleep(0.2)
    job = mi.start_dicom_import_job(datastoreId=ds, dataAccessRoleArn=ROLE, clientToken=uuid.uuid4().hex,
                                    inputS3Uri=f"s3://{bucket}/src/", outputS3Uri=f"s3://{bucket}/out/")["jobId"]
    while (status := mi.get_dicom_import_job(datastoreId=ds, jobId=job)["jobProperties"]["jobStatus"]) in (
            "SUBMITTED", "IN_PROGRESS"):
        time.sleep(0.5)
    assert status == "COMPLETED", status
    return str(ds)


def line(mode: str, r: VerifyResult, seconds: float, s3_bytes: int) -> None:
    ops = ", ".join(f"{op} {n}" for op, n in sorted(r.requests.items()))
    print(f"  {mode:18} {seconds:6.2f} s  clean={r.clean}  instances {r.instances_verified}/{r.instances_expected}"
          f"  bytes into S3 {s3_bytes:>10,}\n  {'':18} {ops}")


def main() -> None:
    reason = skip_reason()
    if reason:
        print(f"verify_pacs: skipped, Orthanc cannot run here: {reason}")
        return
    os.environ.update(FAKE_AWS_ENV)
    with tempfile.TemporaryDirectory() as tmp:
        orthanc = start_orthanc(Path(tmp) / "orthanc", Path(tmp))
        moto = start_moto(Path(tmp) / "logs")
        os.environ["AWS_ENDPOINT_URL_S3"] = moto.url
        emu = start_emulator(Path(tmp) / "emulator", moto.url, Path(tmp) / "logs")
        try:
            s3, mi = make_s3(moto.url), make_medical_imaging(emu.url)
            bucket = f"bench-{uuid.uuid4().hex[:8]}"
            s3.create_bucket(Bucket=bucket)
            ds = seed(orthanc, s3, mi, bucket)
            work = f"s3://{bucket}/w/"
            print(f"himig verify of a PACS: {STUDIES} studies x {INSTANCES} CT instances (~38 KB) in Orthanc, "
                  f"imported into the emulator; {os.cpu_count()} cores shared (times indicative)")
            verify = VerifyActivities(s3, mi, sources=SourceSettings())
            web = DicomwebSource(kind="dicomweb", url=orthanc.dicomweb)
            dimse = DimseSource(kind="dimse", host="127.0.0.1", port=orthanc.dicom_port, called_ae=ORTHANC_AET,
                                calling_ae=OUR_AET)
            for mode, connector in (("listed, DICOMweb", web), ("listed, DIMSE", dimse)):
                started = time.monotonic()
                r = ActivityEnvironment().run(verify.verify_listed_source, SourceVerifyInput(
                    source_connector=connector, datastore_id=ds, work_s3_uri=work))
                line(mode, r, time.monotonic() - started, 0)
            run = uuid.uuid4().hex
            request = SourceVerifyInput(source_connector=web, datastore_id=ds, work_s3_uri=work, pull=True)
            started = time.monotonic()
            received = ActivityEnvironment().run(ReceiveActivities(s3).receive_inventory, ReceiveInput(
                migration_id=verify_pull_id(run), source_s3_uri=verify_landing(work, run), work_s3_uri=work,
                page_size=1000, source_connector=web))
            r = ActivityEnvironment().run(verify.verify_pulled_source, PulledSourceInput(
                request=request, landing_s3_uri=verify_landing(work, run), pull_id=verify_pull_id(run)))
            line("pulled, DICOMweb", r, time.monotonic() - started, received.bytes)
        finally:
            emu.stop()
            moto.stop()
            orthanc.server.stop()


if __name__ == "__main__":
    if network_interfaces() != ["lo"] and os.environ.get("HIMIG_PRIVATE_NETNS") != "1":
        sys.exit(subprocess.call(["bash", str(ROOT / "tests/support/in_private_netns.sh"), sys.executable,
                                  *sys.argv]))
    main()
