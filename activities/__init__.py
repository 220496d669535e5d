"""Activities: one module per pipeline stage, and all of the service's I/O (S3, HealthImaging, DICOM parsing,
HealthLake, EventBridge, PACS sources).

Stage modules (receive, parse, validate, normalize, plan, importjob, await_job, review, route, fhir_route,
reconcile, ingest, report) are leaves: they share code only through the named shared modules beside them,
never by importing each other.

May import: `contracts` and any library. Never workflows, the worker runtime or the CLI (`make lint` checks).
"""
