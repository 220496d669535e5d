"""A plain re-run does not send again a file whose import into the data store failed for good (the service's
per-file FAILURE, not a transient fault) while it is unchanged: it is reported ``failed`` again, naming the earlier
migration and `himig retry`, and starts no import job. `himig retry` sends it; a changed file is sent as new."""

from __future__ import annotations

import urllib.request
import uuid
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from activities.failed_before import CODE, hold_failed_before
from activities.failed_index import fails_again
from contracts.common import ValidationLevel
from contracts.migration import MigrationInput
from contracts.records import FailedFile, InstanceRecord
from tests.conftest import emulator_admin
from tests.support.cli import invoke
from tests.support.dicom import make_instance, uid
from tests.support.migrations import migrate, report_rows
from tests.workflows.conftest import active_datastore
from workflows.migration import MigrationWorkflow


def _jobs(mi: Any, datastore_id: str) -> int:
    return sum(len(p["jobSummaries"]) for p in mi.get_paginator("list_dicom_import_jobs").paginate(
        datastoreId=datastore_id))


async def test_plain_rerun_holds_back_what_failed_for_good_and_retry_sends_it(
        himig_cli: Any, client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str,
        emulator_url: str, medical_imaging: Any) -> None:
    s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
    prefix = f"fb-{uuid.uuid4().hex[:6]}"
    study, series = uid(), uid()
    s3.put_object(Bucket=src, Key=f"{prefix}/ok.dcm", Body=make_instance(study, series))
    # At `minimal` a file without a SeriesInstanceUID reaches the service, which fails it (ValidationException).
    s3.put_object(Bucket=src, Key=f"{prefix}/bad.dcm", Body=make_instance(study, series, drop=("SeriesInstanceUID",)))
    # A transient server fault on another file: not in the class, a re-run sends it.
    s3.put_object(Bucket=src, Key=f"{prefix}/flaky.dcm", Body=make_instance(uid(), uid()))
    payload = MigrationInput(source_s3_uri=f"s3://{src}/{prefix}/", datastore_id=datastore_id,
                             work_s3_uri=f"s3://{work}/w/", validation_level=ValidationLevel.MINIMAL,
                             import_start_interval_seconds=0)
    fault = emulator_admin(emulator_url, "faults", {"kind": "file_server_error", "file": f"*{prefix}/flaky.dcm"})
    try:
        first_id, first = await migrate(client, worker, payload, prefix="fb")
    finally:
        fid = fault["faults"][0]["id"]
        urllib.request.urlopen(urllib.request.Request(f"{emulator_url}/_emulator/faults/{fid}", method="DELETE"))
    rows = report_rows(s3, first)
    assert [rows[f"{prefix}/{n}.dcm"]["code"] for n in ("bad", "flaky")] == ["ValidationException",
                                                                            "InternalServerException"]

    # A plain re-run (another id, another work prefix): the bad file is held back, the flaky one sent.
    jobs = _jobs(medical_imaging, datastore_id)
    _, second = await migrate(client, worker, payload.model_copy(update={"work_s3_uri": f"s3://{work}/other/"}),
                              prefix="fb")
    rows = report_rows(s3, second)
    bad = rows[f"{prefix}/bad.dcm"]
    assert (bad["state"], bad["code"]) == ("failed", CODE) and "job_id" not in bad
    assert first_id in bad["reason"] and f"himig retry {first_id}" in bad["reason"]
    assert rows[f"{prefix}/flaky.dcm"]["state"] == "imported"
    assert rows[f"{prefix}/ok.dcm"]["state"] == "skipped_duplicate"
    assert _jobs(medical_imaging, datastore_id) == jobs + 1  # one job, for the flaky file only
    assert {k: v for k, v in second.files_by_state.items() if v} == {"failed": 1, "imported": 1,
                                                                     "skipped_duplicate": 1}

    # `himig retry` sends it (and it fails again, with the service's reason).
    started = await invoke(himig_cli, "retry", first_id)
    assert started.exit_code == 0, started.flat
    retried = await client.get_workflow_handle_for(MigrationWorkflow.run, f"{first_id}-retry-1").result()
    again = report_rows(s3, retried)[f"{prefix}/bad.dcm"]
    assert (again["state"], again["code"]) == ("failed", "ValidationException") and again.get("job_id")

    # Another data store has no such failure on record: the same file is sent there.
    other_ds = active_datastore(emulator_url, f"fb-other-{uuid.uuid4().hex[:6]}")
    _, elsewhere = await migrate(client, worker, payload.model_copy(update={"datastore_id": other_ds}), prefix="fb")
    sent = report_rows(s3, elsewhere)[f"{prefix}/bad.dcm"]
    assert (sent["state"], sent["code"]) == ("failed", "ValidationException") and sent.get("job_id")

    # The operator fixes the file: a plain re-run sends it.
    s3.put_object(Bucket=src, Key=f"{prefix}/bad.dcm", Body=make_instance(study, series))
    _, fixed = await migrate(client, worker, payload, prefix="fb")
    assert report_rows(s3, fixed)[f"{prefix}/bad.dcm"]["state"] == "imported"


def _record(key: str, content_id: str) -> InstanceRecord:
    return InstanceRecord(key=key, size=1, etag="e", sop_instance_uid=f"1.{len(key)}", study_instance_uid="1.2",
                          series_instance_uid="1.3", transfer_syntax_uid="1.2.840.10008.1.2.1", sop_class_uid="1.4",
                          patient_fingerprint="p", study_fingerprint="s", series_fingerprint="r",
                          content_id=content_id)


class TestHold:
    def test_only_the_same_content_is_held(self) -> None:
        failed = {"1:e:h": FailedFile(content_id="1:e:h", sop_instance_uid="1.5", key="a.dcm", code="ValidationException",
                                      migration_id="m-1", batch=0)}
        kept, held = hold_failed_before([_record("a.dcm", "1:e:h"), _record("a2.dcm", "1:e2:h"),
                                         _record("copy/a.dcm", "1:e:h")], failed)
        assert [i.key for i in kept] == ["a2.dcm"]
        assert [h.key for h in held] == ["a.dcm", "copy/a.dcm"]  # the same bytes elsewhere fail the same way
        assert all(h.code == CODE and "m-1" in (h.reason or "") and h.study_instance_uid == "1.2" for h in held)

    def test_transient_service_faults_are_not_a_verdict_on_the_file(self) -> None:
        assert fails_again("ValidationException") and fails_again("UnsupportedTransferSyntax")
        for transient in ("InternalServerException", "ThrottlingException", "ServiceUnavailable",
                          "ServiceQuotaExceededException", ""):
            assert not fails_again(transient)

    def test_a_corrupt_index_line_is_refused(self) -> None:
        import pytest
        from pydantic import ValidationError

        with pytest.raises(ValidationError) as err:
            FailedFile.model_validate({"content_id": "x", "sop_instance_uid": "1", "key": "k", "code": "c",
                                       "migration_id": "m", "batch": "3"})
        assert "batch" in str(err.value)
