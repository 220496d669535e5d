"""AWS HealthImaging: the rest-json operations (``handlers.py``), their state (``models.py`` and the modules it
composes), the mutations, import jobs and frames."""
