"""Which page frames makedumpfile's dump level drops, from struct page.

makedumpfile's ``-d LEVEL`` drops pages by what the crashed kernel's
``struct page`` says about them: page cache (bits 2 and 4), user data (8),
free pages (16); bit 1 (zero pages) is judged from page *content* by the
writers.  HWPoison pages, and logically offline pages, are dropped whenever
the struct page walk runs, whatever the level.

The rules, in makedumpfile's order (``kdump-formats.md`` 5.3; the first
that fires decides), live in one place, C (:mod:`slimdump.kernel._pageclass`,
``pageclass_rules.h``).  This module does what C need not: it finds the
struct pages (:mod:`.sparsemem`, :mod:`.struct_page`), reads those of one
window of pfns a cache-sized chunk at a time, keeps what can be read when
some cannot, and hands each chunk to the C walk.  The only bytes read from
the dump are the struct pages of pages the dump holds (SIZE(page) per page:
64 per 4 KiB on x86_64, about 1.5 % of the dump).

Memory stays bounded by the window (callers go cycle by cycle, like
makedumpfile's ``--cyclic-buffer``), and the window is read one struct page
further (the first tail of a head at its last pfn).  A window that starts
where the classifier's last one at the same level ended goes on with that
walk, as makedumpfile's cycles do.  Any other window stands alone: it looks
back far enough that every buddy block covering its first pfn begins inside
it, and a compound page larger than that (a 1 GiB hugetlb page) is found
through the compound_head of its tails; its head is judged and, if a rule
drops it, the window is walked again with that block dropped.  (A free
block not aligned to its order, which only corrupt data has, is seen by
the first kind only.)
"""

from __future__ import annotations

import sys
import threading
from array import array
from collections.abc import Sequence
from types import ModuleType

from slimdump.kernel.memory import KernelMemory, KernelViewError
from slimdump.kernel.physmem import (
    DEFAULT_CYCLE,
    clip,
    cycles,
    max_mapnr,
    pack_intervals,
    present_intervals,
    usable_segments,
    walked_intervals,
)
from slimdump.kernel.sparsemem import MapRange, mem_map_ranges, read_struct_pages
from slimdump.kernel.struct_page import StructPageLayout
from slimdump.record import record
from slimdump.sources.kdump_headers import DL_EXCLUDE_ZERO


def _load_native() -> ModuleType | None:
    try:
        from slimdump.kernel import _pageclass
    except ImportError:
        return None
    return _pageclass


#: the C rules, None when the extension is not built (nothing is dropped then)
NATIVE: ModuleType | None = _load_native()

# makedumpfile's dump level bits (``-d``); bit 1 (zero pages) is judged from
# content, by the writers, and defined with the header that records the level
DL_ZERO = DL_EXCLUDE_ZERO
DL_CACHE = 2            # page cache without private data
DL_CACHE_PRIVATE = 4    # page cache with private data
DL_USER = 8             # user (anonymous) data and hugetlb pages
DL_FREE = 16            # free pages

MASK64 = (1 << 64) - 1
# struct pages are read and walked this many bytes at a time (cache-sized:
# each chunk is walked while the read left it in the CPU cache)
_CHUNK_BYTES = 1 << 21


@record
class ExclusionCounts:
    """Present pages dropped per category (each counted once, under the
    rule that dropped it), and present pages kept because their struct page
    could not be read."""

    free: int = 0
    unaccepted: int = 0
    cache: int = 0
    cache_private: int = 0
    user: int = 0
    hwpoison: int = 0
    offline: int = 0
    unreadable: int = 0

    @property
    def excluded(self) -> int:
        return (self.free + self.unaccepted + self.cache + self.cache_private + self.user
                + self.hwpoison + self.offline)

    def add(self, other: ExclusionCounts) -> None:
        for name in self.as_dict():
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return {"free": self.free, "unaccepted": self.unaccepted, "cache": self.cache,
                "cache_private": self.cache_private, "user": self.user,
                "hwpoison": self.hwpoison, "offline": self.offline,
                "unreadable": self.unreadable}


