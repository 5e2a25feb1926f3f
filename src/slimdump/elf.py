"""ELF structures of core files: header, program headers and note framing.

This module knows the ELF format and nothing about kernels.  It parses and
packs headers for both classes (ELF32/ELF64) and both byte orders, and frames
notes the way Linux writes them: a 12-byte header of three 32-bit words in the
file's byte order (in ELF64 too), then name and descriptor each padded to 4.
"""

from __future__ import annotations

import struct

from slimdump.record import record, replace

ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2
EV_CURRENT = 1
ET_CORE = 4
PT_NULL, PT_LOAD, PT_NOTE = 0, 1, 4
PN_XNUM = 0xFFFF

MACHINES = {3: "i386", 8: "mips", 20: "ppc", 21: "ppc64", 22: "s390", 40: "arm",
            62: "x86_64", 183: "aarch64", 243: "riscv", 258: "loongarch"}
EM_386, EM_X86_64, EM_AARCH64 = 3, 62, 183

_EHDR = {True: "16sHHIQQQIHHHHHH", False: "16sHHIIIIIHHHHHH"}
_PHDR64 = "IIQQQQQQ"   # type flags offset vaddr paddr filesz memsz align
_PHDR32 = "IIIIIIII"   # type offset vaddr paddr filesz memsz flags align
NOTE_HEADER_SIZE = 12


class ElfFormatError(ValueError):
    """The bytes are not the ELF structure they claim to be."""


def align4(n: int) -> int:
    """Round up to the 4-byte alignment of note names and descriptors."""
    return (n + 3) & ~3


@record(frozen=True)
class ElfHeader:
    """An ELF file header with its class and byte order decoded."""

    elf64: bool
    endian: str          # struct prefix: "<" little-endian, ">" big-endian
    osabi: int
    e_type: int
    e_machine: int
    e_version: int
    e_entry: int
    e_phoff: int
    e_shoff: int
    e_flags: int
    e_ehsize: int
    e_phentsize: int
    e_phnum: int
    e_shentsize: int
    e_shnum: int
    e_shstrndx: int

    @property
    def size(self) -> int:
        return 64 if self.elf64 else 52

    @property
    def phdr_size(self) -> int:
        return 56 if self.elf64 else 32

    @property
    def machine_name(self) -> str:
        return MACHINES.get(self.e_machine, f"machine {self.e_machine}")

    @property
    def class_name(self) -> str:
        return "ELF64" if self.elf64 else "ELF32"

    @property
    def byte_order(self) -> str:
        return "little-endian" if self.endian == "<" else "big-endian"

    @classmethod
    def parse(cls, data: bytes) -> ElfHeader:
        """Decode the header at the start of ``data``; raise ElfFormatError."""
        if data[:4] != ELF_MAGIC[:len(data)] or len(data) < 4:
            raise ElfFormatError("not an ELF file (no \\x7fELF magic)")
        if len(data) < 16:
            raise ElfFormatError(f"truncated ELF header ({len(data)} bytes)")
        ei_class, ei_data, ei_version, osabi = data[4], data[5], data[6], data[7]
        if ei_class not in (ELFCLASS32, ELFCLASS64):
            raise ElfFormatError(f"unknown ELF class {ei_class}")
        if ei_data not in (ELFDATA2LSB, ELFDATA2MSB):
            raise ElfFormatError(f"unknown ELF byte order {ei_data}")
        if ei_version != EV_CURRENT:
            raise ElfFormatError(f"unknown ELF version {ei_version}")
        elf64 = ei_class == ELFCLASS64
        endian = "<" if ei_data == ELFDATA2LSB else ">"
        fmt = endian + _EHDR[elf64]
        if len(data) < struct.calcsize(fmt):
            raise ElfFormatError("truncated ELF header")
        _, *fields = struct.unpack_from(fmt, data)
        return cls(elf64, endian, osabi, *fields)

    def pack(self) -> bytes:
        ident = ELF_MAGIC + bytes([ELFCLASS64 if self.elf64 else ELFCLASS32,
                                   ELFDATA2LSB if self.endian == "<" else ELFDATA2MSB,
                                   EV_CURRENT, self.osabi]) + bytes(8)
        return struct.pack(self.endian + _EHDR[self.elf64], ident, self.e_type, self.e_machine,
                           self.e_version, self.e_entry, self.e_phoff, self.e_shoff,
                           self.e_flags, self.e_ehsize, self.e_phentsize, self.e_phnum,
                           self.e_shentsize, self.e_shnum, self.e_shstrndx)

    def core_like(self, phnum: int) -> ElfHeader:
        """A fresh ET_CORE header of the same class, byte order and machine,
        with ``phnum`` program headers right after it and no sections."""
        return replace(self, e_type=ET_CORE, e_version=EV_CURRENT, e_entry=0,
                       e_phoff=self.size, e_shoff=0, e_flags=0, e_ehsize=self.size,
                       e_phentsize=self.phdr_size, e_phnum=phnum, e_shentsize=0,
                       e_shnum=0, e_shstrndx=0)


