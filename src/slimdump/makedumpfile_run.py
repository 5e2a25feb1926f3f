"""What ``slimdump-makedumpfile`` does with a valid makedumpfile command
line (:mod:`slimdump.makedumpfile_args` parsed and checked it): the log
(``--dump-dmesg``), a dump (slimdump's policy, makedumpfile's formats), -R
and --reassemble; and when a dump cannot be written, the fallbacks that keep
something (the real makedumpfile, else a slimdump of the headers and notes).
"""

from __future__ import annotations

import os
import signal
import stat
import sys
from collections.abc import Callable, Sequence

from slimdump.capture import (
    TRIAGE_BESIDE,
    Decision,
    capture,
    decide,
    slim_metadata,
    summary_lines,
    triage_path,
    write_small_output,
)
from slimdump.errors import DumpError, Terminated, describe
from slimdump.makedumpfile_args import (
    ML_PRINT_COMMON,
    ML_PRINT_DEBUG,
    ML_PRINT_ERROR,
    ML_PRINT_PROGRESS,
    MdfArgs,
)
from slimdump.notes import metadata_note
from slimdump.policy import SLIM, Policy
from slimdump.sources import open_dump
from slimdump.writers.atomic import AtomicOutput
from slimdump.writers.options import ELF, FLAT, KDUMP, DumpOptions
from slimdump.writers.slim import slimdump_bytes

EXIT_OK, EXIT_FAILED = 0, 1
Say = Callable[[str], None]
HandOver = Callable[[Sequence[str], str], "int | None"]   # None: no real makedumpfile


def run(args: MdfArgs, argv: Sequence[str], *, written: Callable[[], int],
        hand_over: HandOver, say: Say) -> int:
    """Do what ``args`` asks; ``written()`` is how many bytes standard output
    took so far, ``hand_over(argv, why)`` execs the real makedumpfile."""
    def note(line: str) -> None:
        if args.message_level & ML_PRINT_COMMON:
            say(line)

    def error(line: str) -> None:
        if args.message_level & ML_PRINT_ERROR:
            say(line)

    for knob in args.no_effect:
        note(f"{knob}: makedumpfile's memory knob, no effect on the file (slimdump sizes "
             "its reads itself)")
    try:
        if args.rearrange:
            return _rearrange(args, note)
        if args.reassemble:
            return _reassemble(args, note)
        if args.dump_dmesg:
            return _dump_dmesg(args, note, error)
    except DumpError as exc:
        error(str(exc))
        return EXIT_FAILED
    return _dump(args, argv, written=written, hand_over=hand_over, note=note, error=error)


def _rearrange(args: MdfArgs, note: Say) -> int:
    """-R DUMPFILE: the flattened stream on standard input, rearranged."""
    from slimdump.writers.flat import reassemble

    dst = args.operands[0]
    with AtomicOutput(dst, overwrite=args.force) as out:
        size = reassemble(sys.stdin.buffer, out, name="<stdin>")
        out.commit()
    note(f"wrote {dst} ({size} bytes) from the flattened stream on standard input")
    return EXIT_OK


def _reassemble(args: MdfArgs, note: Say) -> int:
    """--reassemble SPLITFILE1 SPLITFILE2 [...] DUMPFILE."""
    from slimdump.sources.split import open_split
    from slimdump.writers.split import join_parts

    *parts, dst = args.operands
    if len(parts) < 2:
        raise DumpError(None, "--reassemble needs at least two --split files, then DUMPFILE")
    with open_split(parts) as source, AtomicOutput(dst, overwrite=args.force) as out:
        size = join_parts(source, out)
        out.set_size(size)
        out.commit()
    note(f"wrote {dst} ({size} bytes) from {len(parts)} --split files")
    return EXIT_OK


def _dump_dmesg(args: MdfArgs, note: Say, error: Say) -> int:
    """--dump-dmesg VMCORE LOGFILE: the log as makedumpfile writes it."""
    from slimdump.kernel.log import empty_log_warning, extract_dmesg

    if args.flat:
        raise DumpError(None, "--dump-dmesg -F (the log as a flattened stream) is not "
                              "implemented; give VMCORE LOGFILE")
    src, dst = args.operands
    with open_dump(src) as source:
        text = extract_dmesg(source, "makedumpfile")
        read = source.bytes_read
    if not text:
        error(empty_log_warning(src))
    with AtomicOutput(dst, overwrite=args.force) as out:
        out.write(text, 0)
        out.commit()
    note(f"wrote the kernel log to {dst} ({len(text)} bytes); read {read} bytes of {src}")
    return EXIT_OK


def _options(args: MdfArgs) -> DumpOptions:
    fmt = FLAT if args.flat else ELF if args.elf else KDUMP
    threads = None if args.threads is None else min(max(args.threads, 1), 256)
    split = tuple(args.operands[1:]) if args.split else ()
    splitblock = (args.splitblock << 10 if args.splitblock and args.splitblock > 0
                  else 1 << 30)
    return DumpOptions(fmt, "none" if args.elf else args.codec, args.dump_level, threads,
                       split, splitblock)


