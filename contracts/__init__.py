"""Data contracts shared by workflows and activities.

Everything that crosses the Temporal boundary (workflow input, activity input and output, queries) is a
pydantic model defined here. This package must stay free of I/O and of boto3/pydicom imports: workflow
code imports it inside the sandbox and replay depends on it being deterministic.
"""
