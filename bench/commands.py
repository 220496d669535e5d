"""Issue #14's closing figure: the time each operator command takes at one size, run as an operator runs it.

On a local stack of its own (temporary directory, free ports; the stack's real worker): a synthetic corpus of
``BENCH_COMMANDS_FILES`` (10000) valid instances plus the bundled sample corpus (hostile files, duplicates,
identity cases, a non-primary pair: rejections next to imports) under one prefix. Then every command is run as a
subprocess of the installed ``himig`` with the stack's environment (what `himig stack env` gives an operator),
stdin not a terminal, and timed from exec to exit, in the order an operator would use them:

``plan``; ``start --from-plan --wait`` (to completion; ``status`` once while it runs); ``status``; ``report``
(plain, ``--json``, ``--html FILE``, ``--csv FILE``); ``verify`` (default: no touch), ``verify --deep``,
``verify --source`` (the bare source against the same data store); ``retry`` (only ``failed`` files: what is left
to retry) and ``retry --include-rejected --wait`` (to completion); ``rollback`` as a non-interactive operator meets
it (the first call prints the plan and the count to type, the second confirms it with ``--confirm N`` and waits
for the deletions).

One line per command: seconds, files/s where a command goes over the files, and what the command itself reports
(verify's requests and touches, the retried and deleted counts). Every command's time includes the CLI's own start
(Python, imports, the Temporal connection), as the operator waits for it. Appends to bench/RESULTS.md
(``--no-results``: print only).

    .venv/bin/python bench/commands.py                  (BENCH_COMMANDS_FILES=10000)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

# Without bench/ itself on the path: bench/emulator.py would shadow the `emulator` package the stack checks for.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.end_to_end import (
    SOURCE_BUCKET,
    WORK_BUCKET,
    clients,
    fresh_datastore,
    machine,
    prepare_corpus,
    start_stack,
    versions,
)
from bench.lib.localstack import ensure_payload_keys
from bench.plan import add_sample_corpus
from worker.process_exit import run_then_exit

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TIMEOUT = float(os.environ.get("BENCH_TIMEOUT", "3600"))
HIMIG = Path(sys.executable).parent / "himig"
# While the migration runs, `himig status` once this long after the start (the migration is past its listing).
STATUS_AFTER = float(os.environ.get("BENCH_COMMANDS_STATUS_AFTER", "20"))


@dataclass
class Timed:
    label: str
    seconds: float
    code: int
    out: str
    ended: float

    @property
    def flat(self) -> str:
        return " ".join(self.out.split())


class Operator:
    """Runs ``himig ...`` against the stack and keeps one result line per command."""

    def __init__(self, env: dict[str, str]) -> None:
        # A wide terminal: rich wraps at COLUMNS, and the counts are read back from the output.
        self.env = {**env, "COLUMNS": "300"}
        self.lines: list[str] = []

    def run(self, label: str, *args: str, ok: tuple[int, ...] = (0,)) -> Timed:
        started = time.monotonic()
        done = subprocess.run([str(HIMIG), *args], env=self.env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=TIMEOUT, check=False)
        ended = time.monotonic()
        timed = Timed(label, ended - started, done.returncode, done.stdout + done.stderr, ended)
        if done.returncode not in ok:
            raise SystemExit(f"`himig {' '.join(args)}` exited {done.returncode}:\n{timed.out[-4000:]}")
        return timed

    def record(self, t: Timed, files: int | None = None, note: str = "") -> None:
        rate = f"{files / t.seconds:8.0f} files/s" if files else " " * 16
        code = f" (exit {t.code})" if t.code else ""
        line = f"{t.label:<46} {t.seconds:8.1f}s {rate}  {note}{code}".rstrip()
        self.lines.append(line)
        print(line, flush=True)


def found(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise SystemExit(f"the output does not say /{pattern}/:\n{text[-4000:]}")
    return match.group(1)


def verify_note(t: Timed) -> str:
    """What verify says it checked and what it cost: its instance count, requests and touches."""
    checked = found(r"(\d+ of \d+ instances[^,]*?), in \d+ image set", t.flat)
    requests = found(r"requests: (.*?); touches made", t.flat)
    touches = found(r"touches made (\d+)", t.flat)
    differences = "no differences" if "no differences" in t.flat else "differences found"
    return f"{checked}; requests {requests}; touches {touches}; {differences}"


def run_commands(op: Operator, s3_env: dict[str, str], tmp: Path, files: int) -> None:
    _, s3, mi = clients(s3_env)
    started = time.monotonic()
    prefix, _ = prepare_corpus(s3, tmp, files)
    extra = add_sample_corpus(s3, tmp, prefix)
    total = files + extra
    print(f"corpus: {total} files ({files} synthetic + {extra} sample corpus), uploaded in "
          f"{time.monotonic() - started:.0f}s", flush=True)
    op.lines.append(f"{total} files ({files} synthetic + {extra} sample corpus, its hostile files included)")
    ds = fresh_datastore(mi, f"cmds-{files}-{uuid.uuid4().hex[:8]}")
    run_id = uuid.uuid4().hex[:8]
    source, work = f"s3://{SOURCE_BUCKET}/{prefix}", f"s3://{WORK_BUCKET}/cmds-bench/{run_id}/"
    plan_id, mid = f"plan-cmds-{run_id}", f"migration-cmds-{run_id}"

    t = op.run("himig plan", "plan", "--source", source, "--datastore-id", ds, "--work", work, "--id", plan_id)
    to_import, jobs = found(r"import\s+([\d,]+)", t.flat), found(r"(\d+ import jobs)", t.flat)
    op.record(t, total, f"predicted {to_import} to import in {jobs}")

    # `start --wait` watches until the end; meanwhile, one `himig status` as an operator checks a running migration.
    during: list[Timed] = []

    def status_while_running() -> None:
        time.sleep(STATUS_AFTER)
        with contextlib.suppress(SystemExit):
            during.append(op.run("himig status (while the migration runs)", "status", mid))

    watcher = threading.Thread(target=status_while_running, daemon=True)
    watcher.start()
    t = op.run("himig start --from-plan --wait", "start", "--from-plan", plan_id, "--id", mid, "--wait")
    watcher.join()
    op.record(t, total, "completed")
    for d in during:
        op.record(d, note="answered while the migration ran" if d.ended < t.ended
                  else "the migration had ended already")

    op.record(op.run("himig status", "status", mid), note="finished migration")
    t = op.run("himig report --json", "report", mid, "--json")
    summary = json.loads(t.out[t.out.index("{"):])
    states = {k: v for k, v in summary["files_by_state"].items() if v}
    if summary["files_total"] != total:
        raise SystemExit(f"the report accounts for {summary['files_total']} files, not {total}")
    op.lines.append(f"  migration's outcome: {states}; {summary['image_sets']} image sets")
    op.record(op.run("himig report", "report", mid), total)
    op.record(t, total)
    page = tmp / "report.html"
    op.record(op.run("himig report --html FILE", "report", mid, "--html", str(page)), total,
              f"{page.stat().st_size / 1024:.0f} KiB page")
    table = tmp / "report.csv"
    op.record(op.run("himig report --csv FILE", "report", mid, "--csv", str(table)), total,
              f"{sum(1 for _ in table.open()) - 1} rows")

    t = op.run("himig verify", "verify", mid, ok=(0, 3))
    op.record(t, total, verify_note(t))
    t = op.run("himig verify --deep", "verify", mid, "--deep", ok=(0, 3))
    op.record(t, total, verify_note(t))
    # The bare source holds the hostile files too, which are (rightly) not in the data store: exit 3 expected.
    t = op.run("himig verify --source (bare source)", "verify", "--source", source, "--datastore-id", ds,
               "--work", work, ok=(0, 3))
    op.record(t, total, verify_note(t))

    t = op.run("himig retry (failed files only)", "retry", mid)
    retried = re.search(r"retrying (\d+) file", t.flat)
    op.record(t, total, f"retrying {retried.group(1)} file(s)" if retried
              else "nothing to retry (no failed file)" if "nothing to retry" in t.flat else t.flat[:120])
    if retried:  # it started a migration; wait for it as the next command would
        op.record(op.run("himig status --watch (the retry)", "status", f"{mid}-retry-1", "--watch"))
    t = op.run("himig retry --include-rejected --wait", "retry", mid, "--include-rejected", "--id",
               f"{mid}-retry-r", "--wait")
    n = int(found(r"retrying (\d+) file", t.flat))
    op.record(t, n, f"{n} file(s) retried, to completion")

    t = op.run("himig rollback (prints the plan, asks)", "rollback", mid)
    count = int(found(r"--confirm (\d+)", t.flat))
    op.record(t, note=f"{count} image set(s) to delete; not confirmed without a terminal")
    t2 = op.run("himig rollback --confirm N (to completion)", "rollback", mid, "--confirm", str(count))
    op.record(t2, note=found(r"(rollback of \S+ \w+: \d+ deleted, \d+ already gone)", t2.flat))
    op.lines.append(f"{'  rollback, both calls':<46} {t.seconds + t2.seconds:8.1f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-results", action="store_true", help="do not append to bench/RESULTS.md")
    args = parser.parse_args()
    files = int(os.environ.get("BENCH_COMMANDS_FILES", "10000"))
    if not HIMIG.exists():
        raise SystemExit(f"no {HIMIG}: run `make install` first")
    ensure_payload_keys()
    tmp = Path(tempfile.mkdtemp(prefix="himig-cmds-"))
    stack = start_stack(tmp, None)
    op = Operator({**os.environ, **stack.env()})
    started = time.monotonic()
    try:
        run_commands(op, op.env, tmp, files)
    finally:
        with contextlib.suppress(Exception):
            stack.down()
        shutil.rmtree(tmp, ignore_errors=True)
    op.lines.append(f"whole run (corpus upload and data store included): {time.monotonic() - started:.0f}s")
    print("\n" + "\n".join(op.lines))
    if not args.no_results:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        with RESULTS.open("a") as f:
            f.write(f"\n## commands.py — {stamp}\n- machine: {machine()}\n- versions: {versions()}\n"
                    f"- BENCH_COMMANDS_FILES={files}; each command a `himig` subprocess (CLI start included); "
                    "a shared 2-core machine (other agents building and testing at the time): noisy figures\n\n```\n"
                    + "\n".join(op.lines) + "\n```\n")


if __name__ == "__main__":
    # Without interpreter finalization, which the SDK's native threads can abort (see bench/process_exits.py).
    run_then_exit(main)
