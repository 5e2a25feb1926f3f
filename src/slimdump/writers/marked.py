"""A vmcore as a kernel with the 2011 NT_NOCOREDUMP patch would have left it.

``slimdump mark`` copies a vmcore and appends an NT_NOCOREDUMP note to its
first note segment.  When the padding after the notes has room (as
/proc/vmcore's page-rounded note area often has) every other byte stays
where it was; otherwise everything after the notes moves by whole pages, so
segment data keeps its page alignment, and the program headers say so.
"""

from __future__ import annotations

from slimdump.elf import Note
from slimdump.errors import DumpError
from slimdump.progress import Progress
from slimdump.record import replace
from slimdump.sources.elfcore import ElfCore
from slimdump.writers.atomic import AtomicOutput
from slimdump.writers.copy import RangeCopier

PAGE = 4096


def write_marked(source: ElfCore, dst: str, note: Note, *, overwrite: bool = False,
                 progress: bool | None = None) -> int:
    """Write ``source`` plus ``note`` to ``dst``; return the shift applied to
    data after the notes (0 when the note fit in the padding)."""
    if source.truncated:
        raise DumpError(source.path, f"truncated: its headers promise {source.data_end} "
                                     f"bytes but the file has {source.size}")
    hdr = source.header
    if not source.note_segments:
        raise DumpError(source.path, "core file has no note segment to add the note to")
    target = source.note_segments[0]
    insert_at = target.p_offset + target.p_filesz
    framed = note.frame(hdr.endian)
    used_after = [ph.p_offset for ph in source.phdrs if ph.p_filesz and ph.p_offset >= insert_at]
    if hdr.e_phoff >= insert_at:
        used_after.append(hdr.e_phoff)
    # Nothing stored after the notes (a slimdump, say): the file just grows.
    room = min(used_after) - insert_at if used_after else len(framed)
    shift = 0 if len(framed) <= room else -(-len(framed) // PAGE) * PAGE

    def moved(offset: int) -> int:
        return offset + shift if shift and insert_at <= offset <= source.size else offset

    phdrs = [replace(ph, p_filesz=ph.p_filesz + len(framed), p_memsz=ph.p_memsz + len(framed))
             if ph is target else replace(ph, p_offset=moved(ph.p_offset))
             for ph in source.phdrs]
    new_hdr = replace(hdr, e_phoff=moved(hdr.e_phoff))
    table = b"".join(ph.pack(new_hdr) for ph in phdrs)
    size = max(source.size + shift, insert_at + len(framed))

    bar = Progress(source.size, "Copying data", enabled=progress)
    with AtomicOutput(dst, overwrite=overwrite) as out:
        copier = RangeCopier(source.raw.fd, out.fd, source.path, dst, bar.update)
        copier.copy(0, 0, insert_at)
        copier.copy(insert_at, insert_at + shift, source.size - insert_at)
        out.set_size(size)
        out.write(new_hdr.pack(), 0)
        out.write(table, new_hdr.e_phoff)
        out.write(framed, insert_at)
        if shift:
            out.write(bytes(shift - len(framed)), insert_at + len(framed))
        out.commit()
    bar.finish()
    return shift
