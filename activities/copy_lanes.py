"""Staging copy lanes: one worker's server-side S3 copies, bounded across every batch it stages, first batch first.

Each `start_import_job` stages its batch with a pool of its own. Unbounded across batches, the copies of every
batch a migration admits at once (``max_concurrent_jobs``) share the S3 endpoint evenly, so they all finish
together and the first import job starts only when the last batch is staged (measured at 5,000 instances: four
batches of 1,000 staged side by side for 25 s before any job started; bench/timeline.py). With lanes, a copy
takes a lane only when no copy of an earlier-started staging waits: the first batch is staged at the full
rate and its job runs while the later batches copy, and the endpoint never sees more than ``lanes`` copies
from this worker, however many batches stage.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class CopyLanes:
    """A counting gate whose waiters are served by their staging's start order, then by their own order."""

    def __init__(self, lanes: int) -> None:
        if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"lanes must be a whole number of at least 1, not {lanes!r}")
        self._lanes = lanes
        self._free = lanes
        self._cond = threading.Condition()
        self._waiting: list[tuple[int, int]] = []
        self._stagings = itertools.count()
        self._tickets = itertools.count()

    @property
    def lanes(self) -> int:
        return self._lanes

    def staging(self) -> int:
        """The order of a staging that starts now: copies of earlier stagings are served before its copies."""
        return next(self._stagings)

    @contextmanager
    def lane(self, staging: int) -> Iterator[None]:
        """Hold one lane for one copy of ``staging`` (a number from `staging`)."""
        ticket = (staging, next(self._tickets))
        with self._cond:
            heapq.heappush(self._waiting, ticket)
            while self._free == 0 or self._waiting[0] != ticket:
                self._cond.wait()
            heapq.heappop(self._waiting)
            self._free -= 1
            # The next waiter in line may take a lane that is still free.
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._free += 1
                self._cond.notify_all()
