"""Pieces the benchmarks share (run from the repository root; see bench/end_to_end.py)."""
