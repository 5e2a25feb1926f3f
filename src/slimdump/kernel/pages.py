"""Page-frame classification the way makedumpfile's dump levels mean it.

makedumpfile's ``-d LEVEL`` drops pages by what the crashed kernel's
``struct page`` says about them: page cache (bits 2 and 4), user data (8),
free pages (16); bit 1 (zero pages) is decided from page *content* by the
writer and is not handled here.  HWPoison pages, and logically offline pages,
are dropped whenever the ``struct page`` walk runs, whatever the level.

This module finds the ``struct page`` array from VMCOREINFO alone
(SPARSEMEM / SPARSEMEM_EXTREME / SPARSEMEM_VMEMMAP through ``mem_section``,
FLATMEM through ``mem_map``) and classifies one range of pfns at a time, so
memory stays bounded by the range (callers iterate in cycles, like
makedumpfile's ``--cyclic-buffer``) and the only bytes read from the dump are
the ``struct page`` entries of pages the dump holds (SIZE(page) bytes per
page: 64 per 4 KiB on x86_64, about 1.5 % of the dump).

Two implementations give the same answer:

* :meth:`PageClassifier.classify_packed` (what a capture uses): the C
  extension :mod:`slimdump.kernel._pageclass` walks the struct pages in
  makedumpfile's order, a cache-sized chunk at a time, and the result comes
  back as packed bitmaps.  Neither this module nor that path imports numpy
  (``import numpy`` alone costs more than classifying a 4 GiB dump in C).
* :meth:`PageClassifier.classify`: the numpy classifier
  (:mod:`slimdump.kernel.pages_np`, imported on first use), vectorised over
  whole windows; the reference the C code is tested against, and the
  fallback of :meth:`~PageClassifier.classify_packed` for what the C code
  does not do (extension not built, big-endian or 32-bit struct pages,
  struct pages that cannot be read, compound pages larger than the
  look-back whose head lies before the window).

Rules, in makedumpfile's order (``kdump-formats.md`` 5.3); the first rule
that fires on a page decides it:

0. compound tail pages are never classified themselves; they go with
   their head,
1. free (bit 16): buddy pages; ``1 << page.private`` pages go as a block,
2. unaccepted (bit 16, 6.16+): ``1 << (MAX_PAGE_ORDER)`` pages,
3. page cache that is not PG_private and not anonymous (bit 2),
4. any page cache that is not anonymous (bit 4),
5. anonymous or hugetlb pages (bit 8),
6. HWPoison (always), 7. logically offline (always).

When a rule fires on a compound head the whole ``1 << order`` block goes,
and makedumpfile's walk goes on after the block: a page inside an excluded
block is never looked at.  The first tail page of a head (its order, its
hugetlb marks) is looked at only inside the head's 512-pfn block (the
struct pages makedumpfile reads at a time); orders >= 63 and heads not
aligned to their order mean order 0.

Kernel encodings are told apart by which VMCOREINFO keys exist, never by the
release: page types compared for equality with the NUMBER(PAGE_*_MAPCOUNT_VALUE)
values (both the pre-6.12 "cleared bit" and the 6.12 "top byte" encodings),
slab by PAGE_SLAB_MAPCOUNT_VALUE (6.10+) or the PG_slab flag, compound order
from OFFSET(page.compound_order) (<= 6.2), OFFSET(folio._folio_order)
(6.3-6.5) or the first tail page's flags (6.6+), hugetlb from
HUGETLB_PAGE_DTOR (<= 6.5), PG_hugetlb (6.6-6.8) or
PAGE_HUGETLB_MAPCOUNT_VALUE (6.9+).
"""

from __future__ import annotations

import os
import struct
import sys
import threading
from array import array
from collections.abc import Iterator, Sequence
from types import ModuleType

from slimdump.elf import EM_X86_64
from slimdump.errors import DumpError
from slimdump.kernel.memory import KernelMemory, KernelViewError
from slimdump.record import field, record
from slimdump.sources.base import NOT_PADDR as NOT_PADDR  # re-exported: defined with Segment
from slimdump.sources.base import Segment, page_intervals, resolve_extents

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up)
if TYPE_CHECKING:
    import numpy as np

    from slimdump.kernel.pages_np import NumpyWalk


def _load_native() -> ModuleType | None:
    try:
        from slimdump.kernel import _pageclass
    except ImportError:
        return None
    return _pageclass


#: the C classifier (:mod:`slimdump.kernel._pageclass`), None when not built
NATIVE: ModuleType | None = _load_native()
#: True: :meth:`PageClassifier.classify_packed` always goes through numpy
#: (tests; ``SLIMDUMP_PAGECLASS=numpy`` in the environment sets it)
FORCE_NUMPY = os.environ.get("SLIMDUMP_PAGECLASS") == "numpy"

