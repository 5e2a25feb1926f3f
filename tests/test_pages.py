"""Page classification by dump level (``slimdump.kernel.dump_level``).

The oracle is Debian 12's makedumpfile 1.7.2: for every real 6.1 fixture and
nine dump levels, the pfns slimdump keeps are exactly the pfns makedumpfile
writes (read back from its kdump-compressed output by the independent
``tests.mdfbitmap``), after removing all-zero pages on both sides when the
level has bit 1.  On 6.12 makedumpfile 1.7.2 is not right, and every pfn
where the two disagree is explained from the raw struct page bytes, read
here independently (through SYMBOL(vmemmap), not mem_section).

Synthetic cores (struct pages written by hand, the pages each rule drops
listed by hand) cover what the real fixtures do not hold: compound pages
(anon THP, page-cache folios, a 1 GiB-style hugetlb page larger than a
cycle), misaligned heads, HWPoison and offline pages, both page-type
encodings, FLATMEM, unreadable struct pages, blocks that do not nest, and
layouts the classifier refuses.  ``tests.test_pageref`` holds the classifier
to a per-pfn Python reference on these cores too (it imports the builders
from here).
"""

from __future__ import annotations

import functools
import re
import struct
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from slimdump.errors import DumpError
from slimdump.kernel.dump_level import (
    DL_CACHE,
    DL_CACHE_PRIVATE,
    DL_FREE,
    DL_USER,
    DL_ZERO,
    ExclusionCounts,
    PageClasses,
    PageClassifier,
    check_layout,
)
from slimdump.kernel.memory import KernelMemory, KernelViewError
from slimdump.kernel.physmem import DEFAULT_CYCLE, cycles, max_mapnr, present_packed
from slimdump.kernel.struct_page import StructPageLayout
from slimdump.kernel.vmcoreinfo import VmcoreInfo
from slimdump.record import replace
from slimdump.sources import DumpSource, open_dump
from slimdump.sources.base import NOT_PADDR, Segment
from tests import synthcore as sc
from tests.conftest import real_vmcore, require_native, run, tool
from tests.mdfbitmap import KdumpFile, read_kdump
from tests.oracles import held_page, partial_tail_pfns

PAGE = 4096
FIX_61 = ("6.1-sysrq", "6.1-mce", "6.1-oom")
FIX_612 = ("6.12-sysrq", "6.12-mce")
LEVELS = (0, 1, 2, 4, 6, 8, 16, 24, 31)


# ---------------------------------------------------------------------------
# Packed bitmaps, the 1st bitmap and cycles


