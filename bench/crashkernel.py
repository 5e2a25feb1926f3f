#!/usr/bin/env python3
"""Benchmark: the smallest crashkernel= at which a collector still completes.

Each trial crashes Debian's 6.1 kernel in QEMU (tests/lab/vmcorelab.py
``run_collector``: TCG, 2 CPUs, the capture kernel booted with nr_cpus=1 from
the lab's busybox initramfs, chrooted into the host's / over 9p) with
``crashkernel=<N>M`` and runs one command on /proc/vmcore in the capture
kernel.  A trial *completes* when the command exits 0 there and its output
is valid on the host: ``eu-readelf -n`` reads the notes of a slimdump,
``makedumpfile --dump-dmesg`` reads the log out of a kdump-compressed dump.

Cases:

  floor       ``true`` (768 MiB guest, sysrq): what the kernel and initramfs
              need before any collector runs
  slim-mce    ``python -m slimdump capture {vmcore} {out}/dump`` (768 MiB, mce):
              the default policy writes a slimdump
  mdf-mce     ``makedumpfile -c -d 31 {vmcore} {out}/dump`` (768 MiB, mce)
  slim-4g     ``python -m slimdump capture -c -d 31 ...`` (4 GiB, sysrq: a
              software crash, so the default policy writes the filtered dump)
  mdf-4g      ``makedumpfile -c -d 31 ...`` (4 GiB, sysrq)
  floor-4g    ``true`` (4 GiB, sysrq)

For each case N is bisected to --step MiB: --hi must complete (else the
case stops there); the lower end is --lo, or for a collector the largest N
at which its floor case failed, and while it completes it is halved.  The
smallest N found is then run once more (--confirm) and raised by a step
while that fails.  The figure reported is the smallest N at which every
trial completed, and every trial at every larger N tried (near the edge a
trial is not deterministic; the run a step below failed once).  Every
trial is kept in --state (JSON, so a rerun resumes; --fresh starts over)
and its console log, the command's output and a one-line diagnosis (OOM
killer, a panic, no capture kernel) under --logs.  Trials run one at a
time; a 768 MiB trial takes 1-2 minutes under TCG on two busy cores, a
4 GiB one 2-5.

    .venv/bin/python bench/crashkernel.py [--cases floor,slim-mce,...]
        [--lo 64] [--hi 256] [--step 8]
"""

from __future__ import annotations

import argparse
import compileall
import dataclasses
import datetime
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.lab import vmcorelab  # noqa: E402

SLIM = ["python", "-m", "slimdump", "capture", "--no-progress"]
MDF = ["makedumpfile"]


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    mode: str
    mem_mib: int
    command: tuple[str, ...]    # {vmcore}, {out}: as run_collector
    check: str                  # "none", "elf-notes" or "dump-dmesg"
    floor: str | None = None    # the case whose failures bound this one from below
    timeout_s: int = 600


CASES: dict[str, Case] = {c.name: c for c in (
    Case("floor", "sysrq", 768, ("true",), "none"),
    Case("slim-mce", "mce", 768, (*SLIM, "{vmcore}", "{out}/dump"), "elf-notes", "floor"),
    Case("mdf-mce", "mce", 768, (*MDF, "-c", "-d", "31", "{vmcore}", "{out}/dump"),
         "dump-dmesg", "floor"),
    Case("floor-4g", "sysrq", 4096, ("true",), "none", timeout_s=900),
    Case("slim-4g", "sysrq", 4096, (*SLIM, "-c", "-d", "31", "{vmcore}", "{out}/dump"),
         "dump-dmesg", "floor-4g", timeout_s=1200),
    Case("mdf-4g", "sysrq", 4096, (*MDF, "-c", "-d", "31", "{vmcore}", "{out}/dump"),
         "dump-dmesg", "floor-4g", timeout_s=1200),
)}
DEFAULT_CASES = ("floor", "slim-mce", "mdf-mce", "slim-4g", "mdf-4g", "floor-4g")


# -- one trial -------------------------------------------------------------------------


