"""The ``slimdump`` command line's grammar: commands, options, help text
and the checks on option values.  :mod:`slimdump.cli` runs what it parses;
each command's parser stores its name in ``args.command``."""

from __future__ import annotations

import argparse
import os
import sys

from slimdump import __version__
from slimdump.policy import DEFAULT_POLICY_FILE
from slimdump.triage.reasons import HEADLINES

DESCRIPTION = """\
slimdump saves and explains Linux kernel crash dumps (kdump).

When the crash was a hardware error (fatal machine check, firmware-reported
fatal error, unrecoverable NMI), capture writes a slimdump: the ELF headers and
notes (registers, VMCOREINFO, the reason), kilobytes. The reason comes from
the kernel's NT_NOCOREDUMP note, or, on stock kernels, from the crashed
kernel's log (only the log buffer is read). Software crashes get the filtered
dump makedumpfile would write, in its formats and with its option letters.
"""

EPILOG = """\
examples:
  slimdump capture -l -d 31 /proc/vmcore /var/crash/vmcore  # as kdump-utils' makedumpfile
  slimdump capture -F -c /proc/vmcore | ssh host 'cat > vmcore.flat'
  slimdump capture --split -l -d 31 /proc/vmcore vmcore.1 vmcore.2 vmcore.3
  slimdump inspect vmcore.1 vmcore.2 vmcore.3           # a --split set, any order
  slimdump capture --full /proc/vmcore /var/crash/vmcore   # the complete dump anyway
  slimdump dmesg /proc/vmcore /var/crash/dmesg.txt
  slimdump inspect /var/crash/vmcore                    # why did it crash?
  slimdump inspect --json /var/crash/vmcore | jq .nocoredump
  slimdump mark vmcore vmcore.mce --reason PANIC_MCE --message "Fatal local machine check"

exit status: 0 done, 1 failed (as makedumpfile)
"""


def _number(text: str, what: str, low: int, high: int | None = None) -> int:
    """``text`` as an integer in [low, high] (no upper bound for None), or
    argparse's one-line error naming ``what``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} {text!r} is not a number") from None
    if value < low or (high is not None and value > high):
        bounds = f"in {low}-{high}" if high is not None else f"at least {low}"
        raise argparse.ArgumentTypeError(f"{what} {value} is not {bounds}")
    return value


SETUP_DESCRIPTION = """\
Make kdump-tools run slimdump-makedumpfile where it runs makedumpfile:
dpkg-divert moves Debian's /usr/bin/makedumpfile to
/usr/bin/makedumpfile.distrib (where dpkg puts its upgrades too;
slimdump-makedumpfile hands it the options it does not implement) and
/usr/bin/makedumpfile becomes a link to slimdump-makedumpfile.  Running it
again changes nothing; --undo removes the link and the diversion, leaving
'dpkg-divert --list' as it was.  Needs root and kdump-tools.
"""

SETUP_EPILOG = """\
Fedora, RHEL (kdump-utils), by hand: this command does not change them.
kdump-utils names its collector in /etc/kdump.conf; set

  core_collector slimdump-makedumpfile -l --message-level 7 -d 31

and run 'kdumpctl restart' to rebuild the capture initramfs (with dracut),
which must then hold slimdump-makedumpfile, the Python it runs with and
slimdump's modules (not tried by slimdump's tests). Or divert makedumpfile
as on Debian, by hand.

examples:
  slimdump setup kdump-tools            # kdump-tools runs slimdump-makedumpfile
  slimdump setup kdump-tools --undo     # Debian's makedumpfile again
  slimdump setup kdump-tools --root /srv/image   # a system image being built
