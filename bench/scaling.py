#!/usr/bin/env python3
"""Benchmark: how capture time, output size and peak memory grow with the
crashed machine's memory, slimdump against makedumpfile, on the host.

For each saved sysrq vmcore (default the 768 MiB, 4 GiB and 12 GiB guests:
fixtures 6.1-sysrq, 6.1-sysrq-4g and 6.1-sysrq-12g; the lab builds a missing
one first, about 2 minutes for 4 GiB and 5 for 12 GiB) and each command,
pinned to one CPU (``taskset -c CPU``, as a capture kernel booted with
nr_cpus=1: slimdump then starts one worker thread, makedumpfile is
single-threaded anyway), it alternates

    slimdump capture --no-progress --no-triage -f OPTIONS SRC DST
    makedumpfile OPTIONS SRC DST

for OPTIONS ``-l -d 31``, ``-c -d 31`` and ``-c -d 0``, and a slim row:

* slimdump: ``capture --no-progress --no-triage -f --policy SLIM SRC DST``
  with SLIM a policy file mapping every reason code to ``slim``.  A sysrq
  crash is a software crash, which no policy can make slim (a slimdump needs
  a hardware reason; ``software = "slim"`` is refused), so this row reads a
  copy of the fixture marked with NT_NOCOREDUMP PANIC_MCE (``slimdump mark``,
  as a patched kernel leaves /proc/vmcore): the note gives the reason and
  nothing of memory is read;
* makedumpfile has no slim mode: ``makedumpfile --dump-dmesg SRC DST`` (the
  crashed kernel's log as text), the closest small output, on the same copy.

Slimdump runs as ``python -m slimdump`` with PYTHONPATH=src, byte-compiled.
Each command runs once as a warm-up (not counted: the page cache is warm
for every measured run; it cannot be dropped reliably here), then --runs
times (default 5), slimdump then makedumpfile.  Measured: wall time, output
bytes (every file written: DST, DST.dmesg.txt...) and peak RSS
(``/usr/bin/time -f %M``, wait4's ru_maxrss).  Outputs go to a directory on
disk (not tmpfs), deleted after each run.  Prints a markdown table (median
[min-max]) with the machine and the exact commands, and writes it to --out:

    .venv/bin/python bench/scaling.py [--runs 5] [--fixtures 6.1-sysrq,6.1-sysrq-4g,...]
        [--cpu 0] [--out bench/results/scaling.md]
"""

from __future__ import annotations

import argparse
import compileall
import dataclasses
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.lab import vmcorelab  # noqa: E402

FIXTURES = ("6.1-sysrq", "6.1-sysrq-4g", "6.1-sysrq-12g")
OPTION_SETS = ("-l -d 31", "-c -d 31", "-c -d 0")
SLIM = "slim"
SLIM_POLICY = "[actions]\n" + "".join(
    f'{code} = "slim"\n' for code in ("PANIC_MCE", "PANIC_GHES", "PANIC_NMI", "default"))
TIME = "/usr/bin/time"
TOOLS = ("slimdump", "makedumpfile")


@dataclasses.dataclass
class Run:
    seconds: float
    out_bytes: int
    maxrss_kib: int
    returncode: int
    stderr_tail: str


def fs_type(path: Path) -> str:
    """The file system type of the mount holding ``path`` (from /proc/mounts)."""
    best, kind = "", "?"
    real = os.path.realpath(path)
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            mnt = fields[1].replace("\\040", " ")
            inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) >= len(best):
                best, kind = mnt, fields[2]
    return kind


def command(tool: str, row: str, src: Path, dst: Path, policy: Path) -> list[str]:
    """The command line of ``tool`` for ``row`` (SLIM or an option set)."""
    if tool == "slimdump":
        opts = ["--policy", str(policy)] if row == SLIM else row.split()
        return [sys.executable, "-m", "slimdump", "capture", "--no-progress", "--no-triage",
                "-f", *opts, str(src), str(dst)]
    opts = ["--dump-dmesg"] if row == SLIM else row.split()
    return ["makedumpfile", *opts, str(src), str(dst)]


