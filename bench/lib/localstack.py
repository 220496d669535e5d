"""The local stack as a benchmark uses it: its worker's pid and keys, the other components, a corpus upload."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from devstack.stack import PidRecord, Stack


def worker_pid(stack: Stack) -> int:
    record = PidRecord.load(stack.pid_file("worker"))
    assert record is not None, f"no worker pid file at {stack.pid_file('worker')}"
    assert record.cmdline[1:] == ["-m", "worker"], f"the stack's worker runs {record.cmdline}, not python -m worker"
    return record.pid


def ensure_payload_keys() -> None:
    """Give this process, and so the worker the stack starts (it inherits the environment, under the stack's own
    variables), a ``HIMIG_PAYLOAD_KEYS`` when there is none: a key generated for this run."""
    from worker.codec import KEYS_VARIABLE, KeyRing

    if not os.environ.get(KEYS_VARIABLE):
        os.environ[KEYS_VARIABLE] = KeyRing.generate_entry("bench")


def check_worker_keys(pid: int) -> None:
    """The worker must seal with the keys this process opens with (the stack's environment may bring its own)."""
    from worker.codec import KEYS_VARIABLE

    environ = dict(entry.split(b"=", 1) for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                   if b"=" in entry)
    if environ.get(KEYS_VARIABLE.encode()) != os.environ.get(KEYS_VARIABLE, "").encode():
        raise SystemExit(f"the stack's worker (pid {pid}) has a different {KEYS_VARIABLE} from this process's "
                         "(or none): its payloads would not open here")


def component_pids(stack: Stack) -> dict[str, int]:
    pids = {}
    for name in ("temporal", "moto", "emulator"):
        record = PidRecord.load(stack.pid_file(name))
        if record is not None:
            pids[name] = record.pid
    return pids


def upload(s3: Any, bucket: str, root: Path, prefix: str, paths: list[str]) -> None:
    def put(rel: str) -> None:
        s3.put_object(Bucket=bucket, Key=prefix + rel, Body=(root / rel).read_bytes())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, paths))


def corpus_shape(files: int) -> dict[str, int]:
    """patients x 1 study x 2 series x instances == files exactly (studies of a realistic size: the import
    groups a batch by study)."""
    for patients in (10, 5, 2, 1):
        if files % (2 * patients) == 0:
            return {"patients": patients, "studies_per_patient": 1, "series_per_study": 2,
                    "instances_per_series": files // (2 * patients)}
    return {"patients": 1, "studies_per_patient": 1, "series_per_study": 1, "instances_per_series": files}
