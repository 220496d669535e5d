"""Data contracts shared by workflows and activities: what crosses the Temporal boundary.

Holds the pydantic models of workflow input, activity input and output, signals, updates and queries; the map
of where data lives in S3 (`layout`); search attributes; and other pure, deterministic definitions.

May import: the standard library, pydantic, temporalio's data types. Nothing of ours, and no I/O (no boto3,
pydicom, network): workflow code imports this package inside the sandbox and replay depends on it.
"""
