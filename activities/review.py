"""review manifest: prove, file by file, what one import job did.

Reads ``job-output-manifest.json`` and the SUCCESS / FAILURE / WARNING NDJSON (retrying while they are not yet
visible), gives every staged file exactly one terminal state, cross-checks the job's counters, and checks each image
set's primary flag (`primary_lookups`): from the job's own two statements where they suffice, with
``GetImageSet`` where they do not. An imported file with warnings, ours from parsing or the job's own, is
``imported_with_warnings`` and carries them, each marked by origin.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from activities.errors import classify, error_code
from activities.failed_index import FailedIndex, fails_again
from activities.heartbeat import keeps_alive
from activities.import_index import ImportIndex
from activities.ledger import source_changed_keys
from activities.spotcheck import SpotChecker
from activities.storage import (
    get_bytes,
    is_missing,
    iter_ndjson,
    list_objects,
    put_ndjson,
    read_batch_models,
    read_models,
)
from contracts import layout
from contracts.common import FileState
from contracts.errors import BACKOFF, ErrorType
from contracts.records import (
    FailedFile,
    Finding,
    FindingOrigin,
    ImportedInstance,
    InstanceRecord,
    LedgerEntry,
    Severity,
    attributes_fingerprint,
)
from contracts.s3uri import S3Location, parse_s3_uri
from contracts.stages import FailedBatchInput, ImageSetRef, ReviewInput, ReviewResult

# A file's warnings kept from the job output (a hostile or broken output could list thousands for one file).
MAX_SERVICE_WARNINGS = 20


@dataclass
class JobOutput:
    """The parsed output files of one import job, keyed by ``inputFile`` (the S3 key without bucket)."""

    summary: dict[str, Any]
    success: dict[str, dict[str, Any]] = field(default_factory=dict)
    failure: dict[str, dict[str, Any]] = field(default_factory=dict)
    warning: dict[str, dict[str, Any]] = field(default_factory=dict)
    duplicate_lines: list[str] = field(default_factory=list)


def _lines(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def index_lines(rows: list[dict[str, Any]], into: dict[str, dict[str, Any]], dupes: list[str]) -> None:
    for row in rows:
        key = str(row.get("inputFile", ""))
        if key in into:
            dupes.append(key)
        into[key] = row


def service_warnings(import_response: dict[str, Any]) -> list[Finding]:
    """The import job's own warnings for one file (``importResponse.warnings`` of WARNING/warning.ndjson).

    The job's output is read as untrusted: any field may be missing or of another type, so each is turned into
    bounded text, and a file listed in the WARNING output with no readable warning still gets one finding.
    """
    raw = import_response.get("warnings")
    listed = raw if isinstance(raw, list) else []
    out = []
    for w in listed[:MAX_SERVICE_WARNINGS]:
        w = w if isinstance(w, dict) else {}
        kind, number = _text(w.get("type")), _text(w.get("warning_reason_code"))
        message = _text(w.get("message"), 500) or "imported with a warning"
        out.append(Finding(code=kind or number or "warning", severity=Severity.WARNING, origin=FindingOrigin.HEALTHIMAGING,
                           reason=f"{message} (warning code {number})" if number else message))
    return out or [Finding(code="warning", severity=Severity.WARNING, origin=FindingOrigin.HEALTHIMAGING,
                           reason="listed in the import job's WARNING output without a warning")]


def _text(value: Any, limit: int = 100) -> str:
    """A JSON scalar as bounded text ('' for anything else): the output is the service's, not ours to trust."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return ""
    return str(value).strip()[:limit]


def warning_summary(findings: list[Finding]) -> tuple[str, str]:
    """A with-warnings file's ``code`` and ``reason``: each finding once, in order, marked by its origin."""
    codes = dict.fromkeys(f"{f.origin.value}:{f.code}" for f in findings)
    reasons = dict.fromkeys(f"{f.origin.value}: {f.reason}" for f in findings)
    return ",".join(codes), "; ".join(reasons)


