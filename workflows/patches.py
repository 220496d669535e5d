"""Every `workflow.patched` id, with why it exists and when it came in.

A patch id marks a change to a workflow's command sequence: a history recorded before the change replays
without the new commands (``workflow.patched`` answers False), one recorded after it replays with them. The
values are written into histories as markers, so they never change; an id is removed only once no open
workflow and no kept history (tests/histories/) predates it, together with its old branch.
"""

from __future__ import annotations

# ImportBatchWorkflow (2026-11-25): a FAILED import job of a whole batch is imported once more in two halves,
# each with its own job, review and routing, instead of being reviewed as failed.
SPLIT_FAILED_BATCH = "split-failed-batch"

# ImportBatchWorkflow (2026-11-25): routing starts one ReconciliationWorkflow per non-primary image set the
# review found (child workflows, abandoned on close).
START_RECONCILIATION = "start-reconciliation"

# Every workflow (2026-11-29): search attributes (HimigMigrationId, HimigState, HimigDatastoreId) are upserted
# on state changes and set on batch children, so `himig list` can find runs; one id guards all of them.
SEARCH_ATTRIBUTES = "search-attributes"

# ImportBatchWorkflow (2026-11-29): a `job_event` signal for the awaited import job cancels the poll in its
# back-off and polls at once. Asked only when a wake-up is acted on, so histories without one carry no marker.
JOB_EVENTS = "job-events"

# IngestWorkflow (2026-11-29): arrivals during a running flush are spilled to S3 as pending manifests whenever
# ``max_files`` are buffered (the child migration is started as a task and watched), bounding the buffer.
INGEST_SPILL = "ingest-spill"

# ImportBatchWorkflow (2026-11-29): when every file's source object changed after validation, staging starts
# no import job; the batch records them failed (SourceChanged) and skips awaiting, reviewing and routing.
SOURCE_CHANGED_NO_JOB = "source-changed-no-job"

# ImportBatchWorkflow (2026-11-29): a batch with `fhir` routing set sends its studies to HealthLake as
# ImagingStudy resources after routing (start, await and review a FHIR import, with a possible round 2).
FHIR_ROUTING = "fhir-routing"

# ReconciliationWorkflow (2026-12-03): a decision (signal `approve` or update `decide`) is applied only after the
# `verify_reviewer` activity has checked its reviewer attestation (contracts/attestation.py) and the reviewer list
# (HIMIG_RECONCILIATION_REVIEWERS); the attested identity is recorded as the reviewer, a refusal is recorded and
# the workflow waits on. Histories without the marker accepted the JSON's `reviewer` as it was.
VERIFY_REVIEWER = "verify-reviewer"

# ReconciliationWorkflow (2026-12-03): while it waits for a decision, the workflow continues as new when the server
# suggests it (history size or length) or the history passes workflows/history.py's bound, carrying the conflict,
# the decision log, the deadline and the escalation (`ReconciliationCarry`); a flood of signals can no longer
# push it past Temporal's history limit (which terminates it, losing the pending decision).
ROLL_OVER_RECONCILIATION = "roll-over-reconciliation"

# MigrationWorkflow (2026-12-03): a standard Temporal cancel (Temporal UI, `temporal workflow cancel`, an SDK
# handle's cancel()) drains and reports exactly as the `cancel` signal does, then ends the run cancelled with the
# search attributes at their terminal values. Histories without the marker were cancelled where they stood.
STANDARD_CANCEL = "standard-cancel"

# IngestWorkflow (2026-12-03): a standard Temporal cancel flushes every buffered and spilled arrival at once (the
# arrivals live only in this workflow), waits for the flushes' migrations, sets HimigState to `completed`, then
# ends the run cancelled. Histories without the marker were cancelled where they stood, buffer and all.
INGEST_STANDARD_CANCEL = "ingest-standard-cancel"

# ReconciliationWorkflow (2026-12-03): a standard Temporal cancel before a decision ends the reconciliation in
# state `cancelled` (HimigState too, recorded in the query answer); a decision already accepted is still applied
# to the end (never half a promote). Then the run ends cancelled. Histories without the marker stopped where they
# stood, HimigState left at `awaiting_decision`.
RECONCILIATION_STANDARD_CANCEL = "reconciliation-standard-cancel"

# ImportBatchWorkflow (2026-12-03): a standard Temporal cancel of a batch drains it: the submitted import job is
# still awaited and reviewed, a batch waiting at the manual review gate is held (not routed), and the batch
# completes with its result, so its migration reports its files as they are. Histories without the marker were
# cancelled where they stood, and their migration reported the whole batch failed.
BATCH_STANDARD_CANCEL = "batch-standard-cancel"

# MigrationWorkflow (2026-12-03): a migration started with `from_plan` runs `adopt_plan` (check the plan, copy its
# inventory and parse results) instead of receive_inventory and the page stages. Asked only on that branch:
# histories without `from_plan` carry no marker.
FROM_PLAN = "from-plan"

# MigrationWorkflow (2026-12-03): parsing is no longer a barrier before planning. Pages are parsed in growing
# waves (`workflows.migration.wave_end`), each wave is planned as soon as it is parsed (`PlanInput.first_page`) and
# its batches start while later waves parse. Histories without the marker parse every page, then plan once.
PLANNING_WAVES = "planning-waves"

# MigrationWorkflow and PlanWorkflow (2026-12-03): in waves, a file whose folder is larger than a batch (it can never
# be imported in place) is planned by the wave that parsed its page, not once its folder is parsed whole
# (`PlanInput.large_folders_by_page`): a flat prefix or a series of thousands of files no longer waits for the last
# page. Asked when the first wave is planned; the answer is kept in `MigrationState` so every wave of a migration
# uses one rule. Histories without the marker wait for whole folders.
LARGE_FOLDERS_BY_PAGE = "large-folders-by-page"
