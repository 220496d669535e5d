"""write_plan: a dry run's findings and predictions (`himig plan`), from what the migration's own stages wrote.

By the time it runs, the plan's receive, parse, validate, normalize and plan_batches steps have left under the
plan's id exactly what a migration's would: inventory pages, page ledgers of rejected files, the duplicate ledger
and the batch manifests. This turns them into ``plan/plan.json`` (`contracts.plan.PlanDocument`) and
``plan/files.ndjson`` (one `contracts.plan.PredictedFile` per source file: key, predicted state, code, batch) and
estimates the migration's wall time (`estimate`).
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError
from temporalio import activity

from activities.dicom_header import PATIENT_ATTRS, SERIES_ATTRS, STUDY_ATTRS
from activities.errors import classify
from activities.heartbeat import current, keeps_alive
from activities.storage import iter_ndjson, list_objects, put_bytes, put_ndjson, read_models
from contracts import layout
from contracts.plan import (
    SERIES_LIMIT,
    BatchSummary,
    NonPrimarySeries,
    PlanDocument,
    PlanEstimate,
    PredictedFile,
    PredictedOutcome,
    WritePlanInput,
    WritePlanResult,
)
from contracts.records import InstanceRecord, InventoryEntry, LedgerEntry
from contracts.s3uri import S3Location
from contracts.stages import BatchPlan

LIST_PAGE = 1000  # keys per ListObjectsV2 answer


@dataclass(frozen=True)
class EstimateRates:
    """Rates the estimate assumes where the plan cannot measure them (settings, defaults from bench/)."""

    import_files_per_second: float
    staging_copies_per_second: float
    job_overhead_seconds: float
    job_slots_cap: int  # HIMIG_DATASTORE_MAX_RUNNING_JOBS
    start_tps: float  # StartDICOMImportJob calls per second a worker begins with


@dataclass(frozen=True)
class PlannedBatch:
    files: int
    bytes: int
    staged: bool


def import_seconds(batches: list[PlannedBatch], slots: int, start_interval: float, rates: EstimateRates) -> float:
    """When the last planned job ends: jobs start in batch order, at most ``slots`` at once, starts at least
    ``start_interval`` apart; each lasts its staging copies, its files and a fixed overhead (await, review)."""
    free: list[float] = [0.0] * max(1, slots)
    heapq.heapify(free)
    last_start = -start_interval
    end = 0.0
    for b in batches:
        start = max(heapq.heappop(free), last_start + start_interval)
        copies = b.files / rates.staging_copies_per_second if b.staged else 0.0
        done = start + copies + b.files / rates.import_files_per_second + rates.job_overhead_seconds
        heapq.heappush(free, done)
        last_start = start
        end = max(end, done)
    return end


def estimate(input: WritePlanInput, batches: list[PlannedBatch], rates: EstimateRates) -> PlanEstimate:
    m = input.migration
    slots = min(m.max_concurrent_jobs, rates.job_slots_cap)
    interval = max(m.import_start_interval_seconds, 1.0 / rates.start_tps)
    importing = import_seconds(batches, slots, interval, rates)
    t = input.timings
    return PlanEstimate(
        receive_seconds=t.receive_seconds, parse_seconds=t.parse_seconds, plan_seconds=t.plan_seconds,
        import_seconds=importing,
        total_seconds=t.receive_seconds + t.parse_seconds + t.plan_seconds + importing,
        total_from_plan_seconds=t.plan_seconds + importing, job_slots=slots, start_interval_seconds=interval,
        import_files_per_second=rates.import_files_per_second,
        staging_copies_per_second=rates.staging_copies_per_second, job_overhead_seconds=rates.job_overhead_seconds)


# The attribute groups HealthImaging compares within a series, as our fingerprints cover them.
GROUPS = (("patient_fingerprint", PATIENT_ATTRS), ("study_fingerprint", STUDY_ATTRS),
          ("series_fingerprint", SERIES_ATTRS))


def non_primary_series(records: list[InstanceRecord]) -> list[NonPrimarySeries]:
    """The series with files predicted non-primary, each with the attributes (names of the groups whose
    fingerprint differs from the file that set the series' attributes in this source) that conflict."""
    by_series: dict[tuple[str, str], list[InstanceRecord]] = defaultdict(list)
    for r in records:
        by_series[(r.study_instance_uid, r.series_instance_uid)].append(r)
    out: list[NonPrimarySeries] = []
    for (study, series), files in sorted(by_series.items()):
        predicted = [f for f in files if f.predicted_non_primary]
        if not predicted:
            continue
        ordered = sorted(files, key=lambda f: f.key)
        held = any((f.prediction_reason or "").startswith("the data store already holds") for f in predicted)
        names: list[str] = []
        if not held:
            first = ordered[0]
            for field, attrs in GROUPS:
                if any(getattr(f, field) != getattr(first, field) for f in predicted):
                    names += attrs
        out.append(NonPrimarySeries(study_instance_uid=study, series_instance_uid=series, files=len(predicted),
                                    attributes=names, against="the data store" if held else "this source"))
    return out


class PlanReportActivities:
    def __init__(self, s3: Any, rates: EstimateRates) -> None:
        self._s3 = s3
        self._rates = rates

    def _ledgers(self, input: WritePlanInput) -> tuple[list[LedgerEntry], list[LedgerEntry]]:
        """(page ledgers: rejected by validation, the plan's duplicate ledgers: one, or one per wave)."""
        work, pid = input.migration.work_s3_uri, input.plan_id
        prefix = layout.ledger_prefix(work, pid)
        pages: list[LedgerEntry] = []
        planned: list[LedgerEntry] = []
        for obj in list_objects(self._s3, prefix):
            name = obj["Key"].rsplit("/", 1)[-1]
            if name.startswith("page-"):
                pages += read_models(self._s3, S3Location(prefix.bucket, obj["Key"]), LedgerEntry)
            elif name.startswith("plan"):  # plan.ndjson, or plan-<first page>.ndjson per wave
                planned += read_models(self._s3, S3Location(prefix.bucket, obj["Key"]), LedgerEntry)
        return pages, planned

    def _failures(self, input: WritePlanInput) -> list[LedgerEntry]:
        prefix = layout.receive_failures_prefix(input.migration.work_s3_uri, input.plan_id)
        return [LedgerEntry.model_validate(row) for obj in list_objects(self._s3, prefix)
                for row in iter_ndjson(self._s3, S3Location(prefix.bucket, obj["Key"]))]

    def _batches(self, input: WritePlanInput) -> tuple[list[PlannedBatch], list[list[InstanceRecord]]]:
        work, pid = input.migration.work_s3_uri, input.plan_id
        metas: list[PlannedBatch] = []
        members: list[list[InstanceRecord]] = []
        for n in range(input.planned.batches):
            files = read_models(self._s3, layout.batch_manifest(work, pid, n), InstanceRecord)
            meta = BatchPlan.model_validate_json(self._s3.get_object(
                Bucket=layout.batch_meta(work, pid, n).bucket, Key=layout.batch_meta(work, pid, n).key)["Body"].read())
            metas.append(PlannedBatch(files=meta.files, bytes=meta.bytes, staged=meta.direct_input_s3_uri is None))
            members.append(files)
            if keep := current():
                keep.record(n)
        return metas, members

    @activity.defn(name="write_plan")
    @keeps_alive
    def write_plan(self, input: WritePlanInput) -> WritePlanResult:
        try:
            return self._write(input)
        except ClientError as err:
            raise classify(err, "writing the plan") from None

    def _write(self, input: WritePlanInput) -> WritePlanResult:
        m, pid = input.migration, input.plan_id
        inventory: list[InventoryEntry] = []
        for page in range(input.pages):
            inventory += read_models(self._s3, layout.inventory_page(m.work_s3_uri, pid, page), InventoryEntry)
        rejected, duplicates = self._ledgers(input)
        failures = self._failures(input)
        metas, members = self._batches(input)

        predicted: dict[str, PredictedFile] = {}
        for entry in (*rejected, *duplicates):
            predicted[entry.key] = PredictedFile(key=entry.key, outcome=PredictedOutcome(entry.state.value),
                                                 code=entry.code)
        batched: list[InstanceRecord] = []
        for n, files in enumerate(members):
            for r in files:
                predicted[r.key] = PredictedFile(key=r.key, outcome=PredictedOutcome.IMPORT, batch=n,
                                                 predicted_non_primary=r.predicted_non_primary or None)
            batched += files
        lines = [predicted.get(e.key) or PredictedFile(key=e.key, outcome=PredictedOutcome.FAILED, code="Unplanned")
                 for e in sorted(inventory, key=lambda e: e.key)]
        inventoried = {e.key for e in inventory}
        lines += [PredictedFile(key=f.key, outcome=PredictedOutcome.FAILED, code=f.code)
                  for f in sorted(failures, key=lambda f: f.key) if f.key not in inventoried]
        files_loc = layout.plan_files(m.work_s3_uri, pid)
        put_ndjson(self._s3, files_loc, lines)

        codes: Counter[str] = Counter()
        for entry in rejected:
            for code in (entry.code or "unknown").split(","):
                codes[code] += 1
        dup = Counter(e.code for e in duplicates)
        series = non_primary_series(batched)
        staged = sum(b.files for b in metas if b.staged)
        listed = len(inventory)
        requests = {
            "ListObjectsV2 (source)": 0 if m.source_manifest_uri else math.ceil(listed / LIST_PAGE),
            "GetObject (headers, as measured by the plan)": input.header_requests,
            "CopyObject (staging)": staged,
            "StartDICOMImportJob": len(metas),
        }
        doc = PlanDocument(
            plan_id=pid, planned_at=datetime.now(UTC), migration=m, files=len(inventory),
            bytes=sum(e.size for e in inventory), inventory_pages=input.pages, source_failures=input.source_failures,
            rejected_files=len(rejected), rejected_by_code=dict(codes.most_common()),
            duplicates_in_source=dup["duplicate_sop_instance"],
            conflicting_duplicates_in_source=dup["conflicting_duplicate_sop_instance"],
            already_imported=dup["already_imported"], conflicting_already_imported=dup["conflicting_already_imported"],
            predicted_non_primary_files=sum(1 for r in batched if r.predicted_non_primary),
            predicted_non_primary_series_total=len(series), predicted_non_primary_series=series[:SERIES_LIMIT],
            batches=BatchSummary(
                batches=len(metas), import_jobs=len(metas), direct_batches=sum(1 for b in metas if not b.staged),
                files_to_import=sum(b.files for b in metas), bytes_to_import=sum(b.bytes for b in metas),
                staged_files=staged, largest_batch_files=max((b.files for b in metas), default=0),
                largest_batch_bytes=max((b.bytes for b in metas), default=0)),
            s3_requests=requests, estimate=estimate(input, metas, self._rates),
            predicted_by_outcome=dict(Counter(line.outcome for line in lines)), files_uri=files_loc.uri)
        plan_loc = layout.plan_document(m.work_s3_uri, pid)
        put_bytes(self._s3, plan_loc, doc.model_dump_json(exclude_none=True).encode(), "application/json")
        return WritePlanResult(plan_uri=plan_loc.uri, files_uri=files_loc.uri, files=len(lines))

