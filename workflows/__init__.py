"""Temporal workflow definitions (deterministic orchestration only; all I/O lives in activities)."""
