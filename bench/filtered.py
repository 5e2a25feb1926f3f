#!/usr/bin/env python3
"""Benchmark: filtered dumps, slimdump against makedumpfile, same run.

For each real vmcore (default: the 768 MiB and 4 GiB sysrq fixtures, and the
4 GiB machine-check fixture, captured with a policy that treats machine
checks as software crashes so that both tools filter the same memory; the
lab builds a missing fixture first, about 80 s) and each option
set (``-l -d 31``, ``-c -d 31``, ``-z -d 31`` where this makedumpfile has
zstd, ``-E -d 31``, ``-c -d 0``), it alternates runs of

    slimdump capture OPTIONS VMCORE OUT
    makedumpfile OPTIONS VMCORE OUT

and prints the median wall time of each, the ratio slimdump/makedumpfile,
the output sizes and the peak resident memory of each tool (its largest
process, workers included).  Warm page cache for both.  Run by hand:

    make bench     # or: .venv/bin/python bench/filtered.py [--runs N] [NAMES...]
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.lab import vmcorelab  # noqa: E402

OPTION_SETS = (["-l", "-d", "31"], ["-c", "-d", "31"], ["-z", "-d", "31"],
               ["-E", "-d", "31"], ["-c", "-d", "0"])
MEASURE = """
import resource, subprocess, sys, time
start = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


# the installed command, as kdump scripts run it (``python -m`` adds runpy)
_SCRIPT = Path(sys.executable).parent / "slimdump"
SLIMDUMP = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "slimdump"]


def measured(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of ``cmd`` and its children."""
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), int(out[1]) / 1024


def has_zstd() -> bool:
    out = subprocess.run(["makedumpfile", "-v"], capture_output=True, text=True)
    return "zstd" in (out.stdout + out.stderr).lower() and "disabled" not in (
        out.stdout + out.stderr).lower()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=["6.1-sysrq", "6.1-sysrq-4g", "6.1-mce-4g"])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("makedumpfile") is None:
        sys.exit("bench: makedumpfile is not installed (make setup)")
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=vmcorelab.cache_dir()))
    policy = work / "policy.toml"
    policy.write_text('[actions]\nPANIC_MCE = "normal"\nPANIC_NMI = "normal"\n')
    zstd = has_zstd()
    # measure slimdump as installed: byte-compiled (pip does that; this
    # environment may set PYTHONDONTWRITEBYTECODE) and with its C packer
    compileall.compile_dir(ROOT / "src" / "slimdump", quiet=1)
    from slimdump.kernel.dump_level import NATIVE
    from slimdump.writers.pagepack import NATIVE_PACK

    print(f"slimdump capture vs makedumpfile, median of {args.runs} alternating runs, warm "
          f"page cache, {os.cpu_count()} CPUs; C packer: "
          f"{'built' if NATIVE_PACK else 'NOT BUILT (pure Python)'}; C page classifier: "
          f"{'built' if NATIVE else 'NOT BUILT (nothing dropped)'}; "
          f"makedumpfile zstd: {'yes' if zstd else 'no (1.7.2 build)'}")
    print(f"{'vmcore':<11} {'options':<10} {'slimdump':>9} {'mdf':>8} {'ratio':>7} "
          f"{'slim out':>9} {'mdf out':>9} {'slim RSS':>9} {'mdf RSS':>8}")
    try:
        for name in args.names:
            vmcore = str(vmcorelab.ensure(name))
            # the policy only where the crash is a hardware error, which
            # slimdump would otherwise save as a slimdump (a user with a
            # software crash runs without one, and without tomllib's import)
            hardware = any(kind in name for kind in ("mce", "nmi"))
            policy_args = ["--policy", str(policy)] if hardware else []
            for opts in OPTION_SETS:
                if opts[0] == "-z" and not zstd:
                    continue
                ours, theirs, rss_ours, rss_theirs = [], [], 0.0, 0.0
                a, b = work / "slim.out", work / "mdf.out"
                for _ in range(args.runs):
                    for path in (a, b):
                        path.unlink(missing_ok=True)
                    t, rss = measured([*SLIMDUMP, "capture", *policy_args, "--no-progress", *opts,
                                       vmcore, str(a)])
                    ours.append(t)
                    rss_ours = max(rss_ours, rss)
                    t, rss = measured(["makedumpfile", *opts, vmcore, str(b)])
                    theirs.append(t)
                    rss_theirs = max(rss_theirs, rss)
                mo, mt = statistics.median(ours), statistics.median(theirs)
                print(f"{name:<11} {' '.join(opts):<10} {mo:>8.2f}s {mt:>7.2f}s {mo / mt:>6.2f}x "
                      f"{a.stat().st_size / 2**20:>7.1f}Mi {b.stat().st_size / 2**20:>7.1f}Mi "
                      f"{rss_ours:>7.1f}Mi {rss_theirs:>6.1f}Mi", flush=True)
    finally:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
