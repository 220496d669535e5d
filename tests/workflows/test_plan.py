"""`himig plan` / `PlanWorkflow` and `himig start --from-plan` on the local stack.

The plan's per-file predictions are checked against what a migration then did: on the bundled corpus (every
hostile kind, duplicates, the identity cases, a non-primary pair) against a migration that reads the source itself,
and on a small source against a migration started from the plan, whose report carries plan against actual. The
plan starts no import job. Hostile use of ``--from-plan`` (unknown id, not a plan, a plan still running, of another
data store, of another source, stale) is refused with one line and nothing started; the workflow refuses the same
when started directly.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError
from temporalio.worker import Replayer, Worker

from activities.storage import get_bytes, iter_ndjson
from contracts import layout
from contracts.common import FileState
from contracts.migration import MigrationInput
from contracts.plan import PlanDocument, PlanRequest, PredictedFile, PredictedOutcome, agrees
from contracts.report import PlanComparison
from contracts.s3uri import parse_s3_uri
from tests.support.cli import invoke
from tests.support.dicom import make_instance, uid
from tests.support.installation import converter, plain_history_json
from tests.support.migrations import migrate, report_rows
from tests.workflows.conftest import active_datastore
from tests.workflows.test_rollover import small_client, small_history_env  # noqa: F401 - fixtures
from worker.registry import WORKFLOWS
from workflows.migration import MigrationWorkflow
from workflows.plan import PlanWorkflow

HISTORIES = Path(__file__).parent.parent / "histories"


@pytest.fixture
def own_datastore(emulator_url: str) -> str:
    return active_datastore(emulator_url, f"plan-{uuid.uuid4().hex[:8]}")


async def _plan(client: Client, worker: Worker, s3: Any, payload: MigrationInput,
                timeout: float = 120) -> tuple[str, PlanDocument]:
    pid = f"plan-t-{uuid.uuid4().hex[:8]}"
    result = await client.execute_workflow(PlanWorkflow.run, PlanRequest(migration=payload), id=pid,
                                           task_queue=worker.task_queue,
                                           execution_timeout=timedelta(seconds=timeout))
    return pid, PlanDocument.model_validate_json(get_bytes(s3, parse_s3_uri(result.plan_uri)))


def _predictions(s3: Any, work: str, pid: str) -> dict[str, PredictedFile]:
    return {p.key: p for p in (PredictedFile.model_validate(r) for r in iter_ndjson(s3, layout.plan_files(work, pid)))}


def _jobs(mi: Any, ds: str) -> int:
    return len(mi.list_dicom_import_jobs(datastoreId=ds, maxResults=50)["jobSummaries"])


def _small_source(s3: Any, bucket: str, prefix: str) -> None:
    """Two studies; one copy (duplicate); one file naming another patient in a series (non-primary); one non-DICOM."""
    study, series = uid(), uid()
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"{prefix}/a/{i}.dcm", Body=make_instance(study, series))
    s3.put_object(Bucket=bucket, Key=f"{prefix}/a/z-other-patient.dcm",
                  Body=make_instance(study, series, patient_id="SYNTH-0002", patient_name="SYNTH^OTHER"))
    other_study, other_series = uid(), uid()
    for i in range(2):
        s3.put_object(Bucket=bucket, Key=f"{prefix}/b/{i}.dcm", Body=make_instance(other_study, other_series))
    first = s3.get_object(Bucket=bucket, Key=f"{prefix}/b/0.dcm")["Body"].read()
    s3.put_object(Bucket=bucket, Key=f"{prefix}/c/copy.dcm", Body=first)
    s3.put_object(Bucket=bucket, Key=f"{prefix}/c/readme.txt", Body=b"not dicom")


@pytest.fixture
def small(buckets: dict[str, Any], own_datastore: str) -> MigrationInput:
    prefix = f"p-{uuid.uuid4().hex[:6]}"
    _small_source(buckets["s3"], buckets["source"], prefix)
    return MigrationInput(source_s3_uri=f"s3://{buckets['source']}/{prefix}/", datastore_id=own_datastore,
                          work_s3_uri=f"s3://{buckets['work']}/w/", import_start_interval_seconds=0,
                          max_files_per_batch=4)


# ---- the bundled corpus: plan, then a migration that reads the source itself

@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from corpus.sample import build_sample_corpus

    dest = tmp_path_factory.mktemp("plan-corpus")
    return dest, build_sample_corpus(dest)


@pytest.mark.filterwarnings("ignore::UserWarning")
async def test_plan_predicts_each_file_of_the_bundled_corpus(
        client: Client, worker: Worker, buckets: dict[str, Any], own_datastore: str, medical_imaging: Any,
        corpus: tuple[Path, Any]) -> None:
    s3, src = buckets["s3"], buckets["source"]
    root, manifest = corpus
    for entry in manifest.entries:
        s3.put_object(Bucket=src, Key=f"corpus/{entry.path}", Body=(root / entry.path).read_bytes())
    payload = MigrationInput(source_s3_uri=f"s3://{src}/corpus/", datastore_id=own_datastore,
                             work_s3_uri=f"s3://{buckets['work']}/w/", import_start_interval_seconds=0,
                             max_files_per_batch=40, inventory_page_size=50)
    pid, doc = await _plan(client, worker, s3, payload, timeout=240)
    assert _jobs(medical_imaging, own_datastore) == 0  # a dry run starts no import job
    assert doc.files == len(manifest.entries) and doc.source_failures == 0
    predicted = _predictions(s3, payload.work_s3_uri, pid)
    assert len(predicted) == doc.files
    assert sum(doc.predicted_by_outcome.values()) == doc.files
    assert doc.rejected_files == doc.predicted_by_outcome[PredictedOutcome.REJECTED] - (
        doc.conflicting_duplicates_in_source + doc.conflicting_already_imported)
    assert doc.rejected_by_code and all(n > 0 for n in doc.rejected_by_code.values())
    assert doc.duplicates_in_source >= 1 and doc.conflicting_duplicates_in_source >= 1
    # The non-primary pair: predicted, against this source, naming the patient attributes (names, never values).
    assert doc.predicted_non_primary_files >= 1
    assert any(s.against == "this source" and "PatientID" in s.attributes for s in doc.predicted_non_primary_series)
    assert "SYNTH^" not in json.dumps(doc.model_dump(mode="json"))
    assert doc.batches.import_jobs == doc.batches.batches >= 1
    assert doc.s3_requests["StartDICOMImportJob"] == doc.batches.import_jobs
    assert doc.estimate.total_seconds > doc.estimate.import_seconds > 0

    _, result = await migrate(client, worker, payload, prefix="after-plan", timeout_seconds=240)
    rows = report_rows(s3, result)
    assert set(rows) == set(predicted)
    wrong = [f"{key}: predicted {p.outcome.value} {p.code}, got {rows[key]['state']} {rows[key].get('code')}"
             for key, p in sorted(predicted.items())
             if not agrees(p, FileState(rows[key]["state"]), rows[key].get("code"))]
    assert not wrong, "\n".join(wrong)
    non_primary = {k for k, r in rows.items() if r["state"].startswith("imported") and r.get("is_primary") is False}
    assert non_primary == {k for k, p in predicted.items() if p.predicted_non_primary}
    assert _jobs(medical_imaging, own_datastore) == doc.batches.import_jobs


# ---- a migration from a plan

def _activity_types(history: Any) -> Counter[str]:
    return Counter(e.activity_task_scheduled_event_attributes.activity_type.name for e in history.events
                   if e.HasField("activity_task_scheduled_event_attributes"))


async def test_start_from_plan_reuses_it_and_reports_plan_against_actual(
        client: Client, worker: Worker, buckets: dict[str, Any], small: MigrationInput, himig_cli: Any) -> None:
    s3 = buckets["s3"]
    source = parse_s3_uri(small.source_s3_uri)

    def source_objects() -> dict[str, str]:
        listed = s3.list_objects_v2(Bucket=source.bucket, Prefix=source.key)["Contents"]
        return {o["Key"]: o["ETag"] for o in listed}

    before = source_objects()
    out = await invoke(himig_cli, "plan", "--source", small.source_s3_uri, "--datastore-id", small.datastore_id,
                       "--work", small.work_s3_uri, "--max-files-per-batch", "4", "--import-start-interval", "0",
                       "--id", f"plan-cli-{uuid.uuid4().hex[:6]}")
    assert out.exit_code == 0, out.output
    pid = out.output.split()[0]
    assert "rejected by validation, per code" in out.flat and "PatientID" in out.flat
    assert f"himig start --from-plan {pid}" in out.flat
    doc = PlanDocument.model_validate_json(get_bytes(s3, layout.plan_document(small.work_s3_uri, pid)))
    # Moved nothing: the source is as it was, and the plan staged nothing and asked for no job output.
    assert source_objects() == before
    written = [o["Key"] for o in s3.list_objects_v2(Bucket=parse_s3_uri(small.work_s3_uri).bucket,
                                                    Prefix=layout.root(small.work_s3_uri, pid).key)["Contents"]]
    assert written and not [k for k in written if "/staging/" in k or "/import-output/" in k]
    assert (doc.files, doc.rejected_files, doc.duplicates_in_source, doc.predicted_non_primary_files) == (8, 1, 1, 1)
    assert doc.predicted_non_primary_series[0].attributes[:2] == ["PatientID", "PatientName"]

    status = await invoke(himig_cli, "status", pid, "--json")
    assert status.exit_code == 0 and json.loads(status.output)["phase"] == "completed", status.output
    wrong = await invoke(himig_cli, "report", pid)
    assert wrong.exit_code != 0 and "is a plan" in wrong.flat and "himig plan --show" in wrong.flat
    shown = await invoke(himig_cli, "plan", "--show", pid)
    assert shown.exit_code == 0 and f"plan {pid}: 8 files" in shown.flat
    as_json = await invoke(himig_cli, "plan", "--show", pid, "--json")
    assert as_json.exit_code == 0 and PlanDocument.model_validate_json(as_json.output) == doc

    mid = f"from-plan-{uuid.uuid4().hex[:6]}"
    # The plan's own settings, given again (the source without its trailing slash is the same prefix), are fine.
    started = await invoke(himig_cli, "start", "--from-plan", pid, "--id", mid, "--datastore-id", small.datastore_id,
                           "--source", small.source_s3_uri.rstrip("/"), "--validation-level", "structure-only")
    assert started.exit_code == 0, started.output
    handle = client.get_workflow_handle_for(MigrationWorkflow.run, mid)
    result = await handle.result()
    history = await handle.fetch_history()
    kinds = _activity_types(history)
    # The source was not read again: no listing, no header reads; the plan's results were adopted once.
    assert kinds["adopt_plan"] == 1 and not kinds["receive_inventory"] and not kinds["parse_headers"]
    rows = report_rows(s3, result)
    predicted = _predictions(s3, small.work_s3_uri, pid)
    assert set(rows) == set(predicted)
    assert all(agrees(p, FileState(rows[k]["state"]), rows[k].get("code")) for k, p in predicted.items())
    # Deterministic: both workflows replay from their histories (recorded into tests/histories on request).
    plan_history = await client.get_workflow_handle(pid).fetch_history()
    replayer = Replayer(workflows=WORKFLOWS, data_converter=converter())
    for recorded in (plan_history, history):
        await replayer.replay_workflow(recorded)
    if os.environ.get("HIMIG_RECORD_HISTORIES"):
        for recorded in (plan_history, history):  # the file name is the workflow id
            (HISTORIES / f"{recorded.workflow_id}.json").write_text(plain_history_json(recorded))
    compared = PlanComparison.model_validate_json(get_bytes(s3, layout.report_plan(small.work_s3_uri, mid)))
    by_label = {r.label: r for r in compared.rows}
    assert by_label["files with the predicted outcome"].actual == by_label["files"].planned == 8
    assert by_label["import jobs"].planned == by_label["import jobs"].actual
    html = get_bytes(s3, layout.report_html(small.work_s3_uri, mid)).decode()
    assert "files with the predicted outcome" in html and "No dry run" not in html

    shown_report = await invoke(himig_cli, "report", mid)
    assert "plan against actual: 8 of 8 files had the predicted outcome" in shown_report.flat, shown_report.output

    # A retry of a migration from a plan reads its files afresh (the plan was for the whole source).
    retried = await invoke(himig_cli, "retry", mid, "--include-rejected")
    assert retried.exit_code == 0 and f"{mid}-retry-1: retrying 1 file(s)" in retried.flat, retried.flat
    again = await client.get_workflow_handle_for(MigrationWorkflow.run, f"{mid}-retry-1").result()
    assert [r["state"] for r in report_rows(s3, again).values()] == ["rejected"]


# ---- hostile use

async def test_from_plan_refuses_what_it_cannot_use(
        client: Client, worker: Worker, buckets: dict[str, Any], small: MigrationInput, himig_cli: Any,
        emulator_url: str) -> None:
    s3 = buckets["s3"]
    pid, _ = await _plan(client, worker, s3, small)
    mid, _ = await migrate(client, worker, small.model_copy(update={"max_files_per_batch": 20}), prefix="plain")

    async def refused(*args: str) -> str:
        before = {w.id async for w in client.list_workflows(f"WorkflowType = 'MigrationWorkflow' AND TaskQueue = "
                                                           f"'{worker.task_queue}'")}
        out = await invoke(himig_cli, "start", *args)
        assert out.exit_code != 0, out.output
        after = {w.id async for w in client.list_workflows(f"WorkflowType = 'MigrationWorkflow' AND TaskQueue = "
                                                          f"'{worker.task_queue}'")}
        assert after == before, "a refused start started a migration"
        return str(out.flat)

    assert "no plan with id 'plan-nope-1'" in await refused("--from-plan", "plan-nope-1")
    for args, said in ((["--show", "plan-nope-2"], "no plan with id 'plan-nope-2'"),
                       (["--show", mid], "is a MigrationWorkflow, not a plan"),
                       (["--work", small.work_s3_uri], "--source, --datastore-id: required"),
                       (["--source", small.source_s3_uri, "--datastore-id", small.datastore_id, "--work",
                         small.work_s3_uri, "--id", "../x"], "--id:"),
                       (["--source", small.source_s3_uri, "--datastore-id", small.datastore_id, "--work",
                         small.work_s3_uri, "--id", pid], f"a workflow with id '{pid}' already exists"),
                       (["--source", small.source_s3_uri, "--datastore-id", "NOT-AN-ID", "--work",
                         small.work_s3_uri], "datastore_id (--datastore-id)")):
        out = await invoke(himig_cli, "plan", *args)
        assert out.exit_code != 0 and said in out.flat, (args, out.output)
    assert "is a MigrationWorkflow, not a plan" in await refused("--from-plan", mid)
    other = active_datastore(emulator_url, f"plan-other-{uuid.uuid4().hex[:6]}")
    assert "--datastore-id: plan" in await refused("--from-plan", pid, "--datastore-id", other)
    assert "--source: plan" in await refused("--from-plan", pid, "--source", f"s3://{buckets['source']}/else/")
    assert "--validation-level: plan" in await refused("--from-plan", pid, "--validation-level", "strict")
    assert "--source-dir" in await refused("--from-plan", pid, "--source-dir", "/tmp")
    # Still running: a plan on a task queue no worker polls.
    idle = f"plan-idle-{uuid.uuid4().hex[:6]}"
    await client.start_workflow(PlanWorkflow.run, PlanRequest(migration=small), id=idle,
                                task_queue=f"nobody-{uuid.uuid4().hex[:6]}", execution_timeout=timedelta(seconds=60))
    assert f"plan '{idle}' is still running" in await refused("--from-plan", idle)
    # Stale: one source object rewritten, one added, since the plan listed the source.
    source = parse_s3_uri(small.source_s3_uri)
    s3.put_object(Bucket=source.bucket, Key=f"{source.key}a/0.dcm", Body=make_instance(uid(), uid()))
    s3.put_object(Bucket=source.bucket, Key=f"{source.key}d/new.dcm", Body=make_instance(uid(), uid()))
    flat = await refused("--from-plan", pid)
    assert "is stale" in flat and "1 added, 0 removed, 1 changed" in flat
    # The workflow refuses the same when started without the CLI (Temporal UI, `temporal workflow start`).
    with pytest.raises(WorkflowFailureError) as failed:
        await migrate(client, worker, small.model_copy(update={"from_plan": pid}), prefix="direct")
    assert "PlanStale" in repr(failed.value.cause) or "is stale" in str(failed.value.cause.__cause__ or "")
    with pytest.raises(WorkflowFailureError) as failed:
        await migrate(client, worker, small.model_copy(update={"from_plan": "plan-unknown-2"}), prefix="direct")
    assert "has no plan.json" in str(failed.value.cause.__cause__ or failed.value.cause)
    await client.get_workflow_handle(idle).terminate("test over")


async def test_plan_input_is_strict(client: Client, worker: Worker, small: MigrationInput) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"migration\.from_plan"):
        PlanRequest(migration=small.model_copy(update={"from_plan": "plan-x"}))
    with pytest.raises(ValidationError, match="from_plan and source_connector are exclusive"):
        MigrationInput.model_validate(small.model_dump(mode="json") | {
            "from_plan": "plan-x", "source_connector": {"kind": "local", "path": "/tmp/x"}})
    with pytest.raises(ValidationError, match="from_plan"):
        MigrationInput.model_validate(small.model_dump(mode="json") | {"from_plan": "../up"})
    # State only the workflow writes, sent by a caller: the plan fails at once.
    with pytest.raises(WorkflowFailureError) as failed:
        await client.execute_workflow(PlanWorkflow.run, PlanRequest(migration=small, continued={"phase": "planning"}),
                                      id=f"plan-forged-{uuid.uuid4().hex[:6]}", task_queue=worker.task_queue,
                                      execution_timeout=timedelta(seconds=30))
    assert "continued" in str(failed.value.cause)


# ---- any connector: a plan over a DICOMweb PACS (Orthanc), then a migration from it that does not pull again

async def test_a_plan_over_a_pacs_predicts_what_cannot_be_pulled_and_is_not_pulled_again(
        client: Client, worker: Worker, buckets: dict[str, Any], own_datastore: str, orthanc: Any) -> None:
    from contracts.sources import DicomwebSource
    from tests.activities.sources.pacs import seed_two_studies

    seeded = seed_two_studies(orthanc)
    s3, missing = buckets["s3"], uid()
    payload = MigrationInput(
        source_s3_uri=f"s3://{buckets['source']}/landed/", datastore_id=own_datastore,
        work_s3_uri=f"s3://{buckets['work']}/runs/", inventory_page_size=3, max_files_per_batch=5,
        import_start_interval_seconds=0,
        source_connector=DicomwebSource(kind="dicomweb", url=orthanc.dicomweb, study_uids=[*seeded.studies, missing]))
    pid, doc = await _plan(client, worker, s3, payload)
    assert (doc.files, doc.source_failures) == (7, 1)
    assert doc.predicted_by_outcome == {PredictedOutcome.IMPORT: 7, PredictedOutcome.FAILED: 1}
    predicted = _predictions(s3, payload.work_s3_uri, pid)
    assert predicted[f"landed/{missing}/"].code == "StudyNotFound"

    from_plan = payload.model_copy(update={"source_connector": None, "from_plan": pid})
    mid, result = await migrate(client, worker, from_plan, prefix="pacs-from-plan", timeout_seconds=120)
    kinds = _activity_types(await client.get_workflow_handle(mid).fetch_history())
    assert kinds["adopt_plan"] == 1 and not kinds["receive_inventory"] and not kinds["parse_headers"]
    rows = report_rows(s3, result)
    assert set(rows) == set(predicted) and len(rows) == 8
    assert all(agrees(p, FileState(rows[k]["state"]), rows[k].get("code")) for k, p in predicted.items())
    assert rows[f"landed/{missing}/"]["state"] == FileState.FAILED


# ---- bounded history: a plan over many pages continues as new, carrying its counts and stage timings

async def test_a_long_plan_continues_as_new_and_counts_every_page(
        small_client: Client, settings: Any, buckets: dict[str, Any], own_datastore: str) -> None:  # noqa: F811
    from concurrent.futures import ThreadPoolExecutor

    from worker.runner import build_worker

    s3, src = buckets["s3"], buckets["source"]
    prefix = f"long-{uuid.uuid4().hex[:6]}"
    study, series = uid(), uid()
    files = 90
    body = make_instance(study, series)
    for i in range(files):  # even files: instances of their own; odd files: byte copies of one instance
        s3.put_object(Bucket=src, Key=f"{prefix}/{i:03d}.dcm", Body=body if i % 2 else make_instance(study, series))
    payload = MigrationInput(source_s3_uri=f"s3://{src}/{prefix}/", datastore_id=own_datastore,
                             work_s3_uri=f"s3://{buckets['work']}/w/", inventory_page_size=1, max_parallel_pages=4)
    pid = f"plan-long-{uuid.uuid4().hex[:6]}"
    with ThreadPoolExecutor(max_workers=settings.max_concurrent_activities) as executor:
        async with build_worker(small_client, settings, executor) as w:
            result = await small_client.execute_workflow(
                PlanWorkflow.run, PlanRequest(migration=payload), id=pid, task_queue=w.task_queue,
                execution_timeout=timedelta(seconds=240))
    runs = [r async for r in small_client.list_workflows(f"WorkflowId = '{pid}'")]
    assert len(runs) >= 2, "the plan never continued as new"
    doc = PlanDocument.model_validate_json(get_bytes(s3, parse_s3_uri(result.plan_uri)))
    assert (doc.files, doc.inventory_pages, result.files) == (files, files, files)
    # The odd files are 45 copies of one instance: one is imported, the other 44 are skipped.
    assert doc.duplicates_in_source == files // 2 - 1
    assert doc.predicted_by_outcome[PredictedOutcome.IMPORT] == files - doc.duplicates_in_source
    assert doc.estimate.parse_seconds > 0
