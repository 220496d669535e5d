"""What `himig verify` costs: requests and touches per 1,000 instances, measured in one run.

Imports ``BENCH_N`` synthetic instances (default 1,000) into a fresh data store on the HealthImaging emulator
(moto S3 underneath) with one StartDICOMImportJob, then runs the real `verify_source` activity (in Temporal's
`ActivityEnvironment`, no server needed) in each mode and prints the requests it made by operation and the touches
(GetImageSetMetadata, GetImageFrame), per 1,000 instances, for two layouts of the same count:

* ``few-studies``: 10 studies of one series each (100 instances per image set);
* ``many-studies``: BENCH_N / 10 studies of one series each (10 instances per image set).

The same import is then written up as a finished migration (its report lines from the job's success.ndjson,
its normalized records from the generated UIDs) and `verify_migration` runs over it in the same modes.

A source's no-touch check costs one ranged GET per file (the headers) plus one SearchImageSets per study; a
migration's, one GetImageSet per image set plus one SearchImageSets per study. Deep adds one GetImageSetMetadata
per image set; ``--attribute`` (migration) one ranged GET per file; ``--pixels N`` one GetImageFrame per frame of
the N sampled instances and one whole GET of each sampled source file.

    .venv/bin/python bench/verify_cost.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from temporalio.testing import ActivityEnvironment

from activities.storage import iter_ndjson, list_objects, put_json, put_ndjson
from activities.verify import VerifyActivities
from contracts import layout
from contracts.s3uri import S3Location
from contracts.verify import SourceVerifyInput, VerifyInput, VerifyResult
from tests.conftest import make_medical_imaging, make_s3
from tests.support.dicom import make_instance, uid
from tests.support.servers import FAKE_AWS_ENV, start_emulator, start_moto

N = int(os.environ.get("BENCH_N", "1000"))
ROLE = "arn:aws:iam::123456789012:role/bench-import"


@contextmanager
def local_stack() -> Iterator[tuple[Any, Any]]:
    os.environ.update(FAKE_AWS_ENV)
    tmp = Path(tempfile.mkdtemp(prefix="bench-verify-"))
    moto = start_moto(tmp / "logs")
    os.environ["AWS_ENDPOINT_URL_S3"] = moto.url
    emu = start_emulator(tmp / "emulator", moto.url, tmp / "logs")
    try:
        yield make_s3(moto.url), make_medical_imaging(emu.url)
    finally:
        emu.stop()
        moto.stop()


def imported(s3: Any, mi: Any, studies: int) -> tuple[SourceVerifyInput, VerifyInput]:
    """A source of N instances in ``studies`` studies, imported into a data store of its own; and that import
    written up as a finished migration."""
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    per = N // studies
    files = [(f"src/s{n:04d}/{i:04d}.dcm", study, series, uid()) for n, (study, series) in
             enumerate((uid(), uid()) for _ in range(studies)) for i in range(per)]
    # make_instance is not thread-safe: the bodies are made here, only the PUTs run in threads.
    bodies = [(key, make_instance(study, series, sop)) for key, study, series, sop in files]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda f: s3.put_object(Bucket=bucket, Key=f[0], Body=f[1]), bodies))
    ds = mi.create_datastore(datastoreName=bucket, clientToken=uuid.uuid4().hex)["datastoreId"]
    while mi.get_datastore(datastoreId=ds)["datastoreProperties"]["datastoreStatus"] != "ACTIVE":
        time.sleep(0.2)
    job = mi.start_dicom_import_job(datastoreId=ds, dataAccessRoleArn=ROLE, clientToken=uuid.uuid4().hex,
                                    inputS3Uri=f"s3://{bucket}/src/", outputS3Uri=f"s3://{bucket}/out/")["jobId"]
    while (status := mi.get_dicom_import_job(datastoreId=ds, jobId=job)["jobProperties"]["jobStatus"]) in (
            "SUBMITTED", "IN_PROGRESS"):
        time.sleep(0.5)
    assert status == "COMPLETED", status
    work, mid = f"s3://{bucket}/w/", "bench-migration"
    success = next(o["Key"] for o in list_objects(s3, S3Location(bucket, "out/")) if o["Key"].endswith("success.ndjson"))
    landed = {row["inputFile"]: row["importResponse"] for row in iter_ndjson(s3, S3Location(bucket, success))}
    put_json(s3, layout.report_document(work, mid), {"migration_id": mid})
    put_ndjson(s3, layout.report_files(work, mid), [
        {"key": key, "state": "imported", "image_set_id": landed[key]["imageSetId"],
         "is_primary": landed[key]["isPrimary"]} for key, *_ in files])
    put_ndjson(s3, layout.normalized_page(work, mid, 0), [
        {"key": key, "study_instance_uid": study, "series_instance_uid": series, "sop_instance_uid": sop}
        for key, study, series, sop in files])
    source = SourceVerifyInput(source_s3_uri=f"s3://{bucket}/src/", datastore_id=ds, work_s3_uri=work)
    return source, VerifyInput(migration_id=mid, datastore_id=ds, work_s3_uri=work, source_s3_uri=source.source_s3_uri)


def report(layout: str, mode: str, r: VerifyResult, seconds: float) -> None:
    per = 1000 / max(1, r.instances_expected)
    ops = ", ".join(f"{op} {n * per:.1f}" for op, n in sorted(r.requests.items()))
    print(f"  {layout:23}{mode:15} requests/1k {sum(r.requests.values()) * per:8.1f}  touches/1k {r.touches * per:6.1f}"
          f"  (deep would touch {r.touches_for_deep * per:.1f}/1k)  clean={r.clean}  {seconds:5.1f} s\n"
          f"  {'':38}{ops}\n  {'':38}instances {r.instances_expected}, verified {r.instances_verified}")


def main() -> None:
    print(f"himig verify, {N} instances, emulator + moto on this machine (shared; times are indicative only)")
    with local_stack() as (s3, mi):
        acts = VerifyActivities(s3, mi)
        for shape, studies in (("few-studies", 10), ("many-studies", max(1, N // 10))):
            source, migration = imported(s3, mi, studies)
            for mode, extra in (("default", {}), ("deep", {"deep": True}),
                                ("deep+attribute", {"deep": True, "attributes": ["Modality"]}),
                                ("deep+pixels10", {"deep": True, "pixels": 10})):
                for what, fn, base in (("source", acts.verify_source, source),
                                       ("migration", acts.verify_migration, migration)):
                    if what == "source" and mode == "deep+attribute":
                        continue  # a source's headers are read anyway: attributes cost nothing more
                    started = time.monotonic()
                    result = ActivityEnvironment().run(fn, base.model_copy(update=extra))
                    report(f"{what} {shape}", mode, result, time.monotonic() - started)


if __name__ == "__main__":
    main()
