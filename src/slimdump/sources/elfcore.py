"""ELF core files: /proc/vmcore, saved ELF vmcores, slimdumps.

Opening a core reads the ELF header, the program headers and the note
segments, nothing else; memory is read only through :meth:`read_phys`.
Everything is validated against the file size before it is trusted, so a
hostile or truncated file gives a one-line :class:`DumpError`.
"""

from __future__ import annotations

import struct

from slimdump.elf import (
    ET_CORE,
    PN_XNUM,
    PT_LOAD,
    PT_NOTE,
    ElfFormatError,
    ElfHeader,
    Note,
    ProgramHeader,
    frame_notes,
    parse_notes_prefix,
)
from slimdump.errors import DumpError, NotInDump
from slimdump.sources.base import (
    DumpSource,
    Extent,
    Segment,
    page_intervals,
    resolve_extents,
    subtract_intervals,
)
from slimdump.sources.rawfile import RawFile

_ET_NAMES = {0: "no file type", 1: "relocatable object", 2: "executable",
             3: "shared object", 4: "core"}
# A note segment larger than this is not something a kernel writes.
MAX_NOTE_SEGMENT = 256 << 20
# Xen's ELF xc_core (docs/misc/dump-core-format.txt in Xen): sections
# .note.Xen, .xen_prstatus, .xen_pages, ..., and no program headers
XEN_SECTION_PREFIX = ".xen_"
MAX_SECTIONS = 1024
MAX_SECTION_NAMES = 1 << 16
#: the end of every refusal of a dump format slimdump does not read
NOT_READ = "slimdump reads ELF vmcores, kdump-compressed and flattened files only"


