"""``slimdump-makedumpfile``: slimdump under makedumpfile's name.

The kdump services run ``makedumpfile`` with their own command lines:
Debian's kdump-tools ``makedumpfile --dump-dmesg /proc/vmcore LOG`` then
``makedumpfile -F -c -d 31 /proc/vmcore | compress > dump-incomplete``;
Fedora's kdump-utils ``makedumpfile -l --message-level 7 -d 31 /proc/vmcore
DIR/vmcore-incomplete`` (``-F`` to standard output for ssh and raw targets,
``--num-threads=N`` with more than one CPU, ``--check-params`` from
``mkdumprd``, ``-R`` to recover a raw target).  This program takes those
command lines and applies slimdump's policy: a hardware-error crash gets a
slimdump (flattened with -F), anything else the dump makedumpfile would
write, in the same format.

Options slimdump does not implement (``-x VMLINUX`` filtering, ``--config``,
``--eppic``, ``--mem-usage``, Xen, ...) hand the whole command line to the
real makedumpfile (Debian: ``/usr/bin/makedumpfile.distrib`` once ``slimdump
setup kdump-tools`` diverted it), or are refused in one line; never ignored.

Nothing is lost for slimdump's sake: if slimdump itself cannot start (a
broken installation) or fails before it has written anything, the command
line goes to the real makedumpfile; without one, what is left is a slimdump
of the headers and notes, because kdump-tools keeps whatever standard output
held (its pipeline's exit status is ``compress``'s, not the collector's).

Only the standard library is imported before the command line is read, so
that the hand-over works even when the rest of slimdump does not import.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Sequence

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from slimdump.makedumpfile_args import Verdict

EXIT_OK, EXIT_FAILED = 0, 1
REAL_MAKEDUMPFILE_ENV = "SLIMDUMP_REAL_MAKEDUMPFILE"

HELP = """\
usage: makedumpfile [-c|-l|-p|-z] [-E] [-F] [-d LEVEL] [options] VMCORE [DUMPFILE]
       makedumpfile --dump-dmesg VMCORE LOGFILE
       makedumpfile --split [options] VMCORE DUMPFILE1 DUMPFILE2 [...]
       makedumpfile -R DUMPFILE < FLATTENED
       makedumpfile --reassemble SPLITFILE1 SPLITFILE2 [...] DUMPFILE
       makedumpfile --check-params [options...]