def classify_file(key: str, output: JobOutput, job_failed: bool, job_message: str | None,
                  ours: list[Finding] | None = None) -> LedgerEntry:
    """The terminal state of one staged file from the job's output (``key`` is the staged key).

    ``ours`` are the warnings our parse found in the file (findings that did not reject it at the migration's
    level): an imported file with any warning, ours or the service's, is ``imported_with_warnings`` and carries
    them all, each marked by origin. A failed file keeps ours too, as context for the service's reason.
    """
    ours = [f.model_copy(update={"origin": FindingOrigin.HIMIG}) for f in ours or []]
    if key in output.failure:
        exc = output.failure[key].get("exception") or {}
        return LedgerEntry(key=key, state=FileState.FAILED, code=str(exc.get("exceptionType", "ImportFailure")),
                           reason=str(exc.get("message", "import failed")), findings=ours or None)
    imported = output.warning.get(key) or output.success.get(key)
    if imported is not None:
        resp = imported.get("importResponse") or {}
        resp = resp if isinstance(resp, dict) else {}
        findings = ours + (service_warnings(resp) if key in output.warning else [])
        entry = LedgerEntry(key=key, state=FileState.IMPORTED, image_set_id=resp.get("imageSetId"),
                            is_primary=resp.get("isPrimary"), image_set_version=resp.get("imageSetVersion"))
        if not findings:
            return entry
        code, reason = warning_summary(findings)
        return entry.model_copy(update={"state": FileState.IMPORTED_WITH_WARNINGS, "code": code, "reason": reason,
                                        "findings": findings})
    reason = f"import job FAILED: {job_message}" if job_failed else "the import job's output does not mention this file"
    return LedgerEntry(key=key, state=FileState.FAILED, code="JobFailed" if job_failed else "NotReported", reason=reason,
                       findings=ours or None)


def check_counters(summary: dict[str, Any], staged: int, output: JobOutput) -> list[str]:
    """Differences between the manifest's counters and what the NDJSON files and our staging say."""
    problems = []
    expect = {
        "numberOfScannedFiles": staged,
        "numberOfImportedFiles": len(output.success) + len(output.warning),
        "numberOfFilesWithCustomerError": None,
    }
    for name, value in expect.items():
        if value is not None and name in summary and int(summary[name]) != value:
            problems.append(f"manifest {name}={summary[name]} but {value} observed")
    errors = int(summary.get("numberOfFilesWithCustomerError", 0)) + int(summary.get("numberOfFilesWithServerError", 0))
    if "numberOfFilesWithCustomerError" in summary and errors != len(output.failure):
        problems.append(f"manifest reports {errors} failed files but failure.ndjson has {len(output.failure)} lines")
    if output.duplicate_lines:
        problems.append(f"{len(output.duplicate_lines)} files appear more than once in the job output")
    return problems


def primary_lookups(refs: dict[str, ImageSetRef], claims: dict[str, set[bool | None]],
                    summary: dict[str, Any]) -> tuple[list[str], list[ImageSetRef]]:
    """The isPrimary check without a call per image set: (problems, the image sets GetImageSet must confirm).

    The job states each image set's primary flag twice, independently: on every file's line of the SUCCESS /
    WARNING output (``claims``: each line's ``isPrimary``) and once in the manifest's ``imageSetsSummary``. Where
    every line and the summary agree that a set is primary, a GetImageSet would only repeat it (and its existence
    is proven by the GetImageSetMetadata read-back of every set), so it is not called. GetImageSet still confirms
    every set the job calls non-primary (a reconciliation starts from that verdict), every set some line states
    no flag for, and every set the manifest's summary does not list with a flag. Lines or summary disagreeing
    are problems.
    """
    listed = {str(s.get("imageSetId")): s for s in summary.get("imageSetsSummary", []) or [] if isinstance(s, dict)}
    problems, lookups = [], []
    for image_set_id, ref in refs.items():
        said = claims.get(image_set_id, set())
        if len(said - {None}) > 1:
            problems.append(f"image set {image_set_id}: the job output's lines disagree on isPrimary")
        entry = listed.get(image_set_id)
        stated = entry.get("isPrimary") if entry is not None else None
        if isinstance(stated, bool) and said == {stated} and stated:
            continue
        lookups.append(ref)
    return problems, lookups


