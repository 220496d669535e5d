"""Wiring for throttling, fault injection and events, plus their admin endpoints under ``/_emulator/``.

``app.build`` creates one :class:`Resilience`, hands its hooks to the rest-json service (``before_operation`` /
``after_operation``), its fault injector to the job runner and its publisher to the backend (``backend.events``).

Admin endpoints (JSON):

* ``GET /_emulator/throttling`` — enabled flag, per-operation rate/burst/tokens, allowed/throttled counts.
* ``POST /_emulator/throttling`` — ``{"enabled": false}``, ``{"rates": {"Op": {"rate": R, "burst": B}}}``,
  ``{"reset": true}`` (back to the defaults plus start-up overrides, buckets full).
* ``GET /_emulator/faults`` — registered faults with ``fired`` / ``remaining``.
* ``POST /_emulator/faults`` — add one fault (object) or several (list); answers the added faults.
* ``DELETE /_emulator/faults`` — remove all; ``DELETE /_emulator/faults/{id}`` — remove one.
* ``GET /_emulator/events[?detailType=...]`` — delivery counters and the last events (in delivery order);
  ``?flush=true`` first waits (≤ 5 s) until queued events are delivered. ``DELETE /_emulator/events`` clears.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any

from emulator.admin import JsonRoutes
from emulator.config import Settings
from emulator.errors import ResourceNotFoundException, SerializationException, ValidationException
from emulator.events import EventPublisher, eventbridge_configured
from emulator.faults import FaultInjector
from emulator.protocol import HttpRequest
from emulator.throttling import Throttler, normalize_rates

log = logging.getLogger("emulator.resilience")

PREFIX = "/_emulator/"


class Resilience:
    """Throttler + fault injector + event publisher, built from settings."""

    def __init__(self, settings: Settings, backend: Any | None = None) -> None:
        self.settings = settings
        self.backend = backend
        self.throttler = Throttler(settings.throttling, dict(settings.throttle_rates))
        self.faults = FaultInjector(settings.faults)
        mode = settings.events
        self.events = EventPublisher(
            region=settings.region, account_id=settings.account_id, faults=self.faults,
            eventbridge=mode == "on" or (mode == "auto" and eventbridge_configured()),
            bus_name=settings.event_bus_name, webhook_url=settings.events_webhook_url,
            max_attempts=settings.events_max_attempts, image_set_id_key=settings.events_image_set_id_key,
        )
        self.enabled_events = mode != "off"
        if backend is not None and self.enabled_events:
            backend.events = self.events
        self.admin = ResilienceAdmin(self)
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="datastore-ticker", daemon=True)

    # ---- hooks for RestJsonService

    def before_operation(self, operation: str, request: HttpRequest) -> None:
        """Injected faults first (they win over the buckets), then the token bucket of the operation."""
        self.faults.before_operation(operation, request.raw_path)
        self.throttler.check(operation)

    def after_operation(self, operation: str, request: HttpRequest) -> None:
        self.faults.after_operation(operation, request.raw_path)

    # ---- lifecycle

    def start(self) -> None:
        if self.enabled_events:
            self.events.start()
            self._ticker.start()

    def stop(self) -> None:
        self._stop.set()
        if self.enabled_events:
            self.events.stop()

    def reset(self) -> None:
        """``POST /_emulator/reset``: faults back to the start-up set, buckets full, event log cleared."""
        self.faults.clear()
        for spec in self.settings.faults:
            self.faults.add(spec)
        self.throttler.refill()
        self.events.clear()

    def _tick(self) -> None:
        # A data store leaves CREATING lazily (when read); AWS announces "Data Store Created" on its own, so read
        # the CREATING ones now and then while events are on.
        while not self._stop.wait(0.25):
            if self.backend is None or self.settings.datastore_create_seconds <= 0:
                continue
            try:
                self.backend.list_datastores("CREATING", None, None)
            except Exception:
                log.debug("data store tick failed", exc_info=True)


class ResilienceAdmin(JsonRoutes):
    object_body = False  # fault specs may be posted as a list

    def __init__(self, res: Resilience) -> None:
        self.res = res
        self.routes: list[tuple[str, re.Pattern[str], Callable[..., Any]]] = [
            ("GET", re.compile(r"throttling"), self.get_throttling),
            ("POST", re.compile(r"throttling"), self.post_throttling),
            ("GET", re.compile(r"faults"), self.get_faults),
            ("POST", re.compile(r"faults"), self.post_faults),
            ("DELETE", re.compile(r"faults"), self.delete_faults),
            ("DELETE", re.compile(r"faults/(?P<fault_id>[^/]+)"), self.delete_fault),
            ("GET", re.compile(r"events"), self.get_events),
            ("DELETE", re.compile(r"events"), self.delete_events),
        ]

    # ---- throttling

    def get_throttling(self, **_: Any) -> dict[str, Any]:
        return self.res.throttler.snapshot()

    def post_throttling(self, body: Any, **_: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise SerializationException("Request body must be a JSON object")
        enabled = body.get("enabled")
        if enabled is not None and not isinstance(enabled, bool):
            raise ValidationException("'enabled' must be true or false")
        rates = normalize_rates(body["rates"]) if body.get("rates") is not None else None
        if body.get("reset"):
            self.res.throttler.configure(enabled, {**self.res.settings.throttle_rates, **(rates or {})}, reset=True)
        else:
            self.res.throttler.configure(enabled, rates)
        return self.res.throttler.snapshot()

    # ---- faults

    def get_faults(self, **_: Any) -> dict[str, Any]:
        return {"faults": self.res.faults.describe()}

    def post_faults(self, body: Any, **_: Any) -> dict[str, Any]:
        specs = body if isinstance(body, list) else [body]
        return {"faults": [self.res.faults.add(spec) for spec in specs]}

    def delete_faults(self, **_: Any) -> dict[str, Any]:
        return {"removed": self.res.faults.clear()}

    def delete_fault(self, fault_id: str, **_: Any) -> dict[str, Any]:
        if not self.res.faults.remove(fault_id):
            raise ResourceNotFoundException(f"Fault {fault_id} does not exist")
        return {"removed": 1}

    # ---- events

    def get_events(self, query: dict[str, str], **_: Any) -> dict[str, Any]:
        if query.get("flush", "").lower() in ("1", "true", "yes"):
            self.res.events.flush(5.0)
        snap = self.res.events.snapshot()
        wanted = query.get("detailType")
        if wanted:
            snap["events"] = [e for e in snap["events"] if e["detail-type"] == wanted]
        snap["enabled"] = self.res.enabled_events
        return snap

    def delete_events(self, **_: Any) -> dict[str, Any]:
        self.res.events.clear()
        return {"status": "cleared"}
