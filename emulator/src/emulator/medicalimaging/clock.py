"""The job clock: what decides when jobs (and data stores) move to their next state.

``auto``: wall-clock time plus an offset that ``/_emulator/clock/advance`` can push forward.
``manual``: a virtual time that starts at 0 and only moves through ``/_emulator/clock/advance``.
Both are persisted, so a restart keeps held jobs held. Timestamps shown to clients (``submittedAt``...) are always
real wall-clock time; only progression follows this clock.
"""

from __future__ import annotations

import math
import threading
import time

from emulator.store import Store


class JobClock:
    def __init__(self, mode: str, store: Store) -> None:
        if mode not in ("auto", "manual"):
            raise ValueError(f"clock must be 'auto' or 'manual', not {mode!r}")
        self.mode = mode
        self.store = store
        self._lock = threading.Lock()

    def _stored(self) -> float:
        try:
            offset = float(self.store.get_meta(f"clock:{self.mode}", "0") or 0)
        except ValueError:
            offset = math.nan
        # A non-finite offset (stored before advances were checked) would stop every job for good, across
        # restarts: read it as no offset at all.
        return offset if math.isfinite(offset) else 0.0

    def now(self) -> float:
        base = time.time() if self.mode == "auto" else 0.0
        return base + self._stored()

    def aged_now(self) -> float:
        """Wall-clock time plus everything the clock was advanced by (either mode): what ages image sets for
        their storage tier, so that advancing the clock moves idle sets to the archive tier."""
        return time.time() + self._stored()

    def advance(self, seconds: float) -> float:
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError("the job clock only moves forward by a finite number of seconds")
        with self._lock:
            self.store.set_meta(f"clock:{self.mode}", repr(self._stored() + float(seconds)))
        return self.now()
