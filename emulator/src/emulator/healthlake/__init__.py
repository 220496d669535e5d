"""A subset of AWS HealthLake (FHIR R4 data stores, NDJSON import jobs, ``$validate``, ImagingStudy read/search).

Wired into the emulator's one HTTP port by ``emulator.app``; see the "HealthLake" section of ``emulator/README.md``.
"""
