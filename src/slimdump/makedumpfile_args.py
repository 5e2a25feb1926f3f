"""makedumpfile's command line, as the kdump services write it.

Debian's kdump-tools and Fedora's kdump-utils run a program named
``makedumpfile`` with makedumpfile's options; :mod:`slimdump.makedumpfile_cli`
answers to that name.  This module is its grammar: the option table of
makedumpfile 1.7.2 (GNU ``getopt_long``: options and operands in any order,
long options abbreviated to any unique prefix, ``--opt=value``), and the
checks makedumpfile makes before it opens a file, with makedumpfile's own
words, so that ``--check-params`` (kdump-utils' ``mkdumprd`` validates its
``core_collector`` with it) answers as makedumpfile does.  The checks were
learnt from makedumpfile 1.7.2's answers (tests/test_makedumpfile_cli.py
holds them to it), not from its source.
"""

from __future__ import annotations

import getopt
from collections.abc import Sequence

from slimdump.record import field, record

# makedumpfile 1.7.2's options.  Values are atoi()'d where makedumpfile
# does: "-d x" is level 0, "-d 31,1" level 31.
SHORT_OPTIONS = "b:cDd:eEFfg:hi:lL:pRvXx:z"
# In makedumpfile's order: glibc lists an ambiguous prefix's candidates in it.
LONG_OPTIONS = [
    "split", "reassemble", "xen-syms=", "xen-vmcoreinfo=", "xen_phys_start=",
    "message-level=", "vtop=", "dump-dmesg", "config=", "help", "diskset=", "cyclic-buffer=",
    "eppic=", "non-mmap", "mem-usage", "splitblock-size=", "work-dir=", "num-threads=",
    "check-params", "dry-run", "show-stats", "partial-dmesg",
]
# What slimdump does not implement: the whole command line goes to the real
# makedumpfile (vmlinux-based filtering, eppic, Xen, analysis modes).
DELEGATED = frozenset({
    "-e", "-g", "-i", "-L", "-x", "-X", "--config", "--diskset", "--dry-run", "--eppic",
    "--mem-usage", "--partial-dmesg", "--show-stats", "--vtop", "--xen-syms",
    "--xen-vmcoreinfo", "--xen_phys_start",
})
# Tuning knobs for makedumpfile's own memory use; the file they give is the
# same, and slimdump sizes its reads itself.
NO_EFFECT = frozenset({"-b", "--cyclic-buffer"})
CODEC_LETTERS = {"-c": "zlib", "-l": "lzo", "-p": "snappy", "-z": "zstd"}

INVALID = "Commandline parameter is invalid."
TRY_HELP = "Try `makedumpfile --help' for more information."
ML_PRINT_PROGRESS, ML_PRINT_COMMON, ML_PRINT_ERROR, ML_PRINT_DEBUG = 1, 2, 4, 8
DEFAULT_MESSAGE_LEVEL = ML_PRINT_PROGRESS | ML_PRINT_COMMON | ML_PRINT_ERROR | 16


def atoi(text: str) -> int:
    """C's atoi: optional blanks and sign, then the leading digits; 0 if none."""
    text = text.lstrip(" \t\n\r\f\v")
    sign = -1 if text[:1] == "-" else 1
    if text[:1] in "+-":
        text = text[1:]
    digits = len(text) - len(text.lstrip("0123456789"))
    return sign * int(text[:digits]) if digits else 0


@record
class MdfArgs:
    """A makedumpfile command line, parsed."""

    options: list[tuple[str, str]]          # every option as given, in order
    operands: list[str]
    codec: str = "none"
    elf: bool = False
    flat: bool = False
    force: bool = False
    dump_level: int = 31                    # makedumpfile's default without -d
    message_level: int = DEFAULT_MESSAGE_LEVEL
    threads: int | None = None
    work_dir: str | None = None
    splitblock: int | None = None
    check_params: bool = False
    dump_dmesg: bool = False
    rearrange: bool = False                 # -R
    reassemble: bool = False
    split: bool = False
    non_mmap: bool = False                  # --non-mmap: read the source with pread()
    help: bool = False
    version: bool = False
    delegated: list[str] = field(default_factory=list)
    no_effect: list[str] = field(default_factory=list)


@record
class Verdict:
    """Why a command line is invalid: makedumpfile's lines (and the stream
    it prints them on) and one line of slimdump's own."""

    lines: list[str]
    to_stderr: bool
    problem: str
    getopt_line: str | None = None      # glibc's getopt message (always stderr)


def _getopt_line(prog: str, exc: getopt.GetoptError) -> str:
    """glibc getopt_long's message for what Python's getopt refused."""
    opt, msg = exc.opt, exc.msg
    if len(opt) == 1 and not msg.startswith("option --"):
        if "requires argument" in msg:
            return f"{prog}: option requires an argument -- '{opt}'"
        return f"{prog}: invalid option -- '{opt}'"
    if "not a unique prefix" in msg:
        names = " ".join(f"'--{n.rstrip('=')}'" for n in LONG_OPTIONS if n.startswith(opt))
        return f"{prog}: option '--{opt}' is ambiguous; possibilities: {names}"
    if "requires argument" in msg:
        return f"{prog}: option '--{opt}' requires an argument"
    if "must not have an argument" in msg:
        return f"{prog}: option '--{opt}' doesn't allow an argument"
    return f"{prog}: unrecognized option '--{opt}'"