def measure(cmd: list[str], cpu: int, work: Path) -> Run:
    """Run ``cmd`` pinned to ``cpu`` in the empty directory ``work`` (its DST's
    directory); wall time, bytes written there, peak RSS.  Empties ``work``."""
    rss = work.parent / f"{work.name}.maxrss"
    err = work.parent / f"{work.name}.stderr"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with open(err, "wb") as errf:
        t0 = time.perf_counter()
        proc = subprocess.run(["taskset", "-c", str(cpu), TIME, "-f", "%M", "-o", str(rss),
                               *cmd], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=errf)
        seconds = time.perf_counter() - t0
    words = rss.read_text().split() if rss.is_file() else []
    out = sum(p.stat().st_size for p in work.iterdir())
    tail = " | ".join(err.read_text(errors="replace").strip().splitlines()[-2:])
    for path in (rss, err):
        path.unlink(missing_ok=True)
    for path in work.iterdir():
        path.unlink()
    peak = int(words[-1]) if words and words[-1].isdigit() else 0
    return Run(seconds, out, peak, proc.returncode, tail)


def marked_copy(src: Path, dst: Path) -> None:
    """A sparse copy of ``src`` with an NT_NOCOREDUMP PANIC_MCE note."""
    subprocess.run([sys.executable, "-m", "slimdump", "mark", "--no-progress", "-f",
                    "--reason", "PANIC_MCE", "--message", "Fatal local machine check",
                    str(src), str(dst)], cwd=ROOT, check=True, stderr=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def bench_fixture(name: str, args: argparse.Namespace, base: Path, policy: Path
                  ) -> dict[tuple[str, str], list[Run]]:
    """(row, tool) -> the measured runs of fixture ``name`` (warm-up first)."""
    src = vmcorelab.ensure(name)
    marked = base / f"{name}.marked"
    marked_copy(src, marked)
    work = base / "out"
    work.mkdir(exist_ok=True)
    rows = (SLIM, *OPTION_SETS)
    results: dict[tuple[str, str], list[Run]] = {}
    try:
        for i in range(args.runs + 1):   # run 0: the warm-up
            for row in rows:
                for tool in TOOLS:
                    cmd = command(tool, row, marked if row == SLIM else src, work / "dump",
                                  policy)
                    run = measure(cmd, args.cpu, work)
                    what = "warm-up" if i == 0 else f"run {i}"
                    print(f"{name} {what}: {tool} {row}: {run.seconds:.2f} s, "
                          f"{run.out_bytes} B, {run.maxrss_kib} KiB, exit {run.returncode}",
                          file=sys.stderr, flush=True)
                    if i:
                        results.setdefault((row, tool), []).append(run)
    finally:
        marked.unlink(missing_ok=True)
    return results


def spread(runs: list[Run]) -> str:
    """median [min–max] wall seconds; milliseconds shown below a second."""
    secs = [r.seconds for r in runs]
    f = ".3f" if max(secs) < 1 else ".2f"
    return f"{statistics.median(secs):{f}} [{min(secs):{f}}–{max(secs):{f}}]"


def size(n: int) -> str:
    if n < 1 << 20:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 2**20:.1f} MiB" if n < 1 << 30 else f"{n / 2**30:.2f} GiB"


def python() -> str:
    """This interpreter, relative to the repo when it is the repo's venv."""
    exe = Path(sys.executable)
    return str(exe.relative_to(ROOT)) if exe.is_relative_to(ROOT) else str(exe)


def machine() -> str:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return f"nproc {nproc}, CPU {model}, kernel {platform.release()}"