class ReviewActivities:
    def __init__(self, s3: Any, medical_imaging: Any, spot_check: SpotChecker | None = None,
                 import_index_s3_uri: str | None = None) -> None:
        self._s3 = s3
        self._mi = medical_imaging
        self._index = ImportIndex(s3, import_index_s3_uri)
        self._failed = FailedIndex(s3, import_index_s3_uri)
        self._spot = spot_check or SpotChecker(medical_imaging)

    def _read_output(self, folder: S3Location) -> JobOutput:
        try:
            manifest = json.loads(get_bytes(self._s3, folder.join("job-output-manifest.json")))
            output = JobOutput(summary=manifest.get("jobSummary", {}))
            for name, target in (("SUCCESS/success.ndjson", output.success), ("FAILURE/failure.ndjson", output.failure),
                                 ("WARNING/warning.ndjson", output.warning)):
                try:
                    index_lines(_lines(get_bytes(self._s3, folder.join(name))), target, output.duplicate_lines)
                except ClientError as err:
                    if not is_missing(err):
                        raise
        except ClientError as err:
            if is_missing(err):
                # The manifest can appear a little after the job is COMPLETED: retry quietly.
                raise ApplicationError(f"job output not yet visible under {folder.uri}", type=ErrorType.MANIFEST_NOT_YET_VISIBLE,
                                       category=ApplicationErrorCategory.BENIGN) from None
            raise classify(err, "reading the import job output") from None
        return output

    def _verify_image_sets(self, datastore_id: str, refs: list[ImageSetRef]) -> list[str]:
        problems = []
        for ref in refs:
            try:
                props = self._mi.get_image_set(datastoreId=datastore_id, imageSetId=ref.image_set_id)
            except ClientError as err:
                if error_code(err) in BACKOFF:
                    raise classify(err, "verifying image sets") from None  # throttled: retry, not a problem
                problems.append(f"image set {ref.image_set_id}: GetImageSet failed: {error_code(err)}")
                continue
            if "isPrimary" in props and bool(props["isPrimary"]) != ref.is_primary:
                problems.append(f"image set {ref.image_set_id}: isPrimary={props['isPrimary']} but the job output says "
                                f"{ref.is_primary}")
        return problems

    @activity.defn(name="review_manifest")
    @keeps_alive
    def review_manifest(self, input: ReviewInput) -> ReviewResult:
        batch, job = input.batch, input.job
        files = read_models(self._s3, layout.batch_manifest(batch.work_s3_uri, batch.migration_id, batch.batch,
                                                            batch.part), InstanceRecord)
        # Files whose source changed before staging have their own ledger (SourceChanged): counted, not reviewed.
        changed = source_changed_keys(self._s3, batch)
        files = [f for f in files if f.key not in changed]
        output = self._read_output(parse_s3_uri(input.outcome.output_s3_uri, field="outputS3Uri").as_prefix())
        prefix = job.input_key_prefix
        failed = input.outcome.status == "FAILED"
        ledger: list[LedgerEntry] = []
        imported: list[ImportedInstance] = []
        failing: list[FailedFile] = []
        refs: dict[str, ImageSetRef] = {}
        claims: dict[str, set[bool | None]] = {}
        source = parse_s3_uri(batch.source_s3_uri, field="source_s3_uri")
        for inst in files:
            entry = classify_file(prefix + inst.key, output, failed, input.outcome.message, inst.warnings)
            entry = entry.model_copy(update={"key": inst.key, "size": inst.size, "batch": batch.batch,
                                             "job_id": job.job_id, "study_instance_uid": inst.study_instance_uid,
                                             "series_instance_uid": inst.series_instance_uid,
                                             "predicted_non_primary": inst.predicted_non_primary or None,
                                             "prediction_reason": inst.prediction_reason})
            ledger.append(entry)
            if prefix + inst.key in output.failure and fails_again(entry.code or ""):
                failing.append(FailedFile(content_id=inst.content_id, sop_instance_uid=inst.sop_instance_uid,
                                          key=inst.key, code=entry.code or "", migration_id=batch.migration_id,
                                          batch=batch.batch))
            if entry.image_set_id and entry.state in (FileState.IMPORTED, FileState.IMPORTED_WITH_WARNINGS):
                imported.append(ImportedInstance(
                    sop_instance_uid=inst.sop_instance_uid, content_id=inst.content_id,
                    image_set_id=entry.image_set_id, is_primary=bool(entry.is_primary),
                    study_instance_uid=inst.study_instance_uid, series_instance_uid=inst.series_instance_uid,
                    attributes_fingerprint=attributes_fingerprint(inst),
                    migration_id=batch.migration_id, batch=batch.batch,
                    dataset_fingerprint=inst.dataset_fingerprint or None,
                    source_uri=S3Location(source.bucket, inst.key).uri, source_etag=inst.etag or None,
                    size=inst.size, header_bytes=inst.header_bytes or None,
                    transfer_syntax_uid=inst.transfer_syntax_uid or None))
            if entry.image_set_id:
                ref = refs.setdefault(entry.image_set_id, ImageSetRef(
                    image_set_id=entry.image_set_id, version=entry.image_set_version,
                    is_primary=bool(entry.is_primary), instances=0))
                ref.instances += 1
                claims.setdefault(entry.image_set_id, set()).add(entry.is_primary)
        staged_keys = {layout.job_input_key(prefix, f.key) for f in files}
        unknown = [k for k in (*output.success, *output.failure, *output.warning) if k not in staged_keys]
        problems = check_counters(output.summary, len(files), output)
        if unknown:
            problems.append(f"{len(unknown)} files in the job output were not staged by this batch")
        primary_problems, lookups = primary_lookups(refs, claims, output.summary)
        problems += primary_problems
        problems += self._verify_image_sets(job.datastore_id, lookups)
        # Read-back: instances per image set in GetImageSetMetadata, and a DICOMweb sample (activities/spotcheck.py).
        problems += self._spot.check(job.datastore_id, files, ledger, batch.dicomweb_spot_check)
        for summary in output.summary.get("imageSetsSummary", []) or []:
            listed = refs.get(summary.get("imageSetId", ""))
            if listed and "isPrimary" in summary and bool(summary["isPrimary"]) != listed.is_primary:
                problems.append(f"image set {listed.image_set_id}: manifest and success.ndjson disagree on isPrimary")
        ledger_loc = layout.ledger_for_batch(batch.work_s3_uri, batch.migration_id, batch.batch, batch.part)
        # The data store's import index first: a later migration skips these files (same content) or flags them.
        self._index.write_batch(batch, imported)
        self._failed.write_batch(batch, failing)
        put_ndjson(self._s3, ledger_loc, ledger)
        counts: dict[FileState, int] = {}
        for entry in ledger:
            counts[entry.state] = counts.get(entry.state, 0) + 1
        if changed:
            counts[FileState.FAILED] = counts.get(FileState.FAILED, 0) + len(changed)
        return ReviewResult(
            files_by_state=counts,
            image_sets=len(refs),
            non_primary_image_sets=sorted(r.image_set_id for r in refs.values() if not r.is_primary),
            ledger_uri=ledger_loc.uri,
            counters_consistent=not problems,
            problems=problems[:50],
        )


