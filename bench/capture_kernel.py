#!/usr/bin/env python3
"""Benchmark: slimdump and makedumpfile where they really run, on /proc/vmcore.

Crashes Debian's 6.1 kernel in QEMU (TCG; default a 4 GiB guest, sysrq), once
per ``--nr-cpus`` value (default 1 and 2: the capture kernel is booted with
``nr_cpus=N``, the first kernel has max(2, N) CPUs).  Inside the real kdump
capture kernel it alternates, --runs times (default 5), for each option set
(``-l -d 31``, ``-c -d 31``, ``-c -d 0``) and each read mode (mmap, the
default of both tools, and ``--non-mmap``: read(2) of /proc/vmcore):

    makedumpfile [--non-mmap] OPTIONS /proc/vmcore /tmp/x
    slimdump-makedumpfile [--non-mmap] OPTIONS /proc/vmcore /tmp/y

slimdump is run as kdump-tools runs it once ``slimdump setup kdump-tools``
diverted makedumpfile: the Debian package's console script under Debian's
/usr/bin/python3, writing the triage slimdump beside the dump as it does
there (makedumpfile writes none).  Each tool runs as kdump runs it:
makedumpfile single-threaded (its default), slimdump with its default of one
thread per CPU it sees.  Outputs go to the capture kernel's tmpfs (/tmp of a
tmpfs overlay: half of the capture kernel's memory), so the crashkernel
reservation is raised from run_collector's 256 MiB (MemTotal 200 MiB, a
/tmp of 100 MiB) to 512 + MEM/8 MiB (1 GiB for 4 GiB: MemTotal 955 MiB, /tmp
477 MiB): ``-c -d 0`` keeps every zero page (109 MiB on the 4 GiB guest) and
the first run keeps slimdump's mmap output until its non-mmap output is
written, to ``cmp`` them (MATCH/DIFFER, once per boot and option set).  The
reservation is not dumped: /proc/vmcore is MEM minus it (3.1 GiB of 4).

Each tool runs once untimed first (``-l -d 31``).  Prints, per nr_cpus,
read mode and option set, the median, min and max wall
time of each tool (date +%s.%N around the command: process start-up
included), the ratio of the medians and the output sizes; ``--out FILE``
also writes the report as markdown.  Everything runs under TCG emulation,
so absolute times are several times a real machine's; the ratios are the
point.  On a 2-core host a boot takes about 9 minutes for --runs 1 and 40
for --runs 5 (makedumpfile's ``-c -d 0`` is half of it), so the default
(5 runs, nr_cpus 1 and 2) about 80 minutes.  Run by hand:

    .venv/bin/python bench/capture_kernel.py [--mem 4096] [--runs 5] [--nr-cpus 1 2]
        [--out bench/results/capture_kernel.md]

``--options`` and ``--modes`` choose option sets and read modes.
``--startup`` times only the fixed costs instead (one nr_cpus=1 boot, 5
alternating runs of ``true``, ``makedumpfile -v``, ``python3 -c pass``,
``slimdump-makedumpfile -v`` and the imports of slimdump's capture path).
"""

from __future__ import annotations

import argparse
import compileall
import dataclasses
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.lab import vmcorelab  # noqa: E402

OPTION_SETS = ("-l -d 31", "-c -d 31", "-c -d 0")
READ_MODES = ("mmap", "non-mmap")
MDF_CMD = "makedumpfile [--non-mmap] OPTIONS /proc/vmcore /tmp/x"
SLIM_CMD = "slimdump-makedumpfile [--non-mmap] OPTIONS /proc/vmcore /tmp/y"
# slimdump as kdump-tools runs it once `slimdump setup kdump-tools` diverted
# makedumpfile: the console script of the Debian package (packaging/deb/build.py
# writes the same three lines), under Debian's /usr/bin/python3
SLIM_SCRIPT = ("#!/usr/bin/python3\\nimport sys\\n\\nfrom slimdump.makedumpfile_cli import main"
               "\\n\\nsys.exit(main())\\n")

