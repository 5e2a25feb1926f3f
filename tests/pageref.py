"""A per-pfn reference of makedumpfile's dump-level rules, the oracle of the
page classifier's tests.

Written from the kernel's definitions (``include/linux/page-flags.h``,
``mm_types.h``, ``mmzone.h``, ``asm-generic/memory_model.h``) and the rule
order of ``kdump-formats.md`` 5.3, not from slimdump's classifier: one
struct page at a time, clear rather than fast (a 1 GiB dump takes seconds).
``test_pageref`` holds it to makedumpfile 1.7.2 on hostile struct pages.

The walk is makedumpfile's over the whole dump in one cycle (what it does
when memory allows): from pfn 0 upwards, each pfn whose first byte lies in
a PT_LOAD is looked at unless an earlier dropped block covers it.  A
compound tail is never judged itself; it goes with its head's block.  The
first rule that fires on a page decides it and the block it takes (a free
page's 1 << page.private pages, a compound head's 1 << order, else one),
and the walk goes on after the block.  Pages whose struct page is not in the
dump are kept and counted unreadable, whatever block covers them.  A window
[start, end) is a slice of that one walk, so the answer cannot depend on how
a caller cuts the dump.  64-bit kernels.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from slimdump.errors import DumpError
from slimdump.kernel.memory import KernelMemory

DL_CACHE, DL_CACHE_PRIVATE, DL_USER, DL_FREE = 2, 4, 8, 16
# a verdict per pfn: 0 kept, 1-7 excluded by that rule, 8 kept (struct page unreadable)
KEPT, FREE, UNACCEPTED, CACHE, CACHE_PRIVATE, USER, HWPOISON, OFFLINE, UNREADABLE = range(9)
COUNT_NAMES = {FREE: "free", UNACCEPTED: "unaccepted", CACHE: "cache",
               CACHE_PRIVATE: "cache_private", USER: "user", HWPOISON: "hwpoison",
               OFFLINE: "offline", UNREADABLE: "unreadable"}
#: makedumpfile reads struct pages this many at a time, aligned on pfn; a
#: head that is the last page of such a block gets no look at its first tail
PGMM_CACHED = 512
#: mmzone.h: "at least 6 bits [of section_mem_map] are available on all
#: architectures" for flags (SECTION_MARKED_PRESENT, SECTION_HAS_MEM_MAP, ...)
SECTION_MAP_MASK = ~0x3F
SECTION_HAS_MEM_MAP = 1 << 1
U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class StructPage:
    """The fields of one struct page the rules look at."""

    flags: int
    compound_head: int
    mapping: int
    page_type: int          # the _mapcount word, unsigned 32 bits (a union in mm_types.h)
    private: int


@dataclass
class Verdict:
    """Pfns [start, end): packed bitmaps (bit i of byte k = pfn start + 8k + i)
    and the counts of present pages per rule, as the classifier returns them."""

    start: int
    end: int
    present: bytes
    keep: bytes
    counts: dict[str, int] = field(default_factory=dict)


class PageRef:
    """The reference classifier of one dump (``mem``: its KernelMemory)."""

    def __init__(self, mem: KernelMemory) -> None:
        self.mem, info = mem, mem.info
        self.psize = mem.page_size
        self.word = struct.Struct(mem.endian + "Q")
        segs = [s for s in mem.source.segments if s.phys_start != (1 << 64) - 1 and s.mem_size]
        p = self.psize
        # 1st bitmap: every page holding a byte of a PT_LOAD; the walk: pages
        # whose first byte is in one (makedumpfile's is_in_segs(pfn << PAGE_SHIFT))
        self.present_iv = [(s.phys_start // p, -(-s.phys_end // p)) for s in segs]
        self.walk_iv = [(-(-s.phys_start // p), -(-s.phys_end // p)) for s in segs]
        self.max_mapnr = max((b for _a, b in self.present_iv), default=0)
        self.present, self.walked = bytearray(self.max_mapnr), bytearray(self.max_mapnr)
        for bits, intervals in ((self.present, self.present_iv), (self.walked, self.walk_iv)):
            for a, b in intervals:
                bits[a:b] = b"\1" * (b - a)
        self.size = info.size("page")
        self.off = {m: info.offset(f"page.{m}")
                    for m in ("flags", "compound_head", "mapping", "_mapcount", "private")}
        n = info.number
        self.pg = {name: n(f"PG_{name}") for name in (
            "lru", "private", "swapcache", "swapbacked", "hwpoison", "slab", "buddy", "hugetlb")}
        self.head_mask = n("PG_head_mask")
        self.types = {name: None if n(f"PAGE_{name}_MAPCOUNT_VALUE") is None
                      else n(f"PAGE_{name}_MAPCOUNT_VALUE") & U32
                      for name in ("BUDDY", "OFFLINE", "SLAB", "HUGETLB", "UNACCEPTED")}
        self.max_order = info.length("zone.free_area")       # MAX_ORDER (NR_PAGE_ORDERS)
        # the first tail page's bytes, at offsets relative to it: 6.1-6.2
        # page.compound_order / compound_dtor; 6.3-6.5 the same fields as
        # folio._folio_order / _folio_dtor (folio offsets count from the head,
        # so less SIZE(page)); 6.6 ("mm: free up a word in the first tail
        # page") moved the order into the first tail's flags word (low byte,
        # folio._flags_1) and removed the dtor
        self.order_off = self._tail_offset("compound_order", "_folio_order")
        self.dtor_off = self._tail_offset("compound_dtor", "_folio_dtor")
        self.hugetlb_dtor = n("HUGETLB_PAGE_DTOR")
        self.flatmem = info.symbol("mem_section") is None
        self.mem_map: int | None = None
        if not self.flatmem:      # PFN_SECTION_SHIFT = SECTION_SIZE_BITS - PAGE_SHIFT
            self.pfn_section_shift = n("SECTION_SIZE_BITS") - (self.psize.bit_length() - 1)
        self._sections: dict[int, int | None] = {}
        self._unreadable: list[int] | None = None
        self._blocks: dict[int, bytes | None] = {}
        self._walks: dict[int, bytearray] = {}

    def _tail_offset(self, page_member: str, folio_member: str) -> int | None:
        info = self.mem.info
        if info.offset(f"page.{page_member}") is not None:
            return info.offset(f"page.{page_member}")
        folio = info.offset(f"folio.{folio_member}")
        return None if folio is None or self.size is None else folio - self.size

    # -- pfn_to_page, as asm-generic/memory_model.h defines it -----------------

    def pfn_to_page(self, pfn: int) -> int | None:
        """The struct page address of ``pfn``, None when the kernel has none.

        FLATMEM: ``mem_map + pfn`` (ARCH_PFN_OFFSET is 0 on x86_64 and arm64
        kernels exporting SYMBOL(mem_map)).  SPARSEMEM: the section's
        section_mem_map holds ``mem_map - section_start_pfn`` (low bits are
        flags), so struct page = decoded map + pfn; with SPARSEMEM_VMEMMAP
        every section decodes to ``vmemmap`` and this is ``vmemmap + pfn``.
        """
        if self.flatmem:
            if self.mem_map is None:
                self.mem_map = self.mem.u64(self.mem.info.symbol("mem_map"))   # &mem_map
            return self.mem_map + pfn * self.size
        nr = pfn >> self.pfn_section_shift
        if nr not in self._sections:
            self._sections[nr] = self._section_mem_map(nr)
        base = self._sections[nr]
        return None if base is None else (base + pfn * self.size) & ((1 << 64) - 1)

    def _section_mem_map(self, nr: int) -> int | None:
        """__section_mem_map_addr(__nr_to_section(nr)) when valid_section()."""
        info = self.mem.info
        sym, ms_size = info.symbol("mem_section"), info.size("mem_section")
        nr_sections = 1 << (info.number("MAX_PHYSMEM_BITS") - info.number("SECTION_SIZE_BITS"))
        per_root = self.psize // ms_size                     # SPARSEMEM_EXTREME
        if info.length("mem_section") not in (None, -(-nr_sections // per_root)):
            per_root = 1                                     # mem_section[NR][1], static
        try:
            if per_root == 1:
                section = sym + nr * ms_size
            else:          # struct mem_section **mem_section; SYMBOL() is its value
                root = self.mem.u64(sym + nr // per_root * self.word.size)
                if root == 0:
                    return None
                section = root + nr % per_root * ms_size
            value = self.mem.u64(section + info.offset("mem_section.section_mem_map"))
        except DumpError:
            return None
        return value & SECTION_MAP_MASK if value & SECTION_HAS_MEM_MAP else None

    # -- struct page -------------------------------------------------------------

    def read(self, vaddr: int, n: int) -> bytes | None:
        """``n`` bytes of kernel memory, None when the dump does not hold them
        (read a page at a time and kept: struct pages are read several times)."""
        base, at = vaddr - vaddr % self.psize, vaddr % self.psize
        if at + n > self.psize:
            try:
                return self.mem.read(vaddr, n)
            except DumpError:
                return None
        if base not in self._blocks:
            try:
                self._blocks[base] = self.mem.read(base, self.psize)
            except DumpError:
                self._blocks[base] = None
        block = self._blocks[base]
        if block is not None:
            return block[at:at + n]
        try:            # a page the dump holds only in part: maybe these bytes
            return self.mem.read(vaddr, n)
        except DumpError:
            return None

    def struct_page(self, pfn: int) -> tuple[int, StructPage] | None:
        """(address, fields) of pfn's struct page; None when not in the dump."""
        vaddr = self.pfn_to_page(pfn)
        raw = None if vaddr is None else self.read(vaddr, self.size)
        if raw is None:
            return None
        off, q = self.off, self.word.unpack_from

        def opt(name: str) -> int:
            return 0 if off[name] is None else q(raw, off[name])[0]

        page_type = struct.unpack_from(self.mem.endian + "I", raw, off["_mapcount"])[0]
        return vaddr, StructPage(q(raw, off["flags"])[0], opt("compound_head"),
                                 opt("mapping"), page_type, opt("private"))

    # -- page-flags.h, for a page that is not a tail (so page_folio(page) == page) --

    def flag(self, page: StructPage, name: str) -> bool:
        bit = self.pg[name]
        return bit is not None and bool(page.flags >> bit & 1)

    def PageType(self, page: StructPage, name: str) -> bool:
        """page_type is one of the types (buddy, offline, slab, hugetlb, ...).

        Up to 6.11 a type *cleared* one bit of a word that starts as -1
        (PageType(): (page_type & (PAGE_TYPE_BASE | PG_x)) == PAGE_TYPE_BASE);
        6.12 (4ffca5a96678c "mm: support only one page_type per page") stores
        PGTY_x in the top byte.  VMCOREINFO gives the whole word a page of that
        one type carries, in either encoding, and (as makedumpfile since 1.7.7)
        it is compared for equality: a page never has two types."""
        value = self.types[name]
        return value is not None and page.page_type == value

    def PageSlab(self, page: StructPage) -> bool:
        # 6.10 ("mm: free up PG_slab") made slab a page type
        if self.types["SLAB"] is not None:
            return self.PageType(page, "SLAB")
        return self.flag(page, "slab")

    def PageBuddy(self, page: StructPage) -> bool:
        # before 2.6.38 a flag, PG_buddy (which makedumpfile prefers when
        # exported); since, _mapcount: a slab page's word is not a page type
        # before 6.10 (struct slab overlays it), hence the slab test
        if self.pg["buddy"] is not None:
            return self.flag(page, "buddy")
        return not self.PageSlab(page) and self.PageType(page, "BUDDY")

    def PageOffline(self, page: StructPage) -> bool:
        # the slab test for the same reason as PageBuddy's
        return not self.PageSlab(page) and self.PageType(page, "OFFLINE")

    def PageAnon(self, page: StructPage) -> bool:
        # PAGE_MAPPING_ANON in page.mapping, which struct slab overlays with
        # its own fields (makedumpfile 1.7.2 has no slab test here; later ones do)
        return bool(page.mapping & 1) and not self.PageSlab(page)

    def page_cache(self, page: StructPage) -> bool:
        """makedumpfile's page cache: PageLRU or PageSwapCache (PG_swapcache
        counts only with PG_swapbacked, since PG_swapcache became an alias
        of PG_owner_priv_1; kernels without NUMBER(PG_swapbacked) predate it)."""
        swapcache = self.flag(page, "swapcache") and (
            self.pg["swapbacked"] is None or self.flag(page, "swapbacked"))
        return self.flag(page, "lru") or swapcache

    def PageHead(self, page: StructPage) -> bool:
        return self.head_mask is not None and bool(page.flags & self.head_mask)

    def first_tail(self, pfn: int, vaddr: int) -> bytes | None:
        """page[1] of a head at ``pfn``: None past the head's 512-pfn block."""
        if pfn % PGMM_CACHED == PGMM_CACHED - 1:
            return None
        return self.read(vaddr + self.size, self.size)

    def compound_order(self, pfn: int, page: StructPage, tail: bytes | None) -> int:
        """folio_order(); 0 unless the page is a head with a first tail to
        read, and for a head not aligned to its order or an order >= 63
        (makedumpfile takes < 64; an aligned order-63 head would be pfn 0
        taking half the address space: 0, as slimdump agreed)."""
        if not self.PageHead(page) or tail is None:
            return 0
        if self.order_off is not None:
            order = tail[self.order_off]
        else:
            order = self.word.unpack_from(tail, self.off["flags"])[0] & 0xFF
        return order if order < 63 and pfn % (1 << order) == 0 else 0

    def PageHuge(self, page: StructPage, tail: bytes | None) -> bool:
        """A hugetlb head (judged, as makedumpfile does, where the head's first
        tail is looked at): compound_dtor == HUGETLB_PAGE_DTOR in the first
        tail; 6.6 ("mm: remove HUGETLB_PAGE_DTOR") PG_hugetlb in the first
        tail's flags; 6.9 ("mm: turn folio_test_hugetlb into a PageType") a
        page type.  A kernel exports one; given several, the oldest counts
        (as makedumpfile prefers PG_buddy)."""
        if not self.PageHead(page) or tail is None:
            return False
        if self.hugetlb_dtor is not None and self.dtor_off is not None:
            return tail[self.dtor_off] == self.hugetlb_dtor
        if self.pg["hugetlb"] is not None:
            return bool(self.word.unpack_from(tail, self.off["flags"])[0] >> self.pg["hugetlb"] & 1)
        return self.PageType(page, "HUGETLB")

    # -- the walk ------------------------------------------------------------------

    def walk_needed(self, level: int) -> bool:
        """makedumpfile walks struct pages for bits 2-16, and always when the
        kernel exports NUMBER(PG_hwpoison) (hwpoison and offline pages go)."""
        return bool(level & (DL_CACHE | DL_CACHE_PRIVATE | DL_USER | DL_FREE)) \
            or self.pg["hwpoison"] is not None

    def rule(self, level: int, pfn: int, vaddr: int, page: StructPage) -> tuple[int, int]:
        """(verdict, pages) for a page that is not a tail: the first rule that
        fires, in makedumpfile's order, and the block it takes."""
        tail = self.first_tail(pfn, vaddr) if self.PageHead(page) else None
        compound = 1 << self.compound_order(pfn, page, tail)
        anon, cache = self.PageAnon(page), self.page_cache(page)
        if level & DL_FREE and self.PageBuddy(page):
            # page.private is the buddy order; a free page of an impossible
            # order is kept, and no other rule looks at it (makedumpfile 1.7.2)
            if self.max_order is not None and page.private < self.max_order:
                return FREE, 1 << page.private
            return KEPT, 1
        if level & DL_FREE and self.PageType(page, "UNACCEPTED"):       # 6.16
            return UNACCEPTED, 1 << (self.max_order - 1)
        if level & DL_CACHE and cache and not self.flag(page, "private") and not anon:
            return CACHE, compound
        if level & DL_CACHE_PRIVATE and cache and not anon:
            return (CACHE_PRIVATE if self.flag(page, "private") else CACHE), compound
        if level & DL_USER and (anon or self.PageHuge(page, tail)):
            return USER, compound
        if self.flag(page, "hwpoison"):
            return HWPOISON, compound
        if self.PageOffline(page):
            return OFFLINE, compound
        return KEPT, 1

    def walk(self, level: int) -> bytearray:
        """The verdict of every pfn [0, max_mapnr) at ``level``."""
        if level in self._walks:
            return self._walks[level]
        out = bytearray(self.max_mapnr)
        if self.walk_needed(level):
            pfn = 0
            while pfn < self.max_mapnr:
                found = self.struct_page(pfn) if self.walked[pfn] else None
                if found is None:
                    pfn += 1
                    continue
                vaddr, page = found
                # PageTail: bit 0 of compound_head.  (A fake head of HVO, a tail
                # whose vmemmap page repeats the head's, looks like a head, to
                # makedumpfile too: met only when the real head's block stays.)
                if self.off["compound_head"] is not None and page.compound_head & 1:
                    pfn += 1
                    continue
                verdict, pages = self.rule(level, pfn, vaddr, page)
                top = min(pfn + pages, self.max_mapnr)
                out[pfn:top] = bytes([verdict]) * (top - pfn)
                pfn += pages
            for pfn in self.unreadable():      # kept, whatever covers them
                out[pfn] = UNREADABLE
        self._walks[level] = out
        return out

    def unreadable(self) -> list[int]:
        """The present pfns whose struct page is not in the dump."""
        if self._unreadable is None:
            self._unreadable = [pfn for pfn in range(self.max_mapnr) if self.present[pfn]
                                and self.struct_page(pfn) is None]
        return self._unreadable

    def classify(self, level: int, start: int, end: int) -> Verdict:
        """pfns [start, end) at ``level``: what the classifier must return."""
        verdicts = self.walk(level)
        present, keep = bytearray((end - start + 7) // 8), bytearray((end - start + 7) // 8)
        counts = dict.fromkeys(COUNT_NAMES.values(), 0)
        for pfn in range(start, end):
            if pfn >= self.max_mapnr or not self.present[pfn]:
                continue
            i = pfn - start
            present[i // 8] |= 1 << i % 8
            verdict = verdicts[pfn]
            if verdict in (KEPT, UNREADABLE):
                keep[i // 8] |= 1 << i % 8
            if verdict != KEPT:
                counts[COUNT_NAMES[verdict]] += 1
        return Verdict(start, end, bytes(present), bytes(keep), counts)