This is slimdump answering to makedumpfile's name (slimdump-makedumpfile), for
Debian's kdump-tools and Fedora's kdump-utils. A crash caused by a hardware
error (the kernel's NT_NOCOREDUMP note, or on stock kernels a fatal machine
check, firmware-reported fatal error or unrecoverable NMI found in the crashed
kernel's log) is saved as a slimdump: ELF headers and notes, a few KiB, in the
requested container (-F: a flattened stream that 'makedumpfile -R' and
'slimdump reassemble' turn back into the file). Any other crash gets the dump
makedumpfile would write, in the same format. The policy file
/etc/slimdump/policy.toml can change that (see 'slimdump capture --help').

options (as makedumpfile 1.7.2):
  -c, -l, -p, -z     kdump-compressed, pages compressed with zlib, LZO, snappy, zstd
  -E                 ELF (no compression)
  -F                 flattened stream on standard output
  -d LEVEL           exclude pages: 1 zero, 2 cache, 4 private cache, 8 user, 16 free
  -f                 overwrite DUMPFILE
  -D                 debug messages
  --message-level N  what to print: 1 progress, 2 common, 4 errors, 8 debug, 16 report
  --num-threads N    threads that compress pages
  --split            one DUMPFILE per part
  --splitblock-size KB   where --split may cut (default 1 GiB)
  --work-dir DIR     where large page bitmaps go (default: beside DUMPFILE)
  --dump-dmesg       write the crashed kernel's log as makedumpfile does
  -R                 rearrange a flattened stream from standard input into DUMPFILE
  --reassemble       join --split files
  --check-params     only check the command line, as makedumpfile does
  --non-mmap         read VMCORE with read() instead of through mmap() windows
  -b ORDER, --cyclic-buffer KB
                     makedumpfile's memory knobs: accepted with a note, they do
                     not change the file (slimdump sizes its reads itself)
  -x, -i, -g, -e, -L, -X, --config, --eppic, --mem-usage, --vtop, --dry-run,
  --show-stats, --partial-dmesg, --diskset, --xen-*
                     not implemented: the command line goes to the real
                     makedumpfile ($SLIMDUMP_REAL_MAKEDUMPFILE, else
                     /usr/bin/makedumpfile.distrib, else makedumpfile on PATH),
                     or is refused when there is none

exit status: 0 done (a warning says when a full disk left room only for the
smallest dump, -d 31), 1 failed (as makedumpfile; when even the smallest dump
did not fit, DUMPFILE holds it cut short, its header marked incomplete, as
makedumpfile leaves it), 128+N stopped by signal N.
Before a dump bigger than a slimdump, the triage slimdump (reason, log;
kilobytes) is written and fsynced beside DUMPFILE: DUMPFILE.triage, or for
kdump-tools' dump-incomplete, dump.triage.
"""


def _say(line: str) -> None:
    print(f"slimdump-makedumpfile: {line}", file=sys.stderr, flush=True)


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def real_makedumpfile() -> str | None:
    """The real makedumpfile binary (an ELF executable, so never this
    script under makedumpfile's name), or None."""
    from slimdump.kdumpservice import DIVERTED_MAKEDUMPFILE

    candidates = [os.environ.get(REAL_MAKEDUMPFILE_ENV, ""), DIVERTED_MAKEDUMPFILE]
    for directory in os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").split(os.pathsep):
        candidates.append(os.path.join(directory or ".", "makedumpfile"))
    for path in candidates:
        if path and os.access(path, os.X_OK) and _is_elf(path):
            return path
    return None


def _hand_over(argv: Sequence[str], why: str) -> int | None:
    """Replace this process with the real makedumpfile, same arguments;
    None when there is no real makedumpfile (nothing was done)."""
    real = real_makedumpfile()
    if real is None:
        return None
    _say(f"{why}: handing the command line to {real}")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(real, [real, *argv])
    return EXIT_FAILED  # not reached


def _delegate(argv: Sequence[str], why: str) -> int:
    """The real makedumpfile does it, or nobody: a one-line refusal."""
    _hand_over(argv, why)
    _say(f"{why}, and no real makedumpfile is installed to take it (set "
         f"{REAL_MAKEDUMPFILE_ENV})")
    return EXIT_FAILED


class _CountingStdout(io.FileIO):
    """File descriptor 1, counting what was written: whether a fallback may
    still use standard output."""

    written = 0

    def write(self, data: object) -> int:  # type: ignore[override]
        n = super().write(data)  # type: ignore[arg-type]
        _CountingStdout.written += n or 0
        return n or 0


def _watch_stdout() -> None:
    raw = _CountingStdout(1, "wb", closefd=False)
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(raw), write_through=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        from slimdump.makedumpfile_args import Verdict, check, parse
        from slimdump.makedumpfile_run import run
    except Exception as exc:  # a broken installation must not lose the dump
        return _delegate(argv, f"slimdump cannot start ({type(exc).__name__}: {exc})")
    prog = os.path.basename(sys.argv[0]) if argv is None else "makedumpfile"
    args = parse(argv, prog)
    if isinstance(args, Verdict):
        return _refuse(args, check_only="--check-params" in argv)
    if args.delegated:
        return _delegate(argv, f"{' '.join(sorted(set(args.delegated)))} is not "
                               "implemented by slimdump")
    if args.help:
        sys.stdout.write(HELP)
        return EXIT_OK
    if args.version:
        from slimdump import __version__

        print(f"makedumpfile: slimdump {__version__} with makedumpfile 1.7.2's command line "
              f"(real makedumpfile: {real_makedumpfile() or 'none'})")
        return EXIT_OK
    verdict = check(args)
    if verdict is not None:
        return _refuse(verdict, check_only=args.check_params)
    if args.check_params:
        return EXIT_OK
    _watch_stdout()
    from slimdump.errors import unwinding_signals

    with unwinding_signals():
        return run(args, argv, written=lambda: _CountingStdout.written,
                   hand_over=_hand_over, say=_say)


def _refuse(verdict: Verdict, *, check_only: bool) -> int:
    """An invalid command line: makedumpfile's own lines for --check-params
    (mkdumprd shows them), one line of slimdump's otherwise."""
    if check_only:
        if verdict.getopt_line:
            print(verdict.getopt_line, file=sys.stderr)
        stream = sys.stderr if verdict.to_stderr else sys.stdout
        for line in verdict.lines:
            print(line, file=stream)
    else:
        _say(f"invalid command line: {verdict.problem} (see slimdump-makedumpfile --help)")
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
