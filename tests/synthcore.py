"""Synthetic ELF core ("vmcore") builder for unit tests.

This module is deliberately independent of the ``slimdump`` package: it is the
"other side" used to check slimdump's ELF reader, so it must not share code
(or bugs) with it.  It only uses :mod:`struct` and follows the layout of a
Linux ``/proc/vmcore`` (see ``kdump-formats.md`` sections 1.1 - 1.5):

* ELF header, then the program headers: first the PT_NOTE header(s), then one
  PT_LOAD per :class:`Load`; padded to a page when ``page_align``;
* the note area (12-byte note headers of three 32-bit words in the file's byte
  order, also for ELF64; name and desc each padded to 4 bytes), padded to a
  page when ``page_align``;
* each PT_LOAD's data.  With ``page_align`` a segment's data starts at a page
  boundary plus ``paddr % PAGE_SIZE`` (exactly like /proc/vmcore, which maps
  ``[rounddown(paddr), roundup(paddr + memsz))``); for page-aligned ``paddr``
  that is simply a page boundary.

Example::

    core = build_core(
        [Note(b"CORE", NT_PRSTATUS, prstatus_x86_64(1, {"rip": 0x1234}))],
        [Load(paddr=0x100000, vaddr=0xFF11000000100000, data=b"\\xaa" * 4096)],
    )
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "ARM64_REGS",
    "EM_386",
    "EM_AARCH64",
    "EM_PPC64",
    "EM_S390",
    "EM_X86_64",
    "ET_CORE",
    "I386_REGS",
    "NT_NOCOREDUMP",
    "NT_PRSTATUS",
    "PAGE_SIZE",
    "PT_LOAD",
    "PT_NOTE",
    "SAMPLE_RAM_PADDR",
    "SAMPLE_RAM_VADDR",
    "SAMPLE_TEXT_PADDR",
    "SAMPLE_TEXT_VADDR",
    "SAMPLE_VMCOREINFO",
    "X86_64_REGS",
    "Load",
    "Note",
    "build_core",
    "flatten",
    "note_bytes",
    "prstatus_arm64",
    "prstatus_i386",
    "prstatus_x86_64",
    "sample_regs_x86_64",
    "sample_x86_64_core",
    "tagged_bytes",
    "vmcoreinfo",
]

# --------------------------------------------------------------------------
# Constants

PAGE_SIZE = 4096

EM_386 = 3
EM_PPC64 = 21
EM_S390 = 22
EM_X86_64 = 62
EM_AARCH64 = 183

ET_CORE = 4
EV_CURRENT = 1
ELFCLASS32 = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
ELFDATA2MSB = 2

PT_LOAD = 1
PT_NOTE = 4
PF_X = 1
PF_W = 2
PF_R = 4

NT_PRSTATUS = 1
NT_NOCOREDUMP = 21

ELF64_EHDR_SIZE = 64
ELF64_PHDR_SIZE = 56
ELF32_EHDR_SIZE = 52
ELF32_PHDR_SIZE = 32

# Register names in pr_reg order.
X86_64_REGS: tuple[str, ...] = (
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
    "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags",
    "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
)  # fmt: skip
ARM64_REGS: tuple[str, ...] = (*(f"x{i}" for i in range(31)), "sp", "pc", "pstate")
I386_REGS: tuple[str, ...] = (
    "ebx", "ecx", "edx", "esi", "edi", "ebp", "eax", "ds", "es", "fs", "gs",
    "orig_eax", "eip", "cs", "eflags", "esp", "ss",
)  # fmt: skip


# --------------------------------------------------------------------------
# Data model


@dataclass
class Note:
    """One ELF note.

    ``name`` is given without the terminating NUL (``b"CORE"``); the builder
    appends it and ``n_namesz`` counts it.  ``name=b""`` gives ``n_namesz`` 0
    (no name bytes at all).
    """

    name: bytes
    type: int
    desc: bytes


@dataclass
class Load:
    """One PT_LOAD segment: ``p_filesz = len(data)``, ``p_memsz = memsz or len(data)``.

    Any list of loads is written as given, in order: overlapping segments
    (the kernel image duplicating RAM, or a segment that only declares a
    range another one stores), ``memsz`` beyond the data (p_filesz <
    p_memsz; ``data=b""`` gives p_filesz 0), addresses and sizes that are
    not page multiples (a range ending mid-page, as x86's 0x1000-0x9fbff),
    ``paddr`` all-ones (no physical address), or no loads at all.
    """

    paddr: int
    vaddr: int
    data: bytes
    memsz: int | None = None


# --------------------------------------------------------------------------
# Helpers


def _check_endian(endian: str) -> None:
    if endian not in ("<", ">"):
        raise ValueError(f"endian must be '<' or '>', not {endian!r}")


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _reg_values(names: tuple[str, ...], regs: dict[str, int], bits: int) -> list[int]:
    unknown = set(regs) - set(names)
    if unknown:
        raise ValueError(f"unknown register name(s): {sorted(unknown)}")
    values = [regs.get(name, 0) for name in names]
    for name, value in zip(names, values, strict=True):
        if not 0 <= value < (1 << bits):
            raise ValueError(f"register {name}={value:#x} does not fit in {bits} bits")
    return values


def note_bytes(note: Note, endian: str = "<") -> bytes:
    """Return one framed note: 12-byte header, name + NUL padded to 4, desc padded to 4."""
    _check_endian(endian)
    name = note.name + b"\0" if note.name else b""
    header = struct.pack(f"{endian}III", len(name), len(note.desc), note.type)
    return header + _pad4(name) + _pad4(note.desc)


# --------------------------------------------------------------------------
# NT_PRSTATUS descriptors


def _prstatus64(pid: int, regs: list[int], size: int, endian: str) -> bytes:
    """64-bit ``struct elf_prstatus``: pr_pid at 32, pr_reg at 112, pr_fpvalid after pr_reg."""
    _check_endian(endian)
    buf = bytearray(size)
    struct.pack_into(f"{endian}i", buf, 32, pid)
    struct.pack_into(f"{endian}{len(regs)}Q", buf, 112, *regs)
    # pr_fpvalid (i32) directly follows pr_reg; the kernel leaves it 0.
    return bytes(buf)


def prstatus_x86_64(pid: int, regs: dict[str, int], *, endian: str = "<") -> bytes:
    """x86_64 ``struct elf_prstatus`` (336 bytes).

    ``regs`` by ``user_regs_struct`` name (``r15``..``gs``); missing registers are 0.
    """
    return _prstatus64(pid, _reg_values(X86_64_REGS, regs, 64), 336, endian)


def prstatus_arm64(pid: int, regs: dict[str, int], *, endian: str = "<") -> bytes:
    """arm64 ``struct elf_prstatus`` (392 bytes).

    ``regs``: ``x0``..``x30``, ``sp``, ``pc``, ``pstate``; missing registers are 0.
    """
    return _prstatus64(pid, _reg_values(ARM64_REGS, regs, 64), 392, endian)


def prstatus_i386(pid: int, regs: dict[str, int], *, endian: str = "<") -> bytes:
    """i386 ``struct elf_prstatus`` (144 bytes): pr_pid at 24, pr_reg at 72.

    ``regs``: 17 x u32, ``ebx``..``ss`` (``user_regs_struct`` order); missing are 0.
    """
    _check_endian(endian)
    values = _reg_values(I386_REGS, regs, 32)
    buf = bytearray(144)
    struct.pack_into(f"{endian}i", buf, 24, pid)
    struct.pack_into(f"{endian}17I", buf, 72, *values)
    return bytes(buf)


def vmcoreinfo(lines: dict[str, str] | list[str]) -> bytes:
    """VMCOREINFO descriptor: ``KEY=VALUE\\n`` per entry (or per given line), ASCII, no NUL."""
    if isinstance(lines, dict):
        items = [f"{key}={value}" for key, value in lines.items()]
    else:
        items = list(lines)
    return "".join(f"{item}\n" for item in items).encode("ascii")


# --------------------------------------------------------------------------
# The core file


def build_core(
    notes: list[Note],
    loads: list[Load],
    *,
    elf64: bool = True,
    endian: str = "<",
    machine: int = EM_X86_64,
    page_align: bool = True,
    note_segments: str = "merged",
) -> bytes:
    """Build an ELF core file laid out like ``/proc/vmcore``.

    ``note_segments="merged"`` emits one PT_NOTE covering all notes (as the
    capture kernel does, even when ``notes`` is empty); ``"per-note"`` emits
    one PT_NOTE per note (like the pre-capture elfcorehdr), all pointing into
    the same contiguous note area.  Without ``page_align`` the note area
    starts right after the program headers (aligned to 4) and each segment's
    data directly follows the previous one.  Only ``p_filesz`` bytes of a segment
    are stored (a huge ``memsz`` does not make a huge file); a value that does
    not fit the class (a 64-bit address in ELF32) raises ``ValueError``.
    """
    _check_endian(endian)
    if note_segments not in ("merged", "per-note"):
        raise ValueError(f"note_segments must be 'merged' or 'per-note', not {note_segments!r}")

    framed = [note_bytes(note, endian) for note in notes]
    note_area = b"".join(framed)
    n_note_phdrs = 1 if note_segments == "merged" else len(framed)
    phnum = n_note_phdrs + len(loads)

    ehsize = ELF64_EHDR_SIZE if elf64 else ELF32_EHDR_SIZE
    phentsize = ELF64_PHDR_SIZE if elf64 else ELF32_PHDR_SIZE
    headers_end = ehsize + phnum * phentsize
    note_offset = _round_up(headers_end, PAGE_SIZE if page_align else 4)

    # (p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align)
    phdrs: list[tuple[int, int, int, int, int, int, int, int]] = []
    if note_segments == "merged":
        phdrs.append((PT_NOTE, 0, note_offset, 0, 0, len(note_area), len(note_area), 0))
    else:
        offset = note_offset
        for chunk in framed:
            phdrs.append((PT_NOTE, 0, offset, 0, 0, len(chunk), len(chunk), 0))
            offset += len(chunk)

    pos = note_offset + len(note_area)
    if page_align:
        pos = _round_up(pos, PAGE_SIZE)
    placed: list[tuple[int, bytes]] = []
    for load in loads:
        memsz = len(load.data) if load.memsz is None else load.memsz
        if memsz < len(load.data):
            raise ValueError(f"memsz {memsz:#x} < len(data) {len(load.data):#x}")
        if page_align:
            offset = _round_up(pos, PAGE_SIZE) + load.paddr % PAGE_SIZE
            # /proc/vmcore reserves up to memsz; only filesz bytes exist here, which
            # keeps cores with a huge memsz (zero-filled tail) small.
            pos = _round_up(offset + len(load.data), PAGE_SIZE)
        else:
            offset = pos
            pos = offset + len(load.data)
        phdrs.append(
            (PT_LOAD, PF_R | PF_W | PF_X, offset, load.vaddr, load.paddr, len(load.data), memsz, 0)
        )
        placed.append((offset, load.data))
    total = max([note_offset + len(note_area)] + [off + len(data) for off, data in placed])
    if page_align:
        total = max(total, pos)

    # EI_MAG, EI_CLASS, EI_DATA, EI_VERSION, EI_OSABI (NONE), EI_ABIVERSION, padding
    ident = struct.pack(
        "4sBBBBB7x",
        b"\x7fELF",
        ELFCLASS64 if elf64 else ELFCLASS32,
        ELFDATA2LSB if endian == "<" else ELFDATA2MSB,
        EV_CURRENT,
        0,
        0,
    )

    out = bytearray(total)
    word = "Q" if elf64 else "I"
    try:
        # e_ident, e_type, e_machine, e_version, e_entry, e_phoff, e_shoff,
        # e_flags, e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
        struct.pack_into(
            f"{endian}16sHHI{word}{word}{word}IHHHHHH", out, 0,
            ident, ET_CORE, machine, EV_CURRENT, 0, ehsize, 0,
            0, ehsize, phentsize, phnum, 0, 0, 0,
        )  # fmt: skip
        for i, phdr in enumerate(phdrs):
            p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align = phdr
            at = ehsize + i * phentsize
            if elf64:
                struct.pack_into(
                    f"{endian}IIQQQQQQ", out, at,
                    p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align,
                )  # fmt: skip
            else:
                struct.pack_into(
                    f"{endian}IIIIIIII", out, at,
                    p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align,
                )  # fmt: skip
    except struct.error as exc:
        kind = "ELF64" if elf64 else "ELF32"
        raise ValueError(f"value does not fit an {kind} header field: {exc}") from exc

    out[note_offset : note_offset + len(note_area)] = note_area
    for offset, data in placed:
        out[offset : offset + len(data)] = data
    return bytes(out)


# --------------------------------------------------------------------------
# A small realistic x86_64 vmcore

SAMPLE_TEXT_PADDR = 0x1000000
SAMPLE_TEXT_VADDR = 0xFFFFFFFF81000000
SAMPLE_RAM_PADDR = 0x100000
SAMPLE_RAM_VADDR = 0xFF11000000100000

SAMPLE_VMCOREINFO: dict[str, str] = {
    "OSRELEASE": "6.1.0-synthetic",
    "PAGESIZE": "4096",
    "SYMBOL(_stext)": "ffffffff81000000",
    "NUMBER(phys_base)": "-847249408",
    "NUMBER(pgtable_l5_enabled)": "1",
    "KERNELOFFSET": "0",
    "CRASHTIME": "1795664350",
}


def tagged_bytes(tag: bytes, base: int, size: int) -> bytes:
    """Self-describing filler: 16-byte lines of ``tag`` (4 bytes) + 12 hex digits of their address.

    Line *i* holds ``base + 16 * i``, so any read at a physical address can be
    checked by looking at the bytes it returned.  The result is exactly ``size`` bytes.
    """
    if len(tag) != 4:
        raise ValueError("tag must be 4 bytes")
    lines = (tag + b"%012x" % (base + off) for off in range(0, size, 16))
    return b"".join(lines)[:size]


_DEFAULT_TEXT = tagged_bytes(b"KTXT", SAMPLE_TEXT_PADDR, 2 * PAGE_SIZE)
_DEFAULT_RAM = tagged_bytes(b"RAM:", SAMPLE_RAM_PADDR, 3 * PAGE_SIZE)


def sample_regs_x86_64(cpu: int) -> dict[str, int]:
    """Registers used by :func:`sample_x86_64_core` for ``cpu`` (distinct per CPU)."""
    return {
        "rip": SAMPLE_TEXT_VADDR + 0x1234 + 0x100 * cpu,
        "rsp": 0xFFFFC90000003F00 + 0x4000 * cpu,
        "rbp": 0xFFFFC90000003F80 + 0x4000 * cpu,
        "rax": 0xDEAD0000 + cpu,
        "cs": 0x10,
        "ss": 0x18,
        "eflags": 0x10046,
        "orig_rax": 0xFFFFFFFFFFFFFFFF,
    }


def sample_x86_64_core(
    nocoredump: tuple[str, str] | None = None,
    ncpus: int = 2,
    ram: bytes = _DEFAULT_RAM,
) -> bytes:
    """A small realistic x86_64 /proc/vmcore.

    Notes, in order: one ``CORE``/NT_PRSTATUS per CPU (pr_pid = CPU number,
    so 0 for CPU 0 as the idle task, registers from :func:`sample_regs_x86_64`),
    ``VMCOREINFO`` (:data:`SAMPLE_VMCOREINFO`), then, when ``nocoredump`` =
    ``(reason, message)`` is given, an NT_NOCOREDUMP note named ``reason`` with
    desc ``message`` + NUL.  Two PT_LOADs: kernel text (``KTXT`` tagged,
    vaddr :data:`SAMPLE_TEXT_VADDR`, paddr :data:`SAMPLE_TEXT_PADDR`) and RAM
    (``ram``, default ``RAM:`` tagged, paddr :data:`SAMPLE_RAM_PADDR`,
    direct-map vaddr :data:`SAMPLE_RAM_VADDR`).
    """
    notes = [
        Note(b"CORE", NT_PRSTATUS, prstatus_x86_64(cpu, sample_regs_x86_64(cpu)))
        for cpu in range(ncpus)
    ]
    notes.append(Note(b"VMCOREINFO", 0, vmcoreinfo(SAMPLE_VMCOREINFO)))
    if nocoredump is not None:
        reason, message = nocoredump
        notes.append(Note(reason.encode("ascii"), NT_NOCOREDUMP, message.encode("utf-8") + b"\0"))
    loads = [
        Load(paddr=SAMPLE_TEXT_PADDR, vaddr=SAMPLE_TEXT_VADDR, data=_DEFAULT_TEXT),
        Load(paddr=SAMPLE_RAM_PADDR, vaddr=SAMPLE_RAM_VADDR, data=ram),
    ]
    return build_core(notes, loads, machine=EM_X86_64)


# --------------------------------------------------------------------------
# makedumpfile's flattened format (-F), kdump-formats.md section 3

FLAT_SIGNATURE = b"makedumpfile\0\0\0\0"


def flatten(data: bytes, *, record: int = 0x10000, reverse: bool = False,
            overlap: bool = False) -> bytes:
    """``data`` (a whole dump file) as a flattened stream: the 4096-byte
    header (signature, type 1, version 1, big-endian), records of
    ``(offset, size)`` big-endian int64 plus ``size`` bytes, then (-1, -1).

    ``reverse`` writes the records last offset first (readers must place
    them, not append them); ``overlap`` also sends each record's first half
    again after it has been written with garbage, so a later record must
    win.  Ranges of zeros are still sent (a hole is a writer's choice)."""
    head = (FLAT_SIGNATURE + struct.pack(">qq", 1, 1)).ljust(4096, b"\0")
    chunks = [(at, data[at:at + record]) for at in range(0, len(data), record)]
    if reverse:
        chunks.reverse()
    out = [head]
    for at, chunk in chunks:
        if overlap and len(chunk) > 1:
            half = len(chunk) // 2
            out.append(struct.pack(">qq", at, half) + b"\xee" * half)
        out.append(struct.pack(">qq", at, len(chunk)) + chunk)
    out.append(struct.pack(">qq", -1, -1))
    return b"".join(out)
