"""Fault injection: make the emulator misbehave on purpose, deterministically, so clients' error paths get tested.

A fault is a JSON object (``POST /_emulator/faults``, or ``--faults`` / ``HIMIG_EMULATOR_FAULTS`` at start-up):

``kind``
    ``throttle`` (429 ThrottlingException regardless of the token buckets), ``server_error`` (500
    InternalServerException; ``"phase": "after"`` runs the operation first, so its effect happens but the client
    sees a 500), ``access_denied`` (403 AccessDeniedException, as IAM answers a caller without the permission; the
    emulator has no IAM of its own), ``job_failed`` (the job ends FAILED after reading its files; manifest and failure.ndjson are still
    written, every file listed as a server error), ``file_server_error`` (the file lands in failure.ndjson with
    ``InternalServerException``), ``file_warning`` (the file is imported but reported in warning.ndjson),
    ``strict_trailing_padding`` (the file fails as truncated when zero padding follows its last element, which the
    emulator otherwise accepts because no AWS document says the service rejects it), ``manifest_delay`` (the job COMPLETES but ``job-output-manifest.json`` is written ``delaySeconds`` later),
    ``crash`` (the process ``os._exit``\\ s after ``afterFiles`` files of a job were read), ``event_duplicate``
    (an event is delivered ``copies`` + 1 times), ``event_reorder`` (an event is held back and delivered after the
    next one).
targets (all optional, all must match; strings are ``fnmatch`` globs)
    ``operation`` (API operation name), ``datastoreId`` / ``jobId`` / ``imageSetId`` (for operation faults: a
    path segment of the request), ``jobName``, ``file`` (input S3 key), ``detailType`` (event faults).
how often
    ``count`` (fire exactly N times, then the fault is spent) and/or ``rate`` (0..1, drawn from a
    ``random.Random(seed)``, so a run is repeatable); neither means every time.

Faults live in memory: a restarted emulator only has its start-up faults (which is what a crash test wants).
"""

from __future__ import annotations

import argparse
import fnmatch
import itertools
import json
import logging
import math
import os
import random
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulator.errors import (
    AccessDeniedException,
    InternalServerException,
    ThrottlingException,
    ValidationException,
)

log = logging.getLogger("emulator.faults")

OPERATION_KINDS = ("throttle", "server_error", "access_denied")
JOB_KINDS = ("job_failed", "manifest_delay", "crash")
FILE_KINDS = ("file_server_error", "file_warning", "strict_trailing_padding")
EVENT_KINDS = ("event_duplicate", "event_reorder")
KINDS = OPERATION_KINDS + JOB_KINDS + FILE_KINDS + EVENT_KINDS

TARGETS = ("operation", "datastoreId", "jobId", "jobName", "imageSetId", "file", "detailType")
OPTIONS: dict[str, tuple[type, ...]] = {
    "message": (str,), "phase": (str,), "delaySeconds": (int, float), "afterFiles": (int,), "exitCode": (int,),
    "warningCode": (int,), "warningType": (str,), "warningMessage": (str,), "copies": (int,),
    "holdSeconds": (int, float),
}

DEFAULT_WARNING = {
    "warning_reason_code": 45330,
    "type": "InvalidOffsetTable",
    "message": "The file was imported but contains an invalid offset table",
}

Context = Mapping[str, "str | Iterable[str] | None"]