@record
class PageClasses:
    """The verdict for pfns [start, end) as packed bitmaps, what the dump
    writers store: bit i of byte k is pfn start + 8k + i, ceil((end -
    start) / 8) bytes each; bits past ``end`` in the last byte are 0."""

    start: int
    end: int
    present: bytes                  # the 1st bitmap
    keep: bytes                     # present and not dropped
    counts: ExclusionCounts


def check_layout(path: str, layout: StructPageLayout, dump_level: int) -> None:
    """KernelViewError when ``dump_level``'s rules cannot be applied with the
    keys the kernel exports, or to struct pages the C rules do not read."""
    if dump_level & DL_FREE and layout.buddy_source is None:
        raise KernelViewError(path, "free pages cannot be recognised: VMCOREINFO has "
                                    "neither NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE) nor "
                                    "NUMBER(PG_buddy) with OFFSET(page.private), and "
                                    "walking the zone free lists is not supported")
    if dump_level & (DL_CACHE | DL_CACHE_PRIVATE | DL_USER) and layout.mapping is None:
        raise KernelViewError(path, "VMCOREINFO has no OFFSET(page.mapping)")
    if layout.endian != "<" or layout.word_size != 8 or sys.byteorder != "little":
        raise KernelViewError(path, "struct page of a big-endian or 32-bit kernel (or on a "
                                    "big-endian host) cannot be judged; only little-endian "
                                    "64-bit kernels can")
    if NATIVE is None:
        raise KernelViewError(path, "the C page classifier (slimdump.kernel._pageclass) is "
                                    "not built: reinstall slimdump with a C compiler")


