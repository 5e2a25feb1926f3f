#!/usr/bin/env python3
"""Benchmark: Debian 12's own kdump-tools with slimdump and with stock
makedumpfile, for a fatal machine check and for a sysrq crash.

Each case is a whole run of tests/lab/debianlab.py: the Debian image boots
under QEMU TCG (1536 MiB, 2 CPUs, Debian's ``crashkernel=384M-:128M``
unless --crashkernel says otherwise), kdump-tools loads the capture kernel,
the guest is crashed, the capture kernel runs kdump-tools' save path and
reboots.  Reported per case (median over --runs, min-max beside it):

- panic to reboot: host seconds from the crash (the sysrq marker on the
  console, or the QEMU monitor's ``mce``) to QEMU's exit, less the lab
  oracle's time (the real makedumpfile run in the capture kernel for the
  tests, before kdump-tools);
- kdump-tools to reboot: from kdump-tools' "Starting kdump-tools:" in the
  capture kernel to QEMU's exit (the collector's part, boot excluded);
- bytes written to /var/crash/STAMP (dmesg.STAMP + dump.STAMP);
- the capture kernel's lowest MemAvailable while kdump-tools ran (the
  collector's headroom in the crashkernel reservation).

Under TCG the seconds are several times a real machine's, and noisy when
the host is busy; compare the columns, not the absolute numbers.  About 3
minutes a run (12 for the four cases once).  Run by hand:

    .venv/bin/python bench/debian_kdump.py [--runs N] [--out bench/results/debian_kdump.md]
    .venv/bin/python bench/debian_kdump.py --report-from DIR   # the report of kept runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.lab import debianimage, debianlab  # noqa: E402
from tests.mdfbitmap import read_kdump  # noqa: E402

CASES = (("slimdump", "mce"), ("makedumpfile", "mce"),
         ("slimdump", "sysrq"), ("makedumpfile", "sysrq"))


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    if not values:
        return "-"
    med = fmt.format(statistics.median(values))
    if len(values) == 1:
        return med
    return f"{med} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def dump_pages(result: dict[str, Any]) -> int | None:
    """Pages in dump.STAMP when it is a kdump-compressed dump (flattened:
    unflattened by makedumpfile -R first), by tests/mdfbitmap.py's reader;
    None for a slimdump (an ELF of notes)."""
    dumps = [f["path"] for f in result["stamp_files"] if Path(f["path"]).name.startswith("dump.")]
    if len(dumps) != 1:
        return None
    path = Path(result["outdir"]) / dumps[0].removeprefix("/var/")
    with path.open("rb") as head:
        if head.read(12) != b"makedumpfile":
            return None
    with path.open("rb") as f, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "dump"
        subprocess.run(["makedumpfile", "-R", str(out)], stdin=f, capture_output=True,
                       check=True)
        if out.read_bytes()[:8] != b"KDUMP   ":
            return None
        return int(read_kdump(out).bitmap2.sum())


def mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def report(results: dict[tuple[str, str], list[dict[str, Any]]], crashkernel: str,
           seconds: float) -> str:
    any_result = next(r for rs in results.values() for r in rs)
    lines = [
        "# Debian 12 kdump-tools: slimdump against stock makedumpfile",
        "",
        f"Kernel {any_result['kernel_release']}, kdump-tools "
        f"{any_result['image_versions']['kdump-tools']}, makedumpfile "
        f"{any_result['image_versions']['makedumpfile']}; QEMU TCG, "
        f"{any_result['mem_mib']} MiB, {any_result['cpus']} CPUs, crashkernel={crashkernel}; "
        f"host {platform.node()}, {time.strftime('%Y-%m-%d')}; "
        f"{sum(map(len, results.values()))} runs in "
        f"{seconds / 60:.0f} min.",
        "",
        "| crash | collector | runs | panic to reboot (s) | of which to kdump-tools' start (s) "
        "| kdump-tools to reboot (s) "
        "| bytes written to /var/crash | dump.STAMP | pages in it | lowest MemAvailable (MB) "
        "| saved vmcore |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (collector, crash), rs in results.items():
        dumps = [f["bytes"] for r in rs for f in r["stamp_files"]
                 if Path(f["path"]).name.startswith("dump.")]
        pages = [n for r in rs if (n := dump_pages(r)) is not None]
        boot = [r["phases_s"]["kdump_tools"] - (r["oracle_s"] or 0) for r in rs
                if (r.get("phases_s") or {}).get("kdump_tools") is not None]
        service = [r["kdump_tools_to_exit_s"] for r in rs if r.get("kdump_tools_to_exit_s")]
        lows = [r["min_mem_available_kb"]["kdump_tools"] / 1024 for r in rs
                if (r.get("min_mem_available_kb") or {}).get("kdump_tools")]
        lines.append(
            f"| {crash} | {collector} | {len(rs)} "
            f"| {spread([r['panic_to_reboot_s'] for r in rs])} "
            f"| {spread(boot)} | {spread(service)} "
            f"| {mb(statistics.median(r['bytes_written'] for r in rs))} "
            f"| {mb(statistics.median(dumps)) if dumps else '-'} "
            f"| {spread(pages, '{:.0f}')} "
            f"| {spread(lows, '{:.1f}')} "
            f"| {sum(r['saved_vmcore'] for r in rs)}/{len(rs)} |")
    outdirs = [Path(r["outdir"]) for rs in results.values() for r in rs]
    lines += ["", "Runs (result.json, console.log, /var/crash) kept in "
              f"{os.path.commonpath(outdirs)}.", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--crashkernel", default=debianlab.DEBIAN_CRASHKERNEL)
    ap.add_argument("--out", type=Path, help="write the markdown report here (default: stdout)")
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="keep each run's directory under DIR (default: a temporary one)")
    ap.add_argument("--cases", nargs="*", metavar="COLLECTOR/CRASH",
                    default=[f"{c}/{k}" for c, k in CASES])
    ap.add_argument("--report-from", type=Path, metavar="DIR",
                    help="run nothing: the report of the runs kept in DIR (--keep)")
    args = ap.parse_args()
    if args.report_from:
        return write(kept_report(args.report_from), args.out)
    cases = [tuple(c.split("/", 1)) for c in args.cases]
    try:
        deb = debianlab.slimdump_deb()
        debianimage.image_for(deb)
        keep = args.keep or Path(tempfile.mkdtemp(prefix="debian-kdump-bench-"))
        results: dict[tuple[str, str], list[dict[str, Any]]] = {c: [] for c in cases}
        t0 = time.monotonic()
        for i in range(args.runs):       # interleaved: host load drifts alike for all
            for collector, crash in cases:
                spec = debianlab.RunSpec(collector, crash, crashkernel=args.crashkernel)
                out = keep / f"{collector}-{crash}-{i + 1}"
                results[(collector, crash)].append(
                    debianlab.run(spec, out, deb=deb if collector == "slimdump" else None))
    except debianlab.LabError as exc:
        print(f"debian_kdump: error: {exc}", file=sys.stderr)
        return 1
    return write(report(results, args.crashkernel, time.monotonic() - t0), args.out)


def kept_report(where: Path) -> str:
    """The report of the result.json files under ``where`` (a --keep DIR)."""
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    seconds = 0.0
    for path in sorted(where.glob("*/result.json")):
        r = json.loads(path.read_text())
        results.setdefault((r["collector"], r["crash"]), []).append(r)
        seconds += r["wall_s"]
    if not results:
        raise SystemExit(f"debian_kdump: error: no */result.json under {where}")
    order = {case: i for i, case in enumerate(CASES)}
    results = dict(sorted(results.items(), key=lambda kv: order.get(kv[0], 99)))
    crashkernel = next(iter(results.values()))[0]["crashkernel"]
    return report(results, crashkernel, seconds)


def write(text: str, out: Path | None) -> int:
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}", file=sys.stderr)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