def bit(packed: bytes, i: int) -> bool:
    """Bit i of a packed bitmap (bit i % 8 of byte i // 8)."""
    return bool(packed[i // 8] >> (i % 8) & 1)


def pfns_of(packed: bytes, start: int = 0) -> set[int]:
    """The pfns set in a packed bitmap whose bit 0 is pfn ``start``."""
    return {start + 8 * k + i for k, byte in enumerate(packed) if byte
            for i in range(8) if byte >> i & 1}


def dropped(c: PageClasses) -> set[int]:
    """The pfns a verdict drops: present and not kept."""
    return pfns_of(bytes(p & ~k & 0xFF for p, k in zip(c.present, c.keep, strict=True)),
                   c.start)


def popcount(packed: bytes) -> int:
    return int.from_bytes(packed, "little").bit_count()


def unpack(bits: bytes, n: int) -> np.ndarray:
    """A packed bitmap as bool[n], to compare with ``tests.mdfbitmap``'s arrays."""
    return np.unpackbits(np.frombuffer(bits, dtype=np.uint8), count=n,
                         bitorder="little").astype(bool)


def seg(start: int, end: int, vaddr: int = 0) -> Segment:
    return Segment(start, vaddr, end - start, 0, end - start)


def test_present_rules() -> None:
    segments = [
        seg(0x1000, 0x9FC00),                  # trailing partial page: kept (makedumpfile drops it)
        seg(0x100800, 0x103000),               # leading partial page: included
        seg(0x101000, 0x102000, 0xFFFFFFFF81000000),   # kernel image duplicating RAM
        Segment(NOT_PADDR, 0xFFFFFFFF80000000, 0x5000, 0, 0x5000),   # ignored
    ]
    assert max_mapnr(segments, PAGE) == 0x103
    bits = present_packed(segments, PAGE, 0, 0x103)
    assert len(bits) == -(-0x103 // 8)
    expected = {*range(1, 0xA0), *range(0x100, 0x103)}     # pfn 0x9f holds 0xc00 bytes: kept
    assert pfns_of(bits) == expected
    assert bits[-1] >> 3 == 0                              # no bit past the end
    window = present_packed(segments, PAGE, 0x9E, 0x200)
    assert len(window) == -(-(0x200 - 0x9E) // 8)
    assert pfns_of(window, 0x9E) == {p for p in expected if 0x9E <= p < 0x200}
    assert max_mapnr([seg(0, 0x1001)], PAGE) == 2          # roundup of the end
    assert max_mapnr([], PAGE) == 0


def test_cycles() -> None:
    assert list(cycles(0, 10, 4)) == [(0, 4), (4, 8), (8, 10)]
    assert list(cycles(5, 13, 4)) == [(5, 8), (8, 12), (12, 13)]
    assert list(cycles(3, 3, 4)) == []
    with pytest.raises(ValueError):
        list(cycles(0, 1, 0))


# ---------------------------------------------------------------------------
# Synthetic cores: struct pages written by hand

START_KERNEL_MAP = 0xFFFFFFFF80000000
ROOTS = 0x100000          # mem_section root array (SPARSEMEM_EXTREME)
SECTIONS = 0x101000       # the section table of root 0
FLATPTR = 0x100800        # FLATMEM: the mem_map pointer variable
MEMMAP = 0x102000         # struct page of pfn 0
ARRAY_PFNS = 0x4000       # struct pages written for pfns 0 .. 0x3fff
SP = 64


def kva(paddr: int) -> int:
    """Addresses in the kernel-image mapping: translated without page tables."""
    return START_KERNEL_MAP + paddr


@dataclass(frozen=True)
class Style:
    """One kernel generation's flags and page-type encoding."""

    name: str
    lru: int
    private: int
    swapcache: int
    swapbacked: int
    hwpoison: int
    head: int
    slab_flag: int | None      # PG_slab bit (<= 6.9)
    buddy: int                 # PAGE_BUDDY_MAPCOUNT_VALUE as u32
    offline: int
    slab_type: int | None      # PAGE_SLAB_MAPCOUNT_VALUE (6.10+)
    hugetlb_type: int | None   # PAGE_HUGETLB_MAPCOUNT_VALUE (6.9+)

    def keys(self) -> dict[str, str]:
        def s32(v: int) -> str:
            return str(v - (1 << 32) if v & 0x80000000 else v)

        keys = {"NUMBER(PG_lru)": str(self.lru), "NUMBER(PG_private)": str(self.private),
                "NUMBER(PG_swapcache)": str(self.swapcache),
                "NUMBER(PG_swapbacked)": str(self.swapbacked),
                "NUMBER(PG_hwpoison)": str(self.hwpoison),
                "NUMBER(PG_head_mask)": str(1 << self.head),
                "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)": s32(self.buddy),
                "NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)": s32(self.offline)}
        if self.slab_flag is not None:
            keys["NUMBER(PG_slab)"] = str(self.slab_flag)
        if self.slab_type is not None:
            keys["NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)"] = s32(self.slab_type)
        if self.hugetlb_type is not None:
            keys["NUMBER(PAGE_HUGETLB_MAPCOUNT_VALUE)"] = s32(self.hugetlb_type)
        else:
            keys.update({"OFFSET(page.compound_dtor)": "16", "OFFSET(page.compound_order)": "17",
                         "NUMBER(HUGETLB_PAGE_DTOR)": "2"})
        return keys


V61 = Style("6.1", lru=4, private=13, swapcache=10, swapbacked=19, hwpoison=23, head=16,
            slab_flag=9, buddy=0xFFFFFF7F, offline=0xFFFFFEFF, slab_type=None,
            hugetlb_type=None)
V612 = Style("6.12", lru=5, private=14, swapcache=10, swapbacked=17, hwpoison=20, head=6,
             slab_flag=None, buddy=0xF0000000, offline=0xF1000000, slab_type=0xF5000000,
             hugetlb_type=0xF4000000)


class Memmap:
    """A struct page array being written (x86_64 6.x layout, SIZE(page)=64)."""

    def __init__(self, mem: bytearray, style: Style) -> None:
        self.mem, self.style = mem, style
        for pfn in range(ARRAY_PFNS):
            self.put(pfn, mapcount=0xFFFFFFFF)

    def put(self, pfn: int, flags: int = 0, mapping: int = 0, mapcount: int | None = None,
            private: int = 0, chead: int = 0) -> None:
        at = MEMMAP + pfn * SP
        struct.pack_into("<QQ", self.mem, at, flags, chead)
        struct.pack_into("<Q", self.mem, at + 24, mapping)
        struct.pack_into("<Q", self.mem, at + 40, private)
        if mapcount is not None:
            struct.pack_into("<I", self.mem, at + 48, mapcount)

    def bit(self, name: str) -> int:
        return 1 << getattr(self.style, name)

    def compound(self, head: int, order: int, flags: int = 0, mapping: int = 0,
                 mapcount: int = 0xFFFFFFFF, hugetlb: bool = False) -> None:
        st = self.style
        if hugetlb and st.hugetlb_type is not None:
            mapcount = st.hugetlb_type
        self.put(head, flags=flags | (1 << st.head), mapping=mapping, mapcount=mapcount)
        tail_ptr = kva(MEMMAP + head * SP) | 1
        for pfn in range(head + 1, head + (1 << order)):
            self.put(pfn, chead=tail_ptr)
        first = MEMMAP + (head + 1) * SP
        if st.hugetlb_type is None:          # 6.1: compound_dtor / compound_order bytes
            self.mem[first + 16] = 2 if hugetlb else 1
            self.mem[first + 17] = order
        else:                                # 6.6+: folio._flags_1 low byte = order
            struct.pack_into("<Q", self.mem, first, order)


# what the scenario below drops, per rule
ALWAYS = {0x23, 0x24}
FREE = {0x10, *range(0x400, 0x800)}
CACHE_NP = {0x20, 0x30, 0x802, *range(0x40, 0x44)}
CACHE_PRI = {0x21}
USER = {0x22, *range(0x200, 0x400), *range(0x1000, 0x2000)}
UNREADABLE = range(0x8000, 0x8400)


def scenario(mm: Memmap) -> None:
    st = mm.style
    anon, lru = 0xFFFF888001234001, mm.bit("lru")
    slab_flags = mm.bit("slab_flag") if st.slab_flag is not None else 0
    slab_mapcount = st.slab_type if st.slab_type is not None else 0xFFFFFFFF
    mm.put(0x10, mapcount=st.buddy, private=0)                     # free, order 0
    mm.put(0x400, mapcount=st.buddy, private=10)                   # free, order 10
    mm.put(0x20, flags=lru, mapping=0xFFFF888001230000)            # page cache
    mm.put(0x21, flags=lru | mm.bit("private"), mapping=0xFFFF888001230000)
    mm.put(0x22, flags=lru | mm.bit("swapbacked"), mapping=anon)   # anonymous
    mm.put(0x23, flags=mm.bit("hwpoison"))
    mm.put(0x24, mapcount=st.offline)
    # a slab page whose word at page.mapping happens to be odd: not anonymous
    mm.put(0x25, flags=slab_flags, mapping=0x7, mapcount=slab_mapcount)
    mm.put(0x26, mapcount=0xF2000000)                              # 6.12 page table
    mm.put(0x30, flags=mm.bit("swapcache") | mm.bit("swapbacked"), mapping=0xFFFF888001230000)
    mm.compound(0x40, 2, flags=lru, mapping=0xFFFF888001230000)    # page-cache folio
    mm.compound(0x50, 1, flags=slab_flags, mapping=0x3, mapcount=slab_mapcount)  # slab
    mm.compound(0x200, 9, flags=lru | mm.bit("swapbacked"), mapping=anon)        # anon THP
    mm.compound(0x802, 2, flags=lru, mapping=0xFFFF888001230000)   # misaligned: order 0
    mm.compound(0x1000, 12, hugetlb=True)                          # bigger than a cycle


def synthetic_core(tmp_path: Path, style: Style, model: str = "sparse",
                   drop: tuple[str, ...] = (),
                   fill: Callable[[Memmap], None] = scenario,
                   extra: dict[str, str] | None = None, endian: str = "<") -> Path:
    """A core whose struct pages ``fill`` writes (default: :func:`scenario`),
    with the VMCOREINFO keys of ``style`` and ``model`` less ``drop``, plus
    ``extra``; ``endian=">"`` labels the ELF big-endian (the memory stays
    as written: only for what is refused before it is read)."""
    mem = bytearray(MEMMAP + ARRAY_PFNS * SP)
    fill(Memmap(mem, style))
    keys = {"OSRELEASE": f"{style.name}.0-synthetic", "PAGESIZE": "4096",
            "SYMBOL(init_top_pgt)": f"{kva(0x1000):x}", "NUMBER(phys_base)": "0",
            "NUMBER(KERNEL_IMAGE_SIZE)": str(1 << 30), "NUMBER(pgtable_l5_enabled)": "0",
            "SIZE(page)": "64", "OFFSET(page.flags)": "0", "OFFSET(page._refcount)": "52",
            "OFFSET(page.mapping)": "24", "OFFSET(page.lru)": "8",
            "OFFSET(page._mapcount)": "48", "OFFSET(page.private)": "40",
            "OFFSET(page.compound_head)": "8", "LENGTH(zone.free_area)": "11"}
    keys.update(style.keys())
    if model == "sparse":
        struct.pack_into("<Q", mem, ROOTS, kva(SECTIONS))
        struct.pack_into("<Q", mem, SECTIONS, kva(MEMMAP) | 0x3)    # section 0 only
        keys.update({"SYMBOL(mem_section)": f"{kva(ROOTS):x}", "LENGTH(mem_section)": "4096",
                     "SIZE(mem_section)": "32", "OFFSET(mem_section.section_mem_map)": "0",
                     "NUMBER(SECTION_SIZE_BITS)": "27", "NUMBER(MAX_PHYSMEM_BITS)": "46"})
    elif model == "flat":
        struct.pack_into("<Q", mem, FLATPTR, kva(MEMMAP))
        keys["SYMBOL(mem_map)"] = f"{kva(FLATPTR):x}"
    for key in drop:
        keys.pop(key)
    keys.update(extra or {})
    direct = 0xFFFF888000000000
    loads = [sc.Load(paddr=0x1000, vaddr=direct + 0x1000, data=bytes(mem[0x1000:]),
                     memsz=0x2000000 - 0x1000),
             sc.Load(paddr=0x2100000, vaddr=direct + 0x2100000, data=b"",
                     memsz=0x4000000 - 0x2100000),
             # memory without a struct page (no section 1): stored in the file,
             # since memory a PT_LOAD only declares where the kernel has no
             # section is no memory at all (kernel.memmap)
             sc.Load(paddr=0x8000000, vaddr=direct + 0x8000000, data=bytes(0x400000))]
    core = sc.build_core([sc.Note(b"VMCOREINFO", 0, sc.vmcoreinfo(keys))], loads,
                         endian=endian)
    path = tmp_path / f"{style.name}-{model}{'-be' if endian == '>' else ''}.vmcore"
    path.write_bytes(core)
    return path


def classifier(src: DumpSource) -> PageClassifier:
    info = VmcoreInfo.from_notes(src.notes)
    assert info is not None
    return PageClassifier(KernelMemory(src, info))


def expected_excluded(level: int) -> set[int]:
    out = set(ALWAYS)
    if level & DL_FREE:
        out |= FREE
    if level & (DL_CACHE | DL_CACHE_PRIVATE):
        out |= CACHE_NP
    if level & DL_CACHE_PRIVATE:
        out |= CACHE_PRI
    if level & DL_USER:
        out |= USER
    return out


@pytest.fixture
def native_classifier() -> None:
    """The C classifier is built (make setup refuses to go on without it)."""
    from slimdump.kernel import dump_level

    require_native(dump_level.NATIVE, "slimdump.kernel._pageclass")


needs_native = pytest.mark.usefixtures("native_classifier")


@needs_native
@pytest.mark.parametrize("style", [V61, V612], ids=lambda s: s.name)
@pytest.mark.parametrize("model", ["sparse", "flat"])
def test_synthetic_rules(tmp_path: Path, style: Style, model: str) -> None:
    path = synthetic_core(tmp_path, style, model)
    with open_dump(path) as src:
        pc = classifier(src)
        assert pc.max_mapnr == 0x8400
        unreadable = len(UNREADABLE) if model == "sparse" else 0
        for level in LEVELS:
            for size in (777, 1000, 1024, 4096, DEFAULT_CYCLE):
                got: set[int] = set()
                total = ExclusionCounts()
                for a, b in cycles(0, pc.max_mapnr, size):
                    c = pc.classify(level, a, b)
                    assert (c.start, c.end) == (a, b)
                    assert c.present == present_packed(src.segments, PAGE, a, b)
                    got |= dropped(c)
                    total.add(c.counts)
                want = expected_excluded(level)
                assert got == want, (level, size, sorted(got ^ want)[:20])
                assert total.excluded == len(want)
                assert total.unreadable == (unreadable if pc.needs_struct_pages(level) else 0)
        counts = pc.count(31, cycle=1000)
        assert counts.as_dict() == {
            "free": len(FREE), "unaccepted": 0, "cache": len(CACHE_NP),
            "cache_private": len(CACHE_PRI), "user": len(USER), "hwpoison": 1, "offline": 1,
            "unreadable": unreadable}
        whole = pc.classify(31, 0, pc.max_mapnr)
        assert all(bit(whole.keep, p) for p in UNREADABLE)      # kept either way
        assert pc.memory_model == ("sparsemem" if model == "sparse" else "flatmem")


@needs_native
@pytest.mark.parametrize("style", [V61, V612], ids=lambda s: s.name)
def test_hugetlb_page_bigger_than_the_look_back(tmp_path: Path, style: Style) -> None:
    """The order-12 hugetlb page at 0x1000 is larger than a window's
    look-back (one MAX_PAGE_ORDER block, 1024 pfns): a window starting at
    0x1c00 meets only tails, finds their head through compound_head and
    walks again with the head's block dropped."""
    with open_dump(synthetic_core(tmp_path, style)) as src:
        pc = classifier(src)
        c = pc.classify(DL_USER, 0x1C00, 0x1D00)
        assert dropped(c) == set(range(0x1C00, 0x1D00))
        assert c.counts.user == 0x100
        assert pc.rewalks == 1
        # the same window at a level where the head is kept: nothing to redo
        c = pc.classify(DL_CACHE, 0x1C00, 0x1D00)
        assert dropped(c) == set() and pc.rewalks == 1
        # a window that holds the head needs no second walk
        c = pc.classify(DL_USER, 0x1000, 0x2000)
        assert dropped(c) == set(range(0x1000, 0x2000)) and pc.rewalks == 1


def blocks_not_nested(mm: Memmap) -> None:
    """A free block of 4 at 0x600, and inside it a buddy page at 0x602
    claiming 8 pages (to 0x609); a HWPoison page at 0x605."""
    st = mm.style
    mm.put(0x600, mapcount=st.buddy, private=2)
    mm.put(0x602, mapcount=st.buddy, private=3)
    mm.put(0x605, flags=mm.bit("hwpoison"))


@needs_native
def test_makedumpfile_walk_order_when_blocks_do_not_nest(tmp_path: Path) -> None:
    """makedumpfile goes on at the end of each dropped block, so a page
    inside a block is never looked at even if it would reach further: pfns
    0x600-0x603 are free, 0x604 and 0x606-0x609 kept, 0x605 HWPoison;
    however the windows cut the walk."""
    with open_dump(synthetic_core(tmp_path, V612, fill=blocks_not_nested)) as src:
        pc = classifier(src)
        for size in (1, 3, 5, 512, 777, DEFAULT_CYCLE):
            got: set[int] = set()
            for a, b in cycles(0x5F0, 0x620, size):
                got |= dropped(pc.classify(DL_FREE, a, b))
            assert got == {0x600, 0x601, 0x602, 0x603, 0x605}, size


@needs_native
def test_ranges_beyond_the_dump_and_bad_ranges(tmp_path: Path) -> None:
    with open_dump(synthetic_core(tmp_path, V61)) as src:
        pc = classifier(src)
        c = pc.classify(31, 0x83F0, 0x8500)
        assert len(c.keep) == len(c.present) == 0x110 // 8
        assert pfns_of(c.present, 0x83F0) == set(range(0x83F0, 0x8400))
        assert c.keep == c.present
        c = pc.classify(31, 0x8400, 0x8405)                 # past max_mapnr, not whole bytes
        assert c.present == c.keep == b"\0"
        with pytest.raises(ValueError):
            pc.classify(31, 10, 5)


@needs_native
def test_missing_keys(tmp_path: Path) -> None:
    no_model = synthetic_core(tmp_path, V61, model="none",
                              drop=("NUMBER(PG_hwpoison)",))
    with open_dump(no_model) as src:
        pc = classifier(src)
        # levels 0/1 without PG_hwpoison: no walk, nothing excluded, no keys needed
        assert not pc.needs_struct_pages(DL_ZERO)
        c = pc.classify(DL_ZERO, 0, pc.max_mapnr)
        assert c.keep == c.present and dropped(c) == set()
        with pytest.raises(KernelViewError, match="mem_section"):
            pc.classify(DL_CACHE, 0, 100)
    (tmp_path / "b").mkdir()
    no_buddy = synthetic_core(tmp_path / "b", V61,
                              drop=("NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)",))
    with open_dump(no_buddy) as src:
        pc = classifier(src)
        assert dropped(pc.classify(DL_CACHE, 0, 0x100)) \
            == {0x20, 0x30, 0x40, 0x41, 0x42, 0x43} | ALWAYS
        with pytest.raises(KernelViewError, match="free pages"):
            pc.classify(DL_FREE, 0, 100)


# -- layouts the C rules do not read: refused in one line -----------------------------


def one_line_refusal(exc: pytest.ExceptionInfo[KernelViewError], path: Path | str,
                     what: str) -> None:
    text = str(exc.value)
    assert "\n" not in text and text.startswith(f"{path}: ") and what in text, text


@needs_native
def test_free_area_out_of_range_is_refused(tmp_path: Path) -> None:
    """LENGTH(zone.free_area) is MAX_PAGE_ORDER + 1; 64 would make a buddy
    block of 2**63 pages: refused, not guessed."""
    path = synthetic_core(tmp_path, V612, extra={"LENGTH(zone.free_area)": "64"})
    with open_dump(path) as src:
        pc = classifier(src)
        for level in (DL_CACHE, DL_FREE, 31, DL_ZERO):     # PG_hwpoison: every level walks
            with pytest.raises(KernelViewError) as exc:
                pc.classify(level, 0, 0x1000)
            one_line_refusal(exc, path, "LENGTH(zone.free_area)=64")


@needs_native
def test_big_endian_or_32_bit_layout_is_refused(tmp_path: Path) -> None:
    """Only little-endian 64-bit struct pages are read: a big-endian core,
    or a 32-bit layout, is refused in one line naming the dump."""
    path = synthetic_core(tmp_path, V612, endian=">")
    with open_dump(path) as src:
        pc = classifier(src)
        with pytest.raises(KernelViewError) as exc:
            pc.classify(31, 0, 0x1000)
        one_line_refusal(exc, path, "big-endian or 32-bit")
    with open_dump(synthetic_core(tmp_path, V612)) as src:
        layout = StructPageLayout.from_info(classifier(src).mem)
    check_layout("x.vmcore", layout, 31)                     # the real one passes
    # (LENGTH(zone.free_area) is refused where it is read: the test above)
    for changes in ({"word_size": 4}, {"endian": ">"}):
        with pytest.raises(KernelViewError) as exc:
            check_layout("x.vmcore", replace(layout, **changes), 31)
        one_line_refusal(exc, "x.vmcore", "32-bit")


@needs_native
@pytest.mark.parametrize("case", ["free_area_64", "big_endian"])
def test_capture_keeps_every_page_of_a_refused_layout(tmp_path: Path, case: str) -> None:
    """A capture of such a core is not lost: every page the dump holds is
    kept, and a warning says why."""
    from slimdump.filtered import select_pages  # the writers' layer, on top

    if case == "big_endian":
        path = synthetic_core(tmp_path, V612, endian=">")
    else:
        path = synthetic_core(tmp_path, V612, extra={"LENGTH(zone.free_area)": "64"})
    with open_dump(path) as src:
        selection = select_pages(src, 31)
        try:
            nr = selection.max_mapnr
            assert nr == 0x8400
            present = present_packed(src.segments, PAGE, 0, nr)
            assert selection.bitmap1.read(0, len(present)) == present
            assert selection.bitmap2.read(0, len(present)) == present
            assert len(selection.warnings) == 1
            warning = selection.warnings[0]
            assert "keeping every page" in warning and "\n" not in warning
            assert ("LENGTH(zone.free_area)=64" if case == "free_area_64"
                    else "big-endian") in warning
            assert selection.counts == {}
        finally:
            selection.close()


# ---------------------------------------------------------------------------
# Real vmcores against makedumpfile 1.7.2


def hexes(pfns: np.ndarray, n: int = 12) -> str:
    return ", ".join(hex(int(p)) for p in pfns[:n])


def assert_same_pfns(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    extra = np.flatnonzero(ours & ~theirs)
    missing = np.flatnonzero(~ours & theirs)
    assert len(extra) == 0 and len(missing) == 0, (
        f"{what}: slimdump keeps {len(extra)} pfns makedumpfile drops [{hexes(extra)}]; "
        f"drops {len(missing)} it keeps [{hexes(missing)}]")


@functools.cache
def makedumpfile_output(name: str, level: int) -> KdumpFile:
    """makedumpfile -l -d LEVEL, parsed (the file itself is deleted)."""
    vmcore = real_vmcore(name)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "dump"
        run(tool("makedumpfile"), "--message-level", "0", "-l", "-d", str(level), vmcore, out)
        return read_kdump(out)


@functools.cache
def makedumpfile_report(name: str, level: int) -> dict[str, int]:
    """The page counts makedumpfile reports (message level 16)."""
    vmcore = real_vmcore(name)
    with tempfile.TemporaryDirectory() as tmp:
        res = run(tool("makedumpfile"), "--message-level", "16", "-l", "-d", str(level),
                  vmcore, Path(tmp) / "dump")
    text = res.stdout + res.stderr
    labels = {"Pages filled with zero": "zero",
              "Non-private cache pages": "cache", "Private cache pages": "cache_private",
              "User process data pages": "user", "Free pages": "free",
              "Hwpoison pages": "hwpoison", "Offline pages": "offline"}
    out = {}
    for label, key in labels.items():
        m = re.search(rf"{label}\s*:\s*(0x[0-9a-f]+)", text)
        assert m, f"no '{label}' in makedumpfile's report:\n{text}"
        out[key] = int(m.group(1), 16)
    return out


def slimdump_classes(name: str, level: int, cycle: int = DEFAULT_CYCLE
                     ) -> tuple[np.ndarray, np.ndarray, ExclusionCounts]:
    """(present, dumpable, counts) over the whole dump, cycle by cycle, as
    bool arrays indexed by pfn (``tests.mdfbitmap``'s shape)."""
    with open_dump(real_vmcore(name)) as src:
        pc = classifier(src)
        present, dumpable, counts = [], [], ExclusionCounts()
        for a, b in cycles(0, pc.max_mapnr, cycle):
            c = pc.classify(level, a, b)
            present.append(unpack(c.present, b - a))
            dumpable.append(unpack(c.keep, b - a))
            counts.add(c.counts)
    return np.concatenate(present), np.concatenate(dumpable), counts


@functools.cache
def partial_tails(name: str, nbits: int) -> np.ndarray:
    """bool[nbits]: the pages where a PT_LOAD of the vmcore ends mid-page
    (by readelf), kept by slimdump, dropped by makedumpfile 1.7.2."""
    mask = np.zeros(nbits, dtype=bool)
    tails = partial_tail_pfns(real_vmcore(name), PAGE)
    assert tails, "every lab vmcore has x86's first RAM range, 0x1000-0x9fbff"
    mask[tails] = True
    return mask


@functools.cache
def zero_pages(name: str) -> np.ndarray:
    """bool[max_mapnr]: present pages whose 4096 bytes are all zero, read
    from the vmcore in large runs and tested with numpy."""
    with open_dump(real_vmcore(name)) as src:
        nr = max_mapnr(src.segments, PAGE)
        present = unpack(present_packed(src.segments, PAGE, 0, nr), nr)
        zero = np.zeros(len(present), dtype=bool)
        edges = np.flatnonzero(np.diff(np.concatenate(([0], present.view(np.int8), [0]))))
        for a, b in zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True):
            for lo in range(a, b, 4096):
                hi = min(b, lo + 4096)
                try:
                    data = src.read_phys(lo * PAGE, (hi - lo) * PAGE)
                except DumpError:
                    data = b"".join(held_page(real_vmcore(name), p, PAGE)
                                    if p in partial_tail_pfns(real_vmcore(name), PAGE)
                                    else src.read_phys(p * PAGE, PAGE) for p in range(lo, hi))
                words = np.frombuffer(data, dtype=np.uint64).reshape(hi - lo, PAGE // 8)
                zero[lo:hi] = ~words.any(axis=1)
    return zero


def kept_with_content(name: str, level: int, dumpable: np.ndarray) -> np.ndarray:
    """slimdump's kept set as makedumpfile stores it: zero pages go at bit 1."""
    if level & DL_ZERO:
        return dumpable & ~zero_pages(name)
    return dumpable


@needs_native
@pytest.mark.vmcore
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", FIX_61)
def test_same_pages_as_makedumpfile_on_61(name: str, level: int) -> None:
    theirs = makedumpfile_output(name, level)
    present, dumpable, _counts = slimdump_classes(name, level)
    # the one documented difference: pages where a PT_LOAD ends mid-page,
    # which slimdump keeps and makedumpfile drops (README, "Oracles")
    tails = partial_tails(name, len(present))
    assert not (theirs.bitmap1 & tails).any()
    assert_same_pfns(present, theirs.bitmap1 | tails, f"{name} 1st bitmap")
    # kdump-compressed files keep zero pages in the 2nd bitmap: equal at every level
    assert_same_pfns(dumpable, theirs.bitmap2 | tails, f"{name} -d {level} 2nd bitmap")
    ours = kept_with_content(name, level, dumpable)
    tails_content = tails & ~zero_pages(name) if level & DL_ZERO else tails
    assert_same_pfns(ours, theirs.kept_with_content | tails_content,
                     f"{name} -d {level} pages with content")
    if level & DL_ZERO:
        # the zero pages makedumpfile found are exactly the all-zero dumpable ones
        assert_same_pfns(dumpable & zero_pages(name),
                         np.isin(np.arange(len(dumpable)), theirs.zero_pfns)
                         | (tails & zero_pages(name)), f"{name} -d {level} zero pages")


@needs_native
@pytest.mark.vmcore
@pytest.mark.parametrize("name", ["6.1-sysrq", "6.1-oom"])
def test_counts_match_makedumpfile_report(name: str) -> None:
    _present, _dumpable, counts = slimdump_classes(name, 31)
    # zero pages are judged from content, by the writers (test_capture_summary)
    report = {k: v for k, v in makedumpfile_report(name, 31).items() if k != "zero"}
    ours = counts.as_dict()
    assert {k: ours[k] for k in report} == report


@needs_native
@pytest.mark.vmcore
@pytest.mark.parametrize("name", ["6.1-sysrq", "6.1-oom"])
def test_cycle_size_does_not_matter(name: str) -> None:
    """777-pfn cycles cut order-10 buddy blocks (1024 pages) anywhere."""
    _p, whole, counts = slimdump_classes(name, 31, DEFAULT_CYCLE)
    for size in (777, 1 << 12):
        _p, cut, cut_counts = slimdump_classes(name, 31, size)
        assert_same_pfns(cut, whole, f"{name} cycles of {size}")
        assert cut_counts == counts


class RawStructPages:
    """struct page fields read the test's own way: SYMBOL(vmemmap) (6.9+
    kernels export it) + pfn * SIZE(page), unpacked with the VMCOREINFO
    offsets; no slimdump classification code involved."""

    def __init__(self, mem: KernelMemory) -> None:
        info = mem.info
        self.mem = mem
        self.vmemmap = mem.require_symbol("vmemmap")
        self.size = info.size("page") or 0
        self.off = {m: info.offset(f"page.{m}") for m in ("flags", "mapping", "_mapcount",
                                                           "private", "compound_head")}
        self.buddy = (info.number("PAGE_BUDDY_MAPCOUNT_VALUE") or 0) & 0xFFFFFFFF
        self.slab = (info.number("PAGE_SLAB_MAPCOUNT_VALUE") or 0) & 0xFFFFFFFF
        self.max_order = info.length("zone.free_area") or 11

    def fields(self, pfn: int) -> dict[str, int]:
        raw = self.mem.read(self.vmemmap + pfn * self.size, self.size)
        out = {}
        for name, off in self.off.items():
            assert off is not None
            fmt = "<I" if name == "_mapcount" else "<Q"
            out[name] = struct.unpack_from(fmt, raw, off)[0]
        return out

    def in_free_block(self, pfn: int) -> bool:
        """Some aligned block start at or below pfn is a buddy page (6.12
        top-byte page type, compared whole) whose order covers pfn."""
        for order in range(self.max_order):
            head = pfn >> order << order
            f = self.fields(head)
            if f["_mapcount"] == self.buddy and (1 << f["private"]) > pfn - head:
                return True
        return False

    def odd_mapping_slab(self, pfn: int) -> bool:
        """A slab page (6.10+ page type) whose word at page.mapping is odd:
        makedumpfile 1.7.2 takes it for an anonymous page (its isAnon() does
        not look for slab, and it cannot see 6.10+ slab pages anyway)."""
        f = self.fields(pfn)
        return f["_mapcount"] == self.slab and bool(f["mapping"] & 1)


@needs_native
@pytest.mark.vmcore
@pytest.mark.parametrize("level", (1, 2, 4, 8, 16, 24, 31))
@pytest.mark.parametrize("name", FIX_612)
def test_612_differences_are_explained(name: str, level: int,
                                       record_property: pytest.RecordProperty) -> None:
    """Where makedumpfile 1.7.2 and slimdump differ on 6.12, the struct page
    says slimdump is right: pages only slimdump drops are free (buddy by the
    6.12 encoding, only at bit 16); pages only makedumpfile drops are slab
    pages it mistakes for user data (only at bit 8).  Everything else agrees."""
    theirs = makedumpfile_output(name, level)
    present, dumpable, _counts = slimdump_classes(name, level)
    tails = partial_tails(name, len(present))
    assert not (theirs.bitmap1 & tails).any()
    assert_same_pfns(present, theirs.bitmap1 | tails, f"{name} 1st bitmap")
    ours = kept_with_content(name, level, dumpable)
    assert (dumpable & tails).sum() == tails.sum()         # kept at every level
    theirs_kept = theirs.kept_with_content | (tails & ~zero_pages(name) if level & DL_ZERO
                                              else tails)
    only_we_drop = np.flatnonzero(theirs_kept & ~ours)
    only_they_drop = np.flatnonzero(ours & ~theirs_kept)
    record_property("only_slimdump_drops", len(only_we_drop))
    record_property("only_makedumpfile_drops", len(only_they_drop))
    with open_dump(real_vmcore(name)) as src:
        info = VmcoreInfo.from_notes(src.notes)
        assert info is not None
        mem = KernelMemory(src, info)
        raw = RawStructPages(mem)
        pc = PageClassifier(mem)
        assert {base for _a, _b, base in pc.map_ranges()} == {raw.vmemmap}
        if not level & DL_FREE:
            assert len(only_we_drop) == 0, hexes(only_we_drop)
        unexplained = [p for p in only_we_drop.tolist() if not raw.in_free_block(p)]
        assert not unexplained, f"not free pages: {hexes(np.array(unexplained))}"
        if not level & DL_USER:
            assert len(only_they_drop) == 0, hexes(only_they_drop)
        unexplained = [p for p in only_they_drop.tolist() if not raw.odd_mapping_slab(p)]
        assert not unexplained, f"not slab pages: {hexes(np.array(unexplained))}"


@needs_native
@pytest.mark.vmcore
def test_bounded_memory_and_reads(record_property: pytest.RecordProperty) -> None:
    """The whole 6.1-sysrq vmcore in cycles: a few tens of MiB of Python
    memory at most, and only the present pages' struct pages read."""
    with open_dump(real_vmcore("6.1-sysrq")) as src:
        pc = classifier(src)
        present = popcount(present_packed(src.segments, PAGE, 0, pc.max_mapnr))
        before = src.bytes_read
        tracemalloc.start()
        try:
            t0 = time.perf_counter()
            kept = 0
            for a, b in cycles(0, pc.max_mapnr, DEFAULT_CYCLE):
                kept += popcount(pc.classify(31, a, b).keep)
            seconds = time.perf_counter() - t0
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        read = src.bytes_read - before
    record_property("classify_seconds", round(seconds, 3))
    record_property("tracemalloc_peak_mib", round(peak / 2**20, 1))
    record_property("bytes_read", read)
    theirs = makedumpfile_output("6.1-sysrq", 31).bitmap2
    assert kept == int((theirs | partial_tails("6.1-sysrq", len(theirs))).sum())
    assert peak < 64 << 20
    assert present * 64 <= read < present * 64 * 1.02 + (256 << 10)