class PageClassifier:
    """Judges the page frames of one dump by dump level.

    ``PageClassifier(mem)`` only looks at the PT_LOADs; VMCOREINFO's struct
    page keys and the struct page array are read on first use, so that dump
    levels that need no struct page walk work even when the keys are
    missing.
    """

    def __init__(self, mem: KernelMemory) -> None:
        self.mem = mem
        self.page_size = mem.page_size
        segments = usable_segments(mem.source.segments)
        self.max_mapnr = max_mapnr(segments, self.page_size)
        self._present = present_intervals(segments, self.page_size)
        self._walked = walked_intervals(segments, self.page_size)
        self._layout: StructPageLayout | None = None
        self._params: array | None = None
        self._ranges: list[MapRange] | None = None
        #: "sparsemem" or "flatmem", once the struct page array is located
        self.memory_model: str | None = None
        #: bytes of struct page asked for so far (the dump source counts what it read)
        self.struct_page_bytes = 0
        #: windows walked twice for a compound page larger than the look-back
        self.rewalks = 0
        self._lock = threading.Lock()
        self._buffers: list[bytearray] = []     # chunk buffers not in use
        #: (level, end pfn) of windows walked -> the walk's until there (the end
        #: of the last block dropped) and that block's category
        self._carry: dict[tuple[int, int], tuple[int, int]] = {}

    @property
    def layout(self) -> StructPageLayout:
        if self._layout is None:
            self._layout = StructPageLayout.from_info(self.mem)
        return self._layout

    def needs_struct_pages(self, dump_level: int) -> bool:
        """Whether makedumpfile walks struct pages at this level: for bits
        2/4/8/16, and at any level when the kernel exports NUMBER(PG_hwpoison)
        (hwpoison and offline pages are then always dropped).  Without a walk
        nothing is dropped and no key is needed."""
        if dump_level & (DL_CACHE | DL_CACHE_PRIVATE | DL_USER | DL_FREE):
            return True
        return self.mem.info.number("PG_hwpoison") is not None

    def map_ranges(self) -> list[MapRange]:
        """(first pfn, end pfn, base) per memory section with a mem_map, as
        :func:`~slimdump.kernel.sparsemem.mem_map_ranges` finds them."""
        if self._ranges is None:
            self.memory_model, self._ranges = mem_map_ranges(self.mem, self.max_mapnr)
        return self._ranges

    def count(self, dump_level: int, start_pfn: int = 0, end_pfn: int | None = None,
              cycle: int = DEFAULT_CYCLE) -> ExclusionCounts:
        """Counts per category over [start_pfn, end_pfn) (default: all
        pfns), judged ``cycle`` pfns at a time."""
        total = ExclusionCounts()
        for a, b in cycles(start_pfn, self.max_mapnr if end_pfn is None else end_pfn, cycle):
            total.add(self.classify(dump_level, a, b).counts)
        return total

    def classify(self, dump_level: int, start: int, end: int) -> PageClasses:
        """Judge pfns [start, end) at ``dump_level`` (bit 1 ignored)."""
        if start < 0 or end < start:
            raise ValueError(f"bad pfn range [{start}, {end})")
        if end == start or not self.needs_struct_pages(dump_level):
            present = pack_intervals(self._present, start, end)
            return PageClasses(start, end, present, present, ExclusionCounts())
        check_layout(self.mem.path, self.layout, dump_level)
        native = NATIVE
        assert native is not None
        if self._params is None:
            sources = {"order:byte": native.ORDER_BYTE, "order:flags1": native.ORDER_FLAGS1,
                       "hugetlb:dtor": native.HUGETLB_DTOR,
                       "hugetlb:tailflag": native.HUGETLB_TAILFLAG,
                       "hugetlb:page_type": native.HUGETLB_PAGE_TYPE,
                       "buddy:flag": native.BUDDY_FLAG,
                       "buddy:page_type": native.BUDDY_PAGE_TYPE}
            self._params = self.layout.params(native.PARAMS, sources)
        # A window that starts where the last one of this level ended goes
        # on with that walk, as makedumpfile's next cycle does: no look-back,
        # and a block dropped there reaches into this window even when it is
        # not aligned (corrupt data); heads before it were judged there.
        with self._lock:
            carried = self._carry.pop((dump_level, start), None)
        window = _Window(self, dump_level, start, end, look_back=carried is None)
        until = -(1 << 63)
        if carried is not None:
            until, code = carried
            reach = max(min(until, end) - start, 0)
            window.cat[:reach] = bytes([code]) * reach
        heads, last = window.walk(until)
        if heads and carried is None:
            outside = window.paint_outside_heads(heads)
            if outside is not None:
                self.rewalks += 1
                _heads, last = window.walk(outside)
        with self._lock:
            # the block that reaches past the window, and its category
            self._carry[(dump_level, end)] = (last, window.cat[-1] if last > end else 0)
            while len(self._carry) > 8:                # one per thread, or so
                self._carry.pop(next(iter(self._carry)))
        present, keep, c = native.finish(window.flags, window.lo, window.cat, start, end)
        names = native.CATEGORIES
        counts = ExclusionCounts(unreadable=c[0],
                                 **{names[i]: c[i] for i in range(1, len(names))})
        return PageClasses(start, end, present, keep, counts)

    def read(self, buffer: memoryview, first: int, runs: Sequence[MapRange]) -> list[int]:
        """:func:`~slimdump.kernel.sparsemem.read_struct_pages`, counted."""
        self.struct_page_bytes += sum(b - a for a, b, _base in runs) * self.layout.size
        return read_struct_pages(self.mem, self.layout.size, buffer, first, runs)

    def take_buffer(self, nbytes: int) -> bytearray:
        """A chunk buffer of at least ``nbytes`` that no other thread is
        using (the walk runs without the GIL, so two threads may classify
        two windows at once); give it back with :meth:`give_back`."""
        with self._lock:
            while self._buffers:
                buffer = self._buffers.pop()
                if len(buffer) >= nbytes:
                    return buffer
        return bytearray(nbytes)

    def give_back(self, buffer: bytearray) -> None:
        with self._lock:
            self._buffers.append(buffer)


