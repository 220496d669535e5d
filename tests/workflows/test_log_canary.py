"""Logs never carry patient data: a real migration (Temporal dev server, moto, the emulator) over files whose
patient attributes are canary strings, some of them rejected and some making pydicom warn, plus a malformed
operator signal; everything the worker logs is captured through its own pipeline and searched for the canaries.
"""

from __future__ import annotations

import io
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pydicom
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities import phi
from contracts.common import FileState
from contracts.ingest import IngestInput
from contracts.migration import MigrationInput, OperatorCommand
from tests.support.dicom import make_instance, uid
from tests.support.eventually import assert_eventually
from tests.support.logcapture import Captured, captured_logs
from worker.log_context import LogContextInterceptor
from workflows.ingest import IngestWorkflow
from workflows.migration import MigrationWorkflow

FAILING_NAME = "QZCANARYFAILING^QZGIVEN"


@activity.defn(name="read_and_fail")
def read_and_fail(kind: str) -> None:
    """Reads a patient name, then fails quoting it (as a third-party exception text would)."""
    phi.register(FAILING_NAME)
    if kind == "application":
        raise ApplicationError(f"cannot import {FAILING_NAME}", type="InvalidPatient", non_retryable=True)
    raise ValueError(f"invalid PN value {FAILING_NAME.replace('^', ' ').lower()!r}")


@workflow.defn(sandboxed=False)
class FailingReadWorkflow:
    @workflow.run
    async def run(self, kind: str) -> list[str]:
        try:
            await workflow.execute_activity(read_and_fail, kind, start_to_close_timeout=timedelta(seconds=10),
                                            retry_policy=RetryPolicy(maximum_attempts=1))
        except ActivityError as err:
            assert isinstance(err.cause, ApplicationError)
            return [err.cause.message, err.cause.type or "", str(err.cause.non_retryable)]
        return []

CANARIES = {
    "PatientName": "QZCANARYSURNAME^QZCANARYGIVEN",
    "PatientID": "QZCANARY-PID-4417",
    "PatientBirthDate": "19370412",
    "AccessionNumber": "QZCANARYACC9",
    "InstitutionName": "QZCANARY INSTITUTION OF HEALING",
    "ReferringPhysicianName": "QZCANARYREFERRER^DOC",
    "PerformingPhysicianName": "QZCANARYPERFORMER^DOC",
    "NameOfPhysiciansReadingStudy": "QZCANARYREADER^DOC",
    "StudyDescription": "QZCANARY STUDY DESCRIPTION",
    "SeriesDescription": "QZCANARY SERIES DESCRIPTION",
}
SIGNAL_CANARY = "QZCANARYSIGNALREASON"
# Longer than HealthImaging's 18 characters and not a date: the parse decodes it to measure it.
BAD_BIRTH_DATE = "QZCANARYDOB-1937-04-12"