# Runs in the capture kernel: sh -c SCRIPT sh OUT RUNS MODES OPTION_SET...
# One line per command in OUT/times: tool|mode|options|start|end|exit|output bytes;
# one line per option set in OUT/cmp: options|MATCH, DIFFER or n/a.
SCRIPT = r"""
out=$1; runs=$2; modes=$3; shift 3
printf '@SLIM_SCRIPT@' > /tmp/slimdump-makedumpfile && chmod +x /tmp/slimdump-makedumpfile
nproc > "$out/nproc"; cat /proc/cmdline > "$out/cmdline"
grep MemTotal /proc/meminfo > "$out/meminfo"; df -k /tmp | tail -1 > "$out/df"
# one untimed run of each first: the host's files come over 9p once, then
# from the page cache, as from an initramfs
makedumpfile -l -d 31 /proc/vmcore /tmp/x >/dev/null 2>&1; rm -f /tmp/x
/tmp/slimdump-makedumpfile -l -d 31 /proc/vmcore /tmp/y >/dev/null 2>&1; rm -f /tmp/y /tmp/y.triage
now() { date +%s.%N; }
one() {  # TOOL MODE OPTIONS DST COMMAND...
  tool=$1; mode=$2; opts=$3; dst=$4; shift 4
  rm -f "$dst"; s=$(now); "$@" >/dev/null 2>"$out/last.err"; rc=$?; e=$(now)
  size=$(stat -c %s "$dst" 2>/dev/null || echo 0)
  echo "$tool|$mode|$opts|$s|$e|$rc|$size" >> "$out/times"
  if [ $rc != 0 ]; then
    echo "$tool $mode $opts: exit $rc: $(tail -c 400 "$out/last.err" | tr '\r\n' '  ')" \
      >> "$out/errors"
  fi
}
i=0
while [ $i -lt "$runs" ]; do
  for opts in "$@"; do
    for mode in $modes; do
      flag=; [ $mode = non-mmap ] && flag=--non-mmap
      one mdf $mode "$opts" /tmp/x makedumpfile $flag $opts /proc/vmcore /tmp/x
      rm -f /tmp/x
      one slim $mode "$opts" /tmp/y /tmp/slimdump-makedumpfile $flag $opts /proc/vmcore /tmp/y
      rm -f /tmp/y.triage
      if [ $i = 0 ] && [ $mode = mmap ]; then
        mv /tmp/y /tmp/y.mmap 2>/dev/null
      elif [ $i = 0 ]; then
        if [ ! -e /tmp/y.mmap ] || [ ! -e /tmp/y ]; then echo "$opts|n/a" >> "$out/cmp"
        elif cmp -s /tmp/y.mmap /tmp/y; then echo "$opts|MATCH" >> "$out/cmp"
        else echo "$opts|DIFFER" >> "$out/cmp"; fi
        rm -f /tmp/y.mmap
      fi
      rm -f /tmp/y
    done
  done
  i=$((i + 1))
done
"""


# Runs in the capture kernel: sh -c STARTUP_SCRIPT sh OUT; OUT/t: "label seconds" lines
STARTUP_COMMANDS = {
    "true": "true",
    "makedumpfile -v": "makedumpfile -v",
    "python3 -c pass": "/usr/bin/python3 -c pass",
    "slimdump-makedumpfile -v": "/tmp/slimdump-makedumpfile -v",
    "imports of the capture path": "/usr/bin/python3 -c 'import slimdump.makedumpfile_cli, "
                                   "slimdump.makedumpfile_run, slimdump.filtered, "
                                   "slimdump.writers.kdump'",
}
STARTUP_SCRIPT = SCRIPT[:SCRIPT.index("i=0")].replace(
    "out=$1; runs=$2; modes=$3; shift 3", "out=$1") + "".join(
    ["for i in 1 2 3 4 5; do\n"] + [
        f"  s=$(now); {cmd} >/dev/null 2>&1; e=$(now); "
        f"echo \"$e $s {label}\" >> \"$out/t\"\n"
        for label, cmd in STARTUP_COMMANDS.items()] + ["done\n"])


