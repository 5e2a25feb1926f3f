#!/usr/bin/env python3
"""Benchmark: peak resident memory of a capture, on the host.

A capture kernel has a few tens of MiB to spare; the target is that a
capture stays under 128 MiB whatever the dump's memory map.  Each case runs
as its own process, under ``/usr/bin/time -f %M`` (the kernel's high-water
mark of its resident set, wait4's ru_maxrss, as ``/usr/bin/time -v``
"Maximum resident set size"), in an empty directory on the disk (large page
bitmaps go beside the output); /proc/PID/status is sampled every 10 ms for
the anonymous part (RssAnon: what the process allocated, as opposed to its
mapped program and libraries; a sample can miss a short peak).  Dumps of
the real kernel are checked with ``makedumpfile --dump-dmesg DUMP NEWFILE``
(it refuses an existing file, /dev/null too); the others are not (their
bitmaps span 2^38 pfns, 64 GiB apparent, which makedumpfile reads for tens
of minutes).

Cases (``--policy NORMAL``: a policy file mapping every reason to a normal
dump, since the default policy saves a machine check as a slimdump):

* real: the 4 GiB machine-check fixture 6.1-mce-4g: slimdump capture with
  the default policy (a slimdump), and with NORMAL -c -d 31 (also with one
  thread, as in a capture kernel booted with nr_cpus=1), -c -d 0 (also with
  --num-threads 64), -E -d 31 (also believing it has 8 CPUs: the -E writer
  takes one thread per usable CPU and has no --num-threads); makedumpfile
  -c -d 31 and -c -d 0;
* synthetic: a tests/synthcore.py core whose memory map reaches 2^50, 4 MiB
  PT_LOADs at 1 MiB, 16 TiB and 2^50 - 4 MiB, with synthcore's minimal
  VMCOREINFO (pages cannot be classified: every page is kept);
* far: the 768 MiB 6.1-mce fixture with two 4 MiB PT_LOADs appended, at
  16 TiB and at 2^50 (real VMCOREINFO: pages classified; the far pages have
  no struct page);
* random: a synthcore core of 512 MiB of random bytes (incompressible:
  every compressed page is stored whole), -c -d 0 with 1 to 64 threads and
  -E -d 0 believing it has 1 to 32 CPUs.

``--trace NAME`` also runs case NAME's slimdump command in-process under
tracemalloc and prints the 15 largest Python allocation sites at its
highest traced point.  Writes a markdown table on stdout:

    .venv/bin/python bench/rss.py [--runs 3] [--trace far-slim-c31]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests import synthcore as sc  # noqa: E402
from tests.lab import vmcorelab  # noqa: E402

MiB = 1 << 20
PY = sys.executable
TIME = "/usr/bin/time"
NORMAL_POLICY = '[actions]\nPANIC_MCE = "normal"\nPANIC_GHES = "normal"\nPANIC_NMI = "normal"\n'
TARGET_MIB = 128


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    group: str        # real, synthetic, far or random
    tool: str         # slimdump or makedumpfile
    args: tuple[str, ...]   # SRC and DST are appended ({split}: two DSTs)
    check: bool = True      # makedumpfile --dump-dmesg DUMP NEWFILE must pass
    split: bool = False
    cpus: int = 0           # >0: slimdump believes it may run on this many CPUs


SLIM = ("capture", "--no-progress")
POL = ("--policy", "{policy}")

# slimdump with slimdump.threadpool.usable_cpus() answering N (the -E writer
# has no --num-threads: it takes one thread per usable CPU; this host has 2)
CPU_SHIM = ("import sys, slimdump.threadpool as t; n = int(sys.argv.pop(1)); "
            "t.usable_cpus = lambda: n; from slimdump.cli import main; sys.exit(main())")


def cases() -> list[Case]:
    def slim(name: str, group: str, *args: str, check: bool = False, **kw: object) -> Case:
        return Case(f"{group}-slim-{name}", group, "slimdump", (*SLIM, *args), check, **kw)

    def mdf(name: str, group: str, *args: str, check: bool = False) -> Case:
        return Case(f"{group}-mdf-{name}", group, "makedumpfile", args, check)

    real, syn, far, rnd = "real", "synthetic", "far", "random"
    return [
        slim("default", real),
        slim("c31", real, *POL, "-c", "-d", "31", check=True),
        slim("c31-threads1", real, *POL, "-c", "-d", "31", "--num-threads", "1", check=True),
        slim("c0", real, *POL, "-c", "-d", "0", check=True),
        slim("c0-threads64", real, *POL, "-c", "-d", "0", "--num-threads", "64", check=True),
        slim("E31", real, *POL, "-E", "-d", "31"),
        slim("E31-cpus8", real, *POL, "-E", "-d", "31", cpus=8),
        mdf("c31", real, "-c", "-d", "31", check=True),
        mdf("c0", real, "-c", "-d", "0", check=True),
        slim("c31", syn, "-c", "-d", "31"),
        slim("c0", syn, "-c", "-d", "0"),
        slim("E31", syn, "-E", "-d", "31"),
        slim("l-split", syn, "-l", "--split", split=True),
        mdf("c31", syn, "-c", "-d", "31"),
        slim("c31", far, *POL, "-c", "-d", "31"),
        slim("c0", far, *POL, "-c", "-d", "0"),
        slim("E31", far, *POL, "-E", "-d", "31"),
        mdf("c31", far, "-c", "-d", "31"),
        *(slim(f"c0-threads{n}", rnd, "-c", "-d", "0", "--num-threads", str(n))
          for n in (1, 8, 32, 64)),
        *(slim(f"E0-cpus{n}", rnd, "-E", "-d", "0", cpus=n) for n in (1, 8, 32)),
    ]


# -- inputs --------------------------------------------------------------------------


def synthetic_core(path: Path) -> None:
    """4 MiB at 1 MiB, 16 TiB and 2^50 - 4 MiB; one CPU; synthcore's VMCOREINFO."""
    notes = [sc.Note(b"CORE", sc.NT_PRSTATUS, sc.prstatus_x86_64(0, sc.sample_regs_x86_64(0))),
             sc.Note(b"VMCOREINFO", 0, sc.vmcoreinfo(sc.SAMPLE_VMCOREINFO))]
    addrs = (0x100000, 16 << 40, (1 << 50) - 4 * MiB)
    loads = [sc.Load(a, 0xFF11000000000000 + a, sc.tagged_bytes(b"RAM:", a, 4 * MiB))
             for a in addrs]
    path.write_bytes(sc.build_core(notes, loads))


