"""The interface every dump source offers, and the one rule for which bytes
a dump holds at a physical address (:func:`resolve_extents`), shared by
every reader and writer."""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from functools import cached_property
from itertools import pairwise

from slimdump.elf import ElfHeader, Note
from slimdump.errors import NotInDump, SourceReadError
from slimdump.record import record

#: a PT_LOAD with this p_paddr describes no physical memory (kexec-tools
#: writes it for ranges without one; makedumpfile's NOT_PADDR)
NOT_PADDR = (1 << 64) - 1


class PageLost(SourceReadError, NotInDump):
    """A page the dump says it holds but whose data is not there (a
    kdump-compressed dump cut short: its descriptor is zero).  Memory the
    dump does not hold, as :class:`NotInDump` says to readers of kernel
    memory, and a page lost, as :class:`SourceReadError` says to writers:
    never a page of zeros."""


@record(frozen=True)
class Segment:
    """One range of the crashed machine's memory held by the dump.

    ``mem_size`` bytes start at ``phys_start`` (``virt_start`` in the
    kernel's address space); the first ``file_size`` of them are stored at
    ``file_offset``, the rest read as zeros (ELF p_filesz < p_memsz).
    """

    phys_start: int
    virt_start: int
    mem_size: int
    file_offset: int
    file_size: int

    @property
    def phys_end(self) -> int:
        return self.phys_start + self.mem_size

    def as_metadata(self) -> dict[str, int]:
        return {"phys_start": self.phys_start, "virt_start": self.virt_start,
                "size": self.mem_size}

    @property
    def usable(self) -> bool:
        """Describes physical memory: a real p_paddr and some p_memsz."""
        return self.phys_start != NOT_PADDR and self.mem_size > 0

    def within_file(self, file_size: int) -> Segment:
        """This segment as a file of ``file_size`` bytes holds it: a core cut
        short holds no memory its headers place past its end (nor the
        declared-only tail after that)."""
        if not self.file_size or self.file_offset + min(self.file_size,
                                                        self.mem_size) <= file_size:
            return self
        held = max(0, min(self.file_size, file_size - self.file_offset))
        return Segment(self.phys_start, self.virt_start, held, self.file_offset, held)


@record(frozen=True)
class Extent:
    """Physical bytes [phys_start, phys_end) of a dump and where they come
    from: ``file_offset`` of the first byte in the file, or -1 for a range a
    segment only declares (p_memsz past p_filesz), which reads as zeros."""

    phys_start: int
    phys_end: int
    file_offset: int

    @property
    def in_file(self) -> bool:
        return self.file_offset >= 0


def resolve_extents(segments: Sequence[Segment]) -> list[Extent]:
    """The dump's memory as sorted, non-overlapping extents: which bytes the
    dump really holds at each physical address.

    Segments overlap in real dumps (the kernel-image PT_LOAD duplicates RAM)
    and in odd ones (a segment that only declares a range with p_memsz
    beyond p_filesz, over another that stores it).  Precedence, per byte:
    file data beats a declared-only range; among segments with file data the
    first in program-header order wins (as makedumpfile, crash and
    libkdumpfile read ELF cores; drgn lets the last one win).  Segments
    without a physical address or size (:attr:`Segment.usable`) hold
    nothing.  O(n log n) in the number of segments."""
    pieces: list[tuple[int, int, int, int]] = []      # (start, end, rank, file offset)
    for index, seg in enumerate(s for s in segments if s.usable):
        held = min(seg.file_size, seg.mem_size)
        if held > 0:
            pieces.append((seg.phys_start, seg.phys_start + held, index, seg.file_offset))
        if held < seg.mem_size:
            pieces.append((seg.phys_start + held, seg.phys_end, len(segments) + index, -1))
    by_start = sorted(pieces)
    if all(a[1] <= b[0] for a, b in pairwise(by_start)):
        return [Extent(a, b, off) for a, b, _rank, off in by_start]     # the usual case
    # sweep the boundaries; the active piece of lowest rank owns each interval
    bounds = sorted({x for p in pieces for x in p[:2]})
    active: list[tuple[int, int, int, int]] = []       # (rank, start, end, offset)
    out: list[Extent] = []
    at = 0
    for lo, hi in pairwise(bounds):
        while at < len(by_start) and by_start[at][0] <= lo:
            start, end, rank, off = by_start[at]
            heapq.heappush(active, (rank, start, end, off))
            at += 1
        while active and active[0][2] <= lo:
            heapq.heappop(active)
        if not active:
            continue
        _rank, start, _end, off = active[0]
        file_at = off + lo - start if off >= 0 else -1
        last = out[-1] if out else None
        if (last is not None and last.phys_end == lo and (last.in_file == (off >= 0))
                and (off < 0 or last.file_offset + lo - last.phys_start == file_at)):
            out[-1] = Extent(last.phys_start, hi, last.file_offset)
        else:
            out.append(Extent(lo, hi, file_at))
    return out


