"""Source connectors: pull a local directory or a PACS into the landing prefix before the pipeline lists it."""
