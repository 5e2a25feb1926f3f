"""The ``slimdump`` command line: a thin layer over the library.

Exit status follows makedumpfile: 0 done, 1 failed.  Every failure prints
one line on stderr naming the file and the problem, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from slimdump.cliargs import build_parser
from slimdump.errors import DumpError, Terminated, describe, unwinding_signals
from slimdump.notes import NoCoreDump, find_nocoredump
from slimdump.policy import Policy
from slimdump.progress import human_size
from slimdump.sources import ElfCore, open_dump
from slimdump.triage.reasons import valid_reason
from slimdump.writers.atomic import AtomicOutput
from slimdump.writers.marked import write_marked

EXIT_OK, EXIT_FAILED = 0, 1
# the disk could not hold even the smallest dump: DST holds it cut short and
# marked incomplete (DUMP_DH_COMPRESSED_INCOMPLETE), beside the triage slimdump
EXIT_INCOMPLETE = 2

def _is_split_part(path: str) -> bool:
    """An existing kdump-compressed file that is a part of a --split set."""
    if not os.path.isfile(path):
        return False
    try:
        with open_dump(path) as source:
            return bool(getattr(source, "split", False))
    except DumpError:
        return False


def _sources_and_dst(paths: Sequence[str]) -> tuple[str | list[str], str | None]:
    """SRC [SRC...] [DST]: one path is SRC alone; several are the parts of a
    --split set then DST, except that a last path which is itself a --split
    part is read, never overwritten (``dmesg P1 P2 P3`` prints to stdout)."""
    if len(paths) == 1:
        return paths[0], None
    if _is_split_part(paths[-1]):
        return list(paths), None
    srcs = list(paths[:-1])
    return (srcs[0] if len(srcs) == 1 else srcs), paths[-1]


def _one_or_all(paths: Sequence[str]) -> str | list[str]:
    return paths[0] if len(paths) == 1 else list(paths)


# Each command imports what it needs when it runs: a capture kernel should
# not pay for the analyzer's imports, nor dmesg for capture's.

def cmd_capture(args: argparse.Namespace) -> int:
    from slimdump.capture import TRIAGE_BESIDE, capture

    policy = Policy.load(args.policy)
    from slimdump.writers.options import DumpOptions

    split: tuple[str, ...] = ()
    if args.split:
        # makedumpfile's form: capture --split SRC DST1 DST2 [...]
        if len(args.paths) < 3:
            raise DumpError(None, "--split needs SRC and at least two DSTs: "
                                  "capture --split SRC DST1 DST2 [DST3...]")
        if args.format != "kdump":
            raise DumpError(None, "--split writes kdump-compressed parts: not with -E or -F")
        args.src, split = args.paths[0], tuple(args.paths[1:])
        args.dst = split[0]
    else:
        args.src, args.dst = _sources_and_dst(args.paths)
    if args.dst in (None, "-") and args.format != "flat":
        raise DumpError(None, "DST is required (only -F writes to standard output)")
    options = DumpOptions(args.format, args.codec, args.dump_level, args.threads, split,
                          args.splitblock)
    triage = None if args.no_triage else args.triage or TRIAGE_BESIDE
    result = capture(args.src, args.dst, full=args.full, overwrite=args.force,
                     progress=False if args.no_progress else None, policy=policy,
                     dump_dmesg=args.dump_dmesg, options=options, triage=triage,
                     use_mmap=not args.non_mmap)
    from slimdump.capture import summary_lines

    for line in summary_lines(result, policy.source, args.src):
        print(f"slimdump: {line}", file=sys.stderr)
    return EXIT_INCOMPLETE if result.incomplete else EXIT_OK


def cmd_mark(args: argparse.Namespace) -> int:
    if not valid_reason(args.reason):
        raise DumpError(None, f"invalid reason code {args.reason!r}: use printable ASCII "
                              "without spaces, e.g. PANIC_MCE")
    with open_dump(args.src) as source:
        if not isinstance(source, ElfCore):
            raise DumpError(args.src, "mark needs an ELF vmcore")
        existing = find_nocoredump(source.notes)
        if existing is not None and not args.force:
            raise DumpError(args.src, f"already carries an NT_NOCOREDUMP note "
                                      f"({existing.name}); use -f to add another (the "
                                      "first one counts)")
        note = NoCoreDump(args.reason, args.message).to_note()
        shift = write_marked(source, args.dst, note, overwrite=args.force,
                             progress=False if args.no_progress else None)
    where = "in the note padding" if shift == 0 else f"moving the data by {shift} bytes"
    print(f"slimdump: wrote {args.dst} with NT_NOCOREDUMP {args.reason} ({where})",
          file=sys.stderr)
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from slimdump.analysis.report import collect, render

    with open_dump(_one_or_all(args.file)) as source:
        facts = collect(source, read_log=not args.no_log)
    if args.json:
        import json

        json.dump(facts, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(facts, all_vmcoreinfo=args.vmcoreinfo))
    return EXIT_OK


def cmd_dmesg(args: argparse.Namespace) -> int:
    from slimdump.kernel.log import empty_log_warning, extract_dmesg

    args.src, args.dst = _sources_and_dst(args.paths)
    with open_dump(args.src) as source:
        text = extract_dmesg(source, args.format)
        read = source.bytes_read
    src = args.src if isinstance(args.src, str) else " ".join(args.src)
    if not text:
        print(f"slimdump: {empty_log_warning(src)}", file=sys.stderr)
    if args.dst:
        with AtomicOutput(args.dst, overwrite=args.force) as out:
            out.write(text, 0)
            out.commit()
        print(f"slimdump: wrote the kernel log to {args.dst} ({human_size(len(text))}); read "
              f"{human_size(read)} of {src}", file=sys.stderr)
    else:
        sys.stdout.buffer.write(text)
        sys.stdout.flush()
    return EXIT_OK


def cmd_reassemble(args: argparse.Namespace) -> int:
    if len(args.paths) > 1:
        return _join_split(args)
    args.dst = args.paths[0]
    from slimdump.writers.flat import reassemble

    source = open(args.input, "rb") if args.input else sys.stdin.buffer  # noqa: SIM115
    try:
        with AtomicOutput(args.dst, overwrite=args.force) as out:
            size = reassemble(source, out, name=args.input or "<stdin>")
            out.commit()
    finally:
        if args.input:
            source.close()
    print(f"slimdump: wrote {args.dst} ({human_size(size)})", file=sys.stderr)
    return EXIT_OK


def _join_split(args: argparse.Namespace) -> int:
    """reassemble PART1 PART2 [...] DST: the parts of a --split set joined."""
    from slimdump.sources.split import open_split
    from slimdump.writers.split import join_parts

    if args.input:
        raise DumpError(None, "--input is for a flattened stream, not with --split parts")
    *parts, dst = args.paths
    if len(parts) < 2:
        raise DumpError(None, "reassemble PART1 PART2 [PART3...] DST: a --split set has at "
                              "least two parts")
    with open_split(parts) as source, AtomicOutput(dst, overwrite=args.force) as out:
        size = join_parts(source, out)
        out.set_size(size)
        out.commit()
    print(f"slimdump: wrote {dst} ({human_size(size)}) from {len(parts)} --split parts",
          file=sys.stderr)
    return EXIT_OK


def cmd_setup(args: argparse.Namespace) -> int:
    from slimdump import kdumpservice

    outcome = (kdumpservice.undo if args.undo else kdumpservice.setup)(args.root)
    print(f"slimdump: {outcome.message}")
    return EXIT_OK


COMMANDS = {"capture": cmd_capture, "mark": cmd_mark, "dmesg": cmd_dmesg,
            "reassemble": cmd_reassemble, "inspect": cmd_inspect, "setup": cmd_setup}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with unwinding_signals():
            return COMMANDS[args.command](args)
    except DumpError as exc:
        print(f"slimdump: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
        print(f"slimdump: stopped by {signal.Signals(signum).name}; nothing was written "
              "under the final name", file=sys.stderr)
        return 128 + signum
    except BrokenPipeError:
        return EXIT_FAILED
    except Exception as exc:    # a bug or data no check foresaw: one line, no traceback
        print(f"slimdump: internal error: {describe(exc)} (SLIMDUMP_DEBUG=1 shows where)",
              file=sys.stderr)
        if os.environ.get("SLIMDUMP_DEBUG"):
            import traceback

            traceback.print_exc()
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
