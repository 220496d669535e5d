"""`himig verify` of a source named by a connector (a local directory, a DICOMweb PACS), on the real stack: the
source is migrated, then verified against the data store with no difference; then the source gains an instance,
the data store loses an image set, and a named study is not in the PACS: each is reported. Hostile use (an
unreachable PACS, a directory outside the worker's roots, bad connector flags, a connector plus a plain S3 source)
ends in one clear line. The Orthanc test needs the private network namespace (``make test`` runs it there)."""

from __future__ import annotations

import json
import os
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from temporalio.client import Client, WorkflowFailureError
from temporalio.worker import Replayer, Worker

from activities.storage import list_objects
from contracts.migration import MigrationInput
from contracts.s3uri import parse_s3_uri
from contracts.sources import DicomwebSource, DimseSource, LocalSource
from contracts.verify import DifferenceKind, SourceVerifyInput, VerifyResult
from tests.support.cli import invoke
from tests.support.dicom import make_instance, uid
from tests.support.installation import converter, plain_history_json
from tests.support.migrations import migrate
from tests.support.orthanc import ORTHANC_AET, OUR_AET, Orthanc
from tests.support.servers import free_port
from tests.workflows.conftest import active_datastore
from worker.registry import WORKFLOWS
from worker.settings import Settings
from workflows.verify import SourceVerifyWorkflow


@pytest.fixture
def source_root(tmp_path: Path) -> Path:
    root = tmp_path / "exports"
    root.mkdir()
    return root


@pytest.fixture
def settings(settings: Settings, source_root: Path) -> Settings:
    """The workflow tests' settings, with a directory `local` sources may be under."""
    return settings.model_copy(update={"source_dir_roots": str(source_root)})


@pytest.fixture
def own_datastore(emulator_url: str) -> str:
    return active_datastore(emulator_url, f"vcon-{uuid.uuid4().hex[:8]}")


async def _verify(client: Client, worker: Worker, payload: SourceVerifyInput, record: str | None = None
                  ) -> VerifyResult:
    """Run one verification; its history must replay (and is written to tests/histories as ``record`` when
    HIMIG_RECORD_HISTORIES is set)."""
    handle = await client.start_workflow(
        SourceVerifyWorkflow.run, payload, id=f"vc-t-{uuid.uuid4().hex[:8]}", task_queue=worker.task_queue,
        execution_timeout=timedelta(seconds=120))
    result: VerifyResult = await handle.result()
    history = await handle.fetch_history()
    await Replayer(workflows=WORKFLOWS, data_converter=converter()).replay_workflow(history)
    if record and os.environ.get("HIMIG_RECORD_HISTORIES"):
        (Path(__file__).parent.parent / "histories" / f"{record}.json").write_text(plain_history_json(history))
    return result


def _delete_series_set(mi: Any, datastore_id: str, series_uid: str) -> None:
    """Delete the image set that holds ``series_uid`` (the data store loses what the source still has)."""
    pages = mi.get_paginator("search_image_sets").paginate(datastoreId=datastore_id, searchCriteria={})
    sets = [s["imageSetId"] for p in pages for s in p["imageSetsMetadataSummaries"]
            if s.get("DICOMTags", {}).get("DICOMSeriesInstanceUID") == series_uid]
    assert len(sets) == 1, sets
    mi.delete_image_set(datastoreId=datastore_id, imageSetId=sets[0])


