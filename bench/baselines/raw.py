"""raw: import the source in place with as few StartDICOMImportJob calls as the 5,000-file quota allows, all at
once, polling tightly; no listing, no validation, no accounting. It is handed the corpus layout (which no real tool
knows in advance), so it is the local ceiling: what the import service itself costs."""

from __future__ import annotations

import time

from bench.baselines.common import MAX_FILES_PER_JOB, Target


def job_prefixes(source_prefix: str, layout: dict[str, int]) -> list[str]:
    """The coarsest folder level whose folders each hold at most 5,000 files: the whole source if it fits, else
    its top-level folders, and so on down to the series folders."""
    if sum(layout.values()) <= MAX_FILES_PER_JOB:
        return [source_prefix]
    depth = max(folder.count("/") for folder in layout)
    for level in range(1, depth + 1):
        groups: dict[str, int] = {}
        for folder, files in layout.items():
            parts = folder.removeprefix(source_prefix).split("/")
            key = source_prefix + "/".join(parts[:level]) + "/"
            groups[key] = groups.get(key, 0) + files
        if max(groups.values()) <= MAX_FILES_PER_JOB:
            return sorted(groups)
    raise RuntimeError("raw: a folder holds more than 5,000 files")


def run(t: Target) -> int:
    jobs = [t.start_job(f"{t.source_bucket}/{prefix}", f"raw-{n}")
            for n, prefix in enumerate(job_prefixes(t.source_prefix, t.layout))]
    imported = 0
    pending = set(jobs)
    while pending:
        for job_id in sorted(pending):
            props = t.job(job_id)
            if props["jobStatus"] in ("COMPLETED", "FAILED"):
                imported += len(t.successes(props))
                pending.discard(job_id)
        if pending:
            time.sleep(0.1)
    return imported
