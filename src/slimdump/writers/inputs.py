"""What the writers take from a dump source: its pages, zero-filled where
the source holds no bytes (:class:`PageReader`), its merged note area
(:func:`note_area`), and bitmaps as :class:`~slimdump.bitmap.PfnBitmap`
(:func:`as_pfn_bitmap`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from slimdump.bitmap import PfnBitmap
from slimdump.elf import frame_notes
from slimdump.errors import NotInDump
from slimdump.sources.base import DumpSource

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
    """``read_pages(start_pfn, count)`` over a source, zero-filling what no
    segment (or, for a filtered source, no dumped page) covers, as
    makedumpfile does for partial pages at segment edges.

    ``thread_safe``: the writer may call it from several threads at once,
    as the source says (:attr:`DumpSource.parallel_reads`: ELF cores, which
    read with pread() alone; kdump-compressed and flattened sources keep
    caches and are read from one thread)."""

    def __init__(self, source: DumpSource, page_size: int = 4096) -> None:
        self.source = source
        self.page_size = page_size
        self.thread_safe = source.parallel_reads

    def __call__(self, start_pfn: int, count: int) -> bytes:
        source, page_size = self.source, self.page_size
        addr, size = start_pfn * page_size, count * page_size
        try:
            return source.read_phys(addr, size)
        except NotInDump:
            pass
        out = bytearray(size)
        for seg in source.segments:
            lo, hi = max(addr, seg.phys_start), min(addr + size, seg.phys_end)
            if lo >= hi:
                continue
            try:
                out[lo - addr:hi - addr] = source.read_phys(lo, hi - lo)
            except NotInDump:
                for page in range(lo - lo % page_size, hi, page_size):
                    a, b = max(page, lo), min(page + page_size, hi)
                    with contextlib.suppress(NotInDump):
                        out[a - addr:b - addr] = source.read_phys(a, b - a)
        return bytes(out)

    def read_into(self, start_pfn: int, count: int, buf: memoryview) -> None:
        """What ``self(start_pfn, count)`` returns, into ``buf`` (exactly
        ``count`` pages long): straight from the file where the source can."""
        try:
            self.source.read_phys_into(start_pfn * self.page_size, buf)
        except NotInDump:
            buf[:] = self(start_pfn, count)


def page_reader(source: DumpSource, page_size: int = 4096) -> PageReader:
    """A :class:`PageReader` over ``source``."""
    return PageReader(source, page_size)


def note_area(source: DumpSource) -> bytes:
    """The source's notes as the vmcore's merged PT_NOTE holds them: the raw
    bytes where the source keeps them, framed again otherwise."""
    area = getattr(source, "note_area", None)
    if isinstance(area, bytes) and area:
        return area
    raw = getattr(source, "raw", None)
    segments = getattr(source, "note_segments", None)
    if raw is not None and segments:
        return b"".join(raw.read_at(ph.p_offset, ph.p_filesz, what="notes")
                        for ph in segments)
    return frame_notes(source.notes, source.header.endian)
