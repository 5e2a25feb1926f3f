#!/usr/bin/env python3
"""Benchmark: slimdump and makedumpfile where they really run, on /proc/vmcore.

Crashes Debian's 6.1 kernel in QEMU (TCG; default a 4 GiB guest, sysrq),
then, inside the real kdump capture kernel (nr_cpus=1, as Debian's and
Fedora's kdump boot it), alternates

    makedumpfile OPTIONS /proc/vmcore /tmp/x
    python -m slimdump capture OPTIONS /proc/vmcore /tmp/y

for each option set, --runs times, writing to the capture kernel's tmpfs, and
prints median wall times, ratios and output sizes.  Everything runs under
TCG emulation, so absolute times are several times a real machine's; the
ratio is the point, with one CPU and /proc/vmcore's own read path.  About
two minutes for 3 runs.  Run by hand:

    .venv/bin/python bench/capture_kernel.py [--mem 4096] [--runs 3]
"""

from __future__ import annotations

import argparse
import compileall
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.lab import vmcorelab  # noqa: E402

OPTION_SETS = ("-l -d 31", "-c -d 31")

# One line per run: tool, options, start, end, output size (seconds from date).
SCRIPT = """
out=$1; runs=$2; shift 2
nproc > "$out/nproc"
i=0
while [ $i -lt "$runs" ]; do
  for opts in "$@"; do
    rm -f /tmp/x; s=$(date +%s.%N); makedumpfile $opts /proc/vmcore /tmp/x >/dev/null 2>&1
    e=$(date +%s.%N); echo "mdf|$opts|$s|$e|$(stat -c %s /tmp/x)" >> "$out/times"; rm -f /tmp/x
    rm -f /tmp/y; s=$(date +%s.%N)
    python -m slimdump capture --no-progress $opts /proc/vmcore /tmp/y 2>>"$out/slimdump.err"
    e=$(date +%s.%N); echo "slim|$opts|$s|$e|$(stat -c %s /tmp/y)" >> "$out/times"; rm -f /tmp/y
  done
  i=$((i + 1))
done
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mem", type=int, default=4096, metavar="MIB")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    compileall.compile_dir(ROOT / "src" / "slimdump", quiet=1)   # as installed
    with tempfile.TemporaryDirectory(prefix="bench-ck-", dir=vmcorelab.cache_dir()) as tmp:
        out = Path(tmp)
        result = vmcorelab.run_collector(
            "6.1", "sysrq", ["sh", "-c", SCRIPT, "sh", "{out}", str(args.runs), *OPTION_SETS],
            out, mem_mib=args.mem, cpus=2, timeout_s=600 + 300 * args.runs)
        if result.returncode:
            sys.exit(f"bench: the capture kernel's script failed ({result.returncode}); "
                     f"console: {result.console_log}")
        cpus = (out / "nproc").read_text().strip()
        times: dict[tuple[str, str], list[float]] = {}
        sizes: dict[tuple[str, str], int] = {}
        for line in (out / "times").read_text().splitlines():
            tool, opts, start, end, size = line.split("|")
            times.setdefault((tool, opts), []).append(float(end) - float(start))
            sizes[(tool, opts)] = int(size or 0)
    print(f"in the 6.1 capture kernel of a {args.mem} MiB guest (QEMU TCG), {cpus} CPU(s), "
          f"/proc/vmcore, median of {args.runs}")
    print(f"{'options':<10} {'slimdump':>9} {'mdf':>8} {'ratio':>7} {'slim out':>10} "
          f"{'mdf out':>10}")
    for opts in OPTION_SETS:
        ours, theirs = (statistics.median(times[(t, opts)]) for t in ("slim", "mdf"))
        print(f"{opts:<10} {ours:>8.2f}s {theirs:>7.2f}s {ours / theirs:>6.2f}x "
              f"{sizes[('slim', opts)] / 2**20:>8.1f}Mi {sizes[('mdf', opts)] / 2**20:>8.1f}Mi")
    return 0


if __name__ == "__main__":
    sys.exit(main())
