"""The crashed kernel's log buffer (dmesg), in all three printk formats.

Linux has kept its log in three ways, and a dump says which through
VMCOREINFO keys alone (never the release string):

* **lockless** ``printk_ringbuffer`` (5.10+, :mod:`.printk_ringbuffer`),
  exported as ``SYMBOL(prb)``: a ring of descriptors (state + text block
  position), a parallel array of ``printk_info`` (sequence number,
  timestamp, text length, caller id) and a data ring of text blocks, each
  prefixed by its descriptor id;
* **structured** ``struct printk_log`` records (3.5-5.9, :mod:`.printk_log`),
  exported as ``SYMBOL(log_first_idx)``/``SYMBOL(log_next_idx)`` with
  ``SIZE(printk_log)`` (``SIZE(log)`` and ``OFFSET(log.*)`` before the 3.11
  rename): variable-size records in one character buffer, a zero-length
  header marking where the writer wrapped to the start;
* **plain** ``log_buf`` text (< 3.5, this module), exported as
  ``SYMBOL(log_buf)`` and ``SYMBOL(log_end)``: raw ``<N>[ t.tttttt] text``
  lines, wrapping in place.

:func:`read_log` reads each buffer with one bulk read per array (so only the
pages of the log and its descriptors are touched, a fraction of a percent of
a vmcore), decodes it into :class:`LogRecord` values and never raises
anything but :class:`~slimdump.kernel.memory.KernelViewError` /
:class:`~slimdump.errors.NotInDump` on garbage.  Two renderers reproduce the
reference tools byte for byte: :func:`render_makedumpfile` (Debian 12's
makedumpfile 1.7.2 ``--dump-dmesg``) and :func:`render_vmcore_dmesg`
(kexec-tools' ``vmcore-dmesg``).  They differ in what they do with the
records the kernel left without text (kept as placeholder records here, see
:attr:`LogRecord.has_data` and :attr:`LogRecord.wrap_marker`), in line
continuation and in how bytes >= 0x80 are escaped.

The layouts are implemented from ``kdump-formats.md`` section 6 and checked
against the real tools; no code of those tools is used.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from slimdump.kernel.memory import KernelMemory, KernelViewError
from slimdump.kernel.vmcoreinfo import VmcoreInfo
from slimdump.record import field, record

__all__ = [
    "KernelLog",
    "LogRecord",
    "read_log",
    "render_makedumpfile",
    "render_vmcore_dmesg",
]

# Anything bigger is not a log buffer but garbage read as one.
MAX_BUFFER_BYTES = 1 << 30
MAX_COUNT_BITS = 30
# The printk structures are a few dozen bytes (printk_ringbuffer, prb_desc,
# printk_info, printk_log); a size or offset past this is not one of them.
MAX_STRUCT_BYTES = 1 << 16
STRUCT_BOUND = "a printk structure is at most 64 KiB"

# prb_desc.state_var: the top two bits of an unsigned long are the state.
DESC_RESERVED, DESC_COMMITTED, DESC_FINALIZED, DESC_REUSABLE = range(4)

# ELF machines whose C ``char`` is unsigned (makedumpfile, built for the same
# machine as the kernel it reads, escapes a byte >= 0x80 as ``\xNN`` there and
# as the sign-extended ``\xffffffNN`` where ``char`` is signed: x86, mips...).
_UNSIGNED_CHAR_MACHINES = frozenset({
    40,    # EM_ARM
    20,    # EM_PPC
    21,    # EM_PPC64
    22,    # EM_S390
    183,   # EM_AARCH64
    243,   # EM_RISCV
})

# C-locale isprint() or isspace(): bytes the tools copy unescaped.
_COPIED = frozenset(range(0x20, 0x7F)) | frozenset(b"\t\n\v\f\r")
# Text without these bytes is rendered as it is (the common case, and one
# C-speed test instead of a table lookup per byte).
_ESCAPED_OR_NEWLINE = re.compile(rb"[^\x20-\x7e\t\v\f\r]")


@record(frozen=True)
class LogRecord:
    """One record of the kernel log.

    ``text`` is the message as the kernel stored it (a ``pr_cont``
    continuation may have put ``\\n`` inside it; dictionaries and
    ``dev_info`` are not part of it).  ``caller_id`` is the task id, or the
    CPU number with bit 31 set, where the kernel records it.  ``level``
    (0-7), ``facility`` and ``flags`` (structured and lockless formats; the
    plain format's ``<N>`` prefix gives level and facility) and ``seq``
    (lockless only) are None where the format has no such field.

    Two kinds of placeholder records exist because the reference tools
    disagree about them: ``has_data=False`` is a lockless record whose text
    block is data-less (the kernel failed to allocate it, or it was empty:
    ``vmcore-dmesg`` prints its timestamp, makedumpfile skips it), and
    ``wrap_marker=True`` is the zero-length header at which a structured
    buffer wrapped (``vmcore-dmesg`` prints it as a record of its own,
    makedumpfile does not).
    """

    ts_nsec: int
    text: bytes
    caller_id: int | None = None
    level: int | None = None
    facility: int | None = None
    seq: int | None = None
    flags: int | None = None
    has_data: bool = True
    wrap_marker: bool = False

    @property
    def is_message(self) -> bool:
        """True for a real message, False for the placeholders above."""
        return self.has_data and not self.wrap_marker


@record
class KernelLog:
    """The kernel log as read from a dump.

    ``format`` is "lockless", "structured" or "plain".  ``records`` are in
    log order (oldest first).  ``raw`` is the plain format's text, already
    rotated to start at the oldest byte (None for the other formats), which
    both tools print as is.  ``problems`` lists one-line notes on corruption
    that stopped the walk or was skipped; what came before is kept, as the
    tools keep it.
    """

    format: str
    records: list[LogRecord]
    raw: bytes | None = None
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[tuple[int, str]]:
        """``(ts_nsec, text)`` per message, text decoded as UTF-8 with
        replacement; placeholders are left out.  A plain log's records are
        its lines with the ``<N>`` and ``[ t.tttttt]`` prefixes parsed off
        (timestamp 0 where a line has none; made from ``raw`` here when a
        caller built the log without them), so classifiers see one shape
        for every format."""
        records = self.records
        if self.raw is not None and not records:
            records = [_plain_record(line) for line in _plain_lines(self.raw)]
        return [(r.ts_nsec, r.text.decode("utf-8", "replace"))
                for r in records if r.is_message]


# --------------------------------------------------------------------------
# Format selection


def read_log(mem: KernelMemory) -> KernelLog:
    """Find and decode the crashed kernel's log buffer.

    The format is chosen from VMCOREINFO keys as both reference tools do:
    ``SYMBOL(prb)`` means the lockless ring buffer, else
    ``SYMBOL(log_first_idx)``/``SYMBOL(log_next_idx)`` the structured
    records, else ``SYMBOL(log_buf)`` with ``SYMBOL(log_end)`` the plain
    buffer.  Raises KernelViewError when none is exported, a key the format
    needs is missing or a size is absurd, NotInDump when the buffer is not
    in the dump.
    """
    info = mem.info
    if info.symbol("prb") is not None:
        from slimdump.kernel.printk_ringbuffer import read_ringbuffer

        return read_ringbuffer(mem)
    if info.symbol("log_first_idx") is not None or info.symbol("log_next_idx") is not None:
        from slimdump.kernel.printk_log import read_printk_log

        return read_printk_log(mem)
    if info.symbol("log_buf") is not None and info.symbol("log_end") is not None:
        return _read_plain(mem)
    raise KernelViewError(mem.path, "VMCOREINFO exports no kernel log buffer (no SYMBOL(prb), "
                                    "SYMBOL(log_first_idx) or SYMBOL(log_buf)+SYMBOL(log_end))")


class Keys:
    """Required VMCOREINFO numbers, each missing one a clear one-line error."""

    def __init__(self, mem: KernelMemory) -> None:
        self.path = mem.path
        self.info: VmcoreInfo = mem.info

    def _need(self, form: str, name: str, value: int | None) -> int:
        if value is None:
            raise KernelViewError(self.path, f"VMCOREINFO has no {form}({name}): "
                                             f"cannot read the kernel log")
        if value < 0:
            raise KernelViewError(self.path, f"VMCOREINFO {form}({name})={value} is negative")
        return value

    def symbol(self, name: str) -> int:
        return self._need("SYMBOL", name, self.info.symbol(name))

    def size(self, name: str) -> int:
        return self._need("SIZE", name, self.info.bounded(f"SIZE({name})", 1, MAX_STRUCT_BYTES,
                                                          self.path, STRUCT_BOUND))

    def offset(self, member: str) -> int:
        return self._need("OFFSET", member, self.optional_offset(member))

    def optional_offset(self, member: str) -> int | None:
        """OFFSET(member), validated, or None when the kernel has no such member."""
        return self.info.bounded(f"OFFSET({member})", 0, MAX_STRUCT_BYTES, self.path,
                                 STRUCT_BOUND)


def check_fits(path: str, what: str, end: int, size: int) -> None:
    """A field ending at ``end`` must lie inside a structure of ``size`` bytes."""
    if end > size:
        raise KernelViewError(path, f"VMCOREINFO layout of {what} is inconsistent "
                                    f"(field ends at {end}, structure is {size} bytes)")


def uint_reader(endian: str) -> Callable[[bytes | memoryview, int, int], int]:
    """``get(buf, offset, width)``: an unsigned integer in the kernel's byte order."""
    order = "little" if endian == "<" else "big"

    def get(buf: bytes | memoryview, offset: int, width: int) -> int:
        return int.from_bytes(buf[offset:offset + width], order)

    return get


def level_flags(byte: int, endian: str) -> tuple[int, int]:
    """(level, flags) from the ``u8 flags:5, level:3`` bitfield byte.  GCC
    allocates bitfields from the least significant bit on little-endian
    machines and from the most significant one on big-endian machines."""
    if endian == "<":
        return byte >> 5, byte & 0x1F
    return byte & 0x07, byte >> 3


def facility_level_flags(buf: bytes | memoryview, at: int, endian: str
                         ) -> tuple[int, int, int]:
    """(facility, level, flags) of a record whose ``u8 facility`` is at
    ``at``, followed by the ``flags:5, level:3`` byte (both ``printk_info``
    and ``printk_log`` lay them out so, after a u16)."""
    facility, byte = (bytes(buf[at:at + 2]) + b"\0\0")[:2]   # short: zeros, as before
    level, flags = level_flags(byte, endian)
    return facility, level, flags


# --------------------------------------------------------------------------
# Plain character buffer (< 3.5)

# A line's ``<N>`` (facility * 8 + level) and ``[seconds.micros]`` prefixes.
# The kernel prints a u64 of nanoseconds, so at most 11 digits of seconds: a
# longer number (or one past 2**64 ns) is corrupt, and stays in the text.
_PLAIN_PRIO = re.compile(rb"<(\d{1,4})>")
_PLAIN_TIME = re.compile(rb"\[\s*(\d{1,11})\.(\d+)\] ?")
MAX_TS_NSEC = (1 << 64) - 1


def _read_plain(mem: KernelMemory) -> KernelLog:
    """The text of a pre-3.5 log_buf, oldest byte first.

    ``log_end`` is the free-running write index (an unsigned int since
    2.6.25; read as 32 bits, which is also the low half of the older
    unsigned long on little-endian machines).  Before the first wrap the log
    is ``log_buf[0:log_end]``; after it, the whole buffer starting at
    ``log_end % log_buf_len``.
    """
    keys = Keys(mem)
    log_buf = mem.pointer(keys.symbol("log_buf"))
    buf_len = mem.u32(keys.symbol("log_buf_len"))
    log_end = mem.u32(keys.symbol("log_end"))
    if not 0 < buf_len <= MAX_BUFFER_BYTES:
        raise KernelViewError(mem.path, f"log_buf_len {buf_len} is absurd (the log buffer is "
                                        f"1 byte to 1 GiB): the printk variables are corrupt")
    if log_end < buf_len:
        raw = mem.read(log_buf, log_end) if log_end else b""
    else:
        buf = mem.read(log_buf, buf_len)
        start = log_end % buf_len
        raw = buf[start:] + buf[:start]
    records = [_plain_record(line) for line in _plain_lines(raw)]
    return KernelLog("plain", records, raw=raw)


def _plain_lines(raw: bytes) -> list[bytes]:
    lines = raw.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    return lines


def _split_plain_line(line: bytes) -> tuple[int | None, int, bytes]:
    """(``<N>`` value or None, ts_nsec or 0, text) of one plain log line."""
    prio, ts, at = None, 0, 0
    if m := _PLAIN_PRIO.match(line):
        prio, at = int(m.group(1)), m.end()
    if m := _PLAIN_TIME.match(line, at):
        nsec = int(m.group(1)) * 1_000_000_000 + int(m.group(2)[:9].ljust(9, b"0"))
        if nsec <= MAX_TS_NSEC:
            ts, at = nsec, m.end()
    return prio, ts, line[at:]


def _plain_record(line: bytes) -> LogRecord:
    prio, ts, text = _split_plain_line(line)
    if prio is None:
        return LogRecord(ts, text)
    return LogRecord(ts, text, level=prio & 7, facility=prio >> 3)


# --------------------------------------------------------------------------
# Rendering


def _prefix(ts_nsec: int) -> bytes:
    """``[%5llu.%06llu] ``: seconds and truncated microseconds."""
    seconds, nanos = divmod(ts_nsec, 1_000_000_000)
    return b"[%5d.%06d] " % (seconds, nanos // 1000)


def _escape_table(signed_char: bool, newline: bytes) -> list[bytes]:
    """Output bytes for each input byte: copied when printable or space,
    ``\\x%02x`` otherwise (of a sign-extended char when ``signed_char``)."""
    table = []
    for b in range(256):
        if b == 0x0A:
            table.append(newline)
        elif b in _COPIED:
            table.append(bytes([b]))
        elif signed_char and b >= 0x80:
            table.append(b"\\x%08x" % (b | 0xFFFFFF00))
        else:
            table.append(b"\\x%02x" % b)
    return table


def render_makedumpfile(log: KernelLog, machine: int) -> bytes:
    """The log as Debian 12's makedumpfile 1.7.2 ``--dump-dmesg`` writes it.

    Plain logs are the raw text.  Otherwise one line per message:
    ``[%5llu.%06llu] `` then the text, a ``\\n`` inside it followed by as
    many spaces as the prefix is long (continuations align), non-printable
    bytes as ``\\x%02x`` of a C ``char`` (signed on x86: ``\\xffffffc3``;
    unsigned on arm64, ppc64, s390x, riscv: ``\\xc3``; ``machine`` is the
    dump's ELF e_machine).  1.7.2 prints no caller-id column (1.7.5 added
    one) and skips data-less records and wrap markers.
    """
    if log.raw is not None:
        return log.raw
    signed_char = machine not in _UNSIGNED_CHAR_MACHINES
    tables: dict[int, list[bytes]] = {}
    out = bytearray()
    for entry in log.records:
        if not entry.is_message:
            continue
        prefix = _prefix(entry.ts_nsec)
        table = tables.get(len(prefix))
        if table is None:
            table = tables[len(prefix)] = _escape_table(signed_char, b"\n" + b" " * len(prefix))
        out += prefix
        text = entry.text
        out += b"".join(table[b] for b in text) if _ESCAPED_OR_NEWLINE.search(text) else text
        out += b"\n"
    return bytes(out)


def render_vmcore_dmesg(log: KernelLog) -> bytes:
    """The log as kexec-tools' ``vmcore-dmesg`` prints it on stdout.

    Plain logs are the raw text.  Otherwise one line per record:
    ``[%5llu.%06llu] `` then the text with ``\\n`` copied as is (no
    indentation) and non-printable bytes as ``\\x%02x`` of an unsigned char.
    Unlike makedumpfile it prints data-less records (timestamp only) and a
    structured buffer's wrap marker as records of their own.
    """
    if log.raw is not None:
        return log.raw
    table = _escape_table(False, b"\n")
    out = bytearray()
    for entry in log.records:
        out += _prefix(entry.ts_nsec)
        text = entry.text
        out += b"".join(table[b] for b in text) if _ESCAPED_OR_NEWLINE.search(text) else text
        out += b"\n"
    return bytes(out)
