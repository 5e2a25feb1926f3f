"""Payloads of the notes found in crash dumps.

Decoders for NT_PRSTATUS (per-CPU registers, per architecture), the
NT_NOCOREDUMP reason note and slimdump's own ``SLIMDUMP`` notes, plus names
for note types as ``eu-readelf -n`` prints them.  VMCOREINFO text is decoded
by :mod:`slimdump.kernel.vmcoreinfo`, which gives it meaning.
"""

from __future__ import annotations

import json
import struct

from slimdump.elf import EM_386, EM_AARCH64, EM_X86_64, Note, parse_notes
from slimdump.record import record

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up)
if TYPE_CHECKING:
    from typing import Any

NT_PRSTATUS = 1
NT_PRFPREG = 2
NT_PRPSINFO = 3
NT_NOCOREDUMP = 21
NT_VMCOREDD = 0x700
NT_SLIMDUMP_META = 0x534C0001
NT_SLIMDUMP_LOG = 0x534C0002
VMCOREINFO_NAME = "VMCOREINFO"
SLIMDUMP_NAME = "SLIMDUMP"
# Owners of the notes Linux and slimdump write themselves; never a reason code.
RESERVED_OWNERS = frozenset({"CORE", "LINUX", VMCOREINFO_NAME, SLIMDUMP_NAME, "GNU"})

X86_64_REGS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax",
               "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss",
               "fs_base", "gs_base", "ds", "es", "fs", "gs")
ARM64_REGS = (*(f"x{i}" for i in range(31)), "sp", "pc", "pstate")
I386_REGS = ("ebx", "ecx", "edx", "esi", "edi", "ebp", "eax", "ds", "es", "fs", "gs",
             "orig_eax", "eip", "cs", "eflags", "esp", "ss")


@record(frozen=True)
class RegisterLayout:
    """Where struct elf_prstatus keeps pr_pid and pr_reg on one architecture."""

    pid_offset: int
    reg_offset: int
    reg_size: int          # bytes per register
    names: tuple[str, ...]
    pc: str
    sp: str


# Keyed by (e_machine, elf64).  Offsets from struct elf_prstatus (see
# shared/reference/kdump-formats.md section 1.4).
LAYOUTS = {
    (EM_X86_64, True): RegisterLayout(32, 112, 8, X86_64_REGS, "rip", "rsp"),
    (EM_AARCH64, True): RegisterLayout(32, 112, 8, ARM64_REGS, "pc", "sp"),
    (EM_386, False): RegisterLayout(24, 72, 4, I386_REGS, "eip", "esp"),
}


@record(frozen=True)
class PrStatus:
    """The registers one CPU saved when the kernel crashed."""

    pid: int
    registers: dict[str, int]
    pc_name: str | None = None
    sp_name: str | None = None

    @property
    def pc(self) -> int | None:
        return self.registers.get(self.pc_name) if self.pc_name else None

    @property
    def sp(self) -> int | None:
        return self.registers.get(self.sp_name) if self.sp_name else None


def decode_prstatus(desc: bytes, machine: int, elf64: bool, endian: str) -> PrStatus:
    """Decode an NT_PRSTATUS descriptor; unknown architectures give the pid
    only (at the generic offset) and no registers."""
    layout = LAYOUTS.get((machine, elf64))
    if layout is None:
        pid_at = 32 if elf64 else 24
        pid = struct.unpack_from(endian + "i", desc, pid_at)[0] if len(desc) >= pid_at + 4 else -1
        return PrStatus(pid, {})
    end = layout.reg_offset + layout.reg_size * len(layout.names)
    if len(desc) < end:
        raise ValueError(f"NT_PRSTATUS of {len(desc)} bytes is too short for this "
                         f"architecture (needs {end})")
    pid = struct.unpack_from(endian + "i", desc, layout.pid_offset)[0]
    kind = "Q" if layout.reg_size == 8 else "I"
    values = struct.unpack_from(f"{endian}{len(layout.names)}{kind}", desc, layout.reg_offset)
    return PrStatus(pid, dict(zip(layout.names, values, strict=True)), layout.pc, layout.sp)


@record(frozen=True)
class NoCoreDump:
    """The NT_NOCOREDUMP note: a reason code (the owner name) and the crashed
    kernel's own words for the cause (the descriptor)."""

    reason: str
    message: str

    @classmethod
    def from_note(cls, note: Note) -> NoCoreDump:
        text = note.desc.split(b"\0", 1)[0].decode("utf-8", "replace")
        return cls(note.name, text)

    def to_note(self) -> Note:
        desc = self.message.encode("utf-8") + b"\0" if self.message else b""
        return Note.make(self.reason, NT_NOCOREDUMP, desc)


