#!/usr/bin/env python3
"""Benchmark: what the triage slimdump costs a normal capture.

``taskset -c 0 slimdump capture --policy ALL-NORMAL -c -d 31 SRC DST`` (one
CPU, as the capture kernel's default) with and without ``--no-triage``,
alternating (the order flips every round), after one warm-up run of each so
that SRC is in the page cache.  SRC: the 4 GiB machine-check fixture
6.1-mce-4g (no note: capture reads the log to classify the crash anyway),
and a copy marked with an NT_NOCOREDUMP PANIC_MCE note (``slimdump mark``,
as a patched kernel leaves it: the log is read only for the triage);
ALL-NORMAL maps every reason to the normal dump.  For each variant: wall
time and CPU time (user + sys of the process, from getrusage),
median/min/max, the bytes read from SRC (the summary line's "read X of
SRC") and the files written.  Then the triage step alone, in this process:
the bytes the decision reads with and without the log, and the time of
``write_triage`` (write, fsync, rename, directory fsync).  Writes a
markdown table:

    .venv/bin/python bench/triage_cost.py [--runs 7] [--fixture NAME]
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.conftest import real_vmcore  # noqa: E402
from tests.test_kill import human, listing, write_policy  # noqa: E402

READ = re.compile(r"; read (\S+ \S+) of ")
VARIANTS = {"with triage": (), "--no-triage": ("--no-triage",)}


def shell(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT).stdout.strip()


def one_run(cmd: list[str], directory: Path) -> dict[str, object]:
    """Run ``cmd`` (writing into the empty ``directory``): wall and CPU time,
    what it says it read, the files it left."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr}")
    read = READ.search(proc.stderr)
    files = listing(directory)
    for name in files:
        (directory / name).unlink()
    return {"wall": wall, "cpu": (after.ru_utime - before.ru_utime)
            + (after.ru_stime - before.ru_stime),
            "read": read.group(1) if read else "?", "files": files,
            "summary": proc.stderr.strip().splitlines()}


def spread(values: list[float], unit: float = 1.0, fmt: str = ".2f") -> str:
    v = [x * unit for x in values]
    return f"{statistics.median(v):{fmt}} ({min(v):{fmt}}-{max(v):{fmt}})"