@dataclass
class Fault:
    id: str
    kind: str
    targets: dict[str, str]
    options: dict[str, Any]
    count: int | None = None
    rate: float | None = None
    seed: int | None = None
    fired: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def matches(self, ctx: Context) -> bool:
        for name, pattern in self.targets.items():
            value = ctx.get(name)
            if value is None:
                return False
            candidates = [value] if isinstance(value, str) else list(value)
            if not any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
                return False
        return True

    def try_fire(self) -> bool:
        """Called under the injector lock: does the fault fire this time (and count it)?"""
        if self.count is not None and self.fired >= self.count:
            return False
        if self.rate is not None and self._rng.random() >= self.rate:
            return False
        self.fired += 1
        return True

    def describe(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": self.id, "kind": self.kind, **self.targets, **self.options, "fired": self.fired}
        if self.count is not None:
            doc["count"] = self.count
            doc["remaining"] = max(0, self.count - self.fired)
        if self.rate is not None:
            doc["rate"] = self.rate
            doc["seed"] = self.seed
        return doc


def parse_fault_specs(text: str | None) -> list[dict[str, Any]]:
    """``--faults``: a JSON object or list, or ``@path/to/faults.json``."""
    if not text or not text.strip():
        return []
    text = text.strip()
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    doc = json.loads(text)
    specs = doc if isinstance(doc, list) else [doc]
    if not all(isinstance(s, dict) for s in specs):
        raise argparse.ArgumentTypeError("--faults must be a JSON object or a list of objects")
    try:
        FaultInjector(specs)  # validate now: a bad spec must stop the start, with its reason
    except ValidationException as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    return specs


class FaultInjector:
    """The fault registry, consulted by the HTTP hook, the job runner and the event publisher."""

    def __init__(self, specs: Iterable[dict[str, Any]] = ()) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)
        self._files_read: dict[str, int] = {}
        self._startup = list(specs)
        for spec in self._startup:
            self.add(spec)

    # ---- registry

    def add(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Validate and register one fault; returns its description (with its ``id``)."""
        if not isinstance(spec, dict):
            raise ValidationException("A fault must be a JSON object")
        kind = spec.get("kind")
        if kind not in KINDS:
            raise ValidationException(f"'kind' must be one of: {', '.join(KINDS)}")
        unknown = set(spec) - {"kind", "count", "rate", "seed", "id", *TARGETS, *OPTIONS}
        if unknown:
            # A typo in a target name must not silently turn into "match everything".
            raise ValidationException(f"Unknown fault field(s): {', '.join(sorted(unknown))}")
        targets = {}
        for name in TARGETS:
            if spec.get(name) is not None:
                if not isinstance(spec[name], str):
                    raise ValidationException(f"'{name}' must be a string")
                targets[name] = spec[name]
        options = {}
        for name, types in OPTIONS.items():
            if spec.get(name) is not None:
                value = spec[name]
                if isinstance(value, bool) or not isinstance(value, types):
                    raise ValidationException(f"'{name}' has the wrong type")
                if isinstance(value, (int, float)) and not (math.isfinite(value) and value >= 0):
                    raise ValidationException(f"'{name}' must be a finite, non-negative number")
                options[name] = value
        if options.get("phase", "before") not in ("before", "after"):
            raise ValidationException("'phase' must be 'before' or 'after'")
        count, rate, seed = spec.get("count"), spec.get("rate"), spec.get("seed")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
            raise ValidationException("'count' must be a non-negative integer")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1):
            raise ValidationException("'rate' must be a number between 0 and 1")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValidationException("'seed' must be an integer")
        with self._lock:
            fault_id = str(spec.get("id") or f"fault-{next(self._ids)}")
            if any(f.id == fault_id for f in self._faults):
                raise ValidationException(f"A fault with id {fault_id} already exists")
            fault = Fault(fault_id, kind, targets, options, count, None if rate is None else float(rate), seed,
                          _rng=random.Random(seed))
            self._faults.append(fault)
        log.info("fault %s added: %s", fault.id, kind)
        return fault.describe()

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.describe() for f in self._faults]

    def remove(self, fault_id: str) -> bool:
        with self._lock:
            before = len(self._faults)
            self._faults = [f for f in self._faults if f.id != fault_id]
            return len(self._faults) != before

    def clear(self) -> int:
        with self._lock:
            n = len(self._faults)
            self._faults.clear()
            self._files_read.clear()
            return n

    def fire(self, kind: str, ctx: Context) -> Fault | None:
        """The first registered fault of ``kind`` that matches ``ctx`` and fires now, or None."""
        with self._lock:
            for fault in self._faults:
                if fault.kind == kind and fault.matches(ctx) and fault.try_fire():
                    log.info("fault %s fired (%s)", fault.id, kind)
                    return fault
        return None

    # ---- HTTP operations (RestJsonService.on_request / on_response)

    def before_operation(self, operation: str, path: str) -> None:
        ctx = _operation_ctx(operation, path)
        if self.fire("throttle", ctx) is not None:
            raise ThrottlingException("Rate exceeded")
        if self.fire("access_denied", ctx) is not None:
            raise AccessDeniedException(f"User is not authorized to perform: medical-imaging:{operation} "
                                        "(injected)")
        fault = self._fire_phase(ctx, "before")
        if fault is not None:
            raise InternalServerException(fault.options.get("message", "Internal server error (injected)"))

    def after_operation(self, operation: str, path: str) -> None:
        fault = self._fire_phase(_operation_ctx(operation, path), "after")
        if fault is not None:
            raise InternalServerException(fault.options.get("message", "Internal server error (injected)"))

    def _fire_phase(self, ctx: Context, phase: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if (fault.kind == "server_error" and fault.options.get("phase", "before") == phase
                        and fault.matches(ctx) and fault.try_fire()):
                    log.info("fault %s fired (server_error, %s)", fault.id, phase)
                    return fault
        return None

    # ---- import jobs (JobRunner)

    def job_failure(self, job: Any) -> str | None:
        """A message if the job must end FAILED (after its files were read)."""
        fault = self.fire("job_failed", _job_ctx(job))
        if fault is None:
            return None
        return str(fault.options.get("message", "The import job failed because of an internal error"))

    def manifest_delay(self, job: Any) -> float:
        fault = self.fire("manifest_delay", _job_ctx(job))
        return float(fault.options.get("delaySeconds", 5)) if fault is not None else 0.0

    def file_error(self, job: Any, key: str) -> str | None:
        fault = self.fire("file_server_error", {**_job_ctx(job), "file": key})
        if fault is None:
            return None
        return str(fault.options.get("message", "An internal error occurred while importing the file"))

    def file_warnings(self, job: Any, key: str) -> list[dict[str, Any]]:
        fault = self.fire("file_warning", {**_job_ctx(job), "file": key})
        if fault is None:
            return []
        o = fault.options
        return [{"warning_reason_code": o.get("warningCode", DEFAULT_WARNING["warning_reason_code"]),
                 "type": o.get("warningType", DEFAULT_WARNING["type"]),
                 "message": o.get("warningMessage", DEFAULT_WARNING["message"])}]

    def strict_trailing_padding(self, job: Any, key: str) -> bool:
        """Whether ``key`` is judged strictly: zero padding after its last element fails it as truncated."""
        return self.fire("strict_trailing_padding", {**_job_ctx(job), "file": key}) is not None

    def file_read(self, job: Any) -> None:
        """Count a file read by ``job``; crash the whole process when a ``crash`` fault says so."""
        with self._lock:
            crashes = [f for f in self._faults if f.kind == "crash" and f.matches(_job_ctx(job))]
            if not crashes:
                return
            n = self._files_read[job.id] = self._files_read.get(job.id, 0) + 1
            for fault in crashes:
                if n >= int(fault.options.get("afterFiles", 1)) and fault.try_fire():
                    log.warning("fault %s: crashing the emulator after %d files of job %s", fault.id, n, job.id)
                    logging.shutdown()
                    # No cleanup on purpose: this stands in for a kill -9 / OOM / host failure.
                    os._exit(int(fault.options.get("exitCode", 75)))


def _operation_ctx(operation: str, path: str) -> Context:
    segments = [s for s in path.split("/") if s]
    return {"operation": operation, "datastoreId": segments, "jobId": segments, "imageSetId": segments}


def _job_ctx(job: Any) -> Context:
    return {"jobId": job.id, "jobName": job.name, "datastoreId": job.datastore_id}