def wrapped(command: tuple[str, ...]) -> list[str]:
    """The command, after /proc/meminfo's totals are written to {out}/meminfo
    and the capture kernel's boot lines about its memory to
    {out}/boot-memory (processes that exit before the command starts)."""
    import shlex

    quoted = " ".join(shlex.quote(c) for c in command)
    return ["sh", "-c", "grep -E '^(MemTotal|MemFree|MemAvailable):' /proc/meminfo "
            "| tr -s ' \\n' ' ' > {out}/meminfo; dmesg | grep -E 'Memory: |Freeing' "
            "> {out}/boot-memory; exec " + quoted]


def capture_part(console: str, mode: str) -> str:
    """The capture kernel's part of the console: after the first kernel's
    last marker and its panic message, when it printed one (a machine check
    often panics without the line reaching the serial console)."""
    at = console.find("LAB-CRASH-NOTES-SIZE")
    if at < 0:
        return ""
    rest = console[at:]
    first = re.search(r"Kernel panic - not syncing: "
                      + re.escape(vmcorelab.MODES[mode].panic_contains) + r"[^\n]*\n", rest)
    return rest[first.end():] if first else rest


def diagnose(console: str, stderr: str, rc: int | None, error: str | None, mode: str) -> str:
    """One line: why a trial did not complete."""
    cap = capture_part(console, mode)
    facts = []
    if "LAB-KEXEC-LOADED 1" not in console:
        facts.append("kexec -p could not load the capture kernel"
                     if "LAB-KEXEC" in console else "the first kernel did not get to kexec")
    oom = re.findall(r"Out of memory: Killed process \d+ \(([^)]*)\)", cap)
    if oom:
        facts.append("OOM killer killed " + ", ".join(dict.fromkeys(oom)))
    if re.search(r"Out of memory and no killable processes", cap):
        facts.append("out of memory and no killable processes")
    panics = re.findall(r"Kernel panic - not syncing: ([^\r\n]*)", cap)
    if panics:
        facts.append(f"capture kernel panic: {panics[0].strip()}")
    if cap and "LAB-COLLECT:" not in cap and not panics:
        facts.append("the capture kernel never reached its init")
    if "LAB-COLLECT-START" in cap and "LAB-COLLECT-EXIT" not in cap and not panics:
        facts.append("the command did not return")
    if rc not in (None, 0):
        tail = [ln for ln in stderr.splitlines() if ln.strip()]
        facts.append(f"command exit {rc}" + (f" ({tail[-1].strip()[:120]})" if tail else ""))
    if error and not facts:
        facts.append(error)
    return "; ".join(facts)


def check_output(case: Case, outdir: Path) -> str | None:
    """None if the output is valid on the host, else what is wrong."""
    dump = outdir / "dump"
    if case.check == "none":
        return None
    if not dump.is_file():
        return "no dump"
    if case.check == "elf-notes":
        res = subprocess.run(["eu-readelf", "-n", str(dump)], capture_output=True, text=True)
        ok = res.returncode == 0 and "VMCOREINFO" in res.stdout and "CORE" in res.stdout
        return None if ok else f"eu-readelf -n: exit {res.returncode} {res.stderr[-200:]}"
    text = outdir / "dmesg.txt"
    text.unlink(missing_ok=True)
    res = subprocess.run(["makedumpfile", "--dump-dmesg", str(dump), str(text)],
                         capture_output=True, text=True)
    ok = res.returncode == 0 and text.is_file() and b"Kernel panic" in text.read_bytes()
    return None if ok else f"makedumpfile --dump-dmesg: exit {res.returncode}"


