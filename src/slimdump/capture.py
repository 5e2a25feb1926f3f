"""Capture: from a dump source to the file that should be kept.

``capture`` opens the source, decides (today: a slimdump when the kernel
left an NT_NOCOREDUMP note, the complete dump otherwise or when asked), and
hands the work to a writer.  With a kernel note nothing of the crashed
kernel's memory is read: only the ELF headers and the notes.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass, field
from typing import Any

from slimdump import __version__
from slimdump.errors import DumpError
from slimdump.notes import (
    NT_SLIMDUMP_META,
    SLIMDUMP_NAME,
    NoCoreDump,
    decode_metadata,
    find_nocoredump,
    is_slimdump_note,
    metadata_note,
)
from slimdump.sources import DumpSource, ElfCore, open_dump
from slimdump.writers.atomic import AtomicOutput
from slimdump.writers.elfcopy import write_full_copy
from slimdump.writers.slim import slimdump_bytes

SLIM, FULL = "slim", "full"


@dataclass(frozen=True)
class Decision:
    """What capture will write and why."""

    action: str                       # SLIM or FULL
    reason: NoCoreDump | None         # the reason note, when there is one
    detected_by: str | None           # "kernel-note" (later also "kernel-log")
    why: str                          # one line for the user


@dataclass
class CaptureResult:
    decision: Decision
    dst: str
    size: int
    source_bytes_read: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def decide(source: DumpSource, *, full: bool = False) -> Decision:
    """Choose the output for ``source`` from its notes and the user's wish."""
    note = find_nocoredump(source.notes)
    reason = NoCoreDump.from_note(note) if note else None
    if full:
        return Decision(FULL, reason, "kernel-note" if reason else None,
                        "complete dump requested (--full)")
    if reason:
        return Decision(SLIM, reason, "kernel-note",
                        f"the kernel left an NT_NOCOREDUMP note ({reason.reason})")
    return Decision(FULL, None, None, "no NT_NOCOREDUMP note: complete dump")


def previous_metadata(source: DumpSource) -> dict[str, Any] | None:
    """The SLIMDUMP metadata of a source that is itself a slimdump."""
    for note in source.notes:
        if is_slimdump_note(note, NT_SLIMDUMP_META):
            try:
                return decode_metadata(note)
            except ValueError:
                return None
    return None


def slim_metadata(source: DumpSource, decision: Decision,
                  hardware_errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The SLIMDUMP metadata object (nocoredump-note.md, "slimdump's own notes")."""
    memory = [seg.as_metadata() for seg in source.segments]
    previous = previous_metadata(source)
    if not memory and previous:
        memory = previous.get("memory", [])
    assert decision.reason is not None
    return {
        "format": 1,
        "reason": decision.reason.reason,
        "detected_by": decision.detected_by,
        "tool": {"name": "slimdump", "version": __version__},
        "captured_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": {"path": os.path.abspath(source.path), "size": source.size,
                   "format": source.format},
        "memory": memory,
        "hardware_errors": hardware_errors or [],
    }


def write_slimdump(source: DumpSource, decision: Decision, dst: str, *,
                   overwrite: bool = False) -> int:
    """Write the slimdump for ``decision``; return its size in bytes."""
    assert decision.reason is not None
    reason_note = decision.reason.to_note()
    kept = [note for note in source.notes
            if note.name != SLIMDUMP_NAME and find_nocoredump([note]) is None]
    # The reason note that counts goes after the source's own notes; any
    # further reason notes the source had are dropped (the first one counts).
    notes = [*kept, reason_note, metadata_note(slim_metadata(source, decision))]
    data = slimdump_bytes(source.header, notes)
    with AtomicOutput(dst, overwrite=overwrite) as out:
        out.write(data, 0)
        out.commit()
    return len(data)


def capture(src: str, dst: str, *, full: bool = False, overwrite: bool = False,
            progress: bool | None = None) -> CaptureResult:
    """Capture ``src`` into ``dst`` and say what was done."""
    start = time.monotonic()
    with open_dump(src) as source:
        decision = decide(source, full=full)
        extra: dict[str, Any] = {}
        if decision.action == SLIM:
            size = write_slimdump(source, decision, dst, overwrite=overwrite)
        else:
            if not isinstance(source, ElfCore) or not source.segments:
                raise DumpError(src, "holds no memory to copy (is it a slimdump?)")
            stats = write_full_copy(source, dst, overwrite=overwrite, progress=progress)
            size = stats.size
            extra = {"copy_method": stats.method, "data_bytes": stats.copied}
        return CaptureResult(decision, dst, size, source.bytes_read,
                             time.monotonic() - start, extra)