class FailedBatchActivities:
    """Writes the ledger of a batch whose workflow could not finish, so its files are still accounted for."""

    def __init__(self, s3: Any) -> None:
        self._s3 = s3

    @activity.defn(name="record_failed_batch")
    @keeps_alive
    def record_failed_batch(self, input: FailedBatchInput) -> int:
        batch = input.batch
        # Files any ledger of this batch (whole, or its halves after a FAILED job) already accounts for keep
        # that verdict: a second one would count them twice.
        accounted: set[str] = set()
        ledgers = layout.ledgers_of_batch(batch.work_s3_uri, batch.migration_id, batch.batch)
        unfinished = layout.ledger_for_unfinished(batch.work_s3_uri, batch.migration_id, batch.batch)
        try:
            for obj in list_objects(self._s3, ledgers):
                rest = obj["Key"][len(ledgers.key):]
                if rest[:1] not in (".", "-") or obj["Key"] == unfinished.key:
                    continue  # batch-10000 is a prefix of batch-100000; our own earlier output is rewritten whole
                accounted |= {str(row["key"]) for row in iter_ndjson(self._s3, S3Location(ledgers.bucket, obj["Key"]))}
        except ClientError as err:
            raise classify(err, "reading the batch ledgers") from None
        manifest = layout.batch_manifest(batch.work_s3_uri, batch.migration_id, batch.batch)
        files = read_batch_models(self._s3, manifest, InstanceRecord, batch.batch)
        ledger = [LedgerEntry(key=f.key, state=FileState.FAILED, size=f.size, batch=batch.batch, job_id=input.job_id,
                              code="BatchFailed", reason=input.reason[:500], study_instance_uid=f.study_instance_uid,
                              series_instance_uid=f.series_instance_uid)
                  for f in files if f.key not in accounted]
        if ledger:
            put_ndjson(self._s3, unfinished, ledger)
        return len(ledger)