def trial(case: Case, mib: int, logs: Path) -> dict[str, Any]:
    n = 1
    while (logs / f"{case.name}-{mib}M-{n}").exists():
        n += 1
    outdir = logs / f"{case.name}-{mib}M-{n}"
    outdir.mkdir(parents=True)
    t0 = time.monotonic()
    rc: int | None = None
    error: str | None = None
    try:
        result = vmcorelab.run_collector(
            "6.1", case.mode, wrapped(case.command), outdir, mem_mib=case.mem_mib,
            crashkernel_mib=mib, timeout_s=case.timeout_s,
            log=lambda m: print(f"  [{case.name} {mib}M] {m}", file=sys.stderr, flush=True))
        rc = result.returncode
    except vmcorelab.LabError as exc:
        error = str(exc)
    seconds = time.monotonic() - t0
    console_path = outdir / vmcorelab.COLLECT_CONSOLE
    console = console_path.read_text(errors="replace") if console_path.is_file() else ""
    stderr_path = outdir / vmcorelab.COLLECT_STDERR
    stderr = stderr_path.read_text(errors="replace") if stderr_path.is_file() else ""
    bad = check_output(case, outdir) if rc == 0 else None
    completed = rc == 0 and bad is None
    why = "completed" if completed else (diagnose(console, stderr, rc, error, case.mode)
                                          or bad or "?")
    if rc == 0 and bad:
        why = f"exit 0 but invalid: {bad}"
    meminfo = outdir / "meminfo"
    free = re.findall(r"MemFree:\s+(\d+) kB", capture_part(console, case.mode))
    record = {
        "case": case.name, "mib": mib, "completed": completed, "why": why, "exit": rc,
        "error": error, "seconds": round(seconds, 1),
        "meminfo": meminfo.read_text().strip() if meminfo.is_file() else None,
        "boot_memory": ((outdir / "boot-memory").read_text().strip()
                        if (outdir / "boot-memory").is_file() else None),
        "memfree_kib_before_after": [int(x) for x in free],
        "dump_bytes": (outdir / "dump").stat().st_size if (outdir / "dump").is_file() else None,
        "logs": str(outdir),
        "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    (outdir / "diagnosis.txt").write_text(why + "\n")
    (outdir / "dump").unlink(missing_ok=True)
    (outdir / "dmesg.txt").unlink(missing_ok=True)
    print(f"{case.name} crashkernel={mib}M: {why} ({seconds:.0f} s)", file=sys.stderr,
          flush=True)
    return record


# -- bisection -------------------------------------------------------------------------


class State:
    """Every trial so far, in a JSON file (appended as trials finish)."""

    def __init__(self, path: Path, fresh: bool) -> None:
        self.path = path
        self.trials: list[dict[str, Any]] = []
        if path.is_file() and not fresh:
            self.trials = json.loads(path.read_text())

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.trials, indent=1) + "\n")
        tmp.replace(self.path)

    def of(self, case: str, mib: int) -> list[dict[str, Any]]:
        return [t for t in self.trials if t["case"] == case and t["mib"] == mib]

    def run(self, case: Case, mib: int, logs: Path, *, again: bool = False) -> bool:
        """Did ``case`` complete at ``mib``?  Reuses the state unless ``again``
        asks for one trial more than there is."""
        done = self.of(case.name, mib)
        if done and not again:
            return all(t["completed"] for t in done)
        if again and len(done) >= 2:
            return all(t["completed"] for t in done)
        self.trials.append(trial(case, mib, logs))
        self.save()
        return all(t["completed"] for t in self.of(case.name, mib))


def rediagnose(state: State) -> None:
    """Diagnose the failed trials again from their kept logs (the rules may
    have changed since they ran)."""
    for t in state.trials:
        logs = Path(t.get("logs", ""))
        console = logs / vmcorelab.COLLECT_CONSOLE
        if t["completed"] or not console.is_file() or t["why"].startswith("exit 0 but"):
            continue
        stderr = logs / vmcorelab.COLLECT_STDERR
        t["why"] = diagnose(console.read_text(errors="replace"),
                            stderr.read_text(errors="replace") if stderr.is_file() else "",
                            t["exit"], t["error"], CASES[t["case"]].mode) or t["why"]


def failed_below(state: State, case: str) -> int | None:
    fails = [t["mib"] for t in state.trials if t["case"] == case and not t["completed"]]
    return max(fails) if fails else None


def smallest(state: State, name: str) -> int | None:
    """The smallest N at which every trial of ``name`` completed, and at every
    larger N tried too."""
    trials = [t for t in state.trials if t["case"] == name]
    best = None
    for mib in sorted({t["mib"] for t in trials}, reverse=True):
        if not all(t["completed"] for t in trials if t["mib"] == mib):
            break
        best = mib
    return best