class ElfCore(DumpSource):
    """An ELF core file opened for reading."""

    format = "elf"
    # reads are positioned preads with counts kept under RawFile's lock
    parallel_reads = True

    def __init__(self, raw: RawFile, *, salvage: bool = False) -> None:
        """``salvage``: a note segment that cannot be read whole gives the
        notes before the damage (``damaged_notes`` says what was wrong)
        instead of refusing the file: capture saves the memory anyway."""
        self.raw = raw
        self.salvage = salvage
        self.damaged_notes: list[str] = []
        self.path = raw.path
        self.size = raw.size
        try:
            self.header = ElfHeader.parse(raw.read_at(0, 64, what="ELF header",
                                                      allow_short=True))
        except ElfFormatError as exc:
            raise DumpError(self.path, str(exc)) from None
        hdr = self.header
        if hdr.e_type != ET_CORE:
            kind = _ET_NAMES.get(hdr.e_type, f"e_type {hdr.e_type}")
            raise DumpError(self.path, f"ELF file is not a core dump ({kind})")
        self.phdrs = self._read_program_headers()
        self.note_segments = [ph for ph in self.phdrs if ph.p_type == PT_NOTE]
        self.notes = self._read_notes()
        self.segments = [Segment(ph.p_paddr, ph.p_vaddr, ph.p_memsz, ph.p_offset, ph.p_filesz)
                         for ph in self.phdrs if ph.p_type == PT_LOAD]

    def _read_program_headers(self) -> list[ProgramHeader]:
        hdr = self.header
        if hdr.e_phnum == 0:
            if XEN_SECTION_PREFIX in self._section_names():
                raise DumpError(self.path, f"a Xen xc_core dump (ELF format): {NOT_READ}")
            raise DumpError(self.path, "core file has no program headers")
        if hdr.e_phentsize != hdr.phdr_size:
            raise DumpError(self.path, f"program header size {hdr.e_phentsize} is wrong for "
                                       f"{hdr.class_name} (expected {hdr.phdr_size})")
        phnum = hdr.e_phnum
        if phnum == PN_XNUM:
            phnum = self._extended_phnum()
        if phnum == 0:
            raise DumpError(self.path, "core file has no program headers")
        table = phnum * hdr.phdr_size
        if hdr.e_phoff + table > self.size:
            raise DumpError(self.path, f"program header table ({phnum} entries at offset "
                                       f"{hdr.e_phoff:#x}) runs past the end of the file "
                                       f"({self.size} bytes)")
        data = self.raw.read_at(hdr.e_phoff, table, what="program headers")
        return [ProgramHeader.parse(data, i * hdr.phdr_size, hdr) for i in range(phnum)]

    def _section_names(self) -> str:
        """The section header string table's text ("" when there is none
        or it is not sane): Linux's cores have no sections; Xen's ELF
        xc_core has sections and no program headers."""
        hdr = self.header
        shsize = 64 if hdr.elf64 else 40
        if (hdr.e_shoff == 0 or hdr.e_shentsize != shsize or not 0 < hdr.e_shstrndx
                < hdr.e_shnum <= MAX_SECTIONS
                or hdr.e_shoff + hdr.e_shnum * shsize > self.size):
            return ""
        sh = self.raw.read_at(hdr.e_shoff + hdr.e_shstrndx * shsize, shsize,
                              what="section header string table header")
        offset, size = struct.unpack_from(hdr.endian + ("QQ" if hdr.elf64 else "II"), sh,
                                          24 if hdr.elf64 else 16)
        if size > MAX_SECTION_NAMES or offset + size > self.size:
            return ""
        return self.raw.read_at(offset, size, what="section names").decode("latin-1")

    def _extended_phnum(self) -> int:
        """e_phnum == PN_XNUM: the real count is sh_info of section header 0
        (kernels write this for machines with more than 65534 ranges)."""
        hdr = self.header
        shsize = 64 if hdr.elf64 else 40
        if hdr.e_shoff == 0 or hdr.e_shoff + shsize > self.size:
            raise DumpError(self.path, "e_phnum is PN_XNUM but there is no section header 0")
        sh = self.raw.read_at(hdr.e_shoff, shsize, what="section header 0")
        return struct.unpack_from(hdr.endian + "I", sh, 44 if hdr.elf64 else 28)[0]

    def _read_notes(self) -> list[Note]:
        notes: list[Note] = []
        for index, ph in enumerate(self.note_segments):
            size = ph.p_filesz
            if size > MAX_NOTE_SEGMENT:
                self._damaged(f"note segment {index} claims {size} bytes, more than any "
                              "kernel writes")
                size = MAX_NOTE_SEGMENT
            if ph.p_offset + size > self.size:
                self._damaged(f"note segment {index} (offset {ph.p_offset:#x}, {size} bytes) "
                              f"runs past the end of the file ({self.size} bytes)")
                size = max(0, self.size - ph.p_offset)
            data = self.raw.read_at(ph.p_offset, size, what="notes")
            found, problem = parse_notes_prefix(data, self.header.endian, ph.p_offset)
            notes.extend(found)
            if problem is not None:
                self._damaged(problem)
        if self.damaged_notes:
            # the writers copy the note area: the sound notes, framed again
            self.note_area = frame_notes(notes, self.header.endian)
        return notes

    def _damaged(self, problem: str) -> None:
        """A note segment that cannot be read whole: refused, or with
        ``salvage`` recorded and read as far as it goes."""
        if not self.salvage:
            raise DumpError(self.path, problem)
        self.damaged_notes.append(problem)

    @property
    def bytes_read(self) -> int:
        return self.raw.bytes_read

    @property
    def data_end(self) -> int:
        """Where the last segment's data ends (headers included)."""
        end = self.header.e_phoff + len(self.phdrs) * self.header.phdr_size
        for ph in self.phdrs:
            if ph.p_filesz:
                end = max(end, ph.p_offset + ph.p_filesz)
        return end

    @property
    def truncated(self) -> bool:
        """Shorter than the headers promise, or (a flattened -E stream) cut
        before its end marker."""
        return super().truncated or not getattr(self.raw, "complete", True)

    @property
    def segments_in_file(self) -> list[Segment]:
        if not self.truncated:
            return self.segments
        return [seg.within_file(self.size) for seg in self.segments]

    def pages_past_end(self, page_size: int) -> list[tuple[int, int]]:
        """The pages holding bytes of file-backed extents past the end of the
        file, less any page of :attr:`segments_in_file` (a page that holds
        some bytes before the end is read, and fails, as a page lost alone)."""
        if not self.truncated:
            return []
        past: list[Extent] = []
        for ext in self.extents:
            cut = ext.phys_start + max(0, self.size - ext.file_offset)
            if ext.in_file and cut < ext.phys_end:
                past.append(Extent(cut, ext.phys_end, ext.file_offset + cut - ext.phys_start))
        held = page_intervals(resolve_extents(self.segments_in_file), page_size)
        return subtract_intervals(page_intervals(past, page_size), held)

    def read_phys(self, paddr: int, size: int) -> bytes:
        """Read physical memory as :func:`~slimdump.sources.base.resolve_extents`
        says the core holds it: file data where a segment stores the bytes
        (the first such segment in program-header order), zeros where
        segments only declare them (p_memsz past p_filesz), NotInDump where
        no PT_LOAD covers an address."""
        extents = self.extent_map
        ext = extents.at(paddr)
        if ext is not None and ext.in_file and paddr + size <= ext.phys_end:
            # the common case: one extent, all in the file: one pread, no copy
            return self.raw.read_at(ext.file_offset + paddr - ext.phys_start, size,
                                    what=f"memory at {paddr:#x}")
        out = bytearray()
        addr, end = paddr, paddr + size
        while addr < end:
            ext = extents.at(addr)
            if ext is None:
                raise NotInDump(self.path, f"physical address {addr:#x} is not in the dump")
            chunk_end = min(end, ext.phys_end)
            if ext.in_file:
                out += self.raw.read_at(ext.file_offset + addr - ext.phys_start,
                                        chunk_end - addr, what=f"memory at {addr:#x}")
            else:
                out += bytes(chunk_end - addr)
            addr = chunk_end
        return bytes(out)

    def read_phys_into(self, paddr: int, buf: memoryview) -> None:
        """:meth:`read_phys` into ``buf``: one read straight into it when a
        single extent holds all of it in the file (the common case), else
        through :meth:`read_phys`."""
        size = len(buf)
        ext = self.extent_map.at(paddr)
        if ext is not None and ext.in_file and paddr + size <= ext.phys_end:
            self.raw.read_into(ext.file_offset + paddr - ext.phys_start, buf,
                               what=f"memory at {paddr:#x}")
            return
        super().read_phys_into(paddr, buf)

    def close(self) -> None:
        self.raw.close()
