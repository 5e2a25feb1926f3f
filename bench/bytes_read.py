#!/usr/bin/env python3
"""Benchmark: how much of the vmcore each operation reads, and dmesg time
against makedumpfile --dump-dmesg, measured in the same run.

For each real vmcore fixture it reports the bytes slimdump read from the
file for:

* ``dmesg``      extracting the log (ELF headers, notes, page tables, the
                 log buffer and its descriptors);
* ``detection``  what capture reads on a stock kernel to classify the panic;
* ``slim``       a slim capture of the same vmcore carrying a kernel note
                 (headers and notes only);

as bytes and as a share of the vmcore, and the median wall time of
``slimdump dmesg`` against ``makedumpfile --dump-dmesg`` (alternating runs,
warm page cache).  Run by hand:

    .venv/bin/python bench/bytes_read.py [--runs N] [NAMES...]
"""

from __future__ import annotations

import argparse
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

from slimdump.capture import decide  # noqa: E402
from slimdump.kernel.log import extract_dmesg  # noqa: E402
from slimdump.sources import open_dump  # noqa: E402


def read_by(vmcore: Path, action: str) -> int:
    with open_dump(vmcore) as source:
        if action == "dmesg":
            extract_dmesg(source)
        else:
            decide(source)
        return source.bytes_read


def slim_read(vmcore: Path, work: Path) -> int:
    marked = work / "marked"
    subprocess.run([sys.executable, "-m", "slimdump", "mark", "-f", "--no-progress",
                    str(vmcore), str(marked), "--reason", "PANIC_MCE"], check=True,
                   stderr=subprocess.DEVNULL)
    try:
        with open_dump(marked) as source:
            decide(source)
            return source.bytes_read
    finally:
        marked.unlink()


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=list(vmcorelab.DEFAULT_FIXTURES))
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if shutil.which("makedumpfile") is None:
        sys.exit("bench: makedumpfile is not installed (make setup)")
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=vmcorelab.cache_dir()))
    print(f"{'vmcore':<11} {'size':>8} {'dmesg read':>16} {'detection read':>18} "
          f"{'slim read':>10} {'dmesg s':>8} {'mdf s':>7} {'ratio':>6}")
    try:
        for name in args.names:
            vmcore = vmcorelab.ensure(name)
            size = vmcore.stat().st_size
            dmesg, detect = read_by(vmcore, "dmesg"), read_by(vmcore, "detect")
            slim = slim_read(vmcore, work)
            ours, theirs = [], []
            for _ in range(args.runs):
                out = work / "dmesg.txt"
                out.unlink(missing_ok=True)
                ours.append(wall([sys.executable, "-m", "slimdump", "dmesg", str(vmcore),
                                  str(out)]))
                out.unlink()
                theirs.append(wall(["makedumpfile", "--dump-dmesg", str(vmcore), str(out)]))
            a, b = statistics.median(ours), statistics.median(theirs)
            print(f"{name:<11} {size / 2**20:>6.0f}Mi {dmesg:>8} {dmesg / size:>6.3%} "
                  f"{detect:>10} {detect / size:>6.3%} {slim:>10} {a:>8.3f} {b:>7.3f} "
                  f"{a / b:>5.2f}x")
    finally:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
