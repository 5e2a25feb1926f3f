"""struct page as VMCOREINFO describes it: where its fields are, and how the
crashed kernel encodes page flags, page types and compound pages.

Everything is told apart by which VMCOREINFO keys exist, never by the
release.  Where the encoding changed between kernels, the change is named
where it is resolved.  The rules that use this layout are C
(:mod:`slimdump.kernel._pageclass`); :meth:`StructPageLayout.params` is the
layout as the C code takes it, by the names the C module itself exports.
"""

from __future__ import annotations

from array import array

from slimdump.kernel.memory import KernelMemory, KernelViewError
from slimdump.kernel.sparsemem import section_size_bits
from slimdump.record import record

#: page flags the rules read, by their kernel names (NUMBER(PG_*) is a bit index)
PAGE_FLAGS = ("PG_lru", "PG_private", "PG_swapcache", "PG_swapbacked", "PG_slab",
              "PG_hwpoison", "PG_buddy", "PG_hugetlb")
#: page types the rules compare page_type with (NUMBER(PAGE_*_MAPCOUNT_VALUE))
PAGE_TYPES = ("PAGE_BUDDY_MAPCOUNT_VALUE", "PAGE_OFFLINE_MAPCOUNT_VALUE",
              "PAGE_SLAB_MAPCOUNT_VALUE", "PAGE_HUGETLB_MAPCOUNT_VALUE",
              "PAGE_UNACCEPTED_MAPCOUNT_VALUE")
#: how many pages MAX_PAGE_ORDER allows when the kernel does not say
#: (LENGTH(zone.free_area) = MAX_PAGE_ORDER + 1; 11 on x86_64 and arm64 4K)
DEFAULT_FREE_AREA = 11
#: The largest buddy block is at most a memory section: include/linux/mmzone.h
#: refuses to build otherwise ("#error Allocator MAX_ORDER exceeds
#: SECTION_SIZE", MAX_PAGE_ORDER + PAGE_SHIFT <= SECTION_SIZE_BITS).  Without
#: SPARSEMEM, a block of at most 2^30 bytes: the largest any arch/*/Kconfig
#: gives (ia64's MAX_ORDER 17 of 16 KiB pages; arm64 64K: 2^29)
MAX_BLOCK_BITS_FLATMEM = 30
#: struct page: 56 to 96 bytes on 64-bit kernels (include/linux/mm.h,
#: __mm_zero_struct_page's BUILD_BUG_ONs), 32 or so on 32-bit ones; older
#: kernels with debug options had larger ones, hence the room
MIN_STRUCT_PAGE, MAX_STRUCT_PAGE = 16, 256
#: (field, bytes the rules read of it) of struct page, as OFFSET(page.field)
FIELDS = (("flags", 8), ("mapping", 8), ("_mapcount", 4), ("private", 8),
          ("compound_head", 8))