def startup(args: argparse.Namespace) -> str:
    """The fixed costs in an nr_cpus=1 capture kernel, as a markdown table."""
    with tempfile.TemporaryDirectory(prefix="bench-ck-", dir=vmcorelab.cache_dir()) as tmp:
        out = Path(tmp)
        result = vmcorelab.run_collector(
            "6.1", "sysrq", ["sh", "-c", STARTUP_SCRIPT.replace("@SLIM_SCRIPT@", SLIM_SCRIPT),
                             "sh", "{out}"],
            out, mem_mib=args.mem, crashkernel_mib=args.crashkernel or 512 + args.mem // 8,
            timeout_s=1200)
        if result.returncode:
            sys.exit(f"bench: the capture kernel's script failed ({result.returncode}); "
                     f"console: {result.console_log}")
        times: dict[str, list[float]] = {}
        for line in (out / "t").read_text().splitlines():
            end, start, label = line.split(" ", 2)
            times.setdefault(label, []).append(float(end) - float(start))
    rows = [f"| `{STARTUP_COMMANDS[label]}` | {spread(v)} |" for label, v in times.items()]
    return "\n".join(["| command (nr_cpus=1, after one untimed capture of each tool) | "
                      "seconds, median [min-max] |", "| --- | ---: |", *rows]) + "\n"


Key = tuple[str, str, str]  # tool (mdf, slim), read mode, options


@dataclasses.dataclass
class Boot:
    """What one capture kernel's script recorded."""

    nproc: str
    cmdline: str
    memtotal_kib: int
    tmpfs_kib: int
    crashkernel: int
    vmcore_bytes: int
    kernel: str
    qemu_s: float
    times: dict[Key, list[float]]
    sizes: dict[Key, int]  # the last run's output size
    cmp: dict[str, str]  # options -> MATCH, DIFFER or n/a
    errors: list[str]


