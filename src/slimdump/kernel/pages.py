"""Page-frame classification the way makedumpfile's dump levels mean it.

makedumpfile's ``-d LEVEL`` drops pages by what the crashed kernel's
``struct page`` says about them: page cache (bits 2 and 4), user data (8),
free pages (16); bit 1 (zero pages) is decided from page *content* by the
writer and is not handled here.  HWPoison pages, and logically offline pages,
are dropped whenever the ``struct page`` walk runs, whatever the level.

This module finds the ``struct page`` array from VMCOREINFO alone
(SPARSEMEM / SPARSEMEM_EXTREME / SPARSEMEM_VMEMMAP through ``mem_section``,
FLATMEM through ``mem_map``), reads it in bulk for one range of pfns at a
time and classifies every page of that range with numpy vector operations,
so memory stays bounded by the range (callers iterate in cycles, like
makedumpfile's ``--cyclic-buffer``) and the only bytes read from the dump are
the ``struct page`` entries of pages the dump holds (SIZE(page) bytes per
page: 64 per 4 KiB on x86_64, about 1.5 % of the dump).

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

When a rule fires on a compound head the whole ``1 << order`` block goes.

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

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from slimdump.elf import EM_X86_64
from slimdump.errors import DumpError
from slimdump.kernel.memory import KernelMemory, KernelViewError
from slimdump.sources.base import Segment

# -d bits
DL_ZERO = 1
DL_CACHE = 2
DL_CACHE_PRIVATE = 4
DL_USER = 8
DL_FREE = 16
#: bits decided from struct page (everything but zero pages)
DL_STRUCT_PAGE = DL_CACHE | DL_CACHE_PRIVATE | DL_USER | DL_FREE

#: a PT_LOAD with this p_paddr describes no physical memory (makedumpfile's NOT_PADDR)
NOT_PADDR = (1 << 64) - 1
#: default number of pfns per cycle for callers that do not choose one (1 GiB of 4 KiB pages)
DEFAULT_CYCLE = 1 << 18

_MASK64 = (1 << 64) - 1
# makedumpfile reads struct pages 512 at a time, aligned on pfn; a compound head
# that is the last page of such a block gets no tail lookup (order 0).
_PGMM_CACHED = 512
# low bits of mem_section.section_mem_map that are flags, not address
_SECTION_FLAG_MASK = 0x3F
_SECTION_MARKED_PRESENT = 0x1
# largest physically contiguous read, to bound transient buffers
_READ_CHUNK = 1 << 20
# tails more than this many pfns after their head are not believed
_MAX_COMPOUND_SPAN = 1 << 30

# category codes painted into a pfn range; 0 = kept
FREE, UNACCEPTED, CACHE, CACHE_PRIVATE, USER, HWPOISON, OFFLINE = range(1, 8)
CATEGORY_NAMES = {FREE: "free", UNACCEPTED: "unaccepted", CACHE: "cache",
                  CACHE_PRIVATE: "cache_private", USER: "user", HWPOISON: "hwpoison",
                  OFFLINE: "offline"}


# ---------------------------------------------------------------------------
# The 1st bitmap: which pfns the dump holds


def usable_segments(segments: Sequence[Segment]) -> list[Segment]:
    """The PT_LOADs makedumpfile uses: those with a real p_paddr."""
    return [s for s in segments if s.phys_start != NOT_PADDR and s.mem_size > 0]


def max_mapnr(segments: Sequence[Segment], page_size: int) -> int:
    """Number of pfns the dump's bitmaps cover: the highest physical end over
    all PT_LOADs, rounded up to a page (makedumpfile ``get_max_mapnr()``)."""
    ends = [s.phys_end for s in usable_segments(segments)]
    if not ends:
        return 0
    return -(-max(ends) // page_size)


def _pfn_intervals(segments: Sequence[Segment], page_size: int,
                   partial_first: bool) -> list[tuple[int, int]]:
    """Each segment as a pfn interval [a, b).

    ``partial_first=True``: makedumpfile's 1st bitmap, floor(start/P) ..
    floor(end/P) - 1 (a leading partial page counts, a trailing one does not).
    ``partial_first=False``: the pfns whose first byte lies in the segment
    (makedumpfile's ``is_in_segs(pfn << PAGE_SHIFT)``, which decides which
    pfns the struct page walk looks at), ceil(start/P) .. ceil(end/P) - 1.
    """
    out = []
    for s in usable_segments(segments):
        if partial_first:
            a, b = s.phys_start // page_size, s.phys_end // page_size
        else:
            a, b = -(-s.phys_start // page_size), -(-s.phys_end // page_size)
        if a < b:
            out.append((a, b))
    return out


def _paint(intervals: Sequence[tuple[int, int]], start: int, end: int) -> np.ndarray:
    mask = np.zeros(max(end - start, 0), dtype=bool)
    for a, b in intervals:
        a, b = max(a, start), min(b, end)
        if a < b:
            mask[a - start:b - start] = True
    return mask


def present_range(segments: Sequence[Segment], page_size: int, start: int,
                  end: int) -> np.ndarray:
    """bool[end - start]: makedumpfile's 1st bitmap for pfns [start, end).

    A segment [s, e) sets pfns floor(s/P) .. floor(e/P) - 1; segments with
    p_paddr all-ones are ignored; the kernel-image PT_LOAD, which duplicates
    RAM, simply sets the same bits again.
    """
    return _paint(_pfn_intervals(segments, page_size, True), start, end)


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


@dataclass
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


@dataclass
class PageClasses:
    """The verdict for pfns [start, end) at one dump level."""

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


# ---------------------------------------------------------------------------
# struct page layout and page-type encodings from VMCOREINFO


@dataclass(frozen=True)
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
                   head_mask=head_mask & _MASK64 if head_mask else None,
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
        names, formats, offsets = ["flags"], [self.word], [self.off_flags]
        optional = (("mapping", self.word, self.off_mapping),
                    ("mapcount", self.endian + "u4", self.off_mapcount),
                    ("private", self.word, self.off_private),
                    ("chead", self.word, self.off_chead),
                    ("order_b", "u1", self.order_in_tail if self.order_source == "byte"
                     else None),
                    ("dtor_b", "u1", self.dtor_in_tail if self.hugetlb_source == "dtor"
                     else None))
        for name, fmt, off in optional:
            if off is not None:
                names.append(name)
                formats.append(fmt)
                offsets.append(off)
        return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                         "itemsize": self.size})


class _Pages:
    """Fields of n consecutive struct pages as native integer columns, zero
    where unread; ``ok`` says which were read."""

    FIELDS = (("flags", np.uint64), ("mapping", np.uint64), ("mapcount", np.uint32),
              ("private", np.uint64), ("chead", np.uint64), ("order_b", np.uint8),
              ("dtor_b", np.uint8))

    def __init__(self, n: int) -> None:
        self.ok = np.zeros(n, dtype=bool)
        self.cols = {name: np.zeros(n, dtype=dt) for name, dt in self.FIELDS}

    def fill(self, index: int, records: np.ndarray, ok: np.ndarray) -> None:
        end = index + len(records)
        for name in records.dtype.names or ():
            self.cols[name][index:end] = records[name]
        self.ok[index:end] = ok


# ---------------------------------------------------------------------------
# The classifier


class PageClassifier:
    """Classifies page frames of one dump by dump level.

    ``PageClassifier(mem)`` only parses VMCOREINFO; the struct page array is
    located (``mem_section`` / ``mem_map``) on first use, so that dump levels
    that need no struct page walk work even when the keys are missing.
    """

    def __init__(self, mem: KernelMemory) -> None:
        self.mem = mem
        self.page_size = mem.page_size
        self.segments = usable_segments(mem.source.segments)
        self.max_mapnr = max_mapnr(self.segments, self.page_size)
        self._present_iv = _pfn_intervals(self.segments, self.page_size, True)
        self._inseg_iv = _pfn_intervals(self.segments, self.page_size, False)
        self._layout: _Layout | None = None
        self._ranges: list[tuple[int, int, int]] | None = None   # (pfn_start, pfn_end, base)
        self._range_starts: list[int] = []
        self.memory_model: str | None = None
        #: bytes of struct page asked for so far (the dump source counts what it read)
        self.struct_page_bytes = 0

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

        word = mem.endian + ("u8" if ptr == 8 else "u4")

        def decode(root_array: int) -> dict[int, int]:
            """section number -> mem_map base, for sections present with a map."""
            if extreme:
                nroots = -(-needed // per_root)
                roots = np.frombuffer(mem.read(root_array, nroots * ptr), dtype=word)
                tables = [(r * per_root, int(root)) for r, root in enumerate(roots.tolist())
                          if root]
            else:
                tables = [(0, root_array)]
            bases: dict[int, int] = {}
            for first, table in tables:
                count = min(per_root if extreme else needed, needed - first)
                raw = mem.read(table, count * sec_size)
                words = np.ndarray((count,), dtype=word, buffer=raw, offset=sec_off,
                                   strides=(sec_size,)).astype(np.uint64)
                valid = ((words & np.uint64(_SECTION_MARKED_PRESENT)) != 0) \
                    & ((words & ~np.uint64(_SECTION_FLAG_MASK)) != 0)
                for i in np.flatnonzero(valid).tolist():
                    bases[first + i] = int(words[i]) & ~_SECTION_FLAG_MASK
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

    # -- reading struct pages -------------------------------------------------

    def _read_virtual(self, vaddr: int, size: int) -> tuple[bytearray, np.ndarray]:
        """``size`` bytes of kernel virtual memory and, per virtual page, whether
        it could be read (zeros where not).  Pages are translated one by one
        and physically contiguous runs are read together."""
        mem, psize = self.mem, self.page_size
        out = bytearray(size)
        first = vaddr // psize
        npages = (vaddr + size - 1) // psize - first + 1
        ok = np.zeros(npages, dtype=bool)
        runs: list[list[int]] = []          # [buffer offset, paddr, length, page index, count]
        for k in range(npages):
            page_va = (first + k) * psize
            lo = max(vaddr, page_va)
            hi = min(vaddr + size, page_va + psize)
            try:
                paddr = mem.vtop(lo)
            except DumpError:
                continue
            if runs:
                last = runs[-1]
                if (last[3] + last[4] == k and last[1] + last[2] == paddr
                        and last[2] + hi - lo <= _READ_CHUNK):
                    last[2] += hi - lo
                    last[4] += 1
                    continue
            runs.append([lo - vaddr, paddr, hi - lo, k, 1])
        for offset, paddr, length, k, count in runs:
            try:
                out[offset:offset + length] = mem.source.read_phys(paddr, length)
                ok[k:k + count] = True
            except DumpError:
                # one page at a time, to keep what can be read
                pos = 0
                for j in range(count):
                    page_end = ((vaddr + offset + pos) // psize + 1) * psize
                    n = min(length - pos, page_end - (vaddr + offset + pos))
                    try:
                        out[offset + pos:offset + pos + n] = mem.source.read_phys(paddr + pos, n)
                        ok[k + j] = True
                    except DumpError:
                        pass
                    pos += n
        return out, ok

    def _read_pages(self, pages: _Pages, index: int, pfn: int, count: int, base: int) -> None:
        """Read struct pages of pfns [pfn, pfn + count) into ``pages`` at ``index``."""
        layout = self.layout
        size = layout.size
        vaddr = (base + pfn * size) & _MASK64
        raw, vok = self._read_virtual(vaddr, count * size)
        self.struct_page_bytes += count * size
        rel = vaddr % self.page_size + np.arange(count, dtype=np.int64) * size
        ok = vok[rel // self.page_size] & vok[(rel + size - 1) // self.page_size]
        records = np.frombuffer(raw, dtype=layout.dtype(), count=count)
        pages.fill(index, records, ok)

    def _load(self, lo: int, hi: int, need: np.ndarray) -> _Pages:
        """struct pages of the pfns in [lo, hi) that ``need`` marks."""
        pages = _Pages(hi - lo)
        if not need.any():
            return pages
        ranges = self._map_ranges()
        i = max(bisect.bisect_right(self._range_starts, lo) - 1, 0)
        for r_start, r_end, base in ranges[i:]:
            if r_start >= hi:
                break
            a, b = max(r_start, lo), min(r_end, hi)
            if a >= b:
                continue
            sub = need[a - lo:b - lo]
            edges = np.flatnonzero(np.diff(np.concatenate(([False], sub, [False])).astype(np.int8)))
            for run_a, run_b in zip(edges[0::2], edges[1::2], strict=True):
                self._read_pages(pages, a - lo + int(run_a), a + int(run_a),
                                 int(run_b - run_a), base)
        return pages

    def _base_of(self, pfns: np.ndarray) -> np.ndarray:
        """mem_map base per pfn (0 where no section holds it), as uint64."""
        ranges = self._map_ranges()
        starts = np.array(self._range_starts, dtype=np.int64)
        ends = np.array([r[1] for r in ranges], dtype=np.int64)
        bases = np.array([r[2] for r in ranges], dtype=np.uint64)
        idx = np.searchsorted(starts, pfns, side="right") - 1
        valid = (idx >= 0) & (pfns < ends[np.maximum(idx, 0)])
        return np.where(valid, bases[np.maximum(idx, 0)], np.uint64(0))

    # -- rules ----------------------------------------------------------------

    def _rules(self, dump_level: int, pfn: np.ndarray, cur: dict[str, np.ndarray],
               nxt: dict[str, np.ndarray], next_ok: np.ndarray,
               classified: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Category code (0 = kept) and block length per page, for pages whose
        own fields are ``cur`` and whose next struct page (the first tail of a
        compound head) is ``nxt``."""
        L = self.layout
        flags = cur["flags"]
        mapcount = cur["mapcount"]
        n = len(pfn)

        def bit(name: str, word: np.ndarray = flags) -> np.ndarray:
            b = L.pg.get(name)
            if b is None:
                return np.zeros(n, dtype=bool)
            return (word & np.uint64(1 << b)) != 0

        def typed(name: str) -> np.ndarray:
            value = L.mapcount_values.get(name)
            if value is None or L.off_mapcount is None:
                return np.zeros(n, dtype=bool)
            return mapcount == np.uint32(value)

        tail = ((cur["chead"] & np.uint64(1)) != 0) if L.off_chead is not None \
            else np.zeros(n, dtype=bool)
        head = ((flags & np.uint64(L.head_mask)) != 0) if L.head_mask \
            else np.zeros(n, dtype=bool)
        # the first tail is looked at only when it is in the same 512-pfn block
        looked = head & next_ok & (pfn % _PGMM_CACHED != _PGMM_CACHED - 1)

        order = np.zeros(n, dtype=np.int64)
        if L.order_source == "byte":
            order = np.where(looked, nxt["order_b"], 0).astype(np.int64)
        elif L.order_source == "flags1":
            order = np.where(looked, nxt["flags"] & np.uint64(0xFF), 0).astype(np.int64)
        # makedumpfile: orders >= 64 or heads not aligned to their order mean order 0
        # (63 is refused too: it cannot be a real block and would overflow int64)
        bad = (order >= 63) | ((pfn & ((np.int64(1) << np.minimum(order, 62)) - 1)) != 0)
        order[bad] = 0

        if L.hugetlb_source == "dtor":
            hugetlb = looked & (nxt["dtor_b"] == (L.hugetlb_value or 0) & 0xFF)
        elif L.hugetlb_source == "tailflag":
            hugetlb = looked & bit("PG_hugetlb", nxt["flags"])
        elif L.hugetlb_source == "mapcount":
            hugetlb = looked & typed("PAGE_HUGETLB_MAPCOUNT_VALUE")
        else:
            hugetlb = np.zeros(n, dtype=bool)

        slab = typed("PAGE_SLAB_MAPCOUNT_VALUE") if "PAGE_SLAB_MAPCOUNT_VALUE" in \
            L.mapcount_values else bit("PG_slab")
        anon = ((cur["mapping"] & np.uint64(1)) != 0) & ~slab
        cache = bit("PG_lru") | (bit("PG_swapcache")
                                 & (bit("PG_swapbacked") if "PG_swapbacked" in L.pg else True))
        private_flag = bit("PG_private")

        free_order = cur["private"].astype(np.int64)   # unsigned long wraps to negative: bad
        if dump_level & DL_FREE:
            if L.buddy_test == "flag":
                buddy = bit("PG_buddy")
            else:
                buddy = ~slab & typed("PAGE_BUDDY_MAPCOUNT_VALUE")
            free = buddy & (free_order >= 0) & (free_order < L.max_order)
            unaccepted = typed("PAGE_UNACCEPTED_MAPCOUNT_VALUE")
        else:
            free = unaccepted = np.zeros(n, dtype=bool)
        none = np.zeros(n, dtype=bool)
        cache_np = (cache & ~private_flag & ~anon) if dump_level & DL_CACHE else none
        cache_any = (cache & ~anon) if dump_level & DL_CACHE_PRIVATE else none
        user = (anon | hugetlb) if dump_level & DL_USER else none
        hwpoison = bit("PG_hwpoison")
        offline = ~slab & typed("PAGE_OFFLINE_MAPCOUNT_VALUE")

        code = np.select(
            [~classified | tail, free, unaccepted, cache_np, cache_any & private_flag,
             cache_any, user, hwpoison, offline],
            [0, FREE, UNACCEPTED, CACHE, CACHE_PRIVATE, CACHE, USER, HWPOISON, OFFLINE],
            0).astype(np.uint8)
        length = np.left_shift(np.int64(1), order)
        length = np.where(code == FREE, np.left_shift(np.int64(1), np.clip(free_order, 0, 62)),
                          length)
        length = np.where(code == UNACCEPTED, np.int64(1) << (L.max_order - 1), length)
        return code, length

    # -- the per-range work ---------------------------------------------------

    def classify(self, dump_level: int, start: int, end: int) -> PageClasses:
        """Classify pfns [start, end) at ``dump_level`` (bit 1 ignored)."""
        if start < 0 or end < start:
            raise ValueError(f"bad pfn range [{start}, {end})")
        n_out = end - start
        present = _paint(self._present_iv, start, end)
        excluded = np.zeros(n_out, dtype=bool)
        category = np.zeros(n_out, dtype=np.uint8)
        counts = ExclusionCounts()
        if n_out == 0 or not self.walk_needed(dump_level):
            return PageClasses(start, end, present, excluded, category, counts)
        L = self.layout
        if dump_level & DL_FREE and L.buddy_test is None:
            raise KernelViewError(self.mem.path, "free pages cannot be recognised: VMCOREINFO has "
                                                 "neither NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE) nor "
                                                 "NUMBER(PG_buddy) with OFFSET(page.private), and "
                                                 "walking the zone free lists is not supported")
        if dump_level & (DL_CACHE | DL_CACHE_PRIVATE | DL_USER) and L.off_mapping is None:
            raise KernelViewError(self.mem.path, "VMCOREINFO has no OFFSET(page.mapping)")

        # Look back far enough that every buddy block (aligned, order <
        # max_order) covering `start` begins inside the window.
        span = 1 << max(L.max_order - 1, 0)
        lo = start // span * span
        hi = end + 1                              # one more: the first tail of the last head
        n = end - lo
        in_segs = _paint(self._inseg_iv, lo, hi)
        present_w = _paint(self._present_iv, lo, hi)
        need = in_segs | present_w
        need[1:] |= in_segs[:-1]
        pages = self._load(lo, hi, need)

        pfn = np.arange(lo, end, dtype=np.int64)
        cur = {k: v[:n] for k, v in pages.cols.items()}
        nxt = {k: v[1:n + 1] for k, v in pages.cols.items()}
        next_ok = pages.ok[1:n + 1]
        classified = pages.ok[:n] & in_segs[:n]
        code, length = self._rules(dump_level, pfn, cur, nxt, next_ok, classified)
        idx = np.flatnonzero(code)
        starts, lengths, codes = pfn[idx], length[idx], code[idx]

        ext = self._outside_heads(dump_level, lo, pfn, cur, pages.ok[:n])
        if ext is not None:
            starts = np.concatenate((ext[0], starts))
            lengths = np.concatenate((ext[1], lengths))
            codes = np.concatenate((ext[2], codes))

        starts, lengths, codes = _effective(starts, lengths, codes)
        ends = starts + lengths
        keep = (ends > start) & (starts < end)
        a = np.maximum(starts[keep], start) - start
        b = np.minimum(ends[keep], end) - start
        paint = np.zeros(n_out + 1, dtype=np.int64)
        np.add.at(paint, a, codes[keep].astype(np.int64))
        np.add.at(paint, b, -codes[keep].astype(np.int64))
        category = np.cumsum(paint[:-1]).astype(np.uint8)
        readable = pages.ok[start - lo:end - lo]
        category[~(present & readable)] = 0
        excluded = category != 0
        per = np.bincount(category, minlength=8)
        counts = ExclusionCounts(**{CATEGORY_NAMES[c]: int(per[c]) for c in CATEGORY_NAMES})
        counts.unreadable = int(np.count_nonzero(present & ~readable))
        return PageClasses(start, end, present, excluded, category, counts)

    def _outside_heads(self, dump_level: int, lo: int, pfn: np.ndarray,
                       cur: dict[str, np.ndarray], ok: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Blocks of compound pages whose head lies before the window (only
        compound pages larger than the look-back, e.g. 1 GiB hugetlb pages):
        found through the tails' compound_head pointers, classified like any
        head, returned as (starts, lengths, codes)."""
        L = self.layout
        if L.off_chead is None:
            return None
        chead = cur["chead"]
        tails = np.flatnonzero(ok & ((chead & np.uint64(1)) != 0))
        if len(tails) == 0:
            return None
        base = self._base_of(pfn[tails])
        addr = chead[tails] - np.uint64(1)
        delta = (addr - base).astype(np.uint64)       # wraps like the kernel's pointer math
        aligned = (delta % np.uint64(L.size)) == 0
        head_pfn = (delta // np.uint64(L.size)).astype(np.int64)
        plausible = (base != 0) & aligned & (head_pfn >= 0) & (head_pfn < lo) \
            & (pfn[tails] - head_pfn < _MAX_COMPOUND_SPAN)
        heads = np.unique(head_pfn[plausible])
        if len(heads) == 0:
            return None
        out_s, out_l, out_c = [], [], []
        for h in heads.tolist():
            pages = self._load(h, h + 2, np.ones(2, dtype=bool))
            cur_h = {k: v[:1] for k, v in pages.cols.items()}
            nxt_h = {k: v[1:2] for k, v in pages.cols.items()}
            classified = pages.ok[:1] & _paint(self._inseg_iv, h, h + 1)
            code, length = self._rules(dump_level, np.array([h], dtype=np.int64), cur_h, nxt_h,
                                       pages.ok[1:2], classified)
            if code[0]:
                out_s.append(h)
                out_l.append(int(length[0]))
                out_c.append(int(code[0]))
        if not out_s:
            return None
        return (np.array(out_s, dtype=np.int64), np.array(out_l, dtype=np.int64),
                np.array(out_c, dtype=np.uint8))

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
        classified ``cycle`` pfns at a time."""
        total = ExclusionCounts()
        for a, b in cycles(start_pfn, self.max_mapnr if end_pfn is None else end_pfn, cycle):
            total.add(self.classify(dump_level, a, b).counts)
        return total


def _effective(starts: np.ndarray, lengths: np.ndarray, codes: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exclusions makedumpfile actually performs.

    It walks pfns in order and, after excluding a block, skips to the block's
    end, so a candidate inside an earlier block is never looked at.  With
    kernel-consistent data blocks nest (they are aligned powers of two), and
    "not inside any earlier candidate" is the answer, found vectorised; if a
    skipped candidate would reach past the running end (inconsistent data),
    the walk is replayed over the candidates in order.
    """
    if len(starts) == 0:
        return starts, lengths, codes
    order = np.argsort(starts, kind="stable")
    starts, lengths, codes = starts[order], lengths[order], codes[order]
    ends = starts + lengths
    reach = np.maximum.accumulate(ends)
    before = np.concatenate(([np.iinfo(np.int64).min], reach[:-1]))
    covered = before > starts
    if not np.any(covered & (ends > before)):
        keep = ~covered
        return starts[keep], lengths[keep], codes[keep]
    keep_list = []
    until = np.iinfo(np.int64).min
    for i, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        if s >= until:
            keep_list.append(i)
            until = e
    keep_idx = np.array(keep_list, dtype=np.int64)
    return starts[keep_idx], lengths[keep_idx], codes[keep_idx]
