"""The whole hostile corpus (89 defect kinds) mixed with valid files, through the real stages.

First through the real parse / validate / normalize / plan activities against moto S3 at every validation level,
then one end-to-end migration through Temporal and the HealthImaging emulator. Every file must end in exactly one
terminal state, the one its corpus manifest expects, with the defect's own finding code as the reason.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.worker import Worker

from activities.normalize import NormalizeActivities
from activities.parse import ParseActivities
from activities.plan import PlanActivities
from activities.receive import ReceiveActivities
from activities.storage import iter_ndjson, list_objects
from activities.validate import ValidateActivities, rejects
from contracts import layout
from contracts.common import FileState, ValidationLevel
from contracts.migration import MigrationInput
from contracts.s3uri import S3Location
from contracts.stages import PageInput, PlanInput, ReceiveInput
from corpus.malformed import DEFECTS
from corpus.models import MANIFEST_NAME, CorpusManifest, Expected, Origin
from corpus.sample import build_sample_corpus
from tests.support.settings import FINGERPRINT_KEY
from workflows.migration import MigrationWorkflow


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CorpusManifest]:
    dest = tmp_path_factory.mktemp("hostile")
    return dest, build_sample_corpus(dest)


@pytest.fixture
def uploaded(buckets: dict[str, Any], sample: tuple[Path, CorpusManifest]) -> Iterator[str]:
    s3, src = buckets["s3"], buckets["source"]
    root, manifest = sample
    for entry in manifest.entries:
        s3.put_object(Bucket=src, Key=f"hostile/{entry.path}", Body=(root / entry.path).read_bytes())
    assert not any(e.path == MANIFEST_NAME for e in manifest.entries)
    yield f"s3://{src}/hostile/"


def _ledger(s3: Any, work: str, migration: str) -> dict[str, dict[str, Any]]:
    """Every ledger line of a migration, by source key; a key written twice fails the test."""
    rows: dict[str, dict[str, Any]] = {}
    prefix = layout.ledger_prefix(work, migration)
    for obj in list_objects(s3, prefix):
        for row in iter_ndjson(s3, S3Location(prefix.bucket, obj["Key"])):
            assert row["key"] not in rows, f"{row['key']} accounted twice"
            rows[row["key"]] = row
    return rows


def _stages(s3: Any, source: str, work: str, level: ValidationLevel) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """Run receive → parse → validate → normalize → plan; return the ledger and the keys planned for import."""
    migration = f"hostile-{level.value}-{uuid.uuid4().hex[:6]}"
    received = ReceiveActivities(s3).receive_inventory(
        ReceiveInput(migration_id=migration, source_s3_uri=source, work_s3_uri=work, page_size=40))
    for page in range(received.pages):
        page_input = PageInput(migration_id=migration, work_s3_uri=work, page=page, source_s3_uri=source,
                               validation_level=level)
        ParseActivities(s3, 4, fingerprint_key=FINGERPRINT_KEY.encode()).parse_headers(page_input)
        ValidateActivities(s3).validate_page(page_input)
        NormalizeActivities(s3).normalize_page(page_input)
    plan = PlanActivities(s3).plan_batches(PlanInput(
        migration_id=migration, source_s3_uri=source, work_s3_uri=work, pages=received.pages,
        max_files_per_batch=50, max_bytes_per_batch=10**9))
    planned: set[str] = set()
    for batch in range(plan.batches):
        planned |= {str(r["key"]) for r in iter_ndjson(s3, layout.batch_manifest(work, migration, batch))}
    return _ledger(s3, work, migration), planned


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("level", list(ValidationLevel))
def test_every_hostile_file_gets_exactly_one_verdict_at_each_level(
        level: ValidationLevel, buckets: dict[str, Any], uploaded: str, sample: tuple[Path, CorpusManifest]) -> None:
    s3, work = buckets["s3"], f"s3://{buckets['work']}/runs/"
    _, manifest = sample
    ledger, planned = _stages(s3, uploaded, work, level)
    wrong = []
    for entry in manifest.entries:
        key = f"hostile/{entry.path}"
        if (key in ledger) == (key in planned):
            wrong.append(f"{entry.path}: in the ledger {key in ledger}, planned {key in planned}")
            continue
        row = ledger.get(key)
        if entry.expected is Expected.DUPLICATE:
            ok = row is not None and row["state"] == FileState.SKIPPED_DUPLICATE \
                and row["duplicate_of"] == f"hostile/{entry.related_to}"
            if entry.origin is Origin.IDENTITY:
                ok = ok and row["reason"].startswith("same instance, other encoding")
        elif entry.expected is Expected.CONFLICT:
            ok = row is not None and row["state"] == FileState.REJECTED \
                and row["code"] == "conflicting_duplicate_sop_instance" \
                and row["duplicate_of"] == f"hostile/{entry.related_to}" \
                and row["differing_attributes"] == entry.differs_in
        elif entry.defect:
            spec = DEFECTS[entry.defect]
            codes = row["code"].split(",") if row else []
            ok = (row is not None and row["state"] == FileState.REJECTED and bool(row["reason"])
                  and any(c in codes and rejects(c, level) for c in (spec.finding, spec.also) if c)
                  # each finding on the ledger line: its code, severity and readable reason
                  and all(f["code"] and f["severity"] and f["reason"] for f in row["findings"])
                  and set(codes) <= {f["code"] for f in row["findings"]}
                  ) if spec.rejected_at(level) else row is None
        else:
            ok = row is None  # real, synthetic and non-primary files are all valid DICOM
        if not ok:
            wrong.append(f"{entry.path} ({entry.defect or entry.origin.value}, {entry.expected.value}): {row}")
    assert not wrong, f"{len(wrong)} files with the wrong verdict at {level.value}:\n" + "\n".join(wrong)


def _report(s3: Any, uri: str) -> dict[str, dict[str, Any]]:
    bucket, key = uri[5:].split("/", 1)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return {row["key"]: row for row in map(json.loads, body.splitlines())}


@pytest.mark.filterwarnings("ignore::UserWarning")
async def test_the_hostile_corpus_migrates_end_to_end(client: Client, worker: Worker, buckets: dict[str, Any],
                                                      uploaded: str, datastore_id: str,
                                                      sample: tuple[Path, CorpusManifest]) -> None:
    s3 = buckets["s3"]
    _, manifest = sample
    payload = MigrationInput(source_s3_uri=uploaded, datastore_id=datastore_id,
                             work_s3_uri=f"s3://{buckets['work']}/e2e/", import_start_interval_seconds=0,
                             max_files_per_batch=40, inventory_page_size=50)
    result = await client.execute_workflow(MigrationWorkflow.run, payload, id=f"hostile-{uuid.uuid4().hex[:8]}",
                                           task_queue=worker.task_queue, execution_timeout=timedelta(seconds=240))
    rows = _report(s3, result.files_uri)
    assert result.files_total == len(manifest.entries) == len(rows)
    expected_state = {
        Expected.VALID: {FileState.IMPORTED, FileState.IMPORTED_WITH_WARNINGS},
        Expected.NON_PRIMARY: {FileState.IMPORTED, FileState.IMPORTED_WITH_WARNINGS},
        Expected.REJECT: {FileState.REJECTED},
        Expected.SERVICE_FAILURE: {FileState.FAILED},
        Expected.DUPLICATE: {FileState.SKIPPED_DUPLICATE},
        Expected.CONFLICT: {FileState.REJECTED},
    }
    wrong = []
    for entry in manifest.entries:
        row = rows[f"hostile/{entry.path}"]
        if row["state"] not in expected_state[entry.expected] or not (row.get("reason") or row["state"] == "imported"):
            wrong.append(f"{entry.path} ({entry.defect or entry.origin.value}): expected {entry.expected.value}, "
                         f"got {row['state']} {row.get('code')} {row.get('reason')}")
        if entry.expected is Expected.CONFLICT and row.get("differing_attributes") != entry.differs_in:
            wrong.append(f"{entry.path}: expected differences in {entry.differs_in}, got {row}")
        if entry.expected is Expected.NON_PRIMARY and row.get("is_primary") is not False:
            wrong.append(f"{entry.path}: expected a non-primary image set, got {row}")
    assert not wrong, "\n".join(wrong)