def boot(nr_cpus: int, args: argparse.Namespace) -> Boot:
    """One crash and capture kernel with nr_cpus=``nr_cpus``: what its script recorded."""
    crashkernel = args.crashkernel or 512 + args.mem // 8
    # about 500 s a run on the 4 GiB guest of a 2-core host (12 commands)
    runs_s = 100 * len(args.options) * 2 * len(args.modes) * args.runs * max(1, args.mem // 4096)
    with tempfile.TemporaryDirectory(prefix="bench-ck-", dir=vmcorelab.cache_dir()) as tmp:
        out = Path(tmp)
        result = vmcorelab.run_collector(
            "6.1", "sysrq",
            ["sh", "-c", SCRIPT.replace("@SLIM_SCRIPT@", SLIM_SCRIPT), "sh", "{out}",
             str(args.runs), " ".join(args.modes), *args.options],
            out, mem_mib=args.mem, cpus=max(vmcorelab.DEFAULT_CPUS, nr_cpus),
            capture_cpus=nr_cpus, crashkernel_mib=crashkernel, timeout_s=900 + runs_s)
        if result.returncode:
            sys.exit(f"bench: the capture kernel's script failed ({result.returncode}); "
                     f"console: {result.console_log}")
        times: dict[Key, list[float]] = {}
        sizes: dict[Key, int] = {}
        for line in (out / "times").read_text().splitlines():
            tool, mode, opts, start, end, _rc, size = line.split("|")
            times.setdefault((tool, mode, opts), []).append(float(end) - float(start))
            sizes[(tool, mode, opts)] = int(size or 0)
        cmp_file = out / "cmp"
        cmp = (dict(line.split("|") for line in cmp_file.read_text().splitlines())
               if cmp_file.exists() else {})
        errors = (out / "errors").read_text().splitlines() if (out / "errors").exists() else []
        df = (out / "df").read_text().split()
        return Boot(
            nproc=(out / "nproc").read_text().strip(),
            cmdline=(out / "cmdline").read_text().strip(),
            memtotal_kib=int((out / "meminfo").read_text().split()[1]),
            tmpfs_kib=int(df[1]) if len(df) > 1 and df[1].isdigit() else 0,
            crashkernel=crashkernel, vmcore_bytes=result.vmcore_bytes or 0,
            kernel=result.kernel_release, qemu_s=result.seconds,
            times=times, sizes=sizes, cmp=cmp, errors=errors)


def spread(values: list[float]) -> str:
    """median [min-max] in seconds."""
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def report(args: argparse.Namespace, boots: dict[int, Boot]) -> str:
    """The markdown report of every boot."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    now = datetime.datetime.now(datetime.UTC)
    lines = [
        f"# slimdump vs makedumpfile in the kdump capture kernel ({args.mem} MiB guest)", "",
        f"Date {now:%Y-%m-%d %H:%M} UTC, commit {commit}{' + local changes' if dirty else ''}, "
        f"host {os.cpu_count()} CPUs; QEMU TCG; {args.runs} alternating run(s) each "
        "(makedumpfile, then slimdump); times are wall seconds, median [min-max], "
        "process start-up included; ratio = slimdump median / makedumpfile median; "
        "pairs = slimdump / makedumpfile within each run (the two ran back to back, so "
        "TCG's drift over the boot cancels), median [min-max].", "",
        f"- makedumpfile: `{MDF_CMD}`",
        f"- slimdump: `{SLIM_CMD}` (the Debian package's console script under "
        "/usr/bin/python3, as kdump-tools runs it after `slimdump setup kdump-tools`; "
        "it also writes DST.triage; PYTHONPATH=src, byte-compiled)",
    ]
    for nr, b in boots.items():
        lines += [
            "", f"## capture kernel nr_cpus={nr} (nproc {b.nproc})", "",
            f"Kernel {b.kernel}, crashkernel={b.crashkernel}M (MemTotal "
            f"{b.memtotal_kib // 1024} MiB, /tmp tmpfs {b.tmpfs_kib // 1024} MiB), "
            f"/proc/vmcore {mib(b.vmcore_bytes)}, QEMU ran {b.qemu_s:.0f} s; "
            f"command line: `{b.cmdline}`", "",
            "| read | options | slimdump s | makedumpfile s | ratio | pairs | slimdump out | "
            "makedumpfile out | slimdump mmap = non-mmap |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        times, sizes = b.times, b.sizes
        for mode in args.modes:
            for opts in args.options:
                ours, theirs = times.get(("slim", mode, opts)), times.get(("mdf", mode, opts))
                ratio = (f"{statistics.median(ours) / statistics.median(theirs):.2f}x"
                         if ours and theirs else "-")
                pairs = ([a / b for a, b in zip(ours, theirs, strict=False) if b > 0]
                         if ours and theirs else [])
                lines.append(
                    f"| {mode} | `{opts}` | {spread(ours) if ours else 'not run'} | "
                    f"{spread(theirs) if theirs else 'not run'} | {ratio} | "
                    f"{spread(pairs) if pairs else '-'} | "
                    f"{mib(sizes[('slim', mode, opts)]) if ours else '-'} | "
                    f"{mib(sizes[('mdf', mode, opts)]) if theirs else '-'} | "
                    f"{b.cmp.get(opts, '-')} |")
        if b.errors:
            lines += ["", "Failed commands (exit status, end of stderr):", ""]
            lines += [f"- {e}" for e in b.errors]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mem", type=int, default=4096, metavar="MIB",
                        help="the crashed guest's memory (default 4096)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--nr-cpus", type=int, nargs="+", default=[1, 2], metavar="N",
                        help="one boot per value: the capture kernel's nr_cpus (default 1 2)")
    parser.add_argument("--crashkernel", type=int, metavar="MIB",
                        help="crashkernel reservation (default 512 + MEM/8)")
    parser.add_argument("--options", nargs="+", default=list(OPTION_SETS), metavar="OPTS",
                        help="option sets, each one argument (default: %(default)s)")
    parser.add_argument("--modes", nargs="+", default=list(READ_MODES), choices=READ_MODES,
                        help="read modes (default: both)")
    parser.add_argument("--startup", action="store_true",
                        help="time only the fixed costs (start-up, imports), one nr_cpus=1 boot")
    parser.add_argument("--out", type=Path, metavar="FILE",
                        help="also write the markdown report to FILE (e.g. bench/results/...)")
    args = parser.parse_args()
    if args.runs < 1 or any(n < 1 for n in args.nr_cpus):
        parser.error("--runs and --nr-cpus must be at least 1")
    compileall.compile_dir(ROOT / "src" / "slimdump", quiet=1)   # as installed
    if args.startup:
        text = startup(args)
        print(text, end="")
        if args.out:
            args.out.write_text(text)
        return 0
    boots = {}
    for nr in args.nr_cpus:
        boots[nr] = boot(nr, args)
    text = report(args, boots)
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
