"""The local stack's processes as /proc sees them: memory, CPU, children, and a sampler for a run."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def status_kib(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (every thread), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def descendants(pid: int) -> list[int]:
    """Live descendants of ``pid`` (via /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in (task / "children").read_text().split()]
                found += kids
                todo += kids
    return found


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in (pid, *descendants(pid)):
        with contextlib.suppress(OSError):
            total += cpu_seconds(p)
    return total


def mib(kib: float) -> float:
    return kib / 1024


@dataclass
class Sampler:
    """Samples the worker's RSS and CPU every ``interval`` seconds in a thread until stopped."""

    pid: int
    interval: float = 0.1
    max_rss_kib: int = 0
    samples: list[tuple[float, float, int]] = field(default_factory=list)  # (monotonic, cpu s, rss KiB)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss, cpu = status_kib(self.pid, "VmRSS"), cpu_seconds(self.pid)
            except (OSError, KeyError):
                return  # the worker is gone: the main loop notices and fails
            self.max_rss_kib = max(self.max_rss_kib, rss)
            self.samples.append((time.monotonic(), cpu, rss))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def peak_utilisation(self, window: float = 1.0) -> float:
        """The highest CPU utilisation (cores) over any window of about ``window`` seconds."""
        best, j = 0.0, 0
        for i, (t1, c1, _) in enumerate(self.samples):
            while j + 1 < i and t1 - self.samples[j + 1][0] >= window:
                j += 1  # the latest sample still at least `window` before sample i
            t0, c0, _ = self.samples[j]
            if t1 - t0 >= window * 0.9:
                best = max(best, (c1 - c0) / (t1 - t0))
        return best




def reset_peak_rss(pid: int) -> None:
    """Start ``VmHWM`` afresh from the current RSS (``clear_refs`` 5, Linux >= 4.0; needs the process's owner)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