def canary_file(study: str, series: str, **overrides: Any) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(make_instance(study, series, patient_id=CANARIES["PatientID"],
                                                  patient_name=CANARIES["PatientName"])))
    for name, value in {**CANARIES, **overrides}.items():
        if value is None:
            delattr(ds, name)
        else:
            setattr(ds, name, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def needles() -> list[str]:
    """Each canary and the forms it is printed in (a PN's components, ^ as a space)."""
    out = {SIGNAL_CANARY, BAD_BIRTH_DATE}
    for value in CANARIES.values():
        out |= {value, value.replace("^", " "), *value.split("^")}
    return sorted(out)


def assert_no_canary(text: str) -> None:
    found = {n: len(re.findall(re.escape(n), text, re.IGNORECASE)) for n in needles()}
    assert not any(found.values()), {n: c for n, c in found.items() if c}


class TestLogCanary:
    async def test_a_migration_logs_ids_as_fields_and_no_patient_value(
            self, client: Client, worker: Worker, buckets: dict[str, Any], datastore_id: str) -> None:
        s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
        study, series = uid(), uid()
        files = {f"in/ok/{i}.dcm": canary_file(study, series) for i in range(3)}
        # Rejected (no SeriesInstanceUID), with every canary in its header.
        files["in/bad/no-series.dcm"] = canary_file(study, series, SeriesInstanceUID=None)
        # pydicom warns about these while the header is read: a PN component longer than 64 characters, quoted
        # in its text as a length, and an overlong name HealthImaging refuses at import.
        files["in/warn/long-name.dcm"] = canary_file(uid(), uid(), PatientName=CANARIES["PatientName"] + "X" * 300)
        files["in/warn/bad-birth-date.dcm"] = canary_file(uid(), uid(), PatientBirthDate=BAD_BIRTH_DATE)
        for key, body in files.items():
            s3.put_object(Bucket=src, Key=key, Body=body)
        payload = MigrationInput(source_s3_uri=f"s3://{src}/in/", datastore_id=datastore_id,
                                 work_s3_uri=f"s3://{work}/runs/", import_start_interval_seconds=0)

        with captured_logs("debug") as logs:
            handle = await client.start_workflow(
                MigrationWorkflow.run, payload, id=f"canary-{uuid.uuid4().hex[:8]}", task_queue=worker.task_queue,
                start_signal="pause", start_signal_args=[OperatorCommand(by="tester", reason="hold")],
                execution_timeout=timedelta(seconds=90))
            # A malformed operator signal: recorded as rejected, and logged naming the fields, not the values.
            await handle.signal("pause", {"by": 4417, "reason": SIGNAL_CANARY, "zzz": SIGNAL_CANARY})
            await assert_eventually(lambda: _line(logs, "signal rejected", signal="pause"), timeout=60)
            await handle.signal(MigrationWorkflow.resume, OperatorCommand(by="tester", reason="go"))
            result = await handle.result()
            # A malformed arrival: counted in the workflow's progress and logged naming the fields, not the values.
            ingest = await client.start_workflow(
                IngestWorkflow.run, IngestInput(source_s3_uri=f"s3://{src}/drop/", work_s3_uri=f"s3://{work}/ingest/",
                                                datastore_id=datastore_id, quiet_seconds=1, max_wait_seconds=1),
                id=f"canary-ingest-{uuid.uuid4().hex[:8]}", task_queue=worker.task_queue, start_signal="arrived",
                start_signal_args=[{"key": SIGNAL_CANARY, "size": -1, "event_time": SIGNAL_CANARY}])
            dropped = await assert_eventually(lambda: _line(logs, "signal rejected", signal="arrived"), timeout=60)
            assert (await ingest.query(IngestWorkflow.progress)).arrivals_rejected == 1
            await ingest.result()

        assert result.files_by_state.get(FileState.REJECTED) == 1, result
        assert result.files_total == 6, result
        lines = logs.lines()  # every line is a JSON object
        assert_no_canary(logs.text)
        assert "could not be formatted" not in logs.text
        # The SDK's debug lines that print whole payloads are held at info.
        assert not [x for x in lines if x["level"] == "debug" and x["logger"].startswith("temporalio.worker")]

        rejected = await _line(logs, "signal rejected", signal="pause")
        assert rejected["signal"] == "pause" and rejected["workflow_id"] == handle.id, rejected
        assert rejected["error"] == "by: Input should be a valid string; zzz: Extra inputs are not permitted"
        progress = await handle.query(MigrationWorkflow.progress)
        assert [(a.action, a.reason) for a in progress.operator_log if a.action.endswith("rejected")] == [
            ("pause rejected", rejected["error"])]
        assert "size: Input should be greater than or equal to 0" in dropped["error"], dropped
        assert "event_time" in dropped["error"] and dropped["workflow_id"] == ingest.id
        assert "exception" not in dropped

        pydicom_lines = [x for x in lines if x.get("logger") == "pydicom"]
        assert pydicom_lines, "the overlong name should make pydicom warn"
        for line in pydicom_lines:
            assert (line["workflow_id"], line["activity"], line["attempt"]) == (handle.id, "parse_headers", 1), line
            assert {"run_id", "page", "migration_id"} <= line.keys(), line
        activity_lines = [x for x in lines if "activity" in x]
        assert {x["activity"] for x in activity_lines} >= {"parse_headers", "start_import_job", "review_manifest"}
        for line in activity_lines:
            assert {"workflow_id", "run_id", "attempt"} <= line.keys(), line
            assert str(line["workflow_id"]) not in line["event"], line
        assert any("batch" in x for x in activity_lines if x["activity"] == "start_import_job")


async def _line(logs: Captured, event: str, **fields: Any) -> dict[str, Any]:
    found = [x for x in logs.lines() if x["event"].startswith(event)
             and all(x.get(k) == v for k, v in fields.items())]
    assert len(found) == 1, found
    return found[0]


class TestActivityFailures:
    async def test_a_failure_quoting_a_patient_value_reaches_history_scrubbed(self, client: Client) -> None:
        queue = f"fail-{uuid.uuid4().hex[:8]}"
        with captured_logs("debug") as logs, ThreadPoolExecutor(2) as executor:
            async with Worker(client, task_queue=queue, workflows=[FailingReadWorkflow], activities=[read_and_fail],
                              activity_executor=executor, interceptors=[LogContextInterceptor()],
                              workflow_runner=UnsandboxedWorkflowRunner()):
                results = {}
                for kind in ("application", "other"):
                    handle = await client.start_workflow(FailingReadWorkflow.run, kind, id=f"{queue}-{kind}",
                                                         task_queue=queue)
                    results[kind] = await handle.result()
                    history = (await handle.fetch_history()).to_json()
                    assert "qzcanaryfailing" not in history.lower(), history
        assert results["application"] == ["cannot import [phi]", "InvalidPatient", "True"]
        # A plain exception keeps its type name (retry policies match on it) and stays retryable.
        assert results["other"] == ["invalid PN value '[phi]'", "ValueError", "False"]
        assert "qzcanaryfailing" not in logs.text.lower()
        scrubbed = [x for x in logs.lines() if x["event"].startswith("activity failure replaced")]
        assert [x["error_type"] for x in scrubbed] == ["ApplicationError", "ValueError"]
        assert all(x["activity"] == "read_and_fail" and x["attempt"] == 1 for x in scrubbed)