def random_core(path: Path, size: int = 512 * MiB) -> None:
    """``size`` bytes of random (incompressible) pages at 1 MiB; synthcore's VMCOREINFO."""
    notes = [sc.Note(b"CORE", sc.NT_PRSTATUS, sc.prstatus_x86_64(0, sc.sample_regs_x86_64(0))),
             sc.Note(b"VMCOREINFO", 0, sc.vmcoreinfo(sc.SAMPLE_VMCOREINFO))]
    path.write_bytes(sc.build_core(notes, [sc.Load(0x100000, 0xFF11000000100000,
                                                   os.urandom(size))]))


def far_core(src: Path, path: Path, addrs: tuple[int, ...] = (16 << 40, 1 << 50)) -> None:
    """A sparse copy of the ELF vmcore ``src`` with one 4 MiB PT_LOAD more at
    each of ``addrs`` (data appended at the end, vaddr in the direct map)."""
    subprocess.run(["cp", "--sparse=always", src, path], check=True)
    with open(path, "r+b") as f:
        eh = bytearray(f.read(64))
        (phoff,) = struct.unpack_from("<Q", eh, 32)
        phentsize, phnum = struct.unpack_from("<HH", eh, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
        phs = [struct.unpack_from("<IIQQQQQQ", table, i * phentsize) for i in range(phnum)]
        if phoff + phentsize * (phnum + len(addrs)) > min(p[2] for p in phs):
            sys.exit(f"bench: no room for more program headers in {src}")
        (ram,) = [p for p in phs if p[0] == 1 and p[4] == 0x100000]   # paddr 1 MiB
        direct_map = ram[3] - ram[4]
        end = (f.seek(0, os.SEEK_END) + 4095) & ~4095
        new = []
        for i, addr in enumerate(addrs):
            offset = end + i * 4 * MiB
            f.seek(offset)
            f.write(bytes(range(256)) * (4 * MiB // 256))
            new.append(struct.pack("<IIQQQQQQ", 1, 7, offset, direct_map + addr, addr,
                                   4 * MiB, 4 * MiB, 0))
        f.seek(phoff + phentsize * phnum)
        f.write(b"".join(new))
        struct.pack_into("<H", eh, 56, phnum + len(addrs))
        f.seek(0)
        f.write(eh)


# -- measuring -----------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    maxrss_kib: int
    anon_kib: int       # highest RssAnon seen by the 10 ms sampler
    seconds: float
    returncode: int
    out_bytes: int      # apparent size of the output(s)
    out_disk: int       # blocks on disk
    checked: str        # "ok", "-" (not checked) or what failed
    note: str           # the tool's last stderr line (its summary or error)


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _child(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = f.read().split()
    except OSError:
        return 0
    return int(kids[0]) if kids else 0


def measure(cmd: list[str], cwd: Path, timeout: float) -> tuple[int, int, float, int, str]:
    """(peak RSS KiB, highest RssAnon KiB, seconds, exit status, stderr).

    The peak is /usr/bin/time's %M (its wait4 ru_maxrss of the command): a
    child forked straight from this process would inherit this process's
    own high-water mark through exec, /usr/bin/time's child does not."""
    err, rss = cwd / "stderr", cwd / "maxrss"
    with open(err, "wb") as errf:
        t0 = time.monotonic()
        proc = subprocess.Popen([TIME, "-f", "%M", "-o", str(rss), *cmd], cwd=ROOT,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=errf)
        anon, child = 0, 0
        while proc.poll() is None:
            child = child or _child(proc.pid)
            if child:
                anon = max(anon, _status_kib(child, "RssAnon"))
            if time.monotonic() - t0 > timeout:
                proc.kill()
                if child:
                    with contextlib.suppress(OSError):
                        os.kill(child, signal.SIGKILL)
            time.sleep(0.01)
        seconds = time.monotonic() - t0
    lines = rss.read_text().split() if rss.is_file() else []
    peak = int(lines[-1]) if lines and lines[-1].isdigit() else 0
    if proc.returncode == 0 or not lines or "exited" not in rss.read_text():
        code = proc.returncode
    else:   # "Command exited with non-zero status N" then %M
        code = int(rss.read_text().split("status")[1].split()[0])
    return peak, anon, seconds, code, err.read_text(errors="replace")


def run_case(case: Case, src: Path, policy: Path, mdf: str, timeout: float) -> Run:
    work = Path(tempfile.mkdtemp(prefix=f"rss-{case.name}-", dir="/var/tmp"))
    try:
        dsts = [work / "a", work / "b"] if case.split else [work / "dump"]
        args = [a.replace("{policy}", str(policy)) for a in case.args]
        exe = [mdf]
        if case.tool == "slimdump":
            exe = [PY, "-c", CPU_SHIM, str(case.cpus)] if case.cpus else [PY, "-m", "slimdump"]
        cmd = [*exe, *args, str(src), *map(str, dsts)]
        maxrss, anon, seconds, rc, stderr = measure(cmd, work, timeout)
        outs = [p for p in dsts if p.exists()]
        checked = "-"
        if case.check and rc == 0:
            # makedumpfile --dump-dmesg refuses an existing file, /dev/null too
            res = subprocess.run([mdf, "--dump-dmesg", str(dsts[0]), str(work / "dmesg")],
                                 capture_output=True, text=True)
            checked = "ok" if res.returncode == 0 else "dump-dmesg failed"
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        note = next((ln for ln in reversed(lines) if ln.startswith("slimdump:")),
                    lines[-1] if lines else "")
        note = note.replace(str(dsts[0]), "DST").replace(str(src), "SRC")
        if case.tool == "makedumpfile":
            note = "completed" if rc == 0 else next(
                (ln for ln in lines if "rror" in ln or "an't" in ln), note)
        return Run(maxrss, anon, seconds, rc, sum(p.stat().st_size for p in outs),
                   sum(p.stat().st_blocks * 512 for p in outs), checked, note)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- tracemalloc ---------------------------------------------------------------------


def trace(case: Case, src: Path, policy: Path) -> None:
    """Run ``case`` (a slimdump case) in this process under tracemalloc and
    print the top allocation sites when the traced total was highest."""
    import tracemalloc

    from slimdump.cli import main as slimdump_main

    work = Path(tempfile.mkdtemp(prefix="rss-trace-", dir="/var/tmp"))
    best: list[tracemalloc.Snapshot | None] = [None]
    top = [0]
    stop = threading.Event()

    def sampler() -> None:
        while not stop.wait(0.02):
            current, _ = tracemalloc.get_traced_memory()
            if current > top[0] * 1.05:
                top[0] = current
                best[0] = tracemalloc.take_snapshot()

    dsts = [work / "a", work / "b"] if case.split else [work / "dump"]
    args = [a.replace("{policy}", str(policy)) for a in case.args]
    import slimdump.threadpool

    real_cpus = slimdump.threadpool.__dict__.setdefault("_bench_usable_cpus",
                                                        slimdump.threadpool.usable_cpus)
    cpus = (lambda: case.cpus) if case.cpus else real_cpus
    for module in [m for n, m in sys.modules.items() if n.startswith("slimdump")]:
        if getattr(module, "usable_cpus", None) is not None:
            module.usable_cpus = cpus   # the writers bind it when they are imported
    tracemalloc.start(10)
    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    try:
        rc = slimdump_main([*args, str(src), *map(str, dsts)])
    finally:
        stop.set()
        thread.join()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n### tracemalloc: {case.name} (exit {rc})\n")
    print(f"Python allocations: peak {peak / MiB:.1f} MiB; the largest sampled snapshot "
          f"{top[0] / MiB:.1f} MiB holds:\n")
    if best[0] is None:
        return
    stats = best[0].filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)]
                                  ).statistics("lineno")
    print("| KiB | blocks | where |\n| ---: | ---: | --- |")
    for stat in stats[:15]:
        frame = stat.traceback[0]
        where = f"{os.path.relpath(frame.filename, ROOT)}:{frame.lineno}"
        print(f"| {stat.size / 1024:.0f} | {stat.count} | `{where}` |")


# -- main ----------------------------------------------------------------------------


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def human(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n < 1 << 30 else f"{n / (1 << 30):.1f} GiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="", metavar="PREFIX",
                        help="only the cases whose name starts with PREFIX (comma list)")
    parser.add_argument("--trace", action="append", default=[], metavar="NAME",
                        help="also profile slimdump case NAME with tracemalloc")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    mdf = shutil.which("makedumpfile") or shutil.which("makedumpfile", path="/usr/sbin:/sbin")
    if mdf is None:
        sys.exit("bench: makedumpfile is not installed")
    real = vmcorelab.fixture_path("6.1-mce-4g")
    base = vmcorelab.fixture_path("6.1-mce")
    for p in (real, base):
        if not p.is_file():
            sys.exit(f"bench: fixture {p} is not built (python -m tests.lab.vmcorelab build)")
    selected = [c for c in cases()
                if not args.only or any(c.name.startswith(p) for p in args.only.split(","))]
    with tempfile.TemporaryDirectory(prefix="rss-inputs-", dir="/var/tmp") as tmp:
        inputs = Path(tmp)
        policy = inputs / "normal.toml"
        policy.write_text(NORMAL_POLICY)
        synthetic_core(inputs / "synthetic.core")
        far_core(base, inputs / "far.core")
        random_core(inputs / "random.core")
        srcs = {"real": real, "synthetic": inputs / "synthetic.core", "far": inputs / "far.core",
                "random": inputs / "random.core"}
        load = os.getloadavg()
        started = datetime.datetime.now(datetime.UTC)
        results: dict[str, list[Run]] = {}
        for case in selected:
            results[case.name] = [run_case(case, srcs[case.group], policy, mdf, args.timeout)
                                  for _ in range(args.runs)]
            r = results[case.name]
            print(f"{case.name}: maxrss {', '.join(mib(x.maxrss_kib) for x in r)} MiB; "
                  f"exit {', '.join(str(x.returncode) for x in r)}", file=sys.stderr,
                  flush=True)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip()
        mdf_version = subprocess.run([mdf, "-v"], capture_output=True, text=True
                                     ).stdout.splitlines()[0]
        print(f"Date {started:%Y-%m-%d %H:%M} UTC, commit {commit}, {platform.node()} "
              f"({os.cpu_count()} CPUs, load {load[0]:.1f} at the start), Python "
              f"{platform.python_version()}, {mdf_version}; {args.runs} run(s) a case.\n")
        print(f"Inputs: real = {real.name} ({human(real.stat().st_size)}); "
              f"synthetic = synthcore, 3 x 4 MiB at 1 MiB, 16 TiB, 2^50 - 4 MiB; "
              f"far = {base.name} + 4 MiB at 16 TiB and at 2^50; "
              f"random = synthcore, 512 MiB of random bytes at 1 MiB.\n")
        print("| case | command (SRC DST appended) | peak RSS MiB (max; min-max) | "
              "peak RssAnon MiB | s | exit | output (apparent / on disk) | check | last line |")
        print("| --- | --- | ---: | ---: | ---: | --- | --- | --- | --- |")
        for case in selected:
            rs = results[case.name]
            peak = max(r.maxrss_kib for r in rs)
            low = min(r.maxrss_kib for r in rs)
            anon = max(r.anon_kib for r in rs)
            secs = sorted(r.seconds for r in rs)[len(rs) // 2]
            codes = ",".join(sorted({str(r.returncode) for r in rs}))
            r0 = rs[-1]
            cmd = ("slimdump " if case.tool == "slimdump" else "makedumpfile ") + " ".join(
                a.replace("{policy}", "NORMAL") for a in case.args if a != "--no-progress")
            if case.cpus:
                cmd += f" (usable_cpus() = {case.cpus})"
            flag = " **over target**" if peak > TARGET_MIB * 1024 else ""
            checks = ",".join(sorted({r.checked for r in rs}))
            last = r0.note.replace("|", "/")
            print(f"| {case.name} | `{cmd}` | {mib(peak)} ({mib(low)}-{mib(peak)}){flag} | "
                  f"{mib(anon)} | {secs:.1f} | {codes} | {human(r0.out_bytes)} / "
                  f"{human(r0.out_disk)} | {checks} | {last[:150]} |")
        for name in args.trace:
            (case,) = [c for c in cases() if c.name == name]
            if case.tool != "slimdump":
                sys.exit(f"bench: --trace needs a slimdump case, not {name}")
            trace(case, srcs[case.group], policy)
    return 0


if __name__ == "__main__":
    sys.exit(main())

