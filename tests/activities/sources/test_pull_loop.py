"""The resumable pull loop (`activities.sources.common.pull_all`) with a scripted connector and the real moto S3:
per-unit retries, failed rows versus whole-source failures, and failure files across attempts."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError

from activities.sources.common import (
    Landing,
    PullCursor,
    SourceForbidden,
    SourceUnavailable,
    UnitOutcome,
    pull_all,
)
from contracts import layout
from tests.activities.sources.support import RequestCounter, buckets, landing, ndjson_files


@dataclass
class Scripted:
    """A connector whose units succeed, fail a number of times, or fail for good, as scripted."""

    names: list[str]
    fails: dict[str, int] = field(default_factory=dict)  # unit -> failing pulls before it succeeds
    forbidden: set[str] = field(default_factory=set)
    source_down: bool = False
    failed_rows: set[str] = field(default_factory=set)  # units whose pull reports a failed instance
    calls: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return "scripted source"

    def units(self) -> Iterator[str]:
        yield from self.names

    def pull(self, unit: str, landing: Landing) -> UnitOutcome:
        self.calls.append(unit)
        if unit in self.forbidden:
            raise SourceForbidden("retrieving: HTTP 403")
        if self.fails.get(unit, 0) > 0:
            self.fails[unit] -= 1
            raise SourceUnavailable("retrieving: HTTP 500 from the PACS")
        out = UnitOutcome()
        if unit in self.failed_rows:
            out.fail(f"{landing.prefix.key}{unit}/lost.dcm", "NotDelivered", "listed, not delivered")
            return out
        landing.put(f"{landing.prefix.key}{unit}.dcm", io.BytesIO(b"x"), 1)
        out.pulled = 1
        return out

    def probe(self) -> None:
        if self.source_down:
            raise SourceUnavailable("probing: the PACS did not answer")

    def unit_key(self, unit: str, landing: Landing) -> str:
        return f"{landing.prefix.key}{unit}/"


def _run(s3: Any, connector: Scripted, work: str, cursor: PullCursor | None = None,
         attempts: int = 3) -> tuple[PullCursor, Landing]:
    cursor = cursor or PullCursor()
    land = landing(s3, work.replace("work-", "land-"))
    pull_all(s3, connector, land, f"s3://{work}/runs/", "m1", cursor, lambda _c: None, attempts, 0.0)
    return cursor, land


def _failure_files(s3: Any, work: str) -> dict[int, str]:
    """The rows of each failure file (as compact JSON, to look for fields in) by unit index."""
    files = ndjson_files(s3, layout.receive_failures_prefix(f"s3://{work}/runs/", "m1"))
    return {int(key.rsplit("unit-", 1)[1].split(".")[0]): json.dumps(rows, separators=(",", ":"))
            for key, rows in files.items()}


def test_a_flaky_unit_is_retried_and_a_bad_one_becomes_a_row(s3: Any) -> None:
    _, work = buckets(s3)
    connector = Scripted(["a", "flaky", "bad", "denied", "z"], fails={"flaky": 2, "bad": 99}, forbidden={"denied"})
    cursor, _ = _run(s3, connector, work)
    assert cursor.done and cursor.pulled == 3 and cursor.source_failures == 2
    assert connector.calls.count("flaky") == 3 and connector.calls.count("bad") == 3
    assert connector.calls.count("denied") == 1  # the same credentials get the same answer: no retry
    rows = _failure_files(s3, work)
    assert set(rows) == {2, 3}
    assert '"code":"SourceUnavailable"' in rows[2] and '"key":"landed/bad/"' in rows[2] and "3 times" in rows[2]
    assert '"code":"Forbidden"' in rows[3] and "HTTP 403" in rows[3]


def test_a_failing_unit_with_the_source_down_fails_the_activity_at_that_unit(s3: Any) -> None:
    _, work = buckets(s3)
    connector = Scripted(["a", "b", "c"], fails={"b": 99}, source_down=True)
    cursor = PullCursor()
    with pytest.raises(ApplicationError) as info:
        _run(s3, connector, work, cursor)
    assert info.value.type == "SourceUnavailable" and not info.value.non_retryable
    assert "scripted source: probing: the PACS did not answer" in str(info.value)
    assert cursor.next_unit == 1 and _failure_files(s3, work) == {}  # Temporal's retry resumes at "b"


def test_forbidden_everywhere_is_a_non_retryable_activity_failure(s3: Any) -> None:
    _, work = buckets(s3)

    class Refused(Scripted):
        def probe(self) -> None:
            raise SourceForbidden("probing: HTTP 401 (check HIMIG_DICOMWEB_TOKEN)")

    with pytest.raises(ApplicationError) as info:
        _run(s3, Refused(["a"], forbidden={"a"}), work)
    assert info.value.non_retryable and info.value.type == "InvalidSourceConnector"


def test_a_fresh_enumeration_clears_failure_files_of_a_lost_longer_one(s3: Any) -> None:
    _, work = buckets(s3)
    _run(s3, Scripted([f"u{i}" for i in range(5)], failed_rows={"u1", "u4"}), work)
    assert set(_failure_files(s3, work)) == {1, 4}
    # The heartbeat of that attempt was lost: the next attempt enumerates again, and the source has shrunk.
    _run(s3, Scripted(["u0", "u1", "u2"], failed_rows={"u1"}), work)
    assert set(_failure_files(s3, work)) == {1}  # no stale unit-4 row past the new total


def test_resume_deletes_only_failure_files_an_earlier_attempt_wrote(s3: Any) -> None:
    _, work = buckets(s3)
    names = [f"u{i}" for i in range(6)]
    cursor, _ = _run(s3, Scripted(names, failed_rows={"u1", "u3"}), work)
    counter = RequestCounter(s3)
    # Resume at unit 2 as if the heartbeat had stopped there; u3 now succeeds.
    resumed = PullCursor(units_total=cursor.units_total, next_unit=2)
    _run(s3, Scripted(names), work, resumed)
    assert set(_failure_files(s3, work)) == {1}  # u1 was before the resume point and stays
    assert counter.calls.get("DeleteObject", 0) == 1  # only u3's file, not one delete per unit


@dataclass
class Parallel(Scripted):
    """A scripted connector that asks for ``parallel`` units at once (as a DIMSE source's ``parallel`` does)."""

    parallel: int = 3


class _Died(Exception):
    pass


def test_parallel_windows_account_for_every_unit_in_order(s3: Any) -> None:
    _, work = buckets(s3)
    names = [f"u{i}" for i in range(8)]
    connector = Parallel(names, fails={"u2": 1, "u6": 99}, failed_rows={"u4"})
    saved: list[int] = []
    land = landing(s3, work.replace("work-", "land-"))
    cursor = PullCursor()
    pull_all(s3, connector, land, f"s3://{work}/runs/", "m1", cursor, lambda c: saved.append(c.next_unit), 3, 0.0)
    assert cursor.done and cursor.next_unit == 8 and cursor.pulled == 6 and cursor.source_failures == 2
    # The cursor is saved after the enumeration (0), after each whole window, and at the end.
    assert saved == [0, 3, 6, 8, 8]
    assert sorted(set(connector.calls)) == names and connector.calls.count("u2") == 2
    assert set(_failure_files(s3, work)) == {4, 6} and land.objects == 6


def test_a_worker_dying_mid_window_re_pulls_that_window_only(s3: Any) -> None:
    _, work = buckets(s3)
    names = [f"u{i}" for i in range(7)]
    first = Parallel(names, failed_rows={"u5"})
    cursor = PullCursor()
    saves = 0

    def dies_on_the_second_window(c: PullCursor) -> None:
        nonlocal saves
        saves += 1
        if saves == 3:  # enumeration, first window, then the worker dies recording the second
            raise _Died()

    land = landing(s3, work.replace("work-", "land-"))
    with pytest.raises(_Died):
        pull_all(s3, first, land, f"s3://{work}/runs/", "m1", cursor, dies_on_the_second_window, 3, 0.0)
    # What the heartbeat last recorded: the first window done.
    resumed = PullCursor(units_total=7, next_unit=3, pulled=3)
    second = Parallel(names, failed_rows={"u5"})
    pull_all(s3, second, land, f"s3://{work}/runs/", "m1", resumed, lambda _c: None, 3, 0.0)
    assert resumed.done and resumed.pulled == 6 and resumed.source_failures == 1
    assert sorted(second.calls) == names[3:]  # the lost window again, nothing before it
    assert set(_failure_files(s3, work)) == {5}
