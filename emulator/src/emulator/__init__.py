"""A local AWS HealthImaging (+ HealthLake subset, + DICOMweb) server for unmodified boto3.

A distribution of its own (``himig-emulator``, ``emulator/pyproject.toml``): ``python -m emulator`` or
``himig-emulator``; ``emulator/README.md`` lists its modules under "Layout" and every divergence from AWS.

May import: the standard library, botocore/boto3 (service models; S3 and EventBridge as a client), pydicom,
pydantic, fhir.resources, joserfc. Nothing of the migration service or its tooling (``make lint`` checks).
"""