def report(args: argparse.Namespace, results: dict[str, dict[tuple[str, str], list[Run]]],
           workdir: Path, started: datetime.datetime, load: float) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    mdf = subprocess.run(["makedumpfile", "-v"], capture_output=True, text=True
                         ).stdout.splitlines()[0]
    lines = [
        "# Scaling with memory size: slimdump vs makedumpfile on saved vmcores", "",
        f"Date {started:%Y-%m-%d %H:%M} UTC, commit {commit}"
        f"{' + local changes' if dirty else ''}; {machine()}; load {load:.2f} at the start; "
        f"Python {platform.python_version()}; {mdf}.", "",
        f"Every command pinned to CPU {args.cpu} (`taskset -c {args.cpu}`); warm page cache "
        f"(one warm-up run of each command first, not counted); {args.runs} alternating "
        "run(s) (slimdump, then makedumpfile); wall seconds median [min–max]; ratio = "
        "slimdump median / makedumpfile median; peak RSS = the largest `/usr/bin/time -f %M` "
        f"of the runs; output = bytes written (last run); outputs on {fs_type(workdir)} "
        f"({workdir}), deleted after each run.", "",
        "Commands (SRC the fixture's vmcore; for `slim`, MARKED = SRC marked with "
        "NT_NOCOREDUMP PANIC_MCE by `slimdump mark`):", "",
        f"- slimdump: `PYTHONPATH=src {python()} -m slimdump capture "
        "--no-progress --no-triage -f OPTIONS SRC DST`",
        "- slimdump slim: `... capture --no-progress --no-triage -f --policy SLIM MARKED DST`, "
        "SLIM: " + ", ".join(f"`{ln}`" for ln in SLIM_POLICY.splitlines()[1:]),
        "- makedumpfile: `makedumpfile OPTIONS SRC DST`",
        "- makedumpfile for the slim row (it has no slim mode; closest small output): "
        "`makedumpfile --dump-dmesg MARKED DST`", "",
        "| memory | command | slimdump s | makedumpfile s | ratio | slimdump out | "
        "makedumpfile out | slimdump peak RSS | makedumpfile peak RSS |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    failures = []
    for name, rows in results.items():
        mem = vmcorelab.metadata(name)["mem_mib"]
        label = f"{mem / 1024:g} GiB ({name})"
        for row in (SLIM, *OPTION_SETS):
            ours, theirs = rows[(row, "slimdump")], rows[(row, "makedumpfile")]
            for tool, runs in (("slimdump", ours), ("makedumpfile", theirs)):
                failures += [f"- {name} {tool} {row}: exit {r.returncode}: {r.stderr_tail}"
                             for r in runs if r.returncode]
            ratio = (statistics.median(r.seconds for r in ours)
                     / statistics.median(r.seconds for r in theirs))
            cmd = "slim / mdf --dump-dmesg" if row == SLIM else f"`{row}`"
            lines.append(
                f"| {label} | {cmd} | {spread(ours)} | {spread(theirs)} | {ratio:.2f}x | "
                f"{size(ours[-1].out_bytes)} | {size(theirs[-1].out_bytes)} | "
                f"{size(1024 * max(r.maxrss_kib for r in ours))} | "
                f"{size(1024 * max(r.maxrss_kib for r in theirs))} |")
    if failures:
        lines += ["", "Failed runs (exit status, end of stderr):", "", *failures]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixtures", default=",".join(FIXTURES), metavar="NAMES",
                        help=f"comma-separated lab fixtures (default {','.join(FIXTURES)})")
    parser.add_argument("--runs", type=int, default=5, help="measured runs (default 5)")
    parser.add_argument("--cpu", type=int, default=0, help="the CPU to pin to (default 0)")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"),
                        help="where outputs are written, on disk (default /var/tmp)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scaling.md",
                        metavar="FILE", help="markdown report (default bench/results/scaling.md)")
    args = parser.parse_args()
    names = [n for n in args.fixtures.split(",") if n]
    if args.runs < 1 or not names:
        parser.error("--runs must be at least 1 and --fixtures name at least one fixture")
    for tool in ("makedumpfile", "taskset", TIME):
        if shutil.which(tool) is None:
            sys.exit(f"bench: {tool} is not installed")
    if fs_type(args.workdir) in ("tmpfs", "ramfs"):
        sys.exit(f"bench: {args.workdir} is a {fs_type(args.workdir)}; give --workdir on disk")
    for name in names:
        if name not in vmcorelab.FIXTURES:
            sys.exit(f"bench: unknown fixture {name}")
    compileall.compile_dir(ROOT / "src" / "slimdump", quiet=1)   # as installed
    started = datetime.datetime.now(datetime.UTC)
    load = os.getloadavg()[0]
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-scaling-", dir=args.workdir) as tmp:
        base = Path(tmp)
        policy = base / "slim.toml"
        policy.write_text(SLIM_POLICY)
        for name in names:
            results[name] = bench_fixture(name, args, base, policy)
    text = report(args, results, args.workdir, started, load)
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