def find_nocoredump(notes: list[Note]) -> Note | None:
    """The NT_NOCOREDUMP note that counts: the first one, wherever it sits.

    Type 21 alone is not enough: core files use small type numbers under
    every owner.  The reason note is type 21 under an owner that is not one
    of the names Linux uses for its own notes.
    """
    for note in notes:
        if note.type == NT_NOCOREDUMP and note.name not in RESERVED_OWNERS:
            return note
    return None


def is_slimdump_note(note: Note, note_type: int) -> bool:
    return note.name == SLIMDUMP_NAME and note.type == note_type


def metadata_note(metadata: dict[str, Any]) -> Note:
    """The SLIMDUMP metadata note: a JSON object, UTF-8, NUL-terminated."""
    text = json.dumps(metadata, indent=1, sort_keys=False)
    return Note.make(SLIMDUMP_NAME, NT_SLIMDUMP_META, text.encode("utf-8") + b"\0")


def _first_metadata(area: bytes, endian: str) -> tuple[list[Note], Note | None]:
    try:
        notes = parse_notes(area, endian)
    except ValueError:
        notes = []          # not notes a reader could find anything in
    return notes, next((n for n in notes if is_slimdump_note(n, NT_SLIMDUMP_META)), None)


def find_metadata(area: bytes, endian: str) -> dict[str, Any] | None:
    """The first SLIMDUMP metadata note of a note area, decoded (None if
    there is none, or it is not JSON)."""
    first = _first_metadata(area, endian)[1]
    if first is None:
        return None
    try:
        return decode_metadata(first)
    except ValueError:
        return None


def with_metadata(area: bytes, endian: str, metadata: dict[str, Any] | None,
                  additions: dict[str, Any]) -> bytes:
    """The note area ``area`` with its SLIMDUMP metadata note rewritten to
    hold ``additions``: readers take the first metadata note, so that one is
    replaced in place, its keys kept, then ``metadata``'s (the dict a caller
    framed into a later note of ``area``, which is dropped as merged), then
    ``additions``.  Without any metadata note, one is added after the last
    note (before any terminator or padding): ``{"format": 1, **metadata,
    **additions}``.  Every other byte of ``area`` stays as it is."""
    notes, first = _first_metadata(area, endian)
    merged = find_metadata(area, endian) or {"format": 1}
    merged.update(metadata or {})
    merged.update(additions)
    new = metadata_note(merged).frame(endian)
    duplicate = metadata_note(metadata).desc if metadata is not None else None
    out, at = bytearray(), 0
    for note in notes:
        end = note.offset + len(note.frame(endian))
        if note is first:
            out += area[at:note.offset] + new
            at = end
        elif (note.desc == duplicate and first is not None
              and is_slimdump_note(note, NT_SLIMDUMP_META)):
            out += area[at:note.offset]
            at = end
    tail = notes[-1].offset + len(notes[-1].frame(endian)) if notes else len(area)
    if first is None:
        out += area[at:tail] + new
        at = tail
    out += area[at:]
    return bytes(out)


def log_note(log: str) -> Note:
    """The SLIMDUMP log note: the crashed kernel's log as UTF-8 text."""
    return Note.make(SLIMDUMP_NAME, NT_SLIMDUMP_LOG, log.encode("utf-8") + b"\0")


def decode_metadata(note: Note) -> dict[str, Any]:
    """Parse a SLIMDUMP metadata note; raise ValueError if it is not JSON."""
    data = json.loads(note.desc.rstrip(b"\0").decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError("SLIMDUMP metadata is not a JSON object")
    return data


def decode_text(note: Note) -> str:
    """A SLIMDUMP text note (the log): UTF-8 up to its terminating NUL,
    undecodable bytes replaced."""
    return note.desc.split(b"\0", 1)[0].decode("utf-8", "replace")


_CORE_TYPES = {1: "PRSTATUS", 2: "FPREGSET", 3: "PRPSINFO", 4: "TASKSTRUCT", 6: "AUXV",
               0x200: "386_TLS", 0x202: "X86_XSTATE", 0x400: "ARM_VFP", 0x401: "ARM_TLS",
               0x700: "VMCOREDD"}


def type_name(note: Note) -> str:
    """The note type as ``eu-readelf -n`` names it, with slimdump's own
    meaning in parentheses where eu-readelf knows none."""
    if note.name == VMCOREINFO_NAME and note.type == 0:
        return "VMCOREINFO"
    if note.name == SLIMDUMP_NAME and note.type == NT_SLIMDUMP_META:
        return f"<unknown>: {note.type} (slimdump metadata)"
    if note.name == SLIMDUMP_NAME and note.type == NT_SLIMDUMP_LOG:
        return f"<unknown>: {note.type} (kernel log)"
    if note.name in ("CORE", "LINUX") and note.type in _CORE_TYPES:
        return _CORE_TYPES[note.type]
    if note.type == NT_NOCOREDUMP:
        return f"<unknown>: {note.type} (NT_NOCOREDUMP)"
    return f"<unknown>: {note.type}"
