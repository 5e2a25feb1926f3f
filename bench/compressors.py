#!/usr/bin/env python3
"""Benchmark: the C packer's page compressors, makedumpfile's against slimdump's.

makedumpfile compresses every kept page on its own with zlib's deflate at
level 1 (``-c``) or liblzo2's LZO1X-1 (``-l``).  slimdump's C packer
(``src/slimdump/writers/_pagepack.c``) writes the same formats faster by
default: LZO1X-1 with a dictionary sized to a 4 KiB page
(``lzo1x_1_12_compress``: liblzo2's LZO1X-1 clears a 2^14-entry dictionary
before every page) and zlib streams from libdeflate (where built with it).
``pack(data, page_size, flag, exact)`` does both: ``exact=True`` is
makedumpfile's compressors, byte for byte.

Input: the PT_LOAD data of the ``-d 31`` ELF dump that ``slimdump capture -E
-d 31`` writes of a saved vmcore (default fixture 6.1-sysrq-4g, built by the
lab if missing), read into memory in 4 MiB runs: the kept pages, the kernel
image's twice (its own segment and the linear map's), excluded pages as
zeros, which both compressors skip.  For each codec it
alternates the two compressors over all runs, --runs times (default 5), in
one thread, and prints the median [min-max] seconds, microseconds per
non-zero page and the bytes stored (pages stored as is when compression does
not make them smaller, as in the dump).

Measured twice: natively (``taskset -c CPU``) and under QEMU's TCG in user
mode (``qemu-x86_64-static``, from qemu-user-static), the emulation that runs
the lab's capture kernel, on the first --emulated-mib MiB (default 64):

    .venv/bin/python bench/compressors.py [--fixture 6.1-sysrq-4g] [--runs 5]
        [--emulated-mib 64] [--out bench/results/compressors.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

CODECS = (("zlib", 1), ("lzo", 2))
RUN = 4 << 20


def measure(path: Path, runs: int, limit: int) -> dict[tuple[str, bool], list[tuple[float, int]]]:
    """{(codec, exact): [(seconds, stored bytes) per run]} over the PT_LOAD
    data of the ELF file ``path`` (at most ``limit`` bytes)."""
    from slimdump.sources import open_dump
    from slimdump.writers import _pagepack

    chunks: list[bytes] = []
    with open_dump(path) as src:
        for seg in src.segments_in_file:
            at = seg.phys_start
            end = seg.phys_start + seg.file_size // 4096 * 4096
            while at < end and sum(map(len, chunks)) < limit:
                n = min(RUN, end - at, limit - sum(map(len, chunks)))
                chunks.append(src.read_phys(at, n // 4096 * 4096))
                at += n
    out: dict[tuple[str, bool], list[tuple[float, int]]] = {}
    for _ in range(runs):
        for name, flag in CODECS:
            for exact in (True, False):
                start = time.perf_counter()
                stored = 0
                for chunk in chunks:
                    stored += len(_pagepack.pack(chunk, 4096, flag, exact)[3])
                out.setdefault((name, exact), []).append((time.perf_counter() - start, stored))
    pages = sum(len(c) for c in chunks) // 4096
    nonzero = sum(len(_pagepack.pack(c, 4096, 0)[1]) // 4 for c in chunks)
    out[("pages", True)] = [(float(pages), nonzero)]
    return out


def table(results: dict[tuple[str, bool], list[tuple[float, int]]], what: str,
          zlib_impl: str) -> str:
    pages, nonzero = results.pop(("pages", True))[0]
    rows = [f"{what}: {int(pages)} pages read, {nonzero} of them non-zero (compressed).", "",
            "| codec | compressor | seconds | us per page | stored bytes | time vs "
            "makedumpfile's | size vs makedumpfile's |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    names = {("zlib", True): "zlib deflate, level 1 (makedumpfile)",
             ("zlib", False): f"{zlib_impl} (slimdump)",
             ("lzo", True): "LZO1X-1 (makedumpfile)",
             ("lzo", False): "LZO1X-1(12) (slimdump)"}
    for name, _flag in CODECS:
        ref = statistics.median(t for t, _ in results[(name, True)])
        ref_size = results[(name, True)][0][1]
        for exact in (True, False):
            times = [t for t, _ in results[(name, exact)]]
            med, size = statistics.median(times), results[(name, exact)][0][1]
            rows.append(f"| {name} | {names[(name, exact)]} | {med:.3f} [{min(times):.3f}-"
                        f"{max(times):.3f}] | {med / nonzero * 1e6:.1f} | {size:,} | "
                        f"{med / ref:.2f}x | {size / ref_size:.4f} |")
    return "\n".join(rows) + "\n"


def child(args: argparse.Namespace) -> int:
    """Measure in this process; print the results as JSON for the parent."""
    found = measure(args.child, args.runs, args.limit)
    print(json.dumps([[name, exact, runs] for (name, exact), runs in found.items()]))
    return 0


def parsed(text: str) -> dict[tuple[str, bool], list[tuple[float, int]]]:
    return {(name, exact): [(t, n) for t, n in runs] for name, exact, runs in json.loads(text)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixture", default="6.1-sysrq-4g")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cpu", type=int, default=0)
    parser.add_argument("--emulated-mib", type=int, default=64)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, default=1 << 62, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    sys.path.insert(0, str(ROOT))
    from tests.lab import vmcorelab

    from slimdump.writers import _pagepack

    src = vmcorelab.ensure(args.fixture)
    qemu = shutil.which("qemu-x86_64-static")
    with tempfile.TemporaryDirectory(prefix="bench-compressors-") as tmp:
        elf = Path(tmp) / "d31.elf"
        subprocess.run([sys.executable, "-m", "slimdump", "capture", "--no-progress",
                        "--no-triage", "-E", "-d", "31", str(src), str(elf)], check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                       stdout=subprocess.DEVNULL)
        me = [sys.executable, __file__, "--child", str(elf), "--runs", str(args.runs)]
        native = subprocess.run(["taskset", "-c", str(args.cpu), *me], check=True,
                                capture_output=True, text=True).stdout
        emulated = None
        if qemu:
            emulated = subprocess.run(
                [qemu, "/usr/bin/python3", *me[1:], "--limit", str(args.emulated_mib << 20)],
                check=True, capture_output=True, text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT / "src")}).stdout
    text = [f"# Page compressors: makedumpfile's and slimdump's\n\nInput: the PT_LOAD data "
            f"of {args.fixture}'s -d 31 ELF dump (`slimdump capture -E -d 31`; zero pages "
            f"are skipped by both), 4 KiB pages, one thread, "
            f"median of {args.runs} alternating runs [min-max].\n\nCommand: `.venv/bin/python "
            f"bench/compressors.py --fixture {args.fixture} --runs {args.runs}`\n",
            table(parsed(native), f"Native (taskset -c {args.cpu})", _pagepack.ZLIB_COMPRESSOR)]
    if emulated:
        text.append(table(parsed(emulated), "Under TCG (qemu-x86_64-static, user mode), "
                          f"the first {args.emulated_mib} MiB", _pagepack.ZLIB_COMPRESSOR))
    else:
        text.append("Under TCG: not measured (qemu-x86_64-static not installed).\n")
    report = "\n".join(text)
    print(report, end="")
    if args.out:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