# -d bits
DL_ZERO = 1
DL_CACHE = 2
DL_CACHE_PRIVATE = 4
DL_USER = 8
DL_FREE = 16
#: bits decided from struct page (everything but zero pages)
DL_STRUCT_PAGE = DL_CACHE | DL_CACHE_PRIVATE | DL_USER | DL_FREE

#: default number of pfns per cycle for callers that do not choose one (1 GiB of 4 KiB pages)
DEFAULT_CYCLE = 1 << 18

MASK64 = (1 << 64) - 1
#: makedumpfile reads struct pages 512 at a time, aligned on pfn; a compound
#: head that is the last page of such a block gets no tail lookup (order 0)
PGMM_CACHED = 512
#: tails more than this many pfns after their head are not believed
MAX_COMPOUND_SPAN = 1 << 30
# low bits of mem_section.section_mem_map that are flags, not address
_SECTION_FLAG_MASK = 0x3F
_SECTION_MARKED_PRESENT = 0x1
# the C walk reads and classifies struct pages this many bytes at a time
# (cache-sized: each chunk is classified while the pread left it in cache)
_NATIVE_CHUNK_BYTES = 1 << 21

# category codes painted into a pfn range; 0 = kept
FREE, UNACCEPTED, CACHE, CACHE_PRIVATE, USER, HWPOISON, OFFLINE = range(1, 8)
CATEGORY_NAMES = {FREE: "free", UNACCEPTED: "unaccepted", CACHE: "cache",
                  CACHE_PRIVATE: "cache_private", USER: "user", HWPOISON: "hwpoison",
                  OFFLINE: "offline"}


# ---------------------------------------------------------------------------
# The 1st bitmap: which pfns the dump holds


def usable_segments(segments: Sequence[Segment]) -> list[Segment]:
    """The PT_LOADs makedumpfile uses: those with a real p_paddr."""
    return [s for s in segments if s.usable]