async def test_a_local_directory_verifies_clean_then_reports_what_changed(
        client: Client, worker: Worker, buckets: dict[str, Any], own_datastore: str, source_root: Path,
        medical_imaging: Any, himig_cli: Any) -> None:
    s3, src, work = buckets["s3"], buckets["source"], buckets["work"]
    folder = source_root / "ward-a"
    series: list[tuple[str, str]] = []
    for n in range(2):
        study, one = uid(), uid()
        series.append((study, one))
        (folder / f"study{n}").mkdir(parents=True)
        for i in range(3):
            (folder / f"study{n}" / f"{i}.dcm").write_bytes(make_instance(study, one))
    connector = LocalSource(kind="local", path=str(folder))
    _, migrated = await migrate(client, worker, MigrationInput(
        source_s3_uri=f"s3://{src}/landed/", datastore_id=own_datastore, work_s3_uri=f"s3://{work}/m/",
        import_start_interval_seconds=0, source_connector=connector), prefix="vcm")
    assert migrated.files_total == 6

    request = SourceVerifyInput(source_connector=connector, datastore_id=own_datastore,
                                work_s3_uri=f"s3://{work}/v/")
    clean = await _verify(client, worker, request, record="verify-source-pulled-local")
    assert clean.clean and (clean.instances_expected, clean.instances_verified) == (6, 6), clean
    assert clean.source_connector == "local directory" and clean.touches == 0
    # The pull landed under the run's own prefix, next to its result, and nowhere near the migration's landing.
    landing = parse_s3_uri(clean.source_s3_uri or "")
    assert landing.bucket == work and landing.key.startswith("v/verify-source/") and landing.key.endswith("/landing/")
    assert len(list(list_objects(s3, landing))) == 6
    assert any("pulled into" in note for note in clean.notes)

    # The same through the command: `himig start`'s --source-dir flag.
    once = await invoke(himig_cli, "verify", "--source-dir", str(folder), "--datastore-id", own_datastore,
                        "--work", f"s3://{work}/v/")
    assert once.exit_code == 0, once.output
    assert "verify local directory, default (no touches): 6 of 6 instances of the source found" in once.flat
    assert "no differences" in once.flat and "pulled into" in once.flat

    # The source gains an instance of a migrated series; the data store loses the other study's image set.
    (folder / "study0" / "9.dcm").write_bytes(make_instance(*series[0]))
    _delete_series_set(medical_imaging, own_datastore, series[1][1])
    changed = await _verify(client, worker, request)
    assert changed.differences == {DifferenceKind.MISSING: 1 + 3}, changed
    differs = await invoke(himig_cli, "verify", "--source-dir", str(folder), "--datastore-id", own_datastore,
                           "--work", f"s3://{work}/v/")
    assert differs.exit_code == 3 and "missing: 4" in differs.flat, differs.output
    assert (changed.instances_expected, changed.instances_verified) == (7, 3)
    # A later run pulls afresh into a landing prefix of its own: nothing of the first run's copy is reused.
    assert changed.source_s3_uri != clean.source_s3_uri

    deep = await _verify(client, worker, request.model_copy(update={"deep": True}))
    assert deep.differences == {DifferenceKind.MISSING: 4} and deep.touches == 1
    named = sorted(parse_s3_uri(f"s3://{work}/{d['key']}").key.rsplit("/landing/", 1)[1]
                   for d in _lines(s3, deep.differences_uri) if d["kind"] == "missing")
    assert named == ["study0/9.dcm", "study1/0.dcm", "study1/1.dcm", "study1/2.dcm"]


def _lines(s3: Any, uri: str) -> list[dict[str, Any]]:
    loc = parse_s3_uri(uri)
    return [json.loads(x) for x in s3.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read().splitlines()]