@record(frozen=True)
class StructPageLayout:
    """Where the fields of struct page are and how the kernel encodes what
    the rules test, all from VMCOREINFO."""

    size: int                           # SIZE(page)
    flags: int                          # OFFSET(page.flags)
    mapping: int | None                 # OFFSET(page.mapping)
    mapcount: int | None                # OFFSET(page._mapcount), also page_type
    private: int | None                 # OFFSET(page.private): a free page's order
    compound_head: int | None           # OFFSET(page.compound_head): bit 0 = tail
    # compound_order: "byte" (a byte of the first tail, at order_offset),
    # "flags1" (the low byte of the first tail's flags) or None (order 0)
    order_source: str | None
    order_offset: int | None
    # PageHuge: "dtor" (a byte of the first tail == HUGETLB_PAGE_DTOR),
    # "tailflag" (PG_hugetlb in the first tail's flags), "page_type" (the
    # head's page_type == PAGE_HUGETLB_MAPCOUNT_VALUE) or None
    hugetlb_source: str | None
    dtor_offset: int | None
    hugetlb_page_dtor: int | None       # NUMBER(HUGETLB_PAGE_DTOR)
    head_mask: int | None               # NUMBER(PG_head_mask)
    page_flags: dict[str, int]          # NUMBER(PG_*) exported, as bit numbers
    page_types: dict[str, int]          # NUMBER(PAGE_*_MAPCOUNT_VALUE), as u32
    free_area: int                      # LENGTH(zone.free_area): MAX_PAGE_ORDER + 1
    endian: str
    word_size: int                      # sizeof(unsigned long)

    @classmethod
    def from_info(cls, mem: KernelMemory) -> StructPageLayout:
        info, path = mem.info, mem.path
        size = info.bounded("SIZE(page)", MIN_STRUCT_PAGE, MAX_STRUCT_PAGE, path,
                            "bytes of a struct page")
        offsets = {name: info.bounded(f"OFFSET(page.{name})", 0, size - width, path,
                                      f"a field of SIZE(page)={size}")
                   if size is not None else None for name, width in FIELDS}
        flags = offsets["flags"]
        if size is None or flags is None:
            raise KernelViewError(path, "VMCOREINFO has no SIZE(page) or "
                                        "OFFSET(page.flags): struct page cannot be read")
        bits = 8 * mem.pointer_size
        page_flags = {name: v for name in PAGE_FLAGS
                      if (v := info.bounded(f"NUMBER({name})", 0, bits - 1, path,
                                            "a bit of page.flags")) is not None}
        page_types = {name: v & 0xFFFFFFFF for name in PAGE_TYPES
                      if (v := info.number(name)) is not None}
        # the classifier's look-back reaches the start of the largest buddy block
        block_bits = section_size_bits(mem)
        where = (f"a memory section, NUMBER(SECTION_SIZE_BITS)={block_bits}"
                 if block_bits is not None else f"2^{MAX_BLOCK_BITS_FLATMEM} bytes")
        most = (MAX_BLOCK_BITS_FLATMEM if block_bits is None else block_bits) - mem.page_shift
        free_area = info.bounded("LENGTH(zone.free_area)", 1, most + 1, path,
                                 f"MAX_PAGE_ORDER + 1, a buddy block being at most {where}")
        if free_area is None:
            free_area = min(DEFAULT_FREE_AREA, most + 1)

        def in_first_tail(head_relative: int | None) -> int | None:
            """A byte offset from the head struct page, as an offset inside
            the first tail (None when it is not inside it)."""
            if head_relative is None or not size <= head_relative < 2 * size:
                return None
            return head_relative - size

        # compound_order lives in the first tail page: a byte of struct page
        # up to 6.2, of struct folio in 6.3-6.5 (folio._folio_order), the low
        # byte of folio._flags_1 (the first tail's flags) since 6.6 (ebc1baf5c9b4
        # "mm: free up a word in the first tail page"), where VMCOREINFO has
        # neither offset but has the keys that came with it
        order_source: str | None = None
        order_offset = None
        if (off := info.offset("page.compound_order")) is not None:
            order_source, order_offset = "byte", in_first_tail(size + off)
        elif (off := info.offset("folio._folio_order")) is not None:
            order_source, order_offset = "byte", in_first_tail(off)
        elif ("PG_hugetlb" in page_flags or "PAGE_HUGETLB_MAPCOUNT_VALUE" in page_types
              or "PAGE_SLAB_MAPCOUNT_VALUE" in page_types):
            order_source = "flags1"
        if order_source == "byte" and order_offset is None:
            order_source = None

        # PageHuge: compound_dtor of the first tail (<= 6.2 page, 6.3-6.5
        # folio._folio_dtor); PG_hugetlb of the first tail in 6.6-6.8 (9c5ccf2db04b
        # "mm: remove HUGETLB_PAGE_DTOR"); the hugetlb page type since 6.9
        # (d99e3140a4d3 "mm: turn folio_test_hugetlb into a PageType")
        hugetlb_source: str | None = None
        dtor_offset = None
        dtor = info.number("HUGETLB_PAGE_DTOR")
        if dtor is not None and (off := info.offset("page.compound_dtor")) is not None:
            hugetlb_source, dtor_offset = "dtor", in_first_tail(size + off)
        elif dtor is not None and (off := info.offset("folio._folio_dtor")) is not None:
            hugetlb_source, dtor_offset = "dtor", in_first_tail(off)
        elif "PG_hugetlb" in page_flags:
            hugetlb_source = "tailflag"
        elif "PAGE_HUGETLB_MAPCOUNT_VALUE" in page_types:
            hugetlb_source = "page_type"
        if hugetlb_source == "dtor" and dtor_offset is None:
            hugetlb_source = None

        head_mask = info.number("PG_head_mask")
        return cls(size=size, flags=flags, mapping=offsets["mapping"],
                   mapcount=offsets["_mapcount"], private=offsets["private"],
                   # Linux 7.1 renames it OFFSET(page.compound_info) (makedumpfile
                   # f50c015); not read yet: tails are then judged as pages
                   compound_head=offsets["compound_head"],
                   order_source=order_source, order_offset=order_offset,
                   hugetlb_source=hugetlb_source, dtor_offset=dtor_offset,
                   hugetlb_page_dtor=dtor,
                   head_mask=head_mask & ((1 << 64) - 1) if head_mask else None,
                   page_flags=page_flags, page_types=page_types,
                   free_area=free_area,
                   endian=mem.endian, word_size=mem.pointer_size)

    @property
    def buddy_source(self) -> str | None:
        """How PageBuddy is told: "page_type" (2.6.38+), "flag" (PG_buddy,
        2.6.17-2.6.37) or None (makedumpfile would walk the zone free lists,
        which slimdump does not do)."""
        if self.private is None:
            return None
        if "PG_buddy" in self.page_flags:
            return "flag"
        if "PAGE_BUDDY_MAPCOUNT_VALUE" in self.page_types and self.mapcount is not None:
            return "page_type"
        return None

    def params(self, names: tuple[str, ...], sources: dict[str, int]) -> array:
        """The layout as the C rules take it: one int64 per name of
        ``names`` (the C module's PARAMS), -1 where the kernel does not
        export the key.  ``sources`` numbers the order, hugetlb and buddy
        sources as the C module does."""
        def opt(value: int | None) -> int:
            return -1 if value is None else value

        head_mask = self.head_mask or 0
        if head_mask >= 1 << 63:
            head_mask -= 1 << 64                        # as int64
        values = {
            "SIZE(page)": self.size, "OFFSET(page.flags)": self.flags,
            "OFFSET(page.mapping)": opt(self.mapping),
            "OFFSET(page._mapcount)": opt(self.mapcount),
            "OFFSET(page.private)": opt(self.private),
            "OFFSET(page.compound_head)": opt(self.compound_head),
            "order_source": sources.get(f"order:{self.order_source}", 0),
            "order_offset": opt(self.order_offset),
            "hugetlb_source": sources.get(f"hugetlb:{self.hugetlb_source}", 0),
            "dtor_offset": opt(self.dtor_offset),
            "NUMBER(HUGETLB_PAGE_DTOR)": (self.hugetlb_page_dtor or 0) & 0xFFFFFFFF,
            "NUMBER(PG_head_mask)": head_mask,
            "LENGTH(zone.free_area)": self.free_area,
            "buddy_source": sources.get(f"buddy:{self.buddy_source}", 0),
        }
        values.update({f"NUMBER({name})": opt(self.page_flags.get(name))
                       for name in PAGE_FLAGS})
        values.update({f"NUMBER({name})": opt(self.page_types.get(name))
                       for name in PAGE_TYPES})
        return array("q", [values[name] for name in names])
