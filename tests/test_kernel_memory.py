"""Kernel virtual reads: slimdump's x86_64 translation agrees with drgn's on
real vmcores, and walks hand-built 4- and 5-level page tables with 4 KiB,
2 MiB and 1 GiB pages; arm64's linear map and image on synthetic cores."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from slimdump.errors import NotInDump
from slimdump.kernel.memory import KernelMemory
from slimdump.kernel.vmcoreinfo import VmcoreInfo
from slimdump.sources import open_dump
from tests import synthcore as sc
from tests.conftest import real_vmcore, require_module

drgn = require_module("drgn")


@pytest.mark.parametrize("name", ["6.1-sysrq", "6.12-mce"])
def test_reads_agree_with_drgn(name: str) -> None:
    path = real_vmcore(name)
    prog = drgn.Program()
    prog.set_core_dump(str(path))
    with open_dump(path) as src:
        info = VmcoreInfo.from_notes(src.notes)
        assert info is not None
        mem = KernelMemory(src, info)
        prb = mem.pointer(mem.require_symbol("prb"))           # kernel image (.data)
        root = mem.pointer(mem.require_symbol("mem_section"))  # direct map
        mem_map = mem.pointer(root) & ~0x3F                    # vmemmap
        for vaddr in (mem.require_symbol("_stext"), mem.require_symbol("init_uts_ns"), prb,
                      mem.require_symbol("mem_section"), root, mem_map, mem_map + 4096 * 64):
            assert mem.read(vaddr, 512) == prog.read(vaddr, 512), hex(vaddr)
        assert src.bytes_read < 64 * 1024


PAGE = 4096


def build_paging_core(levels: int) -> tuple[bytes, dict[int, int]]:
    """A core whose page tables (built here, independently of slimdump)
    map three addresses; returns the core and {vaddr: expected paddr}."""
    top = 0x2000000                      # init_top_pgt's physical page
    tables: dict[int, bytearray] = {top: bytearray(PAGE)}
    next_table = [top + PAGE]

    def entry(table: int, index: int, value: int) -> None:
        struct.pack_into("<Q", tables[table], index * 8, value)

    def ensure(table: int, index: int) -> int:
        current = struct.unpack_from("<Q", tables[table], index * 8)[0]
        if current:
            return current & 0x000FFFFFFFFFF000
        new = next_table[0]
        next_table[0] += PAGE
        tables[new] = bytearray(PAGE)
        entry(table, index, new | 0x63)                 # present, rw, accessed, dirty
        return new

    def index_list(va: int) -> list[int]:
        shifts = [48, 39, 30, 21, 12] if levels == 5 else [39, 30, 21, 12]
        return [(va >> s) & 511 for s in shifts]

    def map_page(va: int, pa: int, size: int) -> None:
        idx = index_list(va)
        depth = {PAGE: len(idx) - 1, 2 << 20: len(idx) - 2, 1 << 30: len(idx) - 3}[size]
        table = top
        for i in idx[:depth]:
            table = ensure(table, i)
        huge = 0x80 if size != PAGE else 0
        entry(table, idx[depth], pa | 0x63 | huge | (1 << 63))   # NX set, must be masked

    expected = {0xFFFFC90000001000 + 0x123: 0x3000000 + 0x123,
                0xFFFFEA0000200000 + 0x1234: 0x3200000 + 0x1234,
                0xFF11000040000000 + 0x2345: 0x40000000 + 0x2345}
    map_page(0xFFFFC90000001000, 0x3000000, PAGE)
    map_page(0xFFFFEA0000200000, 0x3200000, 2 << 20)
    map_page(0xFF11000040000000, 0x40000000, 1 << 30)

    info = sc.vmcoreinfo({"OSRELEASE": "6.0.0-synthetic", "PAGESIZE": "4096",
                          "SYMBOL(init_top_pgt)": "ffffffff82000000",
                          "NUMBER(phys_base)": "0", "NUMBER(KERNEL_IMAGE_SIZE)": "1073741824",
                          "NUMBER(pgtable_l5_enabled)": "1" if levels == 5 else "0"})
    table_blob = b"".join(bytes(tables[a]) for a in sorted(tables))
    assert sorted(tables) == list(range(top, top + len(tables) * PAGE, PAGE))
    loads = [sc.Load(top, 0xFFFFFFFF82000000, table_blob),
             sc.Load(0x3000000, 0, sc.tagged_bytes(b"P4K:", 0x3000000, PAGE)),
             sc.Load(0x3200000, 0, sc.tagged_bytes(b"P2M:", 0x3200000, 2 * PAGE)),
             sc.Load(0x40000000, 0, sc.tagged_bytes(b"P1G:", 0x40000000, 3 * PAGE))]
    core = sc.build_core([sc.Note(b"VMCOREINFO", 0, info)], loads)
    return core, expected


@pytest.mark.parametrize("levels", [4, 5])
def test_page_table_walk(tmp_path: Path, levels: int) -> None:
    core, expected = build_paging_core(levels)
    path = tmp_path / "core"
    path.write_bytes(core)
    with open_dump(path) as src:
        info = VmcoreInfo.from_notes(src.notes)
        assert info is not None
        mem = KernelMemory(src, info)
        for vaddr, paddr in expected.items():
            assert mem.vtop(vaddr) == paddr
            assert mem.read(vaddr, 32) == src.read_phys(paddr, 32)
        # the kernel image shortcut: va - __START_KERNEL_map + phys_base
        assert mem.vtop(0xFFFFFFFF82000000) == 0x2000000
        with pytest.raises(NotInDump, match="is not mapped"):
            mem.vtop(0xFFFFC90000003000)


def arm64_core(tmp_path: Path, info: dict[str, str]) -> KernelMemory:
    loads = [sc.Load(0x40000000, 0, sc.tagged_bytes(b"LIN:", 0x40000000, 2 * PAGE)),
             sc.Load(0x41000000, 0, sc.tagged_bytes(b"IMG:", 0x41000000, 2 * PAGE))]
    core = sc.build_core([sc.Note(b"VMCOREINFO", 0, sc.vmcoreinfo(info))], loads,
                         machine=sc.EM_AARCH64)
    path = tmp_path / "core"
    path.write_bytes(core)
    src = open_dump(path)
    vmci = VmcoreInfo.from_notes(src.notes)
    assert vmci is not None
    return KernelMemory(src, vmci)


def test_arm64_flipped_layout(tmp_path: Path) -> None:
    # 5.4+ layout, VA_BITS 48: linear map from 0xffff000000000000, image above
    # 0xffff800000000000; kimage_voffset = image VA - image PA.
    mem = arm64_core(tmp_path, {
        "NUMBER(VA_BITS)": "48", "NUMBER(PHYS_OFFSET)": "0x40000000",
        "NUMBER(kimage_voffset)": "0xffff800007000000",
        "SYMBOL(_stext)": "ffff800048010000"})
    assert mem.vtop(0xFFFF000000000000 + 0x1010) == 0x40001010
    assert mem.read(0xFFFF000000000010, 16) == mem.read_phys(0x40000010, 16)
    assert mem.vtop(0xFFFF800048000020) == 0x41000020
    with pytest.raises(NotInDump):
        mem.vtop(0xFFFF800008000000)        # modules / vmalloc: not in either


def test_arm64_old_layout(tmp_path: Path) -> None:
    # before 5.4, VA_BITS 39: linear map is the upper half from 0xffffffc000000000,
    # the image lives in the lower half (0xffffff8008000000 region).
    mem = arm64_core(tmp_path, {
        "NUMBER(VA_BITS)": "39", "NUMBER(PHYS_OFFSET)": "0x40000000",
        "NUMBER(kimage_voffset)": "0xffffff7fc7000000",
        "SYMBOL(_stext)": "ffffff8008081000"})
    assert mem.vtop(0xFFFFFFC000000000 + 0x1010) == 0x40001010
    assert mem.vtop(0xFFFFFF8008000020) == 0x41000020


# ---------------------------------------------------------------------------
# vtop_extent: how far the mapping holding an address goes


@pytest.mark.parametrize("levels", [4, 5])
def test_vtop_extent_page_table_walk(tmp_path: Path, levels: int) -> None:
    """The 4 KiB, 2 MiB and 1 GiB mappings of the hand-built tables: the
    extent runs to the end of each page, and the image to its end."""
    core, expected = build_paging_core(levels)
    path = tmp_path / "core"
    path.write_bytes(core)
    sizes = {0xFFFFC90000001000: PAGE, 0xFFFFEA0000200000: 2 << 20,
             0xFF11000040000000: 1 << 30}
    with open_dump(path) as src:
        info = VmcoreInfo.from_notes(src.notes)
        assert info is not None
        mem = KernelMemory(src, info)
        for vaddr, paddr in expected.items():
            size = next(s for start, s in sizes.items() if 0 <= vaddr - start < s)
            assert mem.vtop_extent(vaddr) == (paddr, size - vaddr % size)
            # the cached huge page answers the same, from any address inside it
            last = vaddr + (size - vaddr % size) - 1
            assert mem.vtop_extent(last) == (paddr + last - vaddr, 1)
        # KERNEL_IMAGE_SIZE is 1 GiB: the image mapping ends there
        assert mem.vtop_extent(0xFFFFFFFF82000000) == (0x2000000, (1 << 30) - 0x2000000)
        with pytest.raises(NotInDump, match="is not mapped"):
            mem.vtop_extent(0xFFFFC90000003000)


def test_vtop_extent_without_mapping_sizes_is_the_page(tmp_path: Path) -> None:
    """arm64 has no vtop_extent: KernelMemory answers page by page."""
    mem = arm64_core(tmp_path, {
        "NUMBER(VA_BITS)": "48", "NUMBER(PHYS_OFFSET)": "0x40000000",
        "NUMBER(kimage_voffset)": "0xffff800007000000",
        "SYMBOL(_stext)": "ffff800048010000"})
    assert mem.vtop_extent(0xFFFF000000000000 + 0x1010) == (0x40001010, PAGE - 0x10)
    with pytest.raises(NotInDump):
        mem.vtop_extent(0xFFFF800008000000)


@pytest.mark.parametrize("name", ["6.1-sysrq", "6.12-mce"])
def test_vtop_extent_agrees_with_a_fresh_walk_on_every_page(name: str) -> None:
    """Over the whole struct page array (vmemmap), 64 MiB of the direct map
    and 16 MiB of the kernel image: every page inside an extent translates,
    by a page-table walk that does not use the huge-page cache, to the
    extent's start plus its offset; unmapped pages fail both ways."""
    with open_dump(real_vmcore(name)) as src:
        info = VmcoreInfo.from_notes(src.notes)
        assert info is not None
        mem = KernelMemory(src, info)
        arch = mem.arch
        root = mem.pointer(mem.require_symbol("mem_section"))
        vmemmap = mem.pointer(root) & ~0x3F
        nr_pfns = max(s.phys_start + s.mem_size for s in src.segments) // PAGE
        ranges = [(vmemmap, vmemmap + nr_pfns * 64),
                  (root & ~(PAGE - 1), (root & ~(PAGE - 1)) + (64 << 20)),
                  (mem.require_symbol("_stext"), mem.require_symbol("_stext") + (16 << 20))]
        extents = 0
        for start, end in ranges:
            va = start
            while va < end:
                try:
                    paddr, extent = mem.vtop_extent(va)
                except NotInDump:
                    arch._huge = (1, 0, 0)          # type: ignore[attr-defined]
                    with pytest.raises(NotInDump):
                        mem.vtop(va)
                    va = (va // PAGE + 1) * PAGE
                    continue
                assert extent > 0 and (va + extent) % PAGE == 0
                extents += 1
                stop = min(va + extent, end)
                page = va
                while page < stop:
                    arch._huge = (1, 0, 0)          # type: ignore[attr-defined]
                    assert mem.vtop(page) == paddr + page - va, hex(page)
                    page = (page // PAGE + 1) * PAGE
                va = stop
        # vmemmap and the direct map are mapped with huge pages: few extents
        assert extents < (ranges[0][1] - ranges[0][0] + (64 << 20)) // PAGE // 64