async def test_a_dicomweb_pacs_verifies_clean_then_reports_what_changed(
        client: Client, worker: Worker, buckets: dict[str, Any], own_datastore: str, orthanc: Orthanc,
        medical_imaging: Any) -> None:
    # Two studies of one series each, one patient each (instances that agree, so every series lands primary).
    orthanc.clear()
    (study_a, series_a), (study_b, series_b) = (uid(), uid()), (uid(), uid())
    for study, series, n, patient in ((study_a, series_a, 3, "SYNTH-0001"), (study_b, series_b, 2, "SYNTH-0002")):
        for _ in range(n):
            assert orthanc.upload(make_instance(study, series, patient_id=patient))["Status"] == "Success"
    src, work = buckets["source"], buckets["work"]
    pacs = DicomwebSource(kind="dicomweb", url=orthanc.dicomweb)
    _, migrated = await migrate(client, worker, MigrationInput(
        source_s3_uri=f"s3://{src}/landed/", datastore_id=own_datastore, work_s3_uri=f"s3://{work}/m/",
        import_start_interval_seconds=0, source_connector=pacs), prefix="vcp", timeout_seconds=120)
    assert migrated.files_total == 5

    # By default a PACS is checked by its listing: QIDO-RS names each instance, nothing is pulled.
    request = SourceVerifyInput(source_connector=pacs, datastore_id=own_datastore, work_s3_uri=f"s3://{work}/v/")
    listed = await _verify(client, worker, request, record="verify-source-listed-dicomweb")
    assert listed.clean and (listed.instances_expected, listed.instances_verified) == (5, 5), listed.differences
    assert listed.source_connector == "DICOMweb " + "/".join(orthanc.dicomweb.split("/")[:3])
    assert listed.source_s3_uri is None and any(n.startswith("listed, not pulled") for n in listed.notes)
    assert listed.requests["QIDO-RS instance searches"] == 2 and listed.requests["SearchImageSets"] == 2
    assert all("/landing/" not in o["Key"] for o in list_objects(buckets["s3"], parse_s3_uri(f"s3://{work}/v/")))
    pulled = await _verify(client, worker, request.model_copy(update={"pull": True}))
    assert pulled.clean and (pulled.instances_expected, pulled.instances_verified) == (5, 5), pulled.differences
    assert (pulled.source_s3_uri or "").endswith("/landing/") and pulled.touches == 0

    # The PACS gains an instance of a migrated series, the data store loses a series' image set, and a named
    # study is not in the PACS at all: both paths report the same differences.
    orthanc.upload(make_instance(study_a, series_a))
    _delete_series_set(medical_imaging, own_datastore, series_b)
    missing = uid()
    named = pacs.model_copy(update={"study_uids": [study_a, study_b, missing]})
    for pull in (False, True):
        changed = await _verify(client, worker, request.model_copy(update={"source_connector": named, "pull": pull}))
        assert changed.differences == {DifferenceKind.MISSING: 1 + 2, DifferenceKind.NOT_PULLED: 1}, (
            pull, changed.differences)
        assert (changed.instances_expected, changed.instances_verified) == (6, 3)
        not_pulled = [d for d in _lines(buckets["s3"], changed.differences_uri) if d["kind"] == "not_pulled"]
        assert [(d["key"].rsplit("/landing/", 1)[-1], d["code"]) for d in not_pulled] == [
            (f"{missing}/", "StudyNotFound")], pull
    # The same PACS through DIMSE: C-FIND at IMAGE level lists the same instances, nothing retrieved.
    dimse = DimseSource(kind="dimse", host="127.0.0.1", port=orthanc.dicom_port, called_ae=ORTHANC_AET,
                        calling_ae=OUR_AET, study_uids=[study_a, study_b, missing])
    found = await _verify(client, worker, request.model_copy(update={"source_connector": dimse}))
    assert found.differences == {DifferenceKind.MISSING: 3, DifferenceKind.NOT_PULLED: 1}, found.differences
    assert found.source_connector == f"DIMSE {ORTHANC_AET}@127.0.0.1:{orthanc.dicom_port}"
    assert found.requests["C-FIND instance searches"] == 3 and found.source_s3_uri is None
    deep = await _verify(client, worker, request.model_copy(update={"deep": True}))
    assert deep.differences == {DifferenceKind.MISSING: 3} and deep.touches == 1  # study B has no set left
    keys = sorted(d["key"] for d in _lines(buckets["s3"], deep.differences_uri) if d["kind"] == "missing")
    assert len(keys) == 3 and all(k.startswith((f"{study_a}/{series_a}/", f"{study_b}/{series_b}/")) for k in keys)


