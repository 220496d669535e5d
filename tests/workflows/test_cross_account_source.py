"""A migration from another account's bucket (#15 item 10): the real workflows on the dev server, moto and the
emulator. The clean folder is imported in place with the owner's account id; the staged batch is not."""

from __future__ import annotations

from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from contracts.migration import MigrationInput
from tests.conftest import emulator_admin, make_medical_imaging
from tests.support.dicom import make_instance, uid
from tests.support.migrations import migrate, report_rows

OTHER_ACCOUNT = "210987654321"


async def test_in_place_batches_name_the_source_account_and_staged_ones_do_not(
        client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str, emulator_url: str) -> None:
    s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
    clean_study, mixed_study = uid(), uid()
    for i in range(3):
        s3.put_object(Bucket=src, Key=f"x/clean/{i}.dcm", Body=make_instance(clean_study, uid()))
    for i in range(2):
        s3.put_object(Bucket=src, Key=f"x/mixed/{i}.dcm", Body=make_instance(mixed_study, uid()))
    s3.put_object(Bucket=src, Key="x/mixed/notes.txt", Body=b"not dicom")
    payload = MigrationInput(source_s3_uri=f"s3://{src}/x/", datastore_id=datastore_id, work_s3_uri=f"s3://{work}/w/",
                             max_files_per_batch=3, import_start_interval_seconds=0,
                             source_owner_account_id=OTHER_ACCOUNT)
    wid, result = await migrate(client, worker, payload, prefix="xacct")
    rows = report_rows(s3, result)
    assert {k: r["state"] for k, r in rows.items() if k.endswith(".dcm")} == {
        **{f"x/clean/{i}.dcm": "imported" for i in range(3)}, **{f"x/mixed/{i}.dcm": "imported" for i in range(2)}}

    mi = make_medical_imaging(emulator_url)
    owners = {j["jobId"]: j["inputOwnerAccountId"] for j in emulator_admin(emulator_url, "state")["jobs"]}
    by_input = {}
    for job in mi.list_dicom_import_jobs(datastoreId=datastore_id)["jobSummaries"]:
        props = mi.get_dicom_import_job(datastoreId=datastore_id, jobId=job["jobId"])["jobProperties"]
        if props["outputS3Uri"].startswith(f"s3://{work}/w/{wid}/"):
            by_input[props["inputS3Uri"]] = owners[job["jobId"]]
    staged = [uri for uri in by_input if uri.startswith(f"s3://{work}/")]
    assert by_input.pop(f"s3://{src}/x/clean/") == OTHER_ACCOUNT  # read in place, in the other account
    assert len(staged) == 1 and by_input == {staged[0]: None}  # our staging copy: our account
