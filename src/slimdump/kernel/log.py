"""The crashed kernel's log, read from any dump source through VMCOREINFO."""

from __future__ import annotations

import re

from slimdump.errors import DumpError
from slimdump.kernel.memory import KernelMemory
from slimdump.kernel.printk import (
    MAX_TS_NSEC,
    KernelLog,
    read_log,
    render_makedumpfile,
    render_vmcore_dmesg,
)
from slimdump.kernel.vmcoreinfo import VmcoreInfo
from slimdump.notes import NT_SLIMDUMP_LOG, decode_text, is_slimdump_note
from slimdump.record import record
from slimdump.sources.base import DumpSource


@record(frozen=True)
class KernelLogText:
    """The log as records (for classification) and as makedumpfile's text."""

    log: KernelLog
    data: bytes                         # makedumpfile --dump-dmesg bytes

    @property
    def records(self) -> list[tuple[int, str]]:
        return self.log.lines()

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


def _read(source: DumpSource) -> KernelLog:
    info = VmcoreInfo.from_notes(source.notes)
    if info is None:
        raise DumpError(source.path, "no VMCOREINFO note: cannot find the log buffer")
    return read_log(KernelMemory(source, info))


def read_kernel_log(source: DumpSource) -> KernelLogText:
    """Read and render the log; DumpError (one line) when it cannot be read."""
    log = _read(source)
    return KernelLogText(log, render_makedumpfile(log, machine=source.header.e_machine))


def extract_dmesg(source: DumpSource, fmt: str = "makedumpfile") -> bytes:
    """The log rendered as ``makedumpfile --dump-dmesg`` or ``vmcore-dmesg``;
    for a slimdump (no memory: a triage slimdump, a dmesg-action slimdump),
    the log its SLIMDUMP log note carries, as it was saved."""
    try:
        log = _read(source)
    except DumpError:
        saved = _log_note(source)
        if saved is None:
            raise
        return saved
    if fmt == "vmcore-dmesg":
        return render_vmcore_dmesg(log)
    return render_makedumpfile(log, machine=source.header.e_machine)


def empty_log_warning(src: object) -> str:
    """What to say when :func:`extract_dmesg` gave no byte: the ring's
    metadata says it holds no record (or the log note is empty), which is
    what the data says, but a crashed kernel always logged something."""
    return f"warning: {src}: the kernel log is empty (its log buffer holds no record)"


def _log_note(source: DumpSource) -> bytes | None:
    """The text of the source's SLIMDUMP log note (makedumpfile's format),
    when it has one and holds no memory to read the log from."""
    if any(seg.usable for seg in source.segments):
        return None
    for note in source.notes:
        if is_slimdump_note(note, NT_SLIMDUMP_LOG):
            return decode_text(note).encode("utf-8")
    return None


# makedumpfile's ``[%5llu.%06llu] `` of a u64 of nanoseconds: at most 11
# digits of seconds; a line with a longer number, or past MAX_TS_NSEC, is
# text (no timestamp)
_PREFIX = re.compile(r"^\[\s*(\d{1,11})\.(\d{6})\] ")


def records_from_text(text: str) -> list[tuple[int, str]]:
    """Records back from makedumpfile-style text (a slimdump's log note):
    ``[%5d.%06d] text`` lines, continuation lines indented to the prefix
    width folded back into their record with '\\n'."""
    records: list[tuple[int, str]] = []
    for line in text.splitlines():
        m = _PREFIX.match(line)
        ts = int(m.group(1)) * 1_000_000_000 + int(m.group(2)) * 1000 if m else -1
        if m and ts <= MAX_TS_NSEC:
            records.append((ts, line[m.end():]))
        elif records and line.startswith(" "):
            ts, body = records[-1]
            records[-1] = (ts, body + "\n" + line.lstrip(" "))
        elif line:
            records.append((0, line))
    return records
