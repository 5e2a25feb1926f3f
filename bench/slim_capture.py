#!/usr/bin/env python3
"""Benchmark: slim capture against makedumpfile, measured in the same run.

For each real vmcore (default: the 768 MiB and the 4 GiB machine-check
fixtures) the vmcore is marked with NT_NOCOREDUMP (as a patched kernel would
leave it), then, alternating runs:

* ``slimdump capture MARKED OUT`` (the whole command, Python start-up
  included), and
* ``makedumpfile -l -d 31 MARKED OUT`` (what a kdump-utils default collector
  runs on the same file today; makedumpfile 1.7.2 does not know the note).

It prints median wall times, the ratio, output sizes and the bytes slimdump
read from the vmcore, and finally how slim capture time changes from the
small vmcore to the large one (it should not grow: it reads only headers
and notes).  Both tools run with a warm page cache.  Run by hand:

    make bench            # or: .venv/bin/python bench/slim_capture.py [--runs N] [NAMES...]
"""

from __future__ import annotations

import argparse
import os
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

from tests.lab import vmcorelab  # noqa: E402

from slimdump.capture import decide, write_slimdump  # noqa: E402
from slimdump.sources import open_dump  # noqa: E402


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def bytes_read_by_slim_capture(marked: Path, out: Path) -> int:
    with open_dump(marked) as source:
        write_slimdump(source, decide(source), str(out), overwrite=True)
        return source.bytes_read


def bench_one(name: str, runs: int, work: Path) -> dict[str, float | int | str]:
    src = vmcorelab.ensure(name)
    marked = work / f"{name}.marked"
    subprocess.run([sys.executable, "-m", "slimdump", "mark", "--no-progress", "-f", str(src),
                    str(marked), "--reason", "PANIC_MCE", "--message",
                    "Fatal local machine check"], check=True, stderr=subprocess.DEVNULL)
    slim_out, mdf_out = work / "out.slim", work / "out.mdf"
    slim_times, mdf_times = [], []
    for _ in range(runs):
        for out in (slim_out, mdf_out):
            out.unlink(missing_ok=True)
        slim_times.append(wall([sys.executable, "-m", "slimdump", "capture", str(marked),
                                str(slim_out)]))
        mdf_times.append(wall(["makedumpfile", "-l", "-d", "31", str(marked), str(mdf_out)]))
    result = {
        "name": name,
        "vmcore_bytes": src.stat().st_size,
        "slim_s": statistics.median(slim_times),
        "mdf_s": statistics.median(mdf_times),
        "slim_bytes": slim_out.stat().st_size,
        "mdf_bytes": mdf_out.stat().st_size,
        "slim_read": bytes_read_by_slim_capture(marked, work / "inproc.slim"),
    }
    marked.unlink()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=["6.1-mce", "6.1-mce-4g"],
                        help="vmcore fixtures (tests/lab/vmcorelab.py list)")
    parser.add_argument("--runs", type=int, default=5, help="alternating runs per tool")
    args = parser.parse_args()
    if shutil.which("makedumpfile") is None:
        sys.exit("bench: makedumpfile is not installed (make setup)")
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=vmcorelab.cache_dir()))
    try:
        results = [bench_one(name, args.runs, work) for name in args.names]
    finally:
        shutil.rmtree(work)
    print(f"slim capture vs makedumpfile -l -d 31, median of {args.runs} alternating runs, "
          f"warm page cache, {os.cpu_count()} CPUs")
    print(f"{'vmcore':<12} {'size':>9} {'slimdump':>9} {'makedumpfile':>13} {'ratio':>8} "
          f"{'slim out':>9} {'mdf out':>9} {'slim read':>10}")
    for r in results:
        print(f"{r['name']:<12} {r['vmcore_bytes'] / 2**20:>7.0f}Mi {r['slim_s']:>8.3f}s "
              f"{r['mdf_s']:>12.3f}s {r['slim_s'] / r['mdf_s']:>7.4f}x "
              f"{r['slim_bytes'] / 1024:>7.1f}Ki {r['mdf_bytes'] / 2**20:>7.1f}Mi "
              f"{r['slim_read']:>8} B")
    if len(results) >= 2:
        small, large = results[0], results[-1]
        print(f"slim capture time {large['name']} / {small['name']}: "
              f"{large['slim_s'] / small['slim_s']:.2f}x for "
              f"{large['vmcore_bytes'] / small['vmcore_bytes']:.1f}x the vmcore size; "
              f"bytes read {small['slim_read']} -> {large['slim_read']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
