"""What a team would otherwise use to load an archive into HealthImaging, run on the same local stack and corpus as
the service by ``bench/end_to_end.py``: ``raw`` (the ceiling), ``naive`` (a sequential boto3 script) and
``sample`` (the AWS ingestion sample's design). Each returns the instances it imported, counted from the import
jobs' own SUCCESS output, so a method that loses files cannot look fast."""