"""


def _dump_level(text: str) -> int:
    # makedumpfile takes "-d 31" and "-d 31,..." (per-cycle levels): the first counts
    return _number(text.split(",")[0], "dump level", 0, 31)


def _threads(text: str) -> int:
    return _number(text, "thread count", 1, 256)


def _splitblock(text: str) -> int:
    """--splitblock-size KB, in bytes."""
    return _number(text, "splitblock size (KiB)", 1) << 10


class _SubParser(argparse.ArgumentParser):
    """A command's parser: argparse's, formatted with :class:`_HelpFormatter`."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


def _columns() -> int:
    """The terminal width as shutil.get_terminal_size() finds it ($COLUMNS,
    then stdout's terminal, else 80), without importing shutil: argparse
    would, for every command, about 2 ms of a capture's start-up."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _HelpFormatter(argparse.HelpFormatter):
    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _columns() - 2 if width is None else width)


class _RawDescriptionHelpFormatter(_HelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimdump", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=_RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--version", action="version", version=f"slimdump {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_SubParser)

    cap = sub.add_parser(
        "capture", help="save a dump: a slimdump when the kernel left NT_NOCOREDUMP",
        usage="%(prog)s [options] SRC [DST]\n"
              "       %(prog)s [options] PART1 PART2 [PART3...] DST   (a --split set as SRC)\n"
              "       %(prog)s [options] --split SRC DST1 DST2 [DST3...]",
        description="Read SRC (/proc/vmcore, an ELF vmcore, a kdump-compressed or flattened "
                    "dump) and write DST. With an "
                    "NT_NOCOREDUMP note the kernel's reason counts and nothing of its memory is "
                    "read. Without one, capture reads the crashed kernel's log buffer (only its "
                    "pages) and classifies the panic: a fatal machine check, a fatal firmware "
                    "(GHES) error or an unrecoverable NMI is a hardware crash. The policy maps "
                    "the reason to an action: slim (ELF headers + notes + the reason and "
                    "metadata; no log, even when detection read it), dmesg (slim + the "
                    "crashed kernel's log), normal (the filtered dump: format and level "
                    "below) or full (the complete dump: a byte-exact copy; for a machine "
                    "check, every page but its ADDR page). "
                    "Defaults: PANIC_MCE, PANIC_GHES, PANIC_NMI -> slim, anything else -> "
                    "normal. If the log cannot be read, the normal dump is saved. DST is "
                    "written under a temporary name, fsynced and renamed; mode 0600. "
                    "Before a normal or full dump, the triage slimdump (reason, log, "
                    "metadata; kilobytes) is written and fsynced to DST.triage, so that "
                    "they survive whatever happens to the big dump. If the disk fills up, "
                    "the partial dump is removed and the smallest dump is written instead "
                    "(kdump-compressed, -d 31, zstd when installed, else zlib). Pages that "
                    "cannot be read from SRC are left out (never written as zeros) and "
                    "listed in the dump's SLIMDUMP metadata. Exit status: 0 a dump was "
                    "saved (warnings say if it is not the one asked for), 1 nothing was "
                    "saved under DST (the triage slimdump may be), 2 the disk could not hold "
                    "even the smallest dump: DST holds it cut short, its header marked "
                    "incomplete, 128+N stopped by signal N (nothing under DST).")
    cap.add_argument("paths", metavar="PATH", nargs="+",
                     help="SRC: the dump to read, e.g. /proc/vmcore, or every part of a "
                          "makedumpfile --split set (any order); DST: the file to write (with "
                          "-F: standard output when omitted or -). With --split: SRC DST1 DST2 "
                          "[DST3...]")
    fmt = cap.add_argument_group(
        "format of the normal dump (makedumpfile's letters; the last codec given wins)")
    for letter, codec, text in (("-c", "zlib", "zlib"), ("-l", "lzo", "LZO1X-1"),
                                ("-p", "snappy", "snappy"), ("-z", "zstd", "zstd")):
        fmt.add_argument(letter, dest="codec", action="store_const", const=codec,
                         help=f"kdump-compressed, pages compressed with {text}")
    fmt.add_argument("-E", dest="format", action="store_const", const="elf",
                     help="ELF with the excluded pages cut out (makedumpfile -E)")
    fmt.add_argument("-F", dest="format", action="store_const", const="flat",
                     help="flattened stream (for pipes and ssh; undo with 'slimdump "
                          "reassemble' or makedumpfile -R); a slimdump is flattened too")
    fmt.add_argument("-d", dest="dump_level", type=_dump_level, default=31, metavar="LEVEL",
                     help="dump level 0-31, a sum of: 1 zero pages, 2 non-private cache, "
                          "4 private cache, 8 user pages, 16 free pages (default 31)")
    fmt.add_argument("--num-threads", dest="threads", type=_threads, default=None,
                     metavar="N", help="threads that read and compress pages, as makedumpfile's "
                                       "--num-threads (default: one per CPU)")
    fmt.add_argument("--split", action="store_true",
                     help="write the dump as N kdump-compressed parts, one per DST, as "
                          "makedumpfile --split: each holds the pages of one pfn range (ranges "
                          "cut at splitblocks, about equal numbers of pages); read them back "
                          "with all parts as SRC, or join them with 'slimdump reassemble' or "
                          "makedumpfile --reassemble. A slimdump (slim/dmesg action) is one "
                          "file: it goes to DST1 and the other DSTs are not created")
    fmt.add_argument("--splitblock-size", dest="splitblock", type=_splitblock,
                     default=1 << 30, metavar="KB",
                     help="--split cuts memory at multiples of this many KiB (default 1048576 "
                          "= 1 GiB, as makedumpfile: a machine with less memory puts every "
                          "page in the first part)")
    cap.set_defaults(codec="none", format="kdump")
    cap.add_argument("--full", action="store_true",
                     help="collect the complete vmcore whatever the reason")
    cap.add_argument("--policy", metavar="FILE",
                     help=f"TOML file mapping reason codes to actions (slim, dmesg, full, "
                          f"normal); default {DEFAULT_POLICY_FILE} when it exists")
    cap.add_argument("--dump-dmesg", action="store_true",
                     help="also write the crashed kernel's log to DST.dmesg.txt (as kdump-tools "
                          "does); reads the log buffer even when the kernel left a note")
    tri = cap.add_mutually_exclusive_group()
    tri.add_argument("--triage", metavar="FILE",
                     help="write the triage slimdump to FILE instead of DST.triage (with -F "
                          "to standard output there is none unless this is given)")
    tri.add_argument("--no-triage", action="store_true",
                     help="no triage slimdump before a normal or full dump")
    cap.add_argument("-f", "--force", action="store_true", help="overwrite DST if it exists")
    cap.add_argument("--no-progress", action="store_true",
                     help="no progress bar (shown only on a terminal anyway)")
    cap.add_argument("--non-mmap", action="store_true",
                     help="read SRC with read() only, as makedumpfile --non-mmap (default: "
                          "page data and struct pages are copied from mmap() windows of SRC, "
                          "which /proc/vmcore serves far faster; a page that faults under the "
                          "mapping is read again with read(), and lost only if that fails)")

    mark = sub.add_parser(
        "mark", help="copy a vmcore adding an NT_NOCOREDUMP note (simulate the kernel side)",
        description="Write a copy of SRC whose notes carry an NT_NOCOREDUMP note, as a kernel "
                    "with the 2011 slimdump patch would have left /proc/vmcore. Known reason "
                    f"codes: {', '.join(HEADLINES)}.")
    mark.add_argument("src", metavar="SRC")
    mark.add_argument("dst", metavar="DST")
    mark.add_argument("--reason", required=True, metavar="CODE",
                      help="reason code, the note's owner name (e.g. PANIC_MCE)")
    mark.add_argument("--message", default="", metavar="TEXT",
                      help="the kernel's words for the cause (e.g. 'Fatal local machine check')")
    mark.add_argument("-f", "--force", action="store_true",
                      help="overwrite DST; add a note even if SRC has one")
    mark.add_argument("--no-progress", action="store_true", help="no progress bar")

    dm = sub.add_parser(
        "dmesg", help="extract the crashed kernel's log",
        usage="%(prog)s [options] SRC [DST]\n"
              "       %(prog)s [options] PART1 PART2 [PART3...] [DST]   (a --split set)",
        description="Write the crashed kernel's log buffer as text, reading only the pages "
                    "of the log buffer (found through VMCOREINFO). Formats: makedumpfile "
                    "(default; as makedumpfile --dump-dmesg) or vmcore-dmesg (as kexec-tools' "
                    "vmcore-dmesg).")
    dm.add_argument("paths", metavar="PATH", nargs="+",
                    help="SRC: the dump, or every part of a makedumpfile --split set (any "
                         "order); DST: output file (default: stdout). A lone --split part works "
                         "when the log buffer's pages are in it, else it names the part's range")
    dm.add_argument("--format", choices=("makedumpfile", "vmcore-dmesg"), default="makedumpfile")
    dm.add_argument("-f", "--force", action="store_true", help="overwrite DST if it exists")

    rea = sub.add_parser(
        "reassemble", help="turn a flattened stream (-F) back into a dump file (makedumpfile -R), "
                           "or join --split parts (makedumpfile --reassemble)",
        usage="%(prog)s [--input FILE] [-f] DST\n"
              "       %(prog)s [-f] PART1 PART2 [PART3...] DST",
        description="Read a flattened stream (from -F, e.g. saved over ssh) on standard input "
                    "or from --input, and write the kdump-compressed file it describes. Or "
                    "join the parts of a --split set (any order) into the unsplit "
                    "kdump-compressed file, copying the stored pages as they are (as "
                    "makedumpfile --reassemble). slimdump also reads a set without joining it: "
                    "give every part as SRC.")
    rea.add_argument("paths", metavar="PATH", nargs="+",
                     help="DST alone (flattened input), or the parts then DST")
    rea.add_argument("--input", metavar="FILE", help="read the stream from FILE, not stdin")
    rea.add_argument("-f", "--force", action="store_true", help="overwrite DST if it exists")

    ins = sub.add_parser(
        "inspect", help="tell why the machine died",
        description="Print what FILE says about the crash: the NT_NOCOREDUMP headline and "
                    "reason, kernel release, crash time, the panic line and its cause, every "
                    "machine-check record decoded, per-CPU registers, notes, VMCOREINFO and the "
                    "last lines of the log. The log comes from a slimdump's log note, or from "
                    "the dump's memory (only the log buffer's pages; --no-log to skip).")
    ins.add_argument("file", metavar="FILE", nargs="+",
                     help="the dump, or every part of a makedumpfile --split set (any order); "
                          "a part given alone says which pfns it holds")
    ins.add_argument("--json", action="store_true", help="one JSON object (stable keys)")
    ins.add_argument("--vmcoreinfo", action="store_true", help="also list every VMCOREINFO entry")
    ins.add_argument("--no-log", action="store_true",
                     help="do not read the log buffer from the dump's memory (a slimdump's "
                          "log note is still shown)")

    setup = sub.add_parser(
        "setup", help="make Debian's kdump service (kdump-tools) run slimdump, or undo it",
        description=SETUP_DESCRIPTION,
        epilog=SETUP_EPILOG, formatter_class=_RawDescriptionHelpFormatter)
    setup.add_argument("service", choices=("kdump-tools",), metavar="SERVICE",
                       help="kdump-tools (Debian, Ubuntu); for kdump-utils see below")
    setup.add_argument("--undo", action="store_true",
                       help="remove the link and the diversion: the service runs makedumpfile")
    setup.add_argument("--root", default="/", metavar="DIR",
                       help="change the system image at DIR (a chroot's directory; "
                            "dpkg-divert --root DIR), not this system")
    return parser