def merged_ranges(extents: Sequence[Extent]) -> list[tuple[int, int]]:
    """The physical ranges the extents cover, adjacent ones merged."""
    out: list[tuple[int, int]] = []
    for ext in extents:
        if out and out[-1][1] == ext.phys_start:
            out[-1] = (out[-1][0], ext.phys_end)
        else:
            out.append((ext.phys_start, ext.phys_end))
    return out


def merge_intervals(intervals: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``intervals`` ([a, b), any order) sorted, the overlapping and
    adjacent ones merged."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def page_intervals(extents: Sequence[Extent], page_size: int) -> list[tuple[int, int]]:
    """Pfn intervals [a, b) of the pages holding any byte of ``extents``,
    sorted and merged: a page only partly covered (a segment that ends or
    starts mid-page) is a page of the dump, its other bytes zeros."""
    return merge_intervals((lo // page_size, -(-hi // page_size))
                           for lo, hi in merged_ranges(extents))


def subtract_intervals(intervals: Sequence[tuple[int, int]],
                       minus: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``intervals`` less ``minus`` (both sorted, non-overlapping [a, b))."""
    out: list[tuple[int, int]] = []
    j = 0
    for a, b in intervals:
        while j < len(minus) and minus[j][1] <= a:
            j += 1
        k = j
        while a < b and k < len(minus) and minus[k][0] < b:
            if minus[k][0] > a:
                out.append((a, minus[k][0]))
            a = max(a, minus[k][1])
            k += 1
        if a < b:
            out.append((a, b))
    return out


def partial_pages(extents: Sequence[Extent], page_size: int
                  ) -> list[tuple[int, list[tuple[int, int]]]]:
    """``[(pfn, [(lo, hi), ...])]``: the pages :func:`page_intervals` counts
    that the extents do not cover whole, each with the byte ranges (offsets
    in the page) the dump holds; the rest of such a page reads as zeros."""
    held: dict[int, list[tuple[int, int]]] = {}
    for lo, hi in merged_ranges(extents):
        for pfn in {lo // page_size, (hi - 1) // page_size}:
            base = pfn * page_size
            a, b = max(lo, base) - base, min(hi, base + page_size) - base
            if (a, b) != (0, page_size):
                held.setdefault(pfn, []).append((a, b))
    return sorted(held.items())


class ExtentMap:
    """:func:`resolve_extents` with lookup by physical address."""

    def __init__(self, segments: Sequence[Segment]) -> None:
        self.extents = resolve_extents(segments)
        self._starts = [e.phys_start for e in self.extents]

    def at(self, paddr: int) -> Extent | None:
        """The extent holding ``paddr``, or None."""
        i = bisect_right(self._starts, paddr) - 1
        if i >= 0 and paddr < self.extents[i].phys_end:
            return self.extents[i]
        return None


class DumpSource:
    """A crash dump: the ELF identity of the crashed machine, its notes, the
    memory ranges it holds and counted physical reads.  Subclasses fill the
    attributes and implement :meth:`read_phys`."""

    path: str
    format: str                 # "elf", later "kdump", "flattened"
    header: ElfHeader           # class, byte order, machine of the crashed kernel
    notes: list[Note]
    segments: list[Segment]
    size: int                   # bytes in the file
    #: read_phys_into may be called from two threads at once (a source whose
    #: reads keep no state besides the counts says so)
    parallel_reads: bool = False

    @property
    def bytes_read(self) -> int:
        raise NotImplementedError

    @property
    def data_end(self) -> int:
        """The file size the format's headers promise."""
        raise NotImplementedError

    @property
    def truncated(self) -> bool:
        return self.size < self.data_end

    @cached_property
    def extent_map(self) -> ExtentMap:
        """Which bytes the dump holds where (:func:`resolve_extents` of
        :attr:`segments`)."""
        return ExtentMap(self.segments)

    @property
    def extents(self) -> list[Extent]:
        return self.extent_map.extents

    @property
    def segments_in_file(self) -> list[Segment]:
        """:attr:`segments` cut where the file ends (:meth:`pages_past_end`):
        what a memory map of this file can hold."""
        return self.segments

    def pages_past_end(self, page_size: int) -> list[tuple[int, int]]:
        """Pfn intervals [a, b) of pages the headers place wholly past the end
        of a file cut short: none of their bytes can be read.  Formats that
        locate each page by its own descriptor have none."""
        return []

    def read_phys(self, paddr: int, size: int) -> bytes:
        raise NotImplementedError

    def read_phys_into(self, paddr: int, buf: memoryview) -> None:
        """Fill ``buf`` (a writable byte view) with the physical memory at
        ``paddr``: what :meth:`read_phys` of ``len(buf)`` bytes returns, with
        the same errors and the same count in :attr:`bytes_read`.  Bulk
        readers (the struct page walk) use it to read straight into their
        arrays; sources that can (ELF cores) override it to skip the
        intermediate copy.  On an error ``buf`` may be partly written."""
        buf[:] = self.read_phys(paddr, len(buf))

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> DumpSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
