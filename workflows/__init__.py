"""Temporal workflow definitions: deterministic orchestration only, all I/O lives in activities.

`MigrationWorkflow`, `ImportBatchWorkflow`, `ReconciliationWorkflow`, `IngestWorkflow`, their retry policies and
timeouts (`policies`) and search-attribute upserts (`search`).

May import: `contracts`, temporalio, pydantic. Never activities, the worker, boto3 or pydicom (the sandbox forbids
them and replay depends on it); `make lint` checks this.
"""