async def test_an_unreachable_pacs_or_a_refused_directory_fails_in_one_line(
        client: Client, worker: Worker, buckets: dict[str, Any], own_datastore: str, himig_cli: Any,
        tmp_path: Path, source_root: Path) -> None:
    work = f"s3://{buckets['work']}/v/"
    nobody = f"http://127.0.0.1:{free_port()}/dicom-web"
    for pull in (False, True):  # listed (the probe fails) and pulled (the pull's study search fails)
        with pytest.raises(WorkflowFailureError) as failed:
            await _verify(client, worker, SourceVerifyInput(
                source_connector=DicomwebSource(kind="dicomweb", url=nobody), datastore_id=own_datastore,
                work_s3_uri=work, pull=pull))
        message = str(failed.value.cause.cause)
        assert "DICOMweb source http://127.0.0.1:" in message and "did not answer" in message, message
        assert "\n" not in message

    down = await invoke(himig_cli, "verify", "--source-dicomweb", nobody, "--datastore-id", own_datastore,
                        "--work", work)
    # (The in-process worker's own log lines share the runner's output; the command's is the one error line.)
    assert down.exit_code == 1 and down.flat.count("error:") == 1, down.output
    assert "verify failed: SourceUnavailable: DICOMweb source http://127.0.0.1:" in down.flat, down.output
    assert "Traceback" not in down.output
    # A data store that does not exist is refused before anything is pulled.
    (source_root / "one").mkdir()
    (source_root / "one" / "0.dcm").write_bytes(make_instance(uid(), uid()))
    with pytest.raises(WorkflowFailureError) as failed:
        await _verify(client, worker, SourceVerifyInput(
            source_connector=LocalSource(kind="local", path=str(source_root / "one")), datastore_id="f" * 32,
            work_s3_uri=work))
    assert "datastore_id: no data store" in str(failed.value.cause.cause)
    assert not [o for o in list_objects(buckets["s3"], parse_s3_uri(work)) if "/landing/" in o["Key"]]
    outside = await invoke(himig_cli, "verify", "--source-dir", str(tmp_path / "elsewhere"), "--datastore-id",
                           own_datastore, "--work", work)
    assert outside.exit_code == 1 and outside.flat.count("error:") == 1, outside.output
    assert "verify failed: InvalidSourceConnector: local directory source" in outside.flat, outside.output
    assert "Traceback" not in outside.output


@pytest.mark.parametrize("args, says", [
    (["--source", "s3://bkt/p/", "--source-dir", "/data"], "--source and --source-dir: give one source"),
    (["--source", "s3://bkt/p/", "--source-dicomweb", "http://pacs/dicom-web"], "give one source"),
    (["--source-dir", "/data", "--source-dicomweb", "http://pacs/dicom-web"], "give at most one source connector"),
    (["--source-dimse", "pacs"], "--source-dimse: expected HOST:PORT"),
    (["--source-dimse", "pacs:104"], "--called-ae: required with --source-dimse"),
    (["--called-ae", "PACS", "--source-dicomweb", "http://pacs/dicom-web"], "only with --source-dimse"),
    (["--retrieve", "move", "--source-dicomweb", "http://pacs/dicom-web"], "--retrieve: only with --source-dimse"),
    (["--source-dicomweb", "ftp://pacs/dicom-web"], "source_connector.dicomweb.url"),
    (["--source-dicomweb", "http://user:pw@pacs/dicom-web"], "must not carry credentials"),
    (["--source-dimse", "pacs:99999", "--called-ae", "PACS"], "source_connector.dimse.port"),
    (["--source-dimse", "bad host:104", "--called-ae", "PACS"], "source_connector.dimse.host"),
    (["--source-dicomweb", "http://pacs/dicom-web", "--study-uid", "1.02"], "source_connector.dicomweb.study_uids"),
    (["--source-dicomweb", "http://pacs/dicom-web", "--study-date-from", "2024-13-01"], "study_date_from"),
    (["--source-dir", "/data", "--study-uid", "1.2"], "--study-uid: only with --source-dicomweb or --source-dimse"),
    (["--source-dir", "/data", "--pull"], "--pull: only with --source-dicomweb or --source-dimse"),
    (["--source", "s3://bkt/p/", "--pull"], "--pull: only with"),
])
async def test_bad_connector_flags_end_in_one_line(himig_cli: Any, args: list[str], says: str) -> None:
    out = await invoke(himig_cli, "verify", *args, "--datastore-id", "a" * 32, "--work", "s3://bkt/w/")
    assert out.exit_code == 2 and says in out.flat and "Traceback" not in out.output, out.output


