"""The local-directory connector against the real moto S3 server."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError

from activities.sources.local import LocalConnector
from activities.sources.registry import SourceSettings
from contracts.sources import LocalSource
from tests.activities.sources import support
from tests.activities.sources.support import (
    RequestCounter,
    buckets,
    failures,
    inventory,
    landed,
    receive_input,
    run_receive,
)
from tests.support.dicom import make_instance, uid


def _allow(root: Path) -> SourceSettings:
    """Worker settings that let a `local` source read under ``root`` (the default reads nothing)."""
    return SourceSettings(local_roots=(str(root),), unit_backoff_seconds=0.0)


def _tree(root: Path) -> dict[str, bytes]:
    study, series = uid(), uid()
    files = {
        "a/1.dcm": make_instance(study, series),
        "a/2.dcm": make_instance(study, series),
        "b/deeper/3.dcm": make_instance(study, uid()),
        "notes.txt": b"not dicom, still a file the report must show",
        "with space & ünïcode.dcm": make_instance(uid(), uid()),
    }
    for rel, body in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(body)
    return files


def test_directory_lands_under_relative_paths_and_is_inventoried(s3: Any, tmp_path: Path) -> None:
    src = tmp_path / "export"
    src.mkdir()
    files = _tree(src)
    land, work = buckets(s3)
    counter = RequestCounter(s3)
    inp = receive_input(land, work, LocalSource(kind="local", path=str(src)), page_size=2)
    result, beats = run_receive(s3, inp, settings=_allow(tmp_path))
    assert result is not None
    got = landed(s3, land)
    assert got == {f"landed/{rel}": body for rel, body in files.items()}
    assert result.files == len(files) and result.pages == 3 and result.source_failures == 0
    assert sorted(r["key"] for r in inventory(s3, inp)) == sorted(got)
    # One PutObject per file (all below the multipart threshold).
    assert counter.calls.get("PutObject", 0) - result.pages - 1 == len(files)  # minus pages and the unit list
    assert beats and beats[-1]["pull"]["done"] is True


def test_symlinks_leaving_the_directory_are_reported_not_followed(s3: Any, tmp_path: Path) -> None:
    src, outside = tmp_path / "export", tmp_path / "secret"
    src.mkdir()
    outside.mkdir()
    (outside / "passwd").write_bytes(b"outside")
    (src / "ok.dcm").write_bytes(make_instance(uid(), uid()))
    (src / "escape").symlink_to(outside / "passwd")
    (src / "escape-dir").symlink_to(outside, target_is_directory=True)
    (src / "inner-link.dcm").symlink_to(src / "ok.dcm")
    (src / "dangling").symlink_to(src / "gone")
    land, work = buckets(s3)
    inp = receive_input(land, work, LocalSource(kind="local", path=str(src)))
    result, _ = run_receive(s3, inp, settings=_allow(tmp_path))
    assert result is not None
    assert set(landed(s3, land)) == {"landed/ok.dcm", "landed/inner-link.dcm"}
    codes = {f["key"]: f["code"] for f in failures(s3, inp)}
    assert codes == {"landed/escape": "SymlinkOutsideSource", "landed/escape-dir": "SymlinkOutsideSource",
                     "landed/dangling": "SourceUnreadable"}
    assert result.source_failures == 3
    assert all(f["state"] == "failed" and f["reason"] for f in failures(s3, inp))


def test_special_files_are_failure_rows_not_hangs(s3: Any, tmp_path: Path) -> None:
    src = tmp_path / "export"
    src.mkdir()
    os.mkfifo(src / "pipe")  # opening a FIFO for reading would block forever
    land, work = buckets(s3)
    inp = receive_input(land, work, LocalSource(kind="local", path=str(src)))
    result, _ = run_receive(s3, inp, settings=_allow(tmp_path))
    assert result is not None and result.files == 0
    assert [(f["key"], f["code"]) for f in failures(s3, inp)] == [("landed/pipe", "NotAFile")]


def test_missing_directory_fails_without_retry_and_names_the_connector(s3: Any, tmp_path: Path) -> None:
    land, work = buckets(s3)
    inp = receive_input(land, work, LocalSource(kind="local", path=str(tmp_path / "nope")))
    with pytest.raises(ApplicationError) as info:
        run_receive(s3, inp, settings=_allow(tmp_path))
    assert info.value.non_retryable and info.value.type == "InvalidSourceConnector"
    assert "local directory source: path: cannot open the directory" in str(info.value)
    (tmp_path / "file").write_bytes(b"x")
    inp = receive_input(land, work, LocalSource(kind="local", path=str(tmp_path / "file")))
    with pytest.raises(ApplicationError, match="path: is not a directory"):
        run_receive(s3, inp, settings=_allow(tmp_path))


def test_interrupted_pull_resumes_at_the_cursor_without_duplicate_pages(s3: Any, tmp_path: Path) -> None:
    src = tmp_path / "export"
    src.mkdir()
    for i in range(12):
        (src / f"f{i:02d}.dcm").write_bytes(make_instance(uid(), uid()))
    land, work = buckets(s3)
    inp = receive_input(land, work, LocalSource(kind="local", path=str(src)), page_size=5)
    # Die after the unit list and 4 files were recorded.
    _, beats = run_receive(s3, inp, stop_after_heartbeats=5, settings=_allow(tmp_path))
    cursor = beats[-1]
    assert cursor["pull"]["next_unit"] == 4 and not cursor["pull"]["done"]
    counter = RequestCounter(s3)
    result, _ = run_receive(s3, inp, details=cursor, settings=_allow(tmp_path))
    assert result is not None and result.files == 12 and result.pages == 3
    # The resumed attempt uploaded only the 8 files it had not pulled, plus 3 pages (no second unit list).
    assert counter.calls["PutObject"] == 8 + 3
    keys = [r["key"] for r in inventory(s3, inp)]
    assert len(keys) == len(set(keys)) == 12


def test_big_files_are_streamed_as_multipart_uploads(s3: Any, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        for i in range(11):  # 11 MiB in 1 MiB writes
            f.write(bytes([i]) * (1 << 20))
    land, _ = buckets(s3)
    counter = RequestCounter(s3)
    landing = support.landing(s3, land, multipart_threshold=5 << 20)
    out = LocalConnector(LocalSource(kind="local", path=str(tmp_path)), (str(tmp_path),)).pull("big.bin", landing)
    assert out.pulled == 1 and not out.failures
    assert counter.calls == {"CreateMultipartUpload": 1, "UploadPart": 3, "CompleteMultipartUpload": 1}
    assert landing.requests == 5
    assert s3.get_object(Bucket=land, Key="landed/big.bin")["Body"].read() == big.read_bytes()


def test_directories_outside_the_allowed_roots_are_refused(s3: Any, tmp_path: Path) -> None:
    allowed, other = tmp_path / "exports", tmp_path / "elsewhere"
    (allowed / "x").mkdir(parents=True)
    other.mkdir()
    (allowed / "x" / "a.dcm").write_bytes(b"a")
    land, work = buckets(s3)
    roots = SourceSettings(local_roots=(str(allowed),))
    inp = receive_input(land, work, LocalSource(kind="local", path=str(other)))
    with pytest.raises(ApplicationError) as info:
        run_receive(s3, inp, settings=roots)
    assert info.value.non_retryable and "outside the directories this worker may read" in str(info.value)
    assert str(other) not in str(info.value)  # folder names can carry patient names: never echoed
    # A symlink into the allowed root does not help: the resolved directory is checked.
    (allowed / "link").symlink_to(other, target_is_directory=True)
    inp = receive_input(land, work, LocalSource(kind="local", path=str(allowed / "link")))
    with pytest.raises(ApplicationError, match="outside the directories"):
        run_receive(s3, inp, settings=roots)
    inp = receive_input(land, work, LocalSource(kind="local", path=str(allowed / "x")))
    result, _ = run_receive(s3, inp, settings=roots)
    assert result is not None and result.files == 1


def test_local_sources_are_refused_until_roots_are_configured(s3: Any, tmp_path: Path) -> None:
    """Deny by default: `/run/secrets` or any other directory the worker can read is not a source."""
    (tmp_path / "a.dcm").write_bytes(b"a")
    land, work = buckets(s3)
    inp = receive_input(land, work, LocalSource(kind="local", path=str(tmp_path)))
    with pytest.raises(ApplicationError) as info:
        run_receive(s3, inp, settings=SourceSettings())
    assert info.value.non_retryable and info.value.type == "InvalidSourceConnector"
    assert "HIMIG_SOURCE_DIR_ROOTS" in str(info.value) and str(tmp_path) not in str(info.value)
    assert landed(s3, land) == {}


def test_a_subdirectory_that_cannot_be_listed_is_a_failure_row(s3: Any, tmp_path: Path) -> None:
    """Root reads every directory, so the listing failure is made real another way: the subdirectory is removed
    after the walk listed its parent and before it descends into it."""
    src = tmp_path / "export"
    (src / "gone" / "deep").mkdir(parents=True)
    (src / "gone" / "deep" / "x.dcm").write_bytes(b"x")
    (src / "a.dcm").write_bytes(b"a")
    connector = LocalConnector(LocalSource(kind="local", path=str(src)), (str(tmp_path),))
    units = connector.units()
    assert next(units) == "a.dcm"  # the top directory is listed; "gone" is next to descend into
    shutil.rmtree(src / "gone")
    rest = list(units)
    assert len(rest) == 1 and "gone" in rest[0] and rest[0] != "gone"  # a marker unit, not a file name
    land, _ = buckets(s3)
    landing = support.landing(s3, land)
    out = connector.pull(rest[0], landing)
    assert out.pulled == 0 and [(f.key, f.code) for f in out.failures] == [("landed/gone/", "SourceUnreadable")]
    assert "gone" not in (out.failures[0].reason or "")


def test_heartbeats_never_carry_keys_and_resume_still_lists_on(s3: Any, tmp_path: Path) -> None:
    """Folder names often hold patient names; heartbeat details are stored in Temporal's history."""
    src = tmp_path / "export"
    names = [f"DOE^JANE-{i:02d}" for i in range(7)]
    for name in names:
        (src / name).mkdir(parents=True)
        (src / name / "img.dcm").write_bytes(make_instance(uid(), uid()))
    land, work = buckets(s3)
    inp = receive_input(land, work, LocalSource(kind="local", path=str(src)), page_size=2)
    # Die right after the second inventory page was recorded (unit list + 7 files + done = 9 pull beats).
    _, beats = run_receive(s3, inp, stop_after_heartbeats=11, settings=_allow(tmp_path))
    assert beats[-1]["pages"] == 2 and beats[-1]["pull"]["done"] is True
    result, more = run_receive(s3, inp, details=beats[-1], settings=_allow(tmp_path))
    assert result is not None and result.files == 7 and result.pages == 4
    keys = [r["key"] for r in inventory(s3, inp)]
    assert sorted(keys) == sorted(f"landed/{n}/img.dcm" for n in names)  # each once: resumed after page 2
    assert not any("DOE" in json.dumps(b) or "landed/" in json.dumps(b) for b in beats + more)


def test_a_directory_that_vanishes_mid_pull_fails_the_activity_retryably(s3: Any, tmp_path: Path) -> None:
    """A whole-source problem (an unmounted share) is not turned into one failed row per file."""
    src = tmp_path / "export"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}.dcm").write_bytes(b"x")
    land, work = buckets(s3)
    inp = receive_input(land, work, LocalSource(kind="local", path=str(src)))
    _, beats = run_receive(s3, inp, stop_after_heartbeats=2, settings=_allow(tmp_path))  # unit list + 1 file
    shutil.rmtree(src)
    with pytest.raises(ApplicationError) as info:
        run_receive(s3, inp, details=beats[-1], settings=_allow(tmp_path))
    assert info.value.type == "SourceUnavailable" and not info.value.non_retryable
    assert failures(s3, inp) == []