def max_mapnr(segments: Sequence[Segment], page_size: int) -> int:
    """Number of pfns the dump's bitmaps cover: the highest physical end over
    all PT_LOADs, rounded up to a page (makedumpfile ``get_max_mapnr()``)."""
    ends = [s.phys_end for s in usable_segments(segments)]
    if not ends:
        return 0
    return -(-max(ends) // page_size)


def _pfn_intervals(segments: Sequence[Segment], page_size: int,
                   partial_first: bool) -> list[tuple[int, int]]:
    """Pfn intervals [a, b) of the segments.

    ``partial_first=True``: the 1st bitmap, the pages holding any byte the
    dump holds (:func:`~slimdump.sources.base.page_intervals`, the rule every
    reader and writer shares): floor(start/P) .. ceil(end/P) - 1, so a page
    a segment covers only in part is kept, its other bytes zeros.
    makedumpfile 1.7.2 drops a trailing partial page (floor(end/P) - 1; x86's
    first RAM range 0x1000-0x9fbff loses pfn 0x9f): README, "Oracles".
    ``partial_first=False``: the pfns whose first byte lies in the segment
    (makedumpfile's ``is_in_segs(pfn << PAGE_SHIFT)``, which decides which
    pfns the struct page walk looks at), ceil(start/P) .. ceil(end/P) - 1.
    """
    if partial_first:
        return page_intervals(resolve_extents(segments), page_size)
    out = []
    for s in usable_segments(segments):
        a, b = -(-s.phys_start // page_size), -(-s.phys_end // page_size)
        if a < b:
            out.append((a, b))
    return out


def _clip(intervals: Sequence[tuple[int, int]], start: int, end: int
          ) -> list[tuple[int, int]]:
    """``intervals`` cut to [start, end), sorted and merged."""
    cut = sorted((max(a, start), min(b, end)) for a, b in intervals
                 if max(a, start) < min(b, end))
    out: list[tuple[int, int]] = []
    for a, b in cut:
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _pack_intervals(intervals: Sequence[tuple[int, int]], start: int, end: int) -> bytes:
    """The pfns of ``intervals`` in [start, end) as a packed bitmap (bit i of
    byte k: pfn start + 8k + i)."""
    n = max(end - start, 0)
    out = bytearray((n + 7) // 8)
    for a, b in _clip(intervals, start, end):
        a, b = a - start, b - start
        first_full, last_full = -(-a // 8), b // 8
        if first_full > last_full:                    # inside one byte
            out[a // 8] |= ((1 << (b - a)) - 1) << (a % 8)
            continue
        if a % 8:
            out[a // 8] |= (0xFF << (a % 8)) & 0xFF
        out[first_full:last_full] = b"\xff" * (last_full - first_full)
        if b % 8:
            out[last_full] |= (1 << (b % 8)) - 1
    return bytes(out)


def present_range(segments: Sequence[Segment], page_size: int, start: int,
                  end: int) -> np.ndarray:
    """bool[end - start]: the 1st bitmap for pfns [start, end).

    A segment [s, e) sets pfns floor(s/P) .. ceil(e/P) - 1 (see
    :func:`_pfn_intervals`); segments with p_paddr all-ones are ignored; the
    kernel-image PT_LOAD, which duplicates RAM, simply sets the same bits
    again.  (numpy; :func:`present_packed` is
    the same without it.)
    """
    from slimdump.kernel.pages_np import _paint

    return _paint(_pfn_intervals(segments, page_size, True), start, end)


def present_packed(segments: Sequence[Segment], page_size: int, start: int,
                   end: int) -> bytes:
    """:func:`present_range` packed little-endian bit order (bit i of byte k
    is pfn start + 8k + i, ``np.packbits(..., bitorder="little")``), without
    numpy."""
    return _pack_intervals(_pfn_intervals(segments, page_size, True), start, end)


def present_bitmap(segments: Sequence[Segment], page_size: int) -> np.ndarray:
    """bool[max_mapnr]: the whole 1st bitmap (for big machines prefer
    :func:`present_range` per cycle: this is one byte per pfn)."""
    return present_range(segments, page_size, 0, max_mapnr(segments, page_size))


def cycles(start: int, end: int, size: int = DEFAULT_CYCLE) -> Iterator[tuple[int, int]]:
    """[start, end) cut into ranges of ``size`` pfns aligned on ``size``
    (as makedumpfile's cycles are), the first and last possibly shorter."""
    if size <= 0:
        raise ValueError("cycle size must be positive")
    lo = start
    while lo < end:
        hi = min(end, (lo // size + 1) * size)
        yield lo, hi
        lo = hi



# ---------------------------------------------------------------------------
# Results


@record
class ExclusionCounts:
    """Pages excluded per category (present pages only, each counted once,
    under the rule that excluded it) and pages kept because their struct
    page could not be read."""

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
    """The verdict for pfns [start, end) at one dump level (numpy arrays)."""

    start: int
    end: int
    present: np.ndarray             # bool: in the 1st bitmap
    excluded: np.ndarray            # bool: dropped by the level's struct-page rules
    category: np.ndarray            # uint8: category code per pfn (0 = kept)
    counts: ExclusionCounts = field(default_factory=ExclusionCounts)

    @property
    def dumpable(self) -> np.ndarray:
        """present & ~excluded (zero pages still included)."""
        return self.present & ~self.excluded


@record
class PackedClasses:
    """The verdict for pfns [start, end) as packed bitmaps, what the dump
    writers store: bit i of byte k is pfn start + 8k + i (little bit order,
    as ``np.packbits(..., bitorder="little")``), ceil((end - start) / 8)
    bytes each; bits past ``end`` in the last byte are 0."""

    start: int
    end: int
    present: bytes                  # the 1st bitmap
    keep: bytes                     # present & ~excluded (PageClasses.dumpable)
    counts: ExclusionCounts = field(default_factory=ExclusionCounts)


# ---------------------------------------------------------------------------
# struct page layout and page-type encodings from VMCOREINFO


@record(frozen=True)
class _Layout:
    """Where the fields are and how page types are encoded, all from keys."""

    size: int                       # SIZE(page)
    word: str                       # numpy dtype of unsigned long, with byte order
    endian: str
    off_flags: int
    off_mapping: int | None
    off_mapcount: int | None
    off_private: int | None
    off_chead: int | None
    # compound order: "byte" (u8 at offset order_in_tail of the first tail),
    # "flags1" (low byte of the first tail's flags, 6.6+) or None (unknown: 0)
    order_source: str | None
    order_in_tail: int | None
    # hugetlb: "dtor" (u8 at dtor_in_tail of the first tail == value),
    # "tailflag" (first tail's flags bit), "mapcount" (head _mapcount == value)
    hugetlb_source: str | None
    dtor_in_tail: int | None
    hugetlb_value: int | None
    head_mask: int | None
    pg: dict[str, int]              # NUMBER(PG_*) present
    mapcount_values: dict[str, int]  # NUMBER(PAGE_*_MAPCOUNT_VALUE) present, as u32
    max_order: int                  # LENGTH(zone.free_area)

    @classmethod
    def from_info(cls, mem: KernelMemory) -> _Layout:
        info = mem.info
        size = info.size("page")
        off_flags = info.offset("page.flags")
        if size is None or off_flags is None:
            raise KernelViewError(mem.path, "VMCOREINFO has no SIZE(page) or "
                                            "OFFSET(page.flags): struct page cannot be read")
        endian = mem.endian
        word = endian + ("u8" if mem.pointer_size == 8 else "u4")
        pg = {name: v for name in ("PG_lru", "PG_private", "PG_swapcache", "PG_swapbacked",
                                   "PG_slab", "PG_hwpoison", "PG_buddy", "PG_hugetlb")
              if (v := info.number(name)) is not None and 0 <= v < 8 * mem.pointer_size}
        values = {name: v & 0xFFFFFFFF for name in (
            "PAGE_BUDDY_MAPCOUNT_VALUE", "PAGE_OFFLINE_MAPCOUNT_VALUE",
            "PAGE_SLAB_MAPCOUNT_VALUE", "PAGE_HUGETLB_MAPCOUNT_VALUE",
            "PAGE_UNACCEPTED_MAPCOUNT_VALUE") if (v := info.number(name)) is not None}

        def in_tail(head_relative: int | None) -> int | None:
            """A byte offset from the head struct page, as an offset inside the
            first tail struct page (None when it is not inside it)."""
            if head_relative is None or not size <= head_relative < 2 * size:
                return None
            return head_relative - size

        order_source: str | None = None
        order_in_tail = None
        if (off := info.offset("page.compound_order")) is not None:
            order_source, order_in_tail = "byte", in_tail(size + off)
        elif (off := info.offset("folio._folio_order")) is not None:
            order_source, order_in_tail = "byte", in_tail(off)
        elif ("PG_hugetlb" in pg or "PAGE_HUGETLB_MAPCOUNT_VALUE" in values
              or "PAGE_SLAB_MAPCOUNT_VALUE" in values):
            # 6.6+ (the keys that replaced HUGETLB_PAGE_DTOR / PG_slab): the
            # order is the low byte of folio._flags_1, the first tail's flags
            order_source = "flags1"
        if order_source == "byte" and order_in_tail is None:
            order_source = None

        hugetlb_source: str | None = None
        dtor_in_tail = hugetlb_value = None
        dtor_value = info.number("HUGETLB_PAGE_DTOR")
        if dtor_value is not None and (off := info.offset("page.compound_dtor")) is not None:
            hugetlb_source, dtor_in_tail, hugetlb_value = "dtor", in_tail(size + off), dtor_value
        elif dtor_value is not None and (off := info.offset("folio._folio_dtor")) is not None:
            hugetlb_source, dtor_in_tail, hugetlb_value = "dtor", in_tail(off), dtor_value
        elif "PG_hugetlb" in pg:
            hugetlb_source = "tailflag"
        elif "PAGE_HUGETLB_MAPCOUNT_VALUE" in values:
            hugetlb_source = "mapcount"
            hugetlb_value = values["PAGE_HUGETLB_MAPCOUNT_VALUE"]
        if hugetlb_source == "dtor" and dtor_in_tail is None:
            hugetlb_source = None

        head_mask = info.number("PG_head_mask")
        return cls(size=size, word=word, endian=endian, off_flags=off_flags,
                   off_mapping=info.offset("page.mapping"),
                   off_mapcount=info.offset("page._mapcount"),
                   off_private=info.offset("page.private"),
                   off_chead=info.offset("page.compound_head"),
                   order_source=order_source, order_in_tail=order_in_tail,
                   hugetlb_source=hugetlb_source, dtor_in_tail=dtor_in_tail,
                   hugetlb_value=hugetlb_value,
                   head_mask=head_mask & MASK64 if head_mask else None,
                   pg=pg, mapcount_values=values,
                   max_order=info.length("zone.free_area") or 11)

    @property
    def buddy_test(self) -> str | None:
        """How free pages are recognised: "mapcount" (2.6.38+), "flag"
        (PG_buddy, 2.6.17-2.6.37) or None (makedumpfile would walk the free
        lists, which this module does not do)."""
        if self.off_private is None:
            return None
        if "PG_buddy" in self.pg:
            return "flag"
        if "PAGE_BUDDY_MAPCOUNT_VALUE" in self.mapcount_values and self.off_mapcount is not None:
            return "mapcount"
        return None

    def dtype(self) -> np.dtype:
        """One struct page as a numpy record (overlapping fields allowed)."""
        from slimdump.kernel.pages_np import dtype_of

        return dtype_of(self)

    def native_params(self) -> array | None:
        """The layout as the C classifier's int64 parameter array (-1 where
        a key is absent), or None when the C code cannot read these struct
        pages: it handles little-endian 64-bit ``unsigned long`` only, on a
        little-endian host, with a buddy order limit of 1 .. 63."""
        if (self.word != "<u8" or sys.byteorder != "little"
                or not 1 <= self.max_order <= 63):
            return None

        def opt(value: int | None) -> int:
            return -1 if value is None else value

        order_src = {None: 0, "byte": 1, "flags1": 2}[self.order_source]
        huge_src = {None: 0, "dtor": 1, "tailflag": 2, "mapcount": 3}[self.hugetlb_source]
        head_mask = self.head_mask or 0
        if head_mask >= 1 << 63:
            head_mask -= 1 << 64                       # as int64
        pg = [opt(self.pg.get(name)) for name in (
            "PG_lru", "PG_private", "PG_swapcache", "PG_swapbacked", "PG_slab",
            "PG_hwpoison", "PG_buddy", "PG_hugetlb")]
        values = [opt(self.mapcount_values.get(name)) for name in (
            "PAGE_BUDDY_MAPCOUNT_VALUE", "PAGE_OFFLINE_MAPCOUNT_VALUE",
            "PAGE_SLAB_MAPCOUNT_VALUE", "PAGE_HUGETLB_MAPCOUNT_VALUE",
            "PAGE_UNACCEPTED_MAPCOUNT_VALUE")]
        buddy = {None: 0, "flag": 1, "mapcount": 2}[self.buddy_test]
        return array("q", [self.size, self.off_flags, opt(self.off_mapping),
                           opt(self.off_mapcount), opt(self.off_private), opt(self.off_chead),
                           order_src, opt(self.order_in_tail), huge_src,
                           opt(self.dtor_in_tail), (self.hugetlb_value or 0) & 0xFFFFFFFF,
                           head_mask, *pg, *values, self.max_order, buddy])


def check_walk_keys(path: str, layout: _Layout, dump_level: int) -> None:
    """KernelViewError when ``dump_level``'s rules cannot be applied with the
    keys the kernel exports (free pages that cannot be recognised; page
    cache or user data without OFFSET(page.mapping))."""
    if dump_level & DL_FREE and layout.buddy_test is None:
        raise KernelViewError(path, "free pages cannot be recognised: VMCOREINFO has "
                                    "neither NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE) nor "
                                    "NUMBER(PG_buddy) with OFFSET(page.private), and "
                                    "walking the zone free lists is not supported")
    if dump_level & (DL_CACHE | DL_CACHE_PRIVATE | DL_USER) and layout.off_mapping is None:
        raise KernelViewError(path, "VMCOREINFO has no OFFSET(page.mapping)")


class _NativeFallback(Exception):
    """This window is one the C walk does not do: classify it with numpy."""


# ---------------------------------------------------------------------------
# The classifier


class PageClassifier:
    """Classifies page frames of one dump by dump level.

    ``PageClassifier(mem)`` only parses VMCOREINFO; the struct page array is
    located (``mem_section`` / ``mem_map``) on first use, so that dump levels
    that need no struct page walk work even when the keys are missing.
    Neither construction nor :meth:`classify_packed` imports numpy when the
    C classifier is built; :meth:`classify` does.  Two threads may classify
    two windows at once (with :meth:`classify_packed`, on a source whose
    :attr:`~slimdump.sources.base.DumpSource.parallel_reads` says so).
    """

    def __init__(self, mem: KernelMemory) -> None:
        self.mem = mem
        self.page_size = mem.page_size
        self.segments = usable_segments(mem.source.segments)
        self.max_mapnr = max_mapnr(self.segments, self.page_size)
        self._present_iv = _pfn_intervals(self.segments, self.page_size, True)
        self._inseg_iv = _pfn_intervals(self.segments, self.page_size, False)
        self._layout: _Layout | None = None
        self._numpy: NumpyWalk | None = None
        #: use the numpy walk's helper thread for big windows (results are
        #: the same either way; False: everything in the calling thread)
        self.parallel = True
        self._ranges: list[tuple[int, int, int]] | None = None   # (pfn_start, pfn_end, base)
        self._range_starts: list[int] = []
        self.memory_model: str | None = None
        #: bytes of struct page asked for so far (the dump source counts what it read)
        self.struct_page_bytes = 0
        #: windows :meth:`classify_packed` gave to numpy (and why, one word each)
        self.fallbacks: list[str] = []
        self._native_params: array | None = None
        self._lock = threading.Lock()
        self._buffers: list[bytearray] = []     # C walk chunk buffers not in use

    # -- what the kernel exports -------------------------------------------

    @property
    def layout(self) -> _Layout:
        if self._layout is None:
            self._layout = _Layout.from_info(self.mem)
        return self._layout

    def walk_needed(self, dump_level: int) -> bool:
        """Whether makedumpfile would walk struct pages at this level: for
        bits 2/4/8/16, and at any level when the kernel exports
        NUMBER(PG_hwpoison) (hwpoison and offline pages are then always
        dropped).  Without a walk nothing is excluded and no key is needed."""
        info = self.mem.info
        if dump_level & (DL_CACHE | DL_CACHE_PRIVATE | DL_USER):
            return True
        if info.number("PG_hwpoison") is not None:
            return True
        return bool(dump_level & DL_FREE)


    # -- where struct page lives ----------------------------------------------

    def _map_ranges(self) -> list[tuple[int, int, int]]:
        """(pfn_start, pfn_end, base) per memory section with a mem_map, where
        struct page of pfn p is at ``base + p * SIZE(page)`` (mod 2**64)."""
        if self._ranges is None:
            info = self.mem.info
            if info.symbol("mem_section") is not None:
                self._ranges = self._sparsemem_ranges()
                self.memory_model = "sparsemem"
            elif info.symbol("mem_map") is not None:
                mem_map = self.mem.pointer(info.symbol("mem_map") or 0)
                if not mem_map:
                    raise KernelViewError(self.mem.path, "mem_map (FLATMEM) is NULL")
                self._ranges = [(0, self.max_mapnr, mem_map)]
                self.memory_model = "flatmem"
            else:
                raise KernelViewError(self.mem.path, "VMCOREINFO has neither SYMBOL(mem_section) "
                                                     "nor SYMBOL(mem_map): struct page cannot be "
                                                     "located (DISCONTIGMEM is not supported)")
            self._range_starts = [r[0] for r in self._ranges]
        return self._ranges

    def _sparsemem_ranges(self) -> list[tuple[int, int, int]]:
        mem, info = self.mem, self.mem.info
        path = mem.path
        symbol = info.symbol("mem_section") or 0
        sec_size = info.size("mem_section")
        sec_off = info.offset("mem_section.section_mem_map")
        section_bits = info.number("SECTION_SIZE_BITS")
        physmem_bits = info.number("MAX_PHYSMEM_BITS")
        if mem.source.header.e_machine == EM_X86_64:
            # makedumpfile's fallbacks; both keys are in VMCOREINFO since 5.x
            section_bits = section_bits or 27
            physmem_bits = physmem_bits or (52 if info.number("pgtable_l5_enabled") else 46)
        if sec_size is None or sec_off is None or section_bits is None or physmem_bits is None:
            raise KernelViewError(path, "VMCOREINFO lacks SIZE(mem_section), "
                                        "OFFSET(mem_section.section_mem_map), "
                                        "NUMBER(SECTION_SIZE_BITS) or NUMBER(MAX_PHYSMEM_BITS)")
        page_shift = self.page_size.bit_length() - 1
        pfn_shift = section_bits - page_shift
        per_section = 1 << pfn_shift
        nr_sections = 1 << (physmem_bits - section_bits)
        per_root = max(self.page_size // sec_size, 1)
        extreme_roots = -(-nr_sections // per_root)
        length = info.length("mem_section")
        extreme = length is None or length == extreme_roots
        if not extreme:
            per_root = 1
        needed = min(-(-self.max_mapnr // per_section), nr_sections)
        ptr = mem.pointer_size

        if sec_off < 0 or sec_off + ptr > sec_size:
            raise KernelViewError(path, "OFFSET(mem_section.section_mem_map) is outside "
                                        "SIZE(mem_section)")
        word = mem.endian + ("Q" if ptr == 8 else "I")

        def decode(root_array: int) -> dict[int, int]:
            """section number -> mem_map base, for sections present with a map."""
            if extreme:
                nroots = -(-needed // per_root)
                roots = struct.unpack(f"{mem.endian}{nroots}{word[1]}",
                                      mem.read(root_array, nroots * ptr))
                tables = [(r * per_root, root) for r, root in enumerate(roots) if root]
            else:
                tables = [(0, root_array)]
            bases: dict[int, int] = {}
            for first, table in tables:
                count = min(per_root if extreme else needed, needed - first)
                raw = mem.read(table, count * sec_size)
                for i in range(count):
                    value = struct.unpack_from(word, raw, i * sec_size + sec_off)[0]
                    if value & _SECTION_MARKED_PRESENT and value & ~_SECTION_FLAG_MASK:
                        bases[first + i] = value & ~_SECTION_FLAG_MASK
            return bases

        bases: dict[int, int] = {}
        problem = "mem_section has no present section with a mem_map"
        # VMCOREINFO gives the root array itself; a vmlinux-style symbol would be
        # the address of the pointer to it (makedumpfile retries that way too)
        for candidate in ("array", "pointer"):
            try:
                root = symbol if candidate == "array" else mem.pointer(symbol)
                bases = decode(root)
            except DumpError as exc:
                problem = f"mem_section cannot be read: {exc.problem}"
                continue
            if bases:
                break
        if not bases:
            raise KernelViewError(path, problem)
        return [(nr * per_section, (nr + 1) * per_section, base)
                for nr, base in sorted(bases.items())]
    # -- classification ---------------------------------------------------------

    def _walker(self) -> NumpyWalk:
        if self._numpy is None:
            from slimdump.kernel.pages_np import NumpyWalk

            self._numpy = NumpyWalk(self)
        return self._numpy

    def classify(self, dump_level: int, start: int, end: int) -> PageClasses:
        """Classify pfns [start, end) at ``dump_level`` (bit 1 ignored), with
        numpy: per-pfn arrays, the reference for :meth:`classify_packed`."""
        return self._walker().classify(dump_level, start, end)

    def classify_packed(self, dump_level: int, start: int, end: int) -> PackedClasses:
        """:meth:`classify` as packed bitmaps: ``present`` and ``keep`` are
        ``np.packbits(c.present / c.dumpable, bitorder="little")`` of
        ``c = classify(dump_level, start, end)``, bit for bit, with the same
        counts.  Done by the C walk without numpy when it can; windows it
        cannot do go to :meth:`classify` (see :attr:`fallbacks`)."""
        if start < 0 or end < start:
            raise ValueError(f"bad pfn range [{start}, {end})")
        if end == start or not self.walk_needed(dump_level):
            present = _pack_intervals(self._present_iv, start, end)
            return PackedClasses(start, end, present, present, ExclusionCounts())
        L = self.layout
        check_walk_keys(self.mem.path, L, dump_level)
        why = "forced" if FORCE_NUMPY else "not built" if NATIVE is None else None
        if why is None:
            params = self._params()
            if params is None:
                why = "layout"
            else:
                try:
                    return self._classify_native(params, dump_level, start, end)
                except _NativeFallback as exc:
                    why = str(exc)
        with self._lock:
            self.fallbacks.append(why)
        return self._packed_numpy(dump_level, start, end)

    def _params(self) -> array | None:
        if self._native_params is None:
            self._native_params = self.layout.native_params() or array("q")
        return self._native_params or None

    def _packed_numpy(self, dump_level: int, start: int, end: int) -> PackedClasses:
        import numpy as np

        c = self.classify(dump_level, start, end)
        return PackedClasses(start, end, np.packbits(c.present, bitorder="little").tobytes(),
                             np.packbits(c.dumpable, bitorder="little").tobytes(), c.counts)

    def _classify_native(self, params: array, dump_level: int, start: int,
                         end: int) -> PackedClasses:
        """The C walk over the window of [start, end): the look-back (every
        buddy block covering ``start`` begins in it), the pfns, one more
        struct page (the first tail of a head at end - 1); read and walked a
        chunk at a time, in order, each chunk while the read left it in the
        CPU cache (a helper thread reading every other chunk made it slower:
        the copies compete for memory bandwidth, and the walk then reads
        from the other core's cache).  _NativeFallback for what only numpy
        does."""
        native = NATIVE
        assert native is not None
        L = self.layout
        size = L.size
        span = 1 << (L.max_order - 1)
        lo = start // span * span
        hi = end + 1
        in_segs = _clip(self._inseg_iv, lo, hi)
        present = _clip(self._present_iv, lo, hi)
        # what is read: the struct pages of the pfns walked or in the 1st
        # bitmap, and the next one of every pfn walked (a head's first tail)
        need = _clip([*in_segs, *present, *((a + 1, b + 1) for a, b in in_segs)], lo, hi)
        runs: list[tuple[int, int, int]] = []
        ranges: list[tuple[int, int, int]] = []
        if need:
            ranges = [r for r in self._map_ranges() if r[0] < hi and r[1] > lo]
            for a, b in need:
                for r_start, r_end, base in ranges:
                    ra, rb = max(a, r_start), min(b, r_end)
                    if ra < rb:
                        runs.append((ra, rb, base))
            runs.sort()
        flags = bytearray(hi - lo)
        native.mark(flags, lo, array("q", [x for iv in in_segs for x in iv]), 1)
        native.mark(flags, lo, array("q", [x for iv in present for x in iv]), 2)
        cat = bytearray(end - start)
        ranges_arr = array("Q", [x & MASK64 for r in ranges for x in r])

        # chunks end where no head looks at its next struct page (pfn % 512
        # == 511), except the last, which is read one struct page further
        chunk = max(PGMM_CACHED, _NATIVE_CHUNK_BYTES // size // PGMM_CACHED * PGMM_CACHED)
        # per chunk: its pfns, the pfn runs read, the physical reads (offset
        # from the chunk's first pfn, paddr, bytes), all translated here, in
        # the calling thread (the translator caches page tables)
        plan: list[tuple[int, int, list[int], list[tuple[int, int, int]]]] = []
        k = total = 0
        for c0, c1 in cycles(lo, end, chunk):
            top = hi if c1 == end else c1
            ok: list[int] = []
            reads: list[tuple[int, int, int]] = []
            while k < len(runs) and runs[k][1] <= c0:
                k += 1
            for a, b, base in runs[k:]:
                if a >= top:
                    break
                a, b = max(a, c0), min(b, top)
                if a < b:
                    ok += (a, b)
                    reads += self._translate((base + a * size) & MASK64, (a - c0) * size,
                                             (b - a) * size)
                    total += (b - a) * size
            plan.append((c0, c1, ok, reads))
        with self._lock:
            self.struct_page_bytes += total

        buffer = self._take_buffer((chunk + 1) * size)
        view = memoryview(buffer)
        source = self.mem.source
        try:
            until = -(1 << 63)
            for c0, c1, ok, reads in plan:
                try:
                    for off, paddr, n in reads:
                        source.read_phys_into(paddr, view[off:off + n])
                except DumpError as exc:
                    raise _NativeFallback("unreadable") from exc
                status, until = native.walk(params, dump_level, buffer, c0, c0, c1, lo, end,
                                            until, flags, cat, start, array("q", ok),
                                            ranges_arr)
                if status:
                    raise _NativeFallback("outside head")
        finally:
            with self._lock:
                self._buffers.append(buffer)
        present_bits, keep_bits, c = native.finish(flags, lo, cat, start, end)
        counts = ExclusionCounts(free=c[FREE], unaccepted=c[UNACCEPTED], cache=c[CACHE],
                                 cache_private=c[CACHE_PRIVATE], user=c[USER],
                                 hwpoison=c[HWPOISON], offline=c[OFFLINE], unreadable=c[0])
        return PackedClasses(start, end, present_bits, keep_bits, counts)

    def _take_buffer(self, nbytes: int) -> bytearray:
        """A chunk buffer of at least ``nbytes`` not in use by another thread
        (given back by the caller: a few are kept, one per thread at most)."""
        with self._lock:
            while self._buffers:
                buffer = self._buffers.pop()
                if len(buffer) >= nbytes:
                    return buffer
        return bytearray(nbytes)

    def _translate(self, vaddr: int, at: int, size: int) -> list[tuple[int, int, int]]:
        """The physical reads of ``size`` bytes of kernel virtual memory at
        ``vaddr``, as (``at`` + offset from vaddr, paddr, bytes): translated a
        mapping at a time (a 2 MiB vmemmap page is one translation),
        physically contiguous bytes one read.  An address that cannot be
        translated is _NativeFallback: numpy keeps what can be read, page by
        page."""
        mem = self.mem
        out: list[tuple[int, int, int]] = []
        pos = 0
        try:
            while pos < size:
                paddr, extent = mem.vtop_extent(vaddr + pos)
                n = min(extent, size - pos)
                if out and out[-1][1] + out[-1][2] == paddr:
                    last = out[-1]
                    out[-1] = (last[0], last[1], last[2] + n)
                else:
                    out.append((at + pos, paddr, n))
                pos += n
        except DumpError as exc:
            raise _NativeFallback("unreadable") from exc
        return out

    # -- conveniences ---------------------------------------------------------

    def excluded(self, dump_level: int, start_pfn: int, end_pfn: int) -> np.ndarray:
        """bool[end_pfn - start_pfn]: True where ``dump_level``'s struct-page
        rules (plus the always-on hwpoison/offline ones) drop the page.  Zero
        pages are not counted here (the writer decides them from content);
        pages whose struct page cannot be read are kept."""
        return self.classify(dump_level, start_pfn, end_pfn).excluded

    def dumpable(self, dump_level: int, start_pfn: int, end_pfn: int) -> np.ndarray:
        """bool[end_pfn - start_pfn]: present & ~excluded."""
        return self.classify(dump_level, start_pfn, end_pfn).dumpable

    def count(self, dump_level: int, start_pfn: int = 0, end_pfn: int | None = None,
              cycle: int = DEFAULT_CYCLE) -> ExclusionCounts:
        """Counts per category over [start_pfn, end_pfn) (default: all pfns),
        classified ``cycle`` pfns at a time (with :meth:`classify_packed`)."""
        total = ExclusionCounts()
        for a, b in cycles(start_pfn, self.max_mapnr if end_pfn is None else end_pfn, cycle):
            total.add(self.classify_packed(dump_level, a, b).counts)
        return total