async def test_a_connector_needs_a_data_store_and_a_work_prefix_and_no_migration_id(himig_cli: Any) -> None:
    pacs = ["--source-dicomweb", "http://pacs/dicom-web"]
    no_store = await invoke(himig_cli, "verify", *pacs, "--work", "s3://bkt/w/")
    assert no_store.exit_code == 2 and "--source-dicomweb needs --datastore-id" in no_store.flat
    no_work = await invoke(himig_cli, "verify", *pacs, "--datastore-id", "a" * 32)
    assert no_work.exit_code == 2 and "--source-dicomweb needs --work" in no_work.flat
    both = await invoke(himig_cli, "verify", "some-migration", *pacs)
    assert both.exit_code == 2 and "not both" in both.flat
    neither = await invoke(himig_cli, "verify")
    assert neither.exit_code == 2 and "--source-dicomweb" in neither.flat


@pytest.mark.parametrize("fields, says", [
    ({"source_s3_uri": "s3://bkt/s/", "source_connector": {"kind": "local", "path": "/data"}}, "exclusive"),
    ({}, "give source_s3_uri"),
    ({"source_connector": {"kind": "local", "path": "/data", "extra": 1}}, "extra"),
    ({"source_connector": {"kind": "local", "path": "data"}}, "absolute"),
    ({"source_connector": {"kind": "smb", "path": "/data"}}, "source_connector"),
    ({"source_connector": {"kind": "dimse", "host": "pacs", "port": True, "called_ae": "P", "calling_ae": "H"}},
     "port"),
    ({"source_connector": {"kind": "dicomweb", "url": "http://pacs", "page_size": "10"}}, "page_size"),
    ({"source_connector": {"kind": "local", "path": "/data"}, "pull": True}, "pull: only with"),
    ({"source_s3_uri": "s3://bkt/s/", "pull": True}, "pull: only with"),
    ({"source_connector": {"kind": "dicomweb", "url": "http://pacs"}, "pull": 1}, "pull"),
])

def test_source_verify_input_takes_one_strict_source(fields: dict[str, Any], says: str) -> None:
    with pytest.raises(ValidationError) as err:
        SourceVerifyInput.model_validate({"datastore_id": "a" * 32, "work_s3_uri": "s3://bkt/w/", **fields})
    assert says in str(err.value)


def test_a_pacs_is_listed_unless_files_are_needed() -> None:
    base = {"datastore_id": "a" * 32, "work_s3_uri": "s3://bkt/w/"}
    pacs = {"kind": "dicomweb", "url": "http://pacs/dicom-web"}
    assert SourceVerifyInput.model_validate({**base, "source_connector": pacs}).listed_only
    assert SourceVerifyInput.model_validate({**base, "source_connector": pacs, "deep": True}).listed_only
    for needs_files in ({"pull": True}, {"deep": True, "attributes": ["Modality"]}, {"deep": True, "pixels": 1}):
        assert not SourceVerifyInput.model_validate({**base, "source_connector": pacs, **needs_files}).listed_only
    assert not SourceVerifyInput.model_validate({**base, "source_connector": {"kind": "local", "path": "/d"}}).listed_only
    assert not SourceVerifyInput.model_validate({**base, "source_s3_uri": "s3://bkt/s/"}).listed_only
