"""`IngestWorkflow`: buffer S3 arrivals for one (data store, study) and flush them into child migrations.

The listener (`worker.listener`) signal-with-starts this workflow with `arrived(Arrival)` for every new object.
Arrivals are deduplicated by key and etag (S3 and SQS deliver at least once and in no particular order), then
flushed when ``max_files`` are buffered, after ``quiet_seconds`` without an arrival, or ``max_wait_seconds`` after
the first buffered arrival. A flush writes a source manifest (activity `write_ingest_manifest`) and runs one child
`MigrationWorkflow` over it. Arrivals during a running flush are spilled to S3 as the next flush's manifest
whenever ``max_files`` are buffered (only a pointer is kept) and migrated in order afterwards, so the buffer
never holds the backlog of a long flush. With nothing left to flush the workflow lingers one quiet period (a late
duplicate is still recognised) and completes; the next arrival signal-with-starts a new run under the same id.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from contracts import search
    from contracts.activities import write_ingest_manifest
    from contracts.errors import ErrorType
    from contracts.ingest import (
        RECENT_FLUSHED_LIMIT,
        Arrival,
        FlushedMark,
        FlushSummary,
        IngestInput,
        IngestManifest,
        IngestManifestInput,
        IngestProgress,
        IngestResult,
        IngestState,
        PendingFlush,
        flush_migration_id,
        in_prefix,
        key_hash,
    )
    from contracts.migration import MigrationInput, MigrationResult, check_migration_id
    from contracts.s3uri import parse_s3_uri
    from workflows import cancellation, carried, metrics, patches, policies, signals
    from workflows.history import should_roll_over
    from workflows.migration import MigrationWorkflow
    from workflows.search import upsert

# Each arrival costs a signal and a workflow task in history: besides the history bound (workflows/history.py),
# roll over after a few flushes (each flush adds a child's events), carrying only what is still buffered.
FLUSHES_PER_RUN = 5
MANIFEST_TIMEOUT = timedelta(minutes=5)


def _newer(arrival: Arrival, etag: str, event_time: datetime, sequencer: str | None) -> bool:
    other = Arrival(key=arrival.key, size=0, etag=etag, event_time=event_time, sequencer=sequencer)
    return arrival.is_newer_than(other)


@workflow.defn
class IngestWorkflow:
    @workflow.init
    def __init__(self, input: IngestInput) -> None:
        # State is restored here, not in run(): with signal-with-start the `arrived` handler runs before run().
        self._input = input
        self._state = carried.resume(input.continued, IngestState)
        self._buffer: dict[str, Arrival] = {a.key: a for a in self._state.buffer}
        self._state.buffer = []
        self._source = parse_s3_uri(input.source_s3_uri, field="source_s3_uri").as_prefix()
        self._phase = "buffering"
        # A standard cancel (patches.INGEST_STANDARD_CANCEL): `_drain_on_cancel` once the run may drain,
        # `_draining` once a cancel has come; then every arrival is flushed now and the run ends.
        self._drain_on_cancel = False
        self._draining = False

    # ---- messages ----------------------------------------------------------------------------------------

    @workflow.signal
    def arrived(self, raw: RawValue = signals.NO_INPUT) -> None:
        """One object arrived (input: `Arrival`). Idempotent: repeated, older or out-of-prefix events change nothing.

        Taken raw, so that an input that is not an `Arrival` is counted (``arrivals_rejected`` in `progress`) and
        logged naming the fields at fault, instead of being dropped by the SDK with only a worker log line.
        """
        s = self._state
        arrival, error = signals.decode(raw, Arrival)
        if arrival is None:
            signals.log_rejected("arrived", error or "no input")
            s.arrivals_rejected += 1
            return
        if not in_prefix(self._input.source_s3_uri, self._source.bucket, arrival.key):
            # Only a hand-sent signal can do this (the listener filters); a migration would reject the whole
            # manifest for it, so it is counted and dropped here. The key is not logged (it may carry PHI).
            workflow.logger.warning("ignoring an arrival outside the watched prefix")
            s.duplicates_ignored += 1
            return
        mark = s.recent.get(key_hash(arrival.key))
        if mark is not None and (mark.etag == arrival.etag
                                 or not _newer(arrival, mark.etag, mark.event_time, mark.sequencer)):
            s.duplicates_ignored += 1  # already flushed, or an older version of something flushed
            return
        current = self._buffer.get(arrival.key)
        if current is not None and (current.etag == arrival.etag or not arrival.is_newer_than(current)):
            s.duplicates_ignored += 1
            return
        self._buffer[arrival.key] = arrival  # a newer etag replaces the older one in place
        metrics.ingest_buffer(len(self._buffer))
        now = workflow.now()
        if s.first_buffered_at is None:
            s.first_buffered_at = now
        s.last_arrival_at = now

    @workflow.query
    def progress(self) -> IngestProgress:
        s = self._state
        return IngestProgress(ingest_id=workflow.info().workflow_id, phase=self._phase, buffered=len(self._buffer),
                              pending_flushes=len(s.pending), flushes=s.flushes, files_flushed=s.files_flushed,
                              duplicates_ignored=s.duplicates_ignored, arrivals_rejected=s.arrivals_rejected,
                              runs=s.runs, last_flush=s.last_flush)

    # ---- main loop ---------------------------------------------------------------------------------------

    @workflow.run
    async def run(self, input: IngestInput) -> IngestResult:
        if not workflow.patched(patches.INGEST_STANDARD_CANCEL):
            return await self._ingest(input)
        # The buffered arrivals exist nowhere else: a standard cancel (Temporal UI, `temporal workflow cancel`)
        # cancels this task only, and the ingest, shielded in its own task, flushes them all before the run ends
        # cancelled.
        self._drain_on_cancel = True

        def on_cancel() -> None:
            self._draining = True
            workflow.logger.info("standard cancel: flushing every buffered arrival", extra={"buffered": len(self._buffer)})

        return await cancellation.shielded(self._ingest(input), on_cancel)

    async def _wait(self, condition: Callable[[], bool], timeout: timedelta | None = None) -> None:
        await cancellation.wait_condition(condition, lambda: self._drain_on_cancel, timeout)

    async def _ingest(self, input: IngestInput) -> IngestResult:
        ingest_id = workflow.info().workflow_id
        if carried.written_by_caller(input.continued):
            carried.refuse()
        try:
            check_migration_id(flush_migration_id(ingest_id, 99_999))
        except ValueError as err:
            raise ApplicationError(str(err), type=ErrorType.INVALID_INGEST_ID, non_retryable=True) from None
        quiet = timedelta(seconds=input.quiet_seconds)
        flushes_this_run = 0
        while True:
            if not self._buffer and not self._state.pending:
                self._set_phase("idle")
                # Linger one quiet period: a re-delivered event now still meets its `recent` mark.
                if not self._draining:
                    with contextlib.suppress(TimeoutError):
                        await self._wait(lambda: bool(self._buffer) or self._draining, timeout=quiet)
                if not self._buffer:
                    # A signal that lands while this completion is being recorded makes the server reject the
                    # completion and replay with the signal, so nothing is lost between here and the return.
                    self._set_phase("completed")
                    return IngestResult(ingest_id=ingest_id, flushes=self._state.flushes,
                                        files_flushed=self._state.files_flushed,
                                        duplicates_ignored=self._state.duplicates_ignored,
                                        last_flush=self._state.last_flush)
                continue
            # Not while draining: a new run would not know that it was cancelled.
            if (flushes_this_run >= FLUSHES_PER_RUN or should_roll_over()) and not self._draining:
                self._state.buffer = list(self._buffer.values())
                workflow.continue_as_new(input.model_copy(update={"continued": self._state}))
            if self._state.pending:
                # Spilled while an earlier flush ran: migrated first, in order (their arrivals came first).
                pending = self._state.pending.pop(0)
                self._set_phase("flushing")
                await self._migrate(input, ingest_id, pending)
                flushes_this_run += 1
                continue
            self._set_phase("buffering")
            remaining = self._seconds_until_due(input)
            if len(self._buffer) >= input.max_files or remaining <= 0 or self._draining:
                await self._flush(input, ingest_id)
                flushes_this_run += 1
                continue
            # Arrivals do not wake this wait (only a full buffer does), so a steady stream of events costs no
            # timer churn; the deadline is recomputed from the latest arrival when the timer fires.
            with contextlib.suppress(TimeoutError):
                await self._wait(lambda: len(self._buffer) >= input.max_files or self._draining,
                                 timeout=timedelta(seconds=remaining))

    def _set_phase(self, phase: str) -> None:
        self._phase = phase
        metrics.ingest_buffer(len(self._buffer))
        upsert({search.STATE: phase, search.DATASTORE_ID: self._input.datastore_id})

    def _seconds_until_due(self, input: IngestInput) -> float:
        s = self._state
        now = workflow.now()
        last = s.last_arrival_at or now
        first = s.first_buffered_at or now
        due = min(last + timedelta(seconds=input.quiet_seconds), first + timedelta(seconds=input.max_wait_seconds))
        return (due - now).total_seconds()

    async def _flush(self, input: IngestInput, ingest_id: str) -> None:
        self._set_phase("flushing")
        await self._migrate(input, ingest_id, await self._write_manifest(input, ingest_id))

    async def _write_manifest(self, input: IngestInput, ingest_id: str) -> PendingFlush:
        """Write up to ``max_files`` buffered arrivals as the next flush's manifest and drop them from the buffer."""
        s = self._state
        taken = list(self._buffer.values())[: input.max_files]
        manifest: IngestManifest = await workflow.execute_activity(
            write_ingest_manifest,
            IngestManifestInput(ingest_id=ingest_id, work_s3_uri=input.work_s3_uri, source_s3_uri=input.source_s3_uri,
                                flush_hint=s.flushes + 1, arrivals=taken),
            # Patient: if this failed for good, the buffered arrivals (held only in this workflow) would be lost.
            start_to_close_timeout=MANIFEST_TIMEOUT, retry_policy=policies.PATIENT_RETRY)
        for arrival in taken:
            # An entry replaced by a newer etag while the manifest was written stays buffered for the next flush.
            if self._buffer.get(arrival.key) is arrival:
                del self._buffer[arrival.key]
            self._remember(arrival)
        metrics.ingest_buffer(len(self._buffer))
        s.first_buffered_at = workflow.now() if self._buffer else None
        s.flushes += 1
        s.files_flushed += manifest.files
        return PendingFlush(flush=manifest.flush, manifest_uri=manifest.manifest_uri, files=manifest.files)

    async def _migrate(self, input: IngestInput, ingest_id: str, flush: PendingFlush) -> None:
        """Run the flush's child `MigrationWorkflow`; arrivals meanwhile are spilled once ``max_files`` wait."""
        migration_id = flush_migration_id(ingest_id, flush.flush)
        summary = FlushSummary(flush=flush.flush, migration_id=migration_id, manifest_uri=flush.manifest_uri,
                               files=flush.files, status="completed")
        child_input = MigrationInput(source_s3_uri=input.source_s3_uri, source_manifest_uri=flush.manifest_uri,
                                     datastore_id=input.datastore_id, work_s3_uri=input.work_s3_uri,
                                     validation_level=input.validation_level,
                                     data_access_role_arn=input.data_access_role_arn,
                                     # Only the child's input changes (no new command): a flush routes its study
                                     # through the migration's own FHIR stage, whole study each time.
                                     healthlake_datastore_id=input.healthlake_datastore_id,
                                     fhir_validation_level=input.fhir_validation_level,
                                     fhir_validate_first=input.fhir_validate_first)
        # Awaited, not fire-and-forget: flushes of one study run one after another, and the workflow only
        # completes once every file it accepted has its verdict in a report.
        child: asyncio.Future[MigrationResult] | None = None
        if workflow.patched(patches.INGEST_SPILL):
            child = asyncio.ensure_future(
                workflow.execute_child_workflow(MigrationWorkflow.run, child_input, id=migration_id))
            running = child
            while not running.done():
                await self._wait(lambda: running.done() or len(self._buffer) >= input.max_files)
                if not running.done():
                    # Outside the try below: a manifest that cannot be written fails the workflow, as in `_flush`.
                    self._state.pending.append(await self._write_manifest(input, ingest_id))
        try:
            result = await (child if child is not None else
                            workflow.execute_child_workflow(MigrationWorkflow.run, child_input, id=migration_id))
            summary.files_by_state = dict(result.files_by_state)
            summary.report_uri, summary.files_uri = result.report_uri, result.files_uri
        except (ChildWorkflowError, ActivityError) as err:
            # The manifest stays in S3, so the flush can be re-run by hand; ingestion carries on.
            cause = err.cause if err.cause is not None else err
            summary.status, summary.error = "failed", str(cause)[:1000]
            workflow.logger.warning("ingest flush failed", extra={"migration_id": migration_id})
        self._state.last_flush = summary

    def _remember(self, arrival: Arrival) -> None:
        recent = self._state.recent
        h = key_hash(arrival.key)
        recent.pop(h, None)  # re-insert so the dict's order stays oldest-first
        recent[h] = FlushedMark(etag=arrival.etag, event_time=arrival.event_time, sequencer=arrival.sequencer)
        while len(recent) > RECENT_FLUSHED_LIMIT:
            del recent[next(iter(recent))]