@record(frozen=True)
class ProgramHeader:
    """One program header (segment) of either class."""

    p_type: int
    p_flags: int
    p_offset: int
    p_vaddr: int
    p_paddr: int
    p_filesz: int
    p_memsz: int
    p_align: int

    @classmethod
    def parse(cls, data: bytes, offset: int, hdr: ElfHeader) -> ProgramHeader:
        if hdr.elf64:
            return cls(*struct.unpack_from(hdr.endian + _PHDR64, data, offset))
        p_type, off, vaddr, paddr, filesz, memsz, flags, align = struct.unpack_from(
            hdr.endian + _PHDR32, data, offset)
        return cls(p_type, flags, off, vaddr, paddr, filesz, memsz, align)

    def pack(self, hdr: ElfHeader) -> bytes:
        if hdr.elf64:
            return struct.pack(hdr.endian + _PHDR64, self.p_type, self.p_flags, self.p_offset,
                               self.p_vaddr, self.p_paddr, self.p_filesz, self.p_memsz,
                               self.p_align)
        return struct.pack(hdr.endian + _PHDR32, self.p_type, self.p_offset, self.p_vaddr,
                           self.p_paddr, self.p_filesz, self.p_memsz, self.p_flags,
                           self.p_align)


@record(frozen=True)
class Note:
    """One ELF note record, kept byte-exact so that it can be copied as is.

    ``raw_name`` holds the ``n_namesz`` bytes of the name field (normally
    ending in NUL); ``offset`` is where the record starts in its file (or -1
    for a note that was built rather than read).
    """

    raw_name: bytes
    type: int
    desc: bytes
    offset: int = -1

    @property
    def name(self) -> str:
        """The owner name as text, without its terminating NUL."""
        return self.raw_name.split(b"\0", 1)[0].decode("ascii", "backslashreplace")

    @classmethod
    def make(cls, name: str, note_type: int, desc: bytes) -> Note:
        """A note whose name is ``name`` plus the NUL that n_namesz counts."""
        return cls(name.encode("ascii") + b"\0", note_type, desc)

    def frame(self, endian: str) -> bytes:
        """The record as it stands in a file: header, padded name and desc."""
        name, desc = self.raw_name, self.desc
        return (struct.pack(endian + "III", len(name), len(desc), self.type)
                + name + bytes(align4(len(name)) - len(name))
                + desc + bytes(align4(len(desc)) - len(desc)))


def parse_notes(data: bytes, endian: str, base_offset: int = 0) -> list[Note]:
    """Split a note segment into records.

    Stops at an all-zero header (the terminator the kernel writes after each
    CPU's notes) and ignores fewer than 12 trailing bytes.  A record whose
    name or descriptor would run past the segment raises ElfFormatError: the
    sizes are hostile or the segment is truncated.
    """
    notes, problem = parse_notes_prefix(data, endian, base_offset)
    if problem is not None:
        raise ElfFormatError(problem)
    return notes


def parse_notes_prefix(data: bytes, endian: str,
                       base_offset: int = 0) -> tuple[list[Note], str | None]:
    """The records of a note segment up to the first one that cannot be
    (see :func:`parse_notes`), and what is wrong with that one (None when
    the whole segment is sound)."""
    notes: list[Note] = []
    pos, end = 0, len(data)
    while end - pos >= NOTE_HEADER_SIZE:
        namesz, descsz, note_type = struct.unpack_from(endian + "III", data, pos)
        if namesz == 0 and descsz == 0 and note_type == 0:
            break
        name_at = pos + NOTE_HEADER_SIZE
        desc_at = name_at + align4(namesz)
        if desc_at > end or desc_at + descsz > end:
            return notes, (f"note at offset {base_offset + pos:#x} claims name size {namesz} "
                           f"and descriptor size {descsz}, past the end of its segment "
                           f"({base_offset + end:#x})")
        notes.append(Note(bytes(data[name_at:name_at + namesz]), note_type,
                          bytes(data[desc_at:desc_at + descsz]), base_offset + pos))
        pos = desc_at + align4(descsz)
    return notes, None


def frame_notes(notes: list[Note], endian: str) -> bytes:
    """Concatenate framed notes into the payload of one PT_NOTE segment."""
    return b"".join(note.frame(endian) for note in notes)