class _Window:
    """One window of a :meth:`PageClassifier.classify` call: pfns [lo, end)
    walked, [start, end) reported, struct pages read up to pfn end."""

    def __init__(self, pc: PageClassifier, dump_level: int, start: int, end: int, *,
                 look_back: bool = True) -> None:
        native = NATIVE
        assert native is not None
        self.pc, self.level, self.start, self.end = pc, dump_level, start, end
        # back to the start of the largest buddy block that can cover start
        span = 1 << (pc.layout.free_area - 1) if look_back else 1
        self.lo = lo = start // span * span
        hi = end + 1
        walked = clip(pc._walked, lo, hi)
        present = clip(pc._present, lo, hi)
        self.flags = bytearray(hi - lo)
        native.mark(self.flags, lo, array("q", [x for iv in walked for x in iv]), native.FL_INSEG)
        native.mark(self.flags, lo, array("q", [x for iv in present for x in iv]),
                    native.FL_PRESENT)
        self.cat = bytearray(end - start)
        # what is read: the struct pages of the pfns walked or in the 1st
        # bitmap, and the next one of every pfn walked (a head's first tail)
        need = clip([*walked, *present, *((a + 1, b + 1) for a, b in walked)], lo, hi)
        self.runs: list[MapRange] = []
        ranges: list[MapRange] = []
        if need:
            ranges = [r for r in pc.map_ranges() if r[0] < hi and r[1] > lo]
            for a, b in need:
                for r_start, r_end, base in ranges:
                    if max(a, r_start) < min(b, r_end):
                        self.runs.append((max(a, r_start), min(b, r_end), base))
            self.runs.sort()
        self.ranges = array("Q", [x & MASK64 for r in ranges for x in r])

    def walk(self, until: int) -> tuple[list[int], int]:
        """Walk the window, chunk by chunk, from ``until`` (the end of a
        block dropped before the window); the heads before the window that
        its tails point to, sorted, and the walk's ``until`` at its end."""
        native, pc = NATIVE, self.pc
        assert native is not None
        size = pc.layout.size
        pgmm = native.PGMM_CACHED
        # chunks end where no head looks at its next struct page (pfn % 512
        # == 511), except the last, which is read one struct page further
        chunk = max(pgmm, _CHUNK_BYTES // size // pgmm * pgmm)
        buffer = pc.take_buffer((chunk + 1) * size)
        try:
            return self._walk_chunks(buffer, chunk, until)
        finally:
            pc.give_back(buffer)

    def _walk_chunks(self, buffer: bytearray, chunk: int, until: int
                     ) -> tuple[list[int], int]:
        native, pc = NATIVE, self.pc
        assert native is not None
        view = memoryview(buffer)
        outside = array("q", bytes(8 * (chunk + 1)))
        heads: set[int] = set()
        k = 0
        for c0, c1 in cycles(self.lo, self.end, chunk):
            top = self.end + 1 if c1 == self.end else c1
            while k < len(self.runs) and self.runs[k][1] <= c0:
                k += 1
            runs = []
            for a, b, base in self.runs[k:]:
                if a >= top:
                    break
                if max(a, c0) < min(b, top):
                    runs.append((max(a, c0), min(b, top), base))
            ok = pc.read(view, c0, runs)
            n, until = native.walk(pc._params, self.level, buffer, c0, c0, c1, self.lo,
                                   self.end, until, self.flags, self.cat, self.start,
                                   array("q", ok), self.ranges, outside)
            heads.update(outside[:n])
        return sorted(heads), until

    def paint_outside_heads(self, heads: Sequence[int]) -> int | None:
        """Judge the heads before the window, in pfn order as makedumpfile
        meets them (a head inside a block an earlier head dropped is not
        looked at); paint the blocks they drop and clear the rest for a new
        walk.  The end of the last block dropped, None if none is."""
        native, pc = NATIVE, self.pc
        assert native is not None
        size = pc.layout.size
        until: int | None = None
        blocks: list[tuple[int, int, int]] = []
        for h in heads:
            if until is not None and h < until:
                continue
            runs = [(max(h, r0), min(h + 2, r1), base) for r0, r1, base in pc.map_ranges()
                    if max(h, r0) < min(h + 2, r1)]
            buffer = memoryview(bytearray(2 * size))
            ok = pc.read(buffer, h, runs)
            flags = bytearray(2)
            walked = clip(pc._walked, h, h + 1)
            native.mark(flags, h, array("q", [x for iv in walked for x in iv]), native.FL_INSEG)
            cat = bytearray(1)
            _n, end = native.walk(pc._params, self.level, buffer, h, h, h + 1, h, h + 1,
                                  -(1 << 63), flags, cat, h, array("q", ok), array("Q"),
                                  array("q", [0]))
            if cat[0]:
                blocks.append((h, end, cat[0]))
                until = end
        if until is None:
            return None
        self.cat[:] = bytes(len(self.cat))
        for a, b, code in blocks:
            a, b = max(a, self.start), min(b, self.end)
            if a < b:
                self.cat[a - self.start:b - self.start] = bytes([code]) * (b - a)
        return until
