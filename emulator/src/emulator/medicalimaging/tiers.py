"""Storage tiers of image sets (DG "storage tiers", 2025): every image set starts in Frequent Access and moves to
Archive Instant Access after ``archive_after_days`` (30) without being accessed; a "touch" (GetImageSetMetadata,
GetImageFrame, CopyImageSet, UpdateImageSetMetadata) records ``lastAccessedAt`` and brings it back to Frequent
Access. GetImageSet, SearchImageSets and ListImageSetVersions are not touches. Time is the job clock, so a test
moves sets to the archive tier with ``POST /_emulator/clock/advance``."""

from __future__ import annotations

import sqlite3

FREQUENT_ACCESS = "FREQUENT_ACCESS"
ARCHIVE_INSTANT_ACCESS = "ARCHIVE_INSTANT_ACCESS"
DAY = 86400.0


def last_accessed(row: sqlite3.Row) -> float:
    """When the set was last touched (its creation if never); wall-clock epoch seconds, as ``createdAt``."""
    value = row["last_accessed_at"]
    return float(value if value is not None else row["created_at"])


def tier(row: sqlite3.Row, aged_now: float, archive_after_days: float) -> str:
    """The set's tier at ``aged_now`` (`JobClock.aged_now`: wall clock plus the clock's advances)."""
    idle = aged_now - last_accessed(row)
    return ARCHIVE_INSTANT_ACCESS if idle >= archive_after_days * DAY else FREQUENT_ACCESS