def bisect(case: Case, state: State, logs: Path, lo: int, hi: int, step: int,
           confirm: bool) -> None:
    """Trials until the smallest multiple of ``step`` that completes is known
    (between a failure and ``hi``); nothing more if ``hi`` does not complete."""
    if not state.run(case, hi, logs):
        return
    if case.floor is not None:
        below = failed_below(state, case.floor)
        if below is not None and below > lo:
            lo = below          # the kernel itself did not come up there
    while lo >= step and state.run(case, lo, logs):     # lo completes: look lower
        hi, lo = lo, lo // 2 // step * step
    while hi - lo > step:
        mid = max((lo + hi) // 2 // step * step, lo + step)
        if state.run(case, mid, logs):
            hi = mid
        else:
            lo = mid
    if confirm:
        while not state.run(case, hi, logs, again=True):
            hi += step
            state.run(case, hi, logs)


# -- report ----------------------------------------------------------------------------


def below_text(fails: list[dict[str, Any]], mib: int) -> str:
    """What the failures at ``mib`` looked like: each diagnosis, with a count."""
    whys = [t["why"].replace("|", "/") for t in fails if t["mib"] == mib]
    return "; ".join(f"{why}" + (f" (x{whys.count(why)})" if whys.count(why) > 1 else "")
                     for why in dict.fromkeys(whys))


def table(state: State, names: list[str]) -> str:
    rows = ["| case | guest, crash | command in the capture kernel | smallest crashkernel "
            "completed | largest failed | below it | capture kernel at the smallest "
            "(/proc/meminfo before the command, kB) | trials (MiB: result, s) |",
            "| --- | --- | --- | ---: | ---: | --- | --- | --- |"]
    for name in names:
        case = CASES[name]
        trials = sorted((t for t in state.trials if t["case"] == name),
                        key=lambda t: (t["mib"], t["at"]))
        best = smallest(state, name)
        fails = [t for t in trials if not t["completed"] and (best is None or t["mib"] < best)]
        worst = max(fails, key=lambda t: t["mib"]) if fails else None
        at_best = [t for t in trials if t["mib"] == best and t["completed"]]
        runs = ", ".join(f"{t['mib']}: {'ok' if t['completed'] else 'fail'} "
                         f"{t['seconds']:.0f}" for t in trials)
        cmd = " ".join(case.command).replace("--no-progress ", "")
        rows.append(
            f"| {name} | {case.mem_mib} MiB, {case.mode} | `{cmd}` | "
            f"{f'{best}M' if best else 'none'} | "
            f"{str(worst['mib']) + 'M' if worst else '-'} | "
            f"{below_text(fails, worst['mib']) if worst else '-'} | "
            f"{at_best[0]['meminfo'] if at_best and at_best[0]['meminfo'] else '-'} | {runs} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES))
    parser.add_argument("--lo", type=int, default=64, help="MiB assumed to fail (default 64)")
    parser.add_argument("--hi", type=int, default=256, help="MiB that must complete")
    parser.add_argument("--step", type=int, default=8, help="resolution in MiB")
    parser.add_argument("--no-confirm", dest="confirm", action="store_false")
    parser.add_argument("--state", type=Path,
                        default=vmcorelab.cache_dir() / "bench-crashkernel" / "trials.json")
    parser.add_argument("--logs", type=Path,
                        default=vmcorelab.cache_dir() / "bench-crashkernel")
    parser.add_argument("--fresh", action="store_true", help="forget earlier trials")
    parser.add_argument("--report", action="store_true", help="only print the table")
    parser.add_argument("--extra", default="", metavar="CASE:MIB,...",
                        help="one more trial of each, before the table (the edge is noisy)")
    args = parser.parse_args()
    names = [n for n in args.cases.split(",") if n]
    for n in names:
        if n not in CASES:
            sys.exit(f"bench: unknown case {n}; known: {', '.join(CASES)}")
    state = State(args.state, args.fresh)
    if not args.report:
        missing = vmcorelab.have_tools()
        if missing:
            sys.exit(f"bench: missing host tools {', '.join(missing)}")
        compileall.compile_dir(ROOT / "src" / "slimdump", quiet=1)   # as installed
        # floors first: they bound the collectors from below
        for name in sorted(names, key=lambda n: CASES[n].floor is not None):
            bisect(CASES[name], state, args.logs, args.lo, args.hi, args.step, args.confirm)
    for item in filter(None, args.extra.split(",")):
        name, mib = item.split(":")
        state.trials.append(trial(CASES[name], int(mib), args.logs))
        state.save()
    rediagnose(state)
    print(table(state, names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
