"""What the writers take from a dump source: its pages, zero-filled where
the source holds no bytes (:class:`PageReader`), its merged note area
(:func:`note_area`), and bitmaps as :class:`~slimdump.bitmap.PfnBitmap`
(:func:`as_pfn_bitmap`).
"""

from __future__ import annotations

from collections.abc import Callable

from slimdump.bitmap import PfnBitmap
from slimdump.elf import frame_notes
from slimdump.errors import NotInDump, SourceReadError
from slimdump.sources.base import DumpSource
from slimdump.sources.kdump_pages import Lost

ReadPages = Callable[[int, int], bytes]
"""``read_pages(start_pfn, count)``: ``count * page_size`` bytes of memory."""

BitmapLike = bytes | bytearray | memoryview
"""A bitmap as packed bytes: bit ``pfn % 8`` of byte ``pfn // 8``."""


def as_pfn_bitmap(bitmap: BitmapLike | PfnBitmap, nbits: int) -> PfnBitmap:
    """``bitmap`` as a :class:`PfnBitmap` of exactly ``nbits`` bits: a
    PfnBitmap as it is (of that size), packed bytes copied into memory (bits
    past ``nbits`` cleared, missing bytes zero)."""
    if isinstance(bitmap, PfnBitmap):
        if bitmap.nbits != nbits:
            raise ValueError(f"bitmap of {bitmap.nbits} bits where {nbits} are needed")
        return bitmap
    return PfnBitmap.from_bytes(bitmap, nbits)


class PageReader:
    """``read_pages(start_pfn, count)`` over a source, zero-filling the bytes
    the source does not hold (the rest of a page a segment covers only in
    part, as makedumpfile does; a page a saved dump left out, which only an
    ELF output's short gaps read), never the bytes it holds but cannot give.

    :meth:`read_into` says which pages could not be read (an I/O error, a
    file shorter than its headers say, a page lost from an incomplete
    kdump-compressed file or that does not decompress): a run that fails is
    read again page by page, so one bad sector costs only its pages.
    Calling the reader raises the first such error instead (the -E writer,
    whose segments are laid out before the pages are read, cannot leave a
    page out).

    ``thread_safe``: the writer may call it from several threads at once,
    as the source says (:attr:`DumpSource.parallel_reads`: ELF cores, which
    read with pread() alone; kdump-compressed and flattened sources keep
    caches and are read from one thread)."""

    def __init__(self, source: DumpSource, page_size: int = 4096) -> None:
        self.source = source
        self.page_size = page_size
        self.thread_safe = source.parallel_reads
        by_page = getattr(source, "read_pages_lost", None)
        self._by_page = by_page if getattr(source, "block_size", 0) == page_size else None

    def __call__(self, start_pfn: int, count: int) -> bytes:
        buf = bytearray(count * self.page_size)
        lost = self.read_into(start_pfn, count, memoryview(buf))
        if lost:
            raise lost[0][1]
        return bytes(buf)

    def read_into(self, start_pfn: int, count: int, buf: memoryview) -> Lost:
        """Fill ``buf`` (exactly ``count`` pages long) with the pages from
        ``start_pfn``: straight from the file where the source can.  Returns
        the pages that could not be read (their bytes in ``buf`` are
        undefined)."""
        source = self.source
        try:
            # a kdump-compressed source says itself which pages it cannot give
            if self._by_page is not None:
                return self._by_page(start_pfn, count, buf)
            source.read_phys_into(start_pfn * self.page_size, buf)
            return []
        except (NotInDump, SourceReadError):
            return self._piecewise(start_pfn, count, buf)

    def _piecewise(self, start_pfn: int, count: int, buf: memoryview) -> Lost:
        """The run segment by segment (zeros where none holds a byte), and
        a segment's part page by page where it fails."""
        source, page_size = self.source, self.page_size
        addr, size = start_pfn * page_size, count * page_size
        buf[:] = bytes(size)
        lost: dict[int, SourceReadError] = {}
        for seg in source.segments:
            lo, hi = max(addr, seg.phys_start), min(addr + size, seg.phys_end)
            if lo >= hi:
                continue
            try:
                buf[lo - addr:hi - addr] = source.read_phys(lo, hi - lo)
                continue
            except (NotInDump, SourceReadError):
                pass
            for page in range(lo - lo % page_size, hi, page_size):
                pfn = page // page_size
                if pfn in lost:
                    continue
                a, b = max(page, lo), min(page + page_size, hi)
                try:
                    buf[a - addr:b - addr] = source.read_phys(a, b - a)
                except SourceReadError as exc:      # PageLost included
                    lost[pfn] = exc
                except NotInDump:
                    pass        # bytes the source does not hold read as zeros
        return sorted(lost.items(), key=lambda item: item[0])


def page_reader(source: DumpSource, page_size: int = 4096) -> PageReader:
    """A :class:`PageReader` over ``source``."""
    return PageReader(source, page_size)


def note_area(source: DumpSource) -> bytes:
    """The source's notes as the vmcore's merged PT_NOTE holds them: the raw
    bytes where the source keeps them, framed again otherwise.  A source
    that sets ``note_area`` (a kdump file's copy, or the sound notes an ELF
    core salvaged from a damaged segment, possibly none) is taken at its
    word: its raw segments are never read again."""
    area = getattr(source, "note_area", None)
    if isinstance(area, bytes):
        return area
    raw = getattr(source, "raw", None)
    segments = getattr(source, "note_segments", None)
    if raw is not None and segments:
        return b"".join(raw.read_at(ph.p_offset, ph.p_filesz, what="notes")
                        for ph in segments)
    return frame_notes(source.notes, source.header.endian)
