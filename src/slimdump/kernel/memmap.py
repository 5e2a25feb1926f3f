"""The memory map a normal dump's bitmaps cover: the source's PT_LOADs,
less what the headers claim and the data contradicts.

A real ``/proc/vmcore`` never trips these rules; hostile or damaged headers
do, and a map they inflate to terabytes would be walked page by page.  Each
rule leaves the file's data alone and says what it left out:

* a segment past the widest physical address space (52 bits) is
  corruption: left out, the memory below it saved;
* a file cut short holds no memory past its end: those pages are lost,
  counted a range at a time (:meth:`DumpSource.pages_past_end`), never read;
* memory a segment only declares (p_memsz beyond p_filesz, zeros by ELF's
  rule) where the crashed kernel has no memory section is no memory at all:
  left out.  Without the kernel's sections (FLATMEM, an unreadable
  ``mem_section``) the sections that hold file data stand for them.
  (makedumpfile 1.7.2 ends such a map with the kernel's last present
  section too.)
"""

from __future__ import annotations

from collections.abc import Sequence

from slimdump.errors import DumpError
from slimdump.kernel.memory import KernelMemory
from slimdump.kernel.physmem import max_mapnr
from slimdump.kernel.sparsemem import mem_map_ranges
from slimdump.kernel.vmcoreinfo import VmcoreInfo
from slimdump.record import field, record
from slimdump.sources.base import DumpSource, Segment, merge_intervals, subtract_intervals

#: the widest physical address space of any architecture slimdump reads
#: (x86_64 with 5-level paging, arm64 with 52-bit PAs)
MAX_PHYSMEM_BITS = 52
#: memory sections of this size stand for a kernel's that cannot be read:
#: the largest a kernel uses (arm64's, before Linux 5.12 made it 2^27)
FALLBACK_SECTION_BITS = 30


@record
class MemoryMap:
    """The segments the bitmaps cover, the pfn intervals [a, b) lost past
    the end of the file, and one warning per rule that left something out."""

    segments: list[Segment]
    past_end: list[tuple[int, int]]
    warnings: list[str] = field(default_factory=list)


def memory_map(source: DumpSource, info: VmcoreInfo | None, page_size: int) -> MemoryMap:
    """The source's memory map under the three rules of this module."""
    limit = 1 << MAX_PHYSMEM_BITS
    warnings: list[str] = []
    segments: list[Segment] = []
    for seg, held in zip(source.segments, source.segments_in_file, strict=True):
        if seg.usable and seg.phys_end > limit:
            warnings.append(f"a PT_LOAD at physical {seg.phys_start:#x} "
                            f"({seg.phys_end - seg.phys_start} bytes) lies beyond a "
                            f"{MAX_PHYSMEM_BITS}-bit physical address space: left out of "
                            "the dump")
        else:
            segments.append(held)
    past_end = [(a, b) for a, b in source.pages_past_end(page_size) if b * page_size <= limit]
    if any(s.usable and s.file_size < s.mem_size for s in segments):
        sections = kernel_memory(source, info, segments, page_size)
        where = "where the crashed kernel has no memory section"
        if sections is None:
            bits = (info.number("SECTION_SIZE_BITS") if info else None) or 0
            bits = bits if 12 <= bits <= MAX_PHYSMEM_BITS else FALLBACK_SECTION_BITS
            sections = sections_holding_data(segments, bits)
            where = (f"outside the {1 << bits >> 20} MiB sections that hold data (the kernel's "
                     "memory sections cannot be read)")
        segments, cut = declared_within(segments, sections)
        if cut:
            warnings.append(f"{len(cut)} PT_LOAD(s) declare {sum(cut):,} bytes they do not "
                            f"hold (p_memsz beyond p_filesz) {where}: left out of the dump, "
                            "not memory")
    return MemoryMap(segments, past_end, warnings)


def kernel_memory(source: DumpSource, info: VmcoreInfo | None, segments: Sequence[Segment],
                  page_size: int) -> list[tuple[int, int]] | None:
    """Physical byte intervals [a, b) of the crashed kernel's present memory
    sections (SPARSEMEM's ``mem_section``), sorted and merged; None when
    they cannot be read (FLATMEM has no sections; VMCOREINFO may lack them)."""
    nr = max_mapnr(segments, page_size)
    if info is None or not nr:
        return None
    try:
        model, ranges = mem_map_ranges(KernelMemory(source, info), nr)
    except DumpError:
        return None
    if model != "sparsemem":
        return None
    return merge_intervals((first * page_size, end * page_size) for first, end, _ in ranges)


def sections_holding_data(segments: Sequence[Segment], bits: int) -> list[tuple[int, int]]:
    """Physical byte intervals [a, b) of the 2^bits-byte sections that hold
    any byte of the segments' file data, sorted and merged."""
    size = 1 << bits
    return merge_intervals(
        (s.phys_start // size * size, -(-(s.phys_start + held) // size) * size)
        for s in segments if s.usable and (held := min(s.file_size, s.mem_size)) > 0)


def declared_within(segments: Sequence[Segment], keep: Sequence[tuple[int, int]]
                    ) -> tuple[list[Segment], list[int]]:
    """``segments`` with the memory they only declare (past p_filesz) kept
    within ``keep`` (sorted physical byte intervals), and the bytes cut
    from each segment that lost some.  A segment's declared part becomes pieces
    without file data; the part it holds is untouched."""
    out: list[Segment] = []
    cut: list[int] = []
    for seg in segments:
        held = min(seg.file_size, seg.mem_size)
        if not seg.usable or held == seg.mem_size:
            out.append(seg)
            continue
        declared = [(seg.phys_start + held, seg.phys_end)]
        outside = subtract_intervals(declared, keep)
        if not outside:
            out.append(seg)
            continue
        if held:
            out.append(Segment(seg.phys_start, seg.virt_start, held, seg.file_offset, held))
        for a, b in subtract_intervals(declared, outside):
            out.append(Segment(a, seg.virt_start + a - seg.phys_start, b - a, 0, 0))
        cut.append(sum(b - a for a, b in outside))
    return out, cut
