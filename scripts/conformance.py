"""Run the conformance corpus and print the counts (issue 9's closing note).

    .venv/bin/python scripts/conformance.py [--no-real] [--jobs N]

Builds the corpus (tests/corpus.py: synthetic files in a temporary
directory, makedumpfile's outputs of the real 6.1-sysrq vmcore cached in the
lab cache), runs every slimdump command on every file exactly as
tests/test_conformance.py does, and prints each failure (file, command,
symptom) and the totals: files, commands, tracebacks, refusals, outputs
written and opened by libkdumpfile, pages compared, differing and lost.
CI runs the test; this script is for people.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import corpus
from tests import test_conformance as tc
from tests.lab import vmcorelab


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-real", action="store_true", help="synthetic files only")
    parser.add_argument("--jobs", type=int, default=2, help="commands run at once")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="slimdump-conformance-") as tmp:
        entries = corpus.build_synthetic(Path(tmp) / "synthetic")
        if not args.no_real:
            vmcore = vmcorelab.fixture_path(corpus.REAL_FIXTURE)
            if not vmcore.exists():
                print(f"conformance: {vmcore} is not built (--no-real to go without)",
                      file=sys.stderr)
                return 1
            entries[:0] = [corpus.Entry("real-" + corpus.REAL_FIXTURE, [str(vmcore)], "elf",
                                        truth_path=str(vmcore), has_log=True, real=True),
                           *corpus.makedumpfile_outputs(vmcore, tc.corpus_dir(),
                                                         tc.tool("makedumpfile"))]
        jobs = [(e, c) for e in entries for c in tc.commands_for(e)]
        workdir = Path(tmp) / "out"
        workdir.mkdir()
        with ThreadPoolExecutor(args.jobs) as pool:
            outcomes = list(pool.map(lambda job: tc.run_command(job[0], job[1], workdir), jobs))
    failed = [o for o in outcomes if o.problems]
    for o in failed:
        entry = next(e for e in entries if e.name == o.entry)
        print(f"FAIL {entry.name} ({' '.join(entry.paths)}) {o.command}: "
              + "; ".join(o.problems))
    written = [o for o in outcomes if o.output_opened is not None]
    for o in written:
        if o.oracle_blind or not o.output_opened:
            print(f"{'blind' if o.oracle_blind else 'not opened'}: {o.entry} {o.command}")
    kinds: dict[str, int] = {}
    for e in entries:
        kinds[e.kind] = kinds.get(e.kind, 0) + 1
    print(f"\nfiles: {len(entries)} ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})")
    print(f"commands run: {len(outcomes)}; exit 0: {sum(o.code == 0 for o in outcomes)}; "
          f"refused (exit 1): {sum(o.refused for o in outcomes)}; "
          f"failing checks: {len(failed)}")
    print(f"tracebacks: {sum(o.traceback for o in outcomes)}")
    print(f"outputs written: {len(written)}; opened by libkdumpfile: "
          f"{sum(bool(o.output_opened) for o in written)}")
    print(f"outputs libkdumpfile 0.5.1 cannot judge (32-bit ARM/PPC kdump layout, or an "
          f"input it refuses too): {sum(o.oracle_blind for o in written)}")
    print(f"pages compared: {sum(o.pages_compared for o in outcomes)}; differing: "
          f"{sum(o.pages_differing for o in outcomes)}; lost at -d 0/--full: "
          f"{sum(o.pages_lost for o in outcomes)}")
    print(f"({time.monotonic() - started:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
