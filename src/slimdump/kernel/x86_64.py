"""x86_64 virtual-to-physical translation from VMCOREINFO.

* Kernel image: ``va - __START_KERNEL_map + phys_base`` for addresses in
  ``[__START_KERNEL_map, + KERNEL_IMAGE_SIZE)``.  NUMBER(phys_base) is
  signed (KASLR can make it negative); all arithmetic is modulo 2**64.
* Everything else (direct map, vmalloc, vmemmap, modules): a walk of the
  kernel page tables from SYMBOL(init_top_pgt), 4 or 5 levels as
  NUMBER(pgtable_l5_enabled) says, honouring 1 GiB and 2 MiB pages and
  clearing NUMBER(sme_mask) (AMD memory encryption) from every entry.

Page-table pages are cached: reading a large buffer costs one walk's worth
of table pages, not one per page.  :meth:`X86_64.vtop_extent` also says how
far the mapping holding an address goes on, so a bulk reader (the struct
page array in vmemmap, mapped with 2 MiB or 1 GiB pages) translates once
per mapping instead of once per 4 KiB.
"""

from __future__ import annotations

import struct

from slimdump.errors import NotInDump
from slimdump.sources.base import Segment

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up)
if TYPE_CHECKING:
    from slimdump.kernel.memory import KernelMemory
    from slimdump.kernel.vmcoreinfo import VmcoreInfo

START_KERNEL_MAP = 0xFFFFFFFF80000000
ENTRY_ADDR_MASK = 0x000FFFFFFFFFF000
PRESENT, PSE = 1 << 0, 1 << 7
MASK64 = (1 << 64) - 1
_LEVEL_SHIFTS = {4: (39, 30, 21, 12), 5: (48, 39, 30, 21, 12)}


def find_phys_base(info: VmcoreInfo | None, segments: list[Segment]) -> int | None:
    """NUMBER(phys_base), or makedumpfile's fallback: the kernel-image
    PT_LOAD's p_paddr - (p_vaddr - __START_KERNEL_map).  None if neither."""
    value = info.number("phys_base") if info is not None else None
    if value is not None:
        return value
    for seg in segments:
        if seg.virt_start >= START_KERNEL_MAP:
            return seg.phys_start - (seg.virt_start - START_KERNEL_MAP)
    return None


class X86_64:
    """Translation rules for one x86_64 kernel."""

    def __init__(self, mem: KernelMemory, info: VmcoreInfo, segments: list[Segment]) -> None:
        from slimdump.kernel.memory import KernelViewError

        self.mem = mem
        phys_base = find_phys_base(info, segments)
        if phys_base is None:
            raise KernelViewError(mem.path, "VMCOREINFO has no NUMBER(phys_base) and no "
                                            "kernel-image segment tells it")
        self.phys_base = phys_base
        # the kernel image mapping runs from __START_KERNEL_map to the top of
        # the address space (512 MiB, 1 GiB with KASLR: page_64_types.h)
        self.image_size = info.bounded("NUMBER(KERNEL_IMAGE_SIZE)", 1,
                                       MASK64 + 1 - START_KERNEL_MAP, mem.path,
                                       "at most the kernel image mapping's 2 GiB")
        top = (info.symbol("init_top_pgt") or info.symbol("init_level4_pgt")
               or info.symbol("swapper_pg_dir"))
        if top is None:
            raise KernelViewError(mem.path, "VMCOREINFO has no SYMBOL(init_top_pgt)")
        self.top_table = self.image_vtop(top)
        if self.top_table is None:
            raise KernelViewError(mem.path, f"init_top_pgt {top:#x} is not in the kernel image")
        self.levels = 5 if info.number("pgtable_l5_enabled") else 4
        self.entry_mask = ENTRY_ADDR_MASK & ~(info.number("sme_mask") or 0) & MASK64
        self._tables: dict[int, bytes] = {}
        # the last huge page found (virtual start, size, physical start):
        # bulk reads of vmemmap and the direct map walk once per 2 MiB / 1 GiB
        self._huge = (1, 0, 0)

    def image_vtop(self, vaddr: int) -> int | None:
        """The kernel-image shortcut, or None outside the image mapping."""
        if vaddr < START_KERNEL_MAP:
            return None
        if self.image_size is not None and vaddr >= START_KERNEL_MAP + self.image_size:
            return None
        return (vaddr - START_KERNEL_MAP + self.phys_base) & MASK64

    def _entry(self, table: int, index: int) -> int:
        page = self._tables.get(table)
        if page is None:
            page = self.mem.read_phys(table, 4096)
            self._tables[table] = page
        return struct.unpack_from("<Q", page, index * 8)[0]

    def vtop(self, vaddr: int) -> int:
        return self.vtop_extent(vaddr)[0]

    def vtop_extent(self, vaddr: int) -> tuple[int, int]:
        """(physical address of ``vaddr``, bytes from ``vaddr`` to the end of
        the mapping holding it): to the end of the kernel image mapping, of
        the 1 GiB / 2 MiB page, or of the 4 KiB page.  Every byte of that
        extent translates to ``paddr + (va - vaddr)``.  NotInDump where no
        page table maps ``vaddr``."""
        direct = self.image_vtop(vaddr)
        if direct is not None:
            image_end = (START_KERNEL_MAP + self.image_size if self.image_size is not None
                         else MASK64 + 1)
            # never past the top of the physical address space (the & MASK64 wrap)
            return direct, min(image_end - vaddr, MASK64 + 1 - direct)
        vstart, size, pstart = self._huge
        if 0 <= vaddr - vstart < size:
            return pstart + (vaddr - vstart), vstart + size - vaddr
        table = self.top_table
        shifts = _LEVEL_SHIFTS[self.levels]
        for depth, shift in enumerate(shifts):
            entry = self._entry(table, (vaddr >> shift) & 511)
            if not entry & PRESENT:
                raise NotInDump(self.mem.path, f"virtual address {vaddr:#x} is not mapped "
                                               f"(level-{len(shifts) - depth} entry {entry:#x})")
            leaf_level = len(shifts) - depth          # 1 = PTE, 2 = PMD, 3 = PUD
            if shift == 12 or (leaf_level in (2, 3) and entry & PSE):
                size = 1 << shift
                base = entry & self.entry_mask & ~(size - 1)
                if size > 4096:
                    self._huge = (vaddr & ~(size - 1), size, base)
                offset = vaddr & (size - 1)
                return base | offset, size - offset
            table = entry & self.entry_mask
        raise AssertionError("unreachable")