def _invalid(args: MdfArgs, problem: str, *first: str) -> Verdict:
    return Verdict([*first, INVALID, TRY_HELP], args.flat, problem)


# -d and --message-level: atoi()'d, 0-31, or makedumpfile's words
LEVELS = {"-d": ("dump_level", "Dump_level", "dump level"),
          "--message-level": ("message_level", "Message_level", "message level")}


def _flat_before_error(argv: Sequence[str], exc: getopt.GetoptError) -> bool:
    """Whether -F came before the option getopt refused: makedumpfile
    prints on standard error from -F on (standard output is the dump)."""
    for token in argv:
        if token == "--":
            return False
        if token.startswith("--"):
            if token[2:].split("=")[0] == exc.opt:
                return False
        elif token.startswith("-") and len(token) > 1:
            if exc.opt in token[1:] and "F" not in token[1:token.index(exc.opt) + 1]:
                return False
            if "F" in token[1:]:
                return True
    return False


def parse(argv: Sequence[str], prog: str = "makedumpfile") -> MdfArgs | Verdict:
    """``argv`` (without the program name) as makedumpfile reads it, or the
    Verdict that makes makedumpfile stop while reading options."""
    try:
        options, operands = getopt.gnu_getopt(list(argv), SHORT_OPTIONS, LONG_OPTIONS)
    except getopt.GetoptError as exc:
        verdict = Verdict([INVALID, TRY_HELP], _flat_before_error(argv, exc),
                          f"invalid option: {exc.msg}", _getopt_line(prog, exc))
        return verdict
    # Python's getopt writes abbreviations in full, as glibc's does
    args = MdfArgs(options, operands)
    for opt, value in options:
        if opt in CODEC_LETTERS:
            args.codec = CODEC_LETTERS[opt]     # the last one given wins
        elif opt in LEVELS:
            attr, word, what = LEVELS[opt]
            level = atoi(value)
            if not 0 <= level <= 31:
                return Verdict([f"{word}({level}) is invalid."], args.flat,
                               f"{what} {level} is not in 0-31")
            setattr(args, attr, level)
        elif opt == "--num-threads":
            args.threads = atoi(value)
        elif opt == "--splitblock-size":
            args.splitblock = atoi(value)
        elif opt == "--work-dir":
            args.work_dir = value
        elif opt in DELEGATED:
            args.delegated.append(opt)
        elif opt in NO_EFFECT:
            args.no_effect.append(opt if not value else f"{opt} {value}")
        else:
            flag = {"-E": "elf", "-F": "flat", "-f": "force", "-D": "debug",
                    "--check-params": "check_params", "--dump-dmesg": "dump_dmesg",
                    "-R": "rearrange", "--reassemble": "reassemble", "--split": "split",
                    "--non-mmap": "non_mmap",
                    "-h": "help", "--help": "help", "-v": "version"}[opt]
            if flag == "debug":
                args.message_level |= ML_PRINT_DEBUG
            else:
                setattr(args, flag, True)
    return args


def check(args: MdfArgs) -> Verdict | None:
    """makedumpfile's checks on a parsed command line that is not delegated;
    None when it is valid.  The mode is chosen as makedumpfile chooses it:
    -R, then --reassemble, then --dump-dmesg, then --split, then a dump."""
    n = len(args.operands)
    given = {opt for opt, _ in args.options}
    if args.rearrange:
        others = given & {"-c", "-l", "-p", "-z", "-E", "-F", "-d", "--split",
                          "--reassemble", "--num-threads"}
        if n != 1 or others:
            return _invalid(args, "-R takes only DUMPFILE (the stream comes on standard "
                                  "input)" if not others else
                            f"-R does not go with {' '.join(sorted(others))}")
        return None
    if args.reassemble:
        if n == 0:
            return _invalid(args, "--reassemble needs SPLITFILE... DUMPFILE",
                            "Can't allocate memory for splitting_info.")
        if given & {"-c", "-l", "-p", "-z", "-E", "-F", "--split"}:
            return _invalid(args, "--reassemble copies the parts as they are: no format "
                                  "options")
        return None
    if args.dump_dmesg:
        if n != (1 if args.flat else 2):
            return _invalid(args, "--dump-dmesg needs VMCORE LOGFILE")
        return None
    if args.split:
        if n < 3 or args.flat:
            return _invalid(args, "--split needs VMCORE DUMPFILE1 DUMPFILE2 [...] and no -F")
        if args.elf:
            return _invalid(args, "--split writes kdump-compressed files, not ELF (-E)",
                            "Options for splitting dumpfile cannot be used with Elf format.")
        if args.threads is not None:
            return _invalid(args, "--num-threads does not go with --split",
                            "--num-threads cannot used with --split.")
        return None
    if args.elf and args.codec != "none":
        return _invalid(args, "-E writes an ELF file: no compression (-c, -l, -p, -z)")
    if args.elf and args.threads is not None:
        return _invalid(args, "--num-threads does not go with -E",
                        "--num-threads cannot used with ELF format.")
    if args.flat and n != 1:
        return _invalid(args, "-F writes to standard output: give VMCORE only")
    if not args.flat and n != 2:
        return _invalid(args, "give VMCORE and DUMPFILE (or -F and VMCORE only)")
    return None
