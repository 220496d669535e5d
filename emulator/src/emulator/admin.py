"""Test controls under ``/_emulator/`` (like moto's ``/moto-api/``). Documented in ``emulator/README.md``."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from emulator.config import Settings
from emulator.errors import ResourceNotFoundException, SerializationException, ValidationException
from emulator.medicalimaging.jobs import JobRunner
from emulator.medicalimaging.models import MedicalImagingBackend
from emulator.medicalimaging.records import JOB_ORDER
from emulator.protocol import Dispatcher, Handler, HttpRequest, HttpResponse, json_response

PREFIX = "/_emulator/"
# The furthest one clock advance may move the job clock (ten years): enough for any test, and far from the
# floats where adding seconds stops changing the clock or overflows to infinity.
MAX_CLOCK_ADVANCE_SECONDS = 10 * 366 * 24 * 3600.0
# The longest a job advance may hold its request (and a server thread) waiting for the job.
MAX_WAIT_SECONDS = 300.0


def non_finite_at(value: Any, path: str = "") -> str | None:
    """The path (``seconds``, ``rates.X.rate``, ``[0].options.delaySeconds``) of the first NaN or infinite number
    in a parsed JSON document, or None. Python's JSON reader takes ``NaN``, ``Infinity`` and ``1e309`` (which
    overflows to infinity) as numbers; no control of ours can use one."""
    if isinstance(value, float) and not math.isfinite(value):
        return path or "body"
    if isinstance(value, dict):
        items: Any = ((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for sub, v in items:
        found = non_finite_at(v, sub)
        if found is not None:
            return found
    return None


def number(body: dict[str, Any], name: str, low: float, high: float, default: float | None = None) -> float:
    """``body[name]`` as a finite number in [low, high] (JSON true is not 1); a 400 naming the field otherwise."""
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ValidationException(f"'{name}' must be a number between {low:g} and {high:g}")
    return float(value)


class JsonRoutes(Dispatcher):
    """A family of ``/_emulator/`` endpoints: ``(method, path regex, handler)`` routes that answer JSON.

    Handlers are called as ``fn(body=..., query=..., **path_groups)``. ``object_body`` says whether a request
    body must be a JSON object (``{}`` when absent) or may be any JSON value (``None`` when absent).
    """

    routes: list[tuple[str, re.Pattern[str], Callable[..., Any]]]
    object_body = True

    def match(self, request: HttpRequest) -> Handler | None:
        if not request.raw_path.startswith(PREFIX):
            return None
        sub = request.raw_path[len(PREFIX):].rstrip("/")
        for method, regex, fn in self.routes:
            m = regex.fullmatch(sub)
            if m and method == request.method:
                return lambda req, fn=fn, kw=m.groupdict(): self._call(fn, req, kw)  # type: ignore[misc]
        return None

    def _call(self, fn: Callable[..., Any], request: HttpRequest, kwargs: dict[str, str]) -> HttpResponse:
        body: Any = {} if self.object_body else None
        if request.body.strip():
            try:
                body = json.loads(request.body)
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise SerializationException("Request body is not valid JSON") from None
            bad = non_finite_at(body)
            if bad is not None:
                raise ValidationException(f"'{bad}' must be a finite number (not NaN or Infinity)")
            if self.object_body and not isinstance(body, dict):
                raise SerializationException("Request body must be a JSON object")
        query = {k: v[-1] for k, v in request.query.items()}
        return json_response(200, fn(body=body, query=query, **kwargs), request.request_id)


class AdminApi(JsonRoutes):
    def __init__(self, backend: MedicalImagingBackend, runner: JobRunner, settings: Settings) -> None:
        self.backend = backend
        self.runner = runner
        self.settings = settings
        # Called by POST /_emulator/reset after the state wipe (throttling, faults and events register here).
        self.on_reset: list[Callable[[], None]] = []
        self.routes: list[tuple[str, re.Pattern[str], Callable[..., Any]]] = [
            ("GET", re.compile(r"health"), self.health),
            ("POST", re.compile(r"reset"), self.reset),
            ("GET", re.compile(r"state"), self.state),
            ("GET", re.compile(r"stats"), self.stats),
            ("GET", re.compile(r"config"), self.config),
            ("GET", re.compile(r"clock"), self.clock),
            ("POST", re.compile(r"clock/advance"), self.clock_advance),
            ("POST", re.compile(r"jobs/(?P<job_id>[0-9a-z]{1,32})/advance"), self.job_advance),
        ]

    # ---- endpoints

    def health(self, **_: Any) -> dict[str, Any]:
        return {"status": "ok"}

    def reset(self, **_: Any) -> dict[str, Any]:
        self.backend.reset()
        for hook in self.on_reset:
            hook()
        self.runner.wake()
        return {"status": "reset"}

    def state(self, **_: Any) -> dict[str, Any]:
        return self.backend.state()

    def stats(self, query: dict[str, str], **_: Any) -> dict[str, Any]:
        return self.backend.stats(query.get("jobId"))

    def config(self, **_: Any) -> dict[str, Any]:
        shown = {k: (str(v) if k == "data_dir" else v) for k, v in asdict(self.settings).items()}
        shown["sigv4_credentials"] = sorted(self.settings.sigv4_credentials)  # the key ids, never the secrets
        return shown

    def clock(self, **_: Any) -> dict[str, Any]:
        return {"mode": self.backend.clock.mode, "now": self.backend.clock.now()}

    def clock_advance(self, body: dict[str, Any], **_: Any) -> dict[str, Any]:
        seconds = number(body, "seconds", 0, MAX_CLOCK_ADVANCE_SECONDS)
        now = self.backend.clock.advance(seconds)
        self.runner.wake()
        return {"mode": self.backend.clock.mode, "now": now}

    def job_advance(self, body: dict[str, Any], job_id: str, **_: Any) -> dict[str, Any]:
        """Release a held job to its next phase (or ``{"to": "COMPLETED"}``) and by default wait for it."""
        job = self.backend.job(job_id)
        if job is None:
            raise ResourceNotFoundException(f"Import job {job_id} does not exist")
        to = body.get("to")
        if to is None:
            to = "IN_PROGRESS" if job.status == "SUBMITTED" else "COMPLETED"
        if to not in ("IN_PROGRESS", "COMPLETED"):
            raise ValidationException("'to' must be IN_PROGRESS or COMPLETED")
        if JOB_ORDER[job.status] < JOB_ORDER[to]:
            self.backend.release_job(job_id, to)
            self.runner.wake()
        wait = body.get("wait", True)
        if not isinstance(wait, bool):
            raise ValidationException("'wait' must be true or false")
        if wait:
            timeout = number(body, "timeoutSeconds", 0, MAX_WAIT_SECONDS, default=30)
            targets = {"IN_PROGRESS", "COMPLETED", "FAILED"} if to == "IN_PROGRESS" else {"COMPLETED", "FAILED"}
            job = self.runner.wait_for(job_id, targets, timeout) or job
        else:
            job = self.backend.job(job_id) or job
        return {"jobId": job.id, "jobStatus": job.status}
