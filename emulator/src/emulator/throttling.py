"""Per-operation token buckets with AWS HealthImaging's published request rates (research/healthimaging.md §3).

AWS throttles per account and operation: a bucket holds ``burst`` tokens, refills at ``rate`` tokens per second,
and a call that finds it empty is answered 429 ``ThrottlingException`` (rest-json error shape). The emulator has
one account, so there is one bucket per operation. Operations missing from the table are never throttled.

Switchable at start-up (``--throttling on|off``, ``HIMIG_EMULATOR_THROTTLING``), per-operation overrides with
``--throttle-rates`` and, at run time, through ``/_emulator/throttling``.
"""

from __future__ import annotations

import argparse
import json
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from emulator.errors import ThrottlingException, ValidationException

_TAGGING = (10.0, 20.0)

#: (rate per second, burst) from the DG's throttling-limits page; StartDICOMImportJob from its newest table (it
#: listed 1 TPS, burst 2, before). Accounts differ: override with --throttle-rates.
DEFAULT_RATES: dict[str, tuple[float, float]] = {
    "StartDICOMImportJob": (40.0, 80.0),
    "GetDICOMImportJob": (25.0, 50.0),
    "ListDICOMImportJobs": (10.0, 20.0),
    "SearchImageSets": (25.0, 50.0),
    "GetImageSet": (25.0, 50.0),
    "ListImageSetVersions": (25.0, 50.0),
    "GetImageSetMetadata": (50.0, 100.0),
    "GetImageFrame": (1000.0, 2000.0),
    "UpdateImageSetMetadata": (0.25, 1.0),
    "CopyImageSet": (0.25, 1.0),
    "DeleteImageSet": (0.25, 1.0),
    "CreateDatastore": (0.085, 1.0),
    "DeleteDatastore": (0.085, 1.0),
    "GetDatastore": (10.0, 20.0),
    "ListDatastores": (5.0, 10.0),
    "TagResource": _TAGGING,
    "UntagResource": _TAGGING,
    "ListTagsForResource": _TAGGING,
    # DICOMweb retrieval (the DICOMweb family may call Throttler.check with these names).
    "GetDICOMInstance": (50.0, 100.0),
    "GetDICOMInstanceMetadata": (50.0, 100.0),
    "GetDICOMInstanceFrames": (50.0, 100.0),
    "GetDICOMSeriesMetadata": (50.0, 100.0),
}


def parse_rates(text: str | None) -> dict[str, tuple[float, float]]:
    """Parse ``--throttle-rates``: ``Op=RATE:BURST,Op2=RATE:BURST`` or a JSON object
    ``{"Op": {"rate": R, "burst": B}}`` / ``{"Op": [R, B]}``."""
    if not text or not text.strip():
        return {}
    text = text.strip()
    if text.startswith("{"):
        try:
            return normalize_rates(json.loads(text))
        except (ValueError, ValidationException) as exc:
            raise argparse.ArgumentTypeError(getattr(exc, "message", str(exc))) from None
    out: dict[str, tuple[float, float]] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        name, _, value = item.partition("=")
        rate, _, burst = value.partition(":")
        try:
            r = float(rate)
            b = float(burst) if burst else max(1.0, r)
            if not (math.isfinite(r) and math.isfinite(b) and r >= 0 and b >= 0):
                raise ValueError(item)
            out[name.strip()] = (r, b)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad throttle rate {item!r}; expected Operation=RATE:BURST") from None
    return out


def normalize_rates(doc: Any) -> dict[str, tuple[float, float]]:
    """Accept ``{"Op": {"rate": R, "burst": B}}`` or ``{"Op": [R, B]}``; reject anything else."""
    if not isinstance(doc, dict):
        raise ValidationException("'rates' must be an object of operation name -> {rate, burst}")
    out: dict[str, tuple[float, float]] = {}
    for name, value in doc.items():
        if isinstance(value, dict):
            rate, burst = value.get("rate"), value.get("burst")
        elif isinstance(value, (list, tuple)) and len(value) == 2:
            rate, burst = value
        else:
            raise ValidationException(f"rate for {name} must be {{'rate': R, 'burst': B}} or [R, B]")
        if burst is None and isinstance(rate, (int, float)):
            burst = max(1.0, float(rate))
        if (not isinstance(rate, (int, float)) or not isinstance(burst, (int, float)) or isinstance(rate, bool)
                or isinstance(burst, bool) or not (math.isfinite(rate) and math.isfinite(burst))
                or rate < 0 or burst < 0):
            raise ValidationException(f"rate and burst for {name} must be non-negative numbers")
        out[str(name)] = (float(rate), float(burst))
    return out


@dataclass
class TokenBucket:
    rate: float
    burst: float
    tokens: float
    updated: float

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Throttler:
    """Thread-safe token buckets keyed by operation name."""

    def __init__(self, enabled: bool = True, overrides: dict[str, tuple[float, float]] | None = None) -> None:
        self._lock = threading.Lock()
        self.enabled = enabled
        self.rates: dict[str, tuple[float, float]] = {**DEFAULT_RATES, **(overrides or {})}
        self._buckets: dict[str, TokenBucket] = {}
        self.throttled: dict[str, int] = {}
        self.allowed: dict[str, int] = {}

    def check(self, operation: str) -> None:
        """Take one token for ``operation`` or raise :class:`ThrottlingException` (429)."""
        if not self.enabled:
            return
        with self._lock:
            limits = self.rates.get(operation)
            if limits is None:
                return
            now = time.monotonic()
            bucket = self._buckets.get(operation)
            if bucket is None:
                bucket = self._buckets[operation] = TokenBucket(limits[0], limits[1], limits[1], now)
            if bucket.take(now):
                self.allowed[operation] = self.allowed.get(operation, 0) + 1
                return
            self.throttled[operation] = self.throttled.get(operation, 0) + 1
        raise ThrottlingException("Rate exceeded")

    def configure(self, enabled: bool | None = None, rates: dict[str, tuple[float, float]] | None = None,
                  reset: bool = False) -> None:
        """Switch on/off, override rates (buckets of changed operations restart full), or refill everything."""
        with self._lock:
            if enabled is not None:
                self.enabled = enabled
            for name, limits in (rates or {}).items():
                self.rates[name] = limits
                self._buckets.pop(name, None)
            if reset:
                self.rates = {**DEFAULT_RATES, **(rates or {})}
                self._buckets.clear()
                self.throttled.clear()
                self.allowed.clear()

    def refill(self) -> None:
        """Start every bucket full again (``POST /_emulator/reset``); keeps the configured rates."""
        with self._lock:
            self._buckets.clear()
            self.throttled.clear()
            self.allowed.clear()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            ops = {}
            for name, (rate, burst) in sorted(self.rates.items()):
                b = self._buckets.get(name)
                tokens = burst if b is None else min(burst, b.tokens + (now - b.updated) * rate)
                ops[name] = {"rate": rate, "burst": burst, "tokens": round(tokens, 3),
                             "allowed": self.allowed.get(name, 0), "throttled": self.throttled.get(name, 0)}
            return {"enabled": self.enabled, "operations": ops,
                    "throttledTotal": sum(self.throttled.values())}
