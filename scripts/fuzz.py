#!/usr/bin/env python3
"""Fuzz slimdump with mutants of the real vmcore fixtures.

Each case takes one input (an ELF fixture, or a kdump-compressed or
flattened dump slimdump made from it once), one target (ELF header, program
headers, notes, VMCOREINFO text, printk ring buffer, struct pages, other
kernel data; kdump header, sub header, bitmaps, page descriptors, page data;
flattened records; truncation) and a few mutations of it, all decided by
(--seed, case index) alone: ``--only INDEX`` replays one case.  The mutant
is a working copy changed in place and restored after the run.  The real
command line (slimdump.cli.main: capture with various formats and levels,
dmesg, inspect) runs in a child forked from a server that imported slimdump
once, with a wall-clock limit.

Outcomes: ok, refused (exit 1, one "slimdump: ..." line), TRACEBACK, HANG,
CRASH (a signal or a sanitizer report), LEFTOVER (a failed run's output
under the final name, or a temporary file a normal exit left), BADMSG
(exit 1 without a "slimdump:" line), EMPTY (exit 0, nothing written and no
warning saying why).
OUT gets report.json, summary.txt and cases.jsonl.

    python scripts/fuzz.py --n 10000 --seed 1 --timeout 20 --out /tmp/fuzz1
    python scripts/fuzz.py --seed 1 --only 123 --keep --out /tmp/fuzz1-repro
    python scripts/fuzz.py --n 300 --asan --out /tmp/fuzz-asan
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]       # the fuzz package; tests.lab for fixtures

from fuzz.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
