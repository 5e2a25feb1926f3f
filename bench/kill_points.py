#!/usr/bin/env python3
"""Benchmark: SIGKILL a capture at random moments; nothing complete is lost.

One uninterrupted ``slimdump capture --policy ALL-NORMAL -c -d 0 SRC DST``
(default SRC: the 4 GiB machine-check fixture 6.1-mce-4g, with a policy that
maps every reason to a normal dump) gives its duration T.  Then, for each of
N points drawn uniformly from (0, T) with a fixed seed, the same capture
starts in an empty directory and its process group gets SIGKILL at that
moment.  What it left is checked (tests/test_kill.py's ``kill_trial``, the
CI test's own trial):

* under DST nothing, or a complete dump (makedumpfile --dump-dmesg gives the
  source's log, libkdumpfile reads sampled pages as in the source);
* DST.triage absent or a complete slimdump (eu-readelf -n lists VMCOREINFO
  and both SLIMDUMP notes, the panic line is in it, slimdump inspect exits 0);
* the ``.part`` files;

then the capture runs again into that directory: it must remove the
``.part`` files (one warning line naming them), exit 0 and leave exactly
DST and DST.triage, both checked as above.  Writes a markdown table:

    .venv/bin/python bench/kill_points.py [--points 20] [--seed 13] [--fixture NAME]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.conftest import real_vmcore  # noqa: E402
from tests.test_kill import (  # noqa: E402
    Oracle,
    Trial,
    capture_cmd,
    human,
    kill_times,
    kill_trial,
    listing,
    timed_run,
    write_policy,
)


def shell(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT).stdout.strip()


def on_disk(seen: dict[str, int]) -> str:
    return ", ".join(f"`{name}` {human(size)}" for name, size in seen.items()) or "nothing"


def state(t: Trial) -> str:
    """What the kill left, in words: which phase it hit."""
    names = set(t.seen)
    if t.exit == 0:
        return "finished before its kill time"
    if "dump" in names:
        return "killed after DST was renamed, before the exit"
    if any(n.startswith(".dump.triage.") for n in names):
        return "killed while the triage's own temporary file existed"
    if names & {"dump.triage"}:
        return "killed while the dump's .part was being written"
    return "killed before anything was on disk" if not names else "other"


def row(i: int, t: Trial) -> str:
    status = {0: "finished", -9: "killed"}.get(t.exit, f"exit {t.exit}")
    cleanup = t.cleanup.replace("slimdump: warning: ", "") or "-"
    verdict = "pass" if t.ok else "FAIL: " + "; ".join(t.problems)
    return (f"| {i} | {t.at:.2f} | {status} | {on_disk(t.seen)} | `{cleanup}` | "
            f"{t.recovery_exit} | {', '.join(f'`{n}`' for n in t.after)} | {verdict} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=20)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--fixture", default="6.1-mce-4g")
    ap.add_argument("--work", type=Path, default=None,
                    help="scratch directory (default: a new one in /var/tmp)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "kill_points.md")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kill_points.", dir=args.work or "/var/tmp"))
    oracle = Oracle(args.fixture, real_vmcore(args.fixture), args.seed)
    options = ("--policy", str(write_policy(work / "policy.toml")), "-c", "-d", "0")
    started = datetime.datetime.now(datetime.UTC)
    load_before = shell("uptime")

    whole = work / "whole"
    whole.mkdir()
    duration, proc = timed_run(capture_cmd(oracle.src, whole / "dump", *options))
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return 1
    reference = proc.stderr.strip().splitlines()[-1].replace(str(whole), "$WORK")
    problems = oracle.dump_problems(whole / "dump") + oracle.triage_problems(
        whole / "dump.triage")
    sizes = listing(whole)
    shutil.rmtree(whole)
    print(f"uninterrupted: {duration:.2f} s {problems or 'ok'}", file=sys.stderr)

    trials = []
    for i, at in enumerate(kill_times(duration, args.points, args.seed), 1):
        trial = kill_trial(oracle, work / f"kill{i}", at, *options)
        shutil.rmtree(work / f"kill{i}")
        print(f"{i}: {trial.describe()}", file=sys.stderr)
        trials.append(trial)
    load_after = shell("uptime")
    shutil.rmtree(work)

    passed = sum(t.ok for t in trials) + (not problems)
    cmd = " ".join(["slimdump capture --no-progress", *options[2:], "--policy ALL-NORMAL",
                    f"{oracle.src.name}", "DST"])
    lines = [
        "# SIGKILL at random points of a 4 GiB capture",
        "",
        f"Command: `.venv/bin/python bench/kill_points.py --points {args.points} "
        f"--seed {args.seed} --fixture {args.fixture}`, "
        f"{started:%Y-%m-%d %H:%M} UTC, at {shell('git', 'rev-parse', '--short', 'HEAD')} "
        f"plus the uncommitted capture/atomic-output work of issue 13.",
        "",
        f"Each point runs `{cmd}` (ALL-NORMAL: every reason, PANIC_MCE included, "
        "-> normal) in an empty directory and SIGKILLs its process group at a time drawn "
        f"uniformly from (0, T), T = {duration:.2f} s, the duration of one uninterrupted run "
        f"({reference.removeprefix('slimdump: ')}; "
        f"{', '.join(f'{n} {human(s)}' for n, s in sizes.items())}; checks "
        f"{'passed' if not problems else 'FAILED: ' + '; '.join(problems)}). "
        "Then it checks what is on disk, runs the same capture again into that directory "
        "(with -f only if DST exists) and checks the result: see the script's docstring "
        "for the judges (makedumpfile --dump-dmesg, libkdumpfile on 256 sampled pages and "
        "the machine-check page, eu-readelf -n, slimdump inspect).",
        "",
        f"Load: before `{load_before}`; after `{load_after}` (2 CPUs, shared with other "
        "runs).",
        "",
        f"**{passed} of {len(trials) + 1} passed** (the uninterrupted run and "
        f"{len(trials)} kill points). Where the points fell: "
        + "; ".join(f"{n} {what}" for what, n in Counter(map(state, trials)).most_common())
        + ". Runs that finish before their kill time: T is one run's duration on a "
        "loaded machine and the later runs' durations vary; their DST is checked as "
        "complete and the next capture overwrites it with -f.",
        "",
        "| # | kill at (s) | capture | on disk after the kill | cleanup line of the next "
        "capture | next exit | left by the next capture | result |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *(row(i, t) for i, t in enumerate(trials, 1)),
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}: {passed} of {len(trials) + 1} passed", file=sys.stderr)
    return 0 if passed == len(trials) + 1 else 1


if __name__ == "__main__":
    os.environ.setdefault("SLIMDUMP_LAB_NO_BUILD", "1")
    sys.exit(main())
