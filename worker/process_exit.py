"""Ending the process without interpreter finalization, once the work and the output are done.

The SDK's Rust runtime keeps native threads that may still touch Python while the interpreter finalizes; about
one exit in eight then aborts with "Fatal Python error: PyGILState_Release" (exit 134 or 139) after everything
was already done and printed. ECS records that as a failed task, and a script sees a failed command. So the
worker and ``himig`` flush what they wrote and leave with ``os._exit``: nothing of theirs needs finalizers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn


def exit_now(code: int) -> NoReturn:
    """Flush logging and the standard streams, then exit with ``code`` skipping interpreter finalization."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more can be said on it
            stream.flush()
    os._exit(code)


def exit_code(exit_: SystemExit) -> int:
    """The numeric exit status of a `SystemExit` (a message is printed to stderr and counts as 1)."""
    if exit_.code is None:
        return 0
    if isinstance(exit_.code, int):
        return exit_.code
    print(exit_.code, file=sys.stderr)
    return 1


def run_then_exit(main: Callable[[], object]) -> NoReturn:
    """Run a script's ``main`` and `exit_now`: 0 when it returns, 1 when it fails (a `SystemExit` message, or the
    traceback of anything else, on stderr)."""
    try:
        main()
    except SystemExit as exc:
        if exc.code not in (None, 0):
            print(f"FAILED: {exc}", file=sys.stderr, flush=True)
            exit_now(1)
    except BaseException:
        traceback.print_exc()
        exit_now(1)
    exit_now(0)
