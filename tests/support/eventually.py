"""Wait for a condition instead of sleeping (the pattern of sdk-python's ``tests/helpers.assert_eventually``).

A test that waits states what it waits for: the check runs until it stops raising ``AssertionError`` (or
returns a truthy value, for ``wait_until``), and a timeout re-raises the last failure, so the report says which
condition never held rather than "timed out". The interval only bounds how often the check runs; nothing here
asserts how long anything took. The default timeout is generous: the suite runs in several processes on a
loaded 2-core machine, and a bound costs nothing when the condition holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def assert_eventually(check: Callable[[], Awaitable[T]], *, timeout: float = 60.0,
                            interval: float = 0.05) -> T:
    """Await ``check()`` until it does not raise ``AssertionError``; return its value.

    After ``timeout`` seconds the last ``AssertionError`` propagates.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await check()
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        await asyncio.sleep(interval)


def assert_eventually_sync(check: Callable[[], T], *, timeout: float = 60.0, interval: float = 0.05) -> T:
    """``assert_eventually`` for plain functions (emulator and process tests that do not run an event loop)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(interval)


def wait_until(predicate: Callable[[], T | None], what: str, *, timeout: float = 60.0, interval: float = 0.05) -> T:
    """Return ``predicate()``'s first truthy value; fail naming ``what`` if none comes within ``timeout``."""

    def check() -> T:
        value = predicate()
        assert value, f"timed out after {timeout:g}s waiting for {what}"
        return value

    return assert_eventually_sync(check, timeout=timeout, interval=interval)


async def wait_until_async(predicate: Callable[[], Awaitable[T | None]], what: str, *, timeout: float = 60.0,
                           interval: float = 0.05) -> T:
    """Async ``wait_until``: await ``predicate()`` until its value is truthy."""

    async def check() -> T:
        value = await predicate()
        assert value, f"timed out after {timeout:g}s waiting for {what}"
        return value

    return await assert_eventually(check, timeout=timeout, interval=interval)
