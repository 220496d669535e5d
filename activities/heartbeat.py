"""Keeping long activities visibly alive, so a crashed worker's activities are retried within seconds.

Temporal notices a dead worker only through a missed heartbeat (or the much longer start-to-close timeout).
`keeps_alive` runs a background heartbeat every third of the activity's heartbeat timeout, re-sending the
last progress the activity recorded with `KeepAlive.record`, so resume details are never replaced by a
half-updated snapshot.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from temporalio import activity

F = TypeVar("F", bound=Callable[..., Any])
_current: contextvars.ContextVar[KeepAlive | None] = contextvars.ContextVar("himig_keep_alive", default=None)


class KeepAlive:
    def __init__(self) -> None:
        timeout = activity.info().heartbeat_timeout
        self._interval = max(0.5, timeout.total_seconds() / 3) if timeout else None
        # A copy of the activity's context: heartbeats sent from other threads reach the right activity.
        self._ctx = contextvars.copy_context()
        # Until the activity records progress, re-send the previous attempt's details: an empty heartbeat would
        # erase the resume cursor that attempt left behind.
        self._details: tuple[Any, ...] = tuple(activity.info().heartbeat_details)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self, *details: Any) -> None:
        """Record consistent progress (sent now, and re-sent by every background heartbeat). Thread-safe."""
        with self._lock:
            self._details = details
            self._ctx.run(activity.heartbeat, *details)

    def _beat(self) -> None:
        assert self._interval is not None
        while not self._stop.wait(self._interval):
            with self._lock:
                self._ctx.run(activity.heartbeat, *self._details)

    def __enter__(self) -> KeepAlive:
        if self._interval is not None:
            self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def current() -> KeepAlive | None:
    """The running activity's KeepAlive; capture it before handing work to a thread pool."""
    return _current.get()


def keeps_alive(fn: F) -> F:
    """Decorate a sync activity method (below ``@activity.defn``) to heartbeat in the background."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not activity.in_activity():
            return fn(*args, **kwargs)
        with KeepAlive() as keep:
            token = _current.set(keep)
            try:
                return fn(*args, **kwargs)
            finally:
                _current.reset(token)

    return wrapper  # type: ignore[return-value]
