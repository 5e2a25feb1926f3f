"""The slimdump file: an ELF core holding notes and nothing else.

Layout (nocoredump-note.md, "The slimdump file"): the ELF header with the
source's class, byte order and machine, one PT_NOTE program header, then the
note data.  No PT_LOAD is written, so no reader can mistake missing memory
for a machine full of zeros.
"""

from __future__ import annotations

from slimdump.elf import PT_NOTE, ElfHeader, Note, ProgramHeader, frame_notes


def slimdump_bytes(source_header: ElfHeader, notes: list[Note]) -> bytes:
    """The whole slimdump file for these notes."""
    hdr = source_header.core_like(phnum=1)
    payload = frame_notes(notes, hdr.endian)
    note_offset = hdr.size + hdr.phdr_size
    note = ProgramHeader(PT_NOTE, 0, note_offset, 0, 0, len(payload), len(payload), 4)
    return hdr.pack() + note.pack(hdr) + payload