def triage_step(src: Path, policy: Path, work: Path, reps: int) -> str:
    """The triage step alone, in this process: a table row."""
    from slimdump.capture import decide_safely
    from slimdump.capture.small import write_triage
    from slimdump.policy import Policy
    from slimdump.sources import open_dump

    loaded = Policy.load(str(policy))
    reads = {}
    for want_log in (False, True):
        with open_dump(str(src)) as source:
            decision = decide_safely(source, loaded, want_log=want_log)
            reads[want_log] = source.bytes_read
            if not want_log:
                continue
            times, extra = [], 0
            for _ in range(reps):
                before, start = source.bytes_read, time.perf_counter()
                size = write_triage(source, decision, str(work / "t.triage"), str(work / "t"))
                times.append(time.perf_counter() - start)
                extra += source.bytes_read - before
            (work / "t.triage").unlink()
    return (f"| {src.name} | {reads[False]} | {reads[True]} | {reps} | "
            f"{spread(times, 1000, '.1f')} | {extra} | {size} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--fixture", default="6.1-mce-4g")
    ap.add_argument("--level", default="31")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "triage_cost.md")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="triage_cost.", dir="/var/tmp"))
    policy = write_policy(work / "policy.toml")
    out = work / "out"
    out.mkdir()
    plain = real_vmcore(args.fixture)
    marked = work / f"{args.fixture}.marked"
    subprocess.run([sys.executable, "-m", "slimdump", "mark", "--no-progress", str(plain),
                    str(marked), "--reason", "PANIC_MCE", "--message",
                    "Fatal local machine check"], check=True, capture_output=True)
    sources = {f"{plain.name} (no note)": plain, f"{marked.name} (NT_NOCOREDUMP note)": marked}

    def cmd(src: Path, extra: tuple[str, ...]) -> list[str]:
        return ["taskset", "-c", "0", sys.executable, "-m", "slimdump", "capture",
                "--no-progress", "--policy", str(policy), *extra, "-c", "-d", args.level,
                str(src), str(out / "dump")]

    started = datetime.datetime.now(datetime.UTC)
    load_before = shell("uptime")
    cases = [(s, v) for s in sources for v in VARIANTS]
    for s, v in cases:                       # warm-up: SRC into the page cache
        one_run(cmd(sources[s], VARIANTS[v]), out)
    results: dict[tuple[str, str], list[dict[str, object]]] = {c: [] for c in cases}
    for i in range(args.runs):
        for s in sources:
            order = list(VARIANTS) if i % 2 == 0 else list(reversed(VARIANTS))
            for v in order:
                r = one_run(cmd(sources[s], VARIANTS[v]), out)
                results[s, v].append(r)
                print(f"{i} {s} {v}: {r['wall']:.2f} s wall, {r['cpu']:.2f} s CPU",
                      file=sys.stderr)
    load_mid = shell("uptime")
    steps = [triage_step(src, policy, work, 20) for src in sources.values()]
    load_after = shell("uptime")
    summary = results[next(iter(sources)), "with triage"][-1]["summary"]
    shutil.rmtree(work)

    rows, verdicts = [], []
    for s in sources:
        walls = {v: [float(r["wall"]) for r in results[s, v]] for v in VARIANTS}
        cpus = {v: [float(r["cpu"]) for r in results[s, v]] for v in VARIANTS}
        for v in VARIANTS:
            rs = results[s, v]
            reads = ", ".join(sorted({str(r["read"]) for r in rs}))
            files = ", ".join(f"`{n}` {human(z)}" for n, z in rs[-1]["files"].items())  # type: ignore[union-attr]
            rows.append(f"| {s} | {v} | {len(rs)} | {spread(walls[v])} | {spread(cpus[v])} | "
                        f"{reads} | {files} |")
        d_wall = statistics.median(walls["with triage"]) - statistics.median(walls["--no-triage"])
        d_cpu = statistics.median(cpus["with triage"]) - statistics.median(cpus["--no-triage"])
        noise = max(max(w) - min(w) for w in walls.values())
        widest = max((max(w) - min(w)) / statistics.median(w) for w in walls.values())
        verdicts.append(
            f"* {s}: with triage minus without, medians: {d_wall:+.2f} s wall, "
            f"{d_cpu:+.2f} s CPU; "
            + (f"smaller than the spread of the wall times (up to {noise:.2f} s, "
               f"{widest:.0%} of a median): lost in this machine's noise, not measured "
               "end to end." if abs(d_wall) < noise else
               f"the wall times spread up to {noise:.2f} s ({widest:.0%} of a median)."))
    lines = [
        "# The triage slimdump's cost on a 4 GiB capture",
        "",
        f"Command: `.venv/bin/python bench/triage_cost.py --runs {args.runs} --fixture "
        f"{args.fixture}`, {started:%Y-%m-%d %H:%M} UTC, at "
        f"{shell('git', 'rev-parse', '--short', 'HEAD')} plus the uncommitted "
        "capture work of issue 13.",
        "",
        f"Each run: `taskset -c 0 slimdump capture --no-progress --policy ALL-NORMAL "
        f"[--no-triage] -c -d {args.level} SRC DST` (ALL-NORMAL: every reason, "
        "PANIC_MCE included, -> normal; one CPU as in the capture kernel, so one "
        "worker thread), Python start-up included, SRC in the page cache (one warm-up "
        "run of each first), the two variants alternating and their order flipped every "
        "round. SRC: the fixture (no note: the log is read to classify the crash "
        "anyway) and a copy marked with an NT_NOCOREDUMP PANIC_MCE note by "
        "`slimdump mark` (the log is read only for the triage). Wall time, and CPU "
        "time (user + sys from getrusage, less sensitive to the other load): "
        "median (min-max), seconds.",
        "",
        "| SRC | variant | runs | wall (s) | CPU (s) | read from SRC | files written |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        *verdicts,
        "",
        "The triage step alone, in one Python process (`decide_safely` with and without "
        "`want_log`, then `write_triage` to /var/tmp: write, fsync, rename, directory "
        "fsync), after the runs above:",
        "",
        "| SRC | bytes read deciding, no log wanted | with the log | write_triage runs "
        "| write_triage (ms) | bytes it read | triage bytes |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *steps,
        "",
        f"Load: before `{load_before}`; after the runs `{load_mid}`; at the end "
        f"`{load_after}`. The machine has 2 CPUs shared with other helpers' runs, QEMU "
        "fixture builds and a CI run, so the wall times carry their noise; CPU 0 was "
        "not reserved.",
        "",
        "Summary lines of the last run with triage (fixture):",
        "",
        *(f"    {line}".replace(str(work), "$WORK") for line in summary),  # type: ignore[union-attr]
        "",
    ]
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("SLIMDUMP_LAB_NO_BUILD", "1")
    sys.exit(main())