def _dump(args: MdfArgs, argv: Sequence[str], *, written: Callable[[], int],
          hand_over: HandOver, note: Say, error: Say) -> int:
    """VMCORE DUMPFILE, -F VMCORE, --split VMCORE DUMPFILE...: capture."""
    src = args.operands[0]
    dst = None if args.flat else args.operands[1]
    options = _options(args)
    progress = None if args.message_level & ML_PRINT_PROGRESS else False
    try:
        policy = Policy.load(None)
        # -F to standard output: the triage slimdump goes beside the file the
        # stream ends up in, when there is one to find
        triage = TRIAGE_BESIDE if dst else _stream_triage()
        result = capture(src, dst, overwrite=args.force, progress=progress, policy=policy,
                         options=options, work_dir=args.work_dir, triage=triage,
                         use_mmap=not args.non_mmap)
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
        error(f"stopped by {signal.Signals(signum).name}; nothing was written under the "
              "final name")
        return 128 + signum
    except Exception as exc:  # never lose a dump: every failure has a fallback
        error(f"capture failed: {describe(exc)}")
        if args.message_level & ML_PRINT_DEBUG:
            import traceback

            traceback.print_exc()
        return _fall_back(args, argv, src, dst, written=written, hand_over=hand_over,
                          note=note, error=error, problem=describe(exc))
    for line in summary_lines(result, policy.source, src):
        note(line)
    # the disk could not hold even the smallest dump: DUMPFILE holds it cut
    # short, its header marked incomplete, and the status is makedumpfile's
    # for ENOSPC (1; its 2 means a release mismatch)
    return EXIT_FAILED if result.incomplete else EXIT_OK


def stream_file() -> str | None:
    """The regular file standard output ends up in: itself; or, when it is
    a pipe, the file that the process reading the pipe writes its standard
    output to (kdump-tools: ``makedumpfile -F ... | compress > dump-incomplete``).
    None when there is none (a terminal, ssh, a device)."""
    try:
        st = os.fstat(1)
        if stat.S_ISREG(st.st_mode):
            return os.readlink("/proc/self/fd/1")
        if not stat.S_ISFIFO(st.st_mode):
            return None
        pipe = f"pipe:[{st.st_ino}]"
        pids = [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    except OSError:
        return None
    for pid in pids:
        try:
            if os.readlink(f"/proc/{pid}/fd/0") != pipe:
                continue
            out = os.readlink(f"/proc/{pid}/fd/1")
        except OSError:
            continue
        if out.startswith("/") and os.path.isfile(out):
            return out
    return None


def _stream_triage() -> str | None:
    where = stream_file()
    return triage_path(where) if where else None


def _fall_back(args: MdfArgs, argv: Sequence[str], src: str, dst: str | None, *,
               written: Callable[[], int], hand_over: HandOver, note: Say, error: Say,
               problem: str) -> int:
    """After a failed capture: nothing can be added to a stream that has
    begun; a hardware-error crash keeps away from the real makedumpfile
    (it would read the poisoned memory); anything else goes to the real
    makedumpfile; without one, a slimdump of the headers and notes."""
    if args.flat and written():
        error("the flattened stream on standard output is incomplete")
        return EXIT_FAILED
    if _hardware_crash(src) is False:
        what = "the --split files" if args.split else "the dump"
        handed = hand_over(argv, f"slimdump could not write {what}")
        if handed is not None:
            return handed
    try:
        size = _emergency_slimdump(src, dst, args, problem)
    except Exception as exc:
        error(f"no fallback dump either: {describe(exc)}")
        return EXIT_FAILED
    note(f"wrote a slimdump of the headers and notes instead ({size} bytes) to "
         f"{dst or 'standard output'}")
    return EXIT_FAILED


def _hardware_crash(src: str) -> bool | None:
    """Whether slimdump's decision for ``src`` is a slimdump; None when the
    source does not even open."""
    try:
        with open_dump(src) as source:
            return decide(source, Policy.load(None)).writes_slimdump
    except Exception:
        return None


def _emergency_slimdump(src: str, dst: str | None, args: MdfArgs, problem: str) -> int:
    """ELF headers and notes of ``src`` with a metadata note naming the
    failure: what kdump-tools keeps when nothing else could be written."""
    with open_dump(src) as source:
        decision = Decision(SLIM, None, None, f"capture failed: {problem}")
        meta = slim_metadata(source, decision)
        meta["capture_error"] = problem
        data = slimdump_bytes(source.header, [*source.notes, metadata_note(meta)])
    target = dst if not args.split else args.operands[1]
    write_small_output(data, target, flat=args.flat, overwrite=args.force)
    return len(data)
