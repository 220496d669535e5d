"""A local AWS HealthImaging (+ HealthLake subset, + DICOMweb) server for unmodified boto3.

A distribution of its own (``himig-emulator``); ``emulator/README.md`` lists its modules under "Layout".
"""
