"""The worker runtime: what runs on ECS as ``python -m worker``.

Process entry point, the one validated `Settings` object, AWS and Temporal client factories, the activity and
workflow registry, logging, and the SQS listeners (S3 arrivals → `IngestWorkflow`, import-job events → batches).

May import: `contracts`, `workflows`, `activities`. Never the operator CLI, the local tooling or the emulator
(they are not in the worker image; `make lint` checks).
"""
