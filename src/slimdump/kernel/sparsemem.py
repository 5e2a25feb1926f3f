"""The memory model: where the struct page of a pfn lives (``pfn_to_page``).

SPARSEMEM (with or without SPARSEMEM_EXTREME and SPARSEMEM_VMEMMAP) keeps
one ``mem_map`` per memory section, found through ``mem_section``; FLATMEM
keeps one ``mem_map`` for all pfns.  Either way the result here is a list
of pfn ranges, each with the ``base`` such that the struct page of pfn p is
at ``base + p * SIZE(page)`` (mod 2**64): the kernel's
``section_mem_map_addr()`` stores exactly that base, the section's map
minus its first pfn times SIZE(page) (``sparse_encode_mem_map()``).
DISCONTIGMEM (gone since 5.14) is not supported.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from slimdump.elf import EM_X86_64
from slimdump.errors import DumpError
from slimdump.kernel.memory import KernelMemory, KernelViewError

MASK64 = (1 << 64) - 1
#: bits of an address: no physical address space is wider
MAX_ADDRESS_BITS = 64

# low bits of mem_section.section_mem_map that are flags, not address
# (SECTION_MARKED_PRESENT, SECTION_HAS_MEM_MAP, SECTION_IS_ONLINE, ...: the
# kernel's SECTION_MAP_LAST_BIT has grown from 2 to 6; the encoded map is
# aligned far beyond that, so six bits are masked whatever the kernel)
SECTION_MAP_MASK = ~0x3F
SECTION_MARKED_PRESENT = 0x1

#: (first pfn, end pfn, base): struct page of pfn p at base + p * SIZE(page)
MapRange = tuple[int, int, int]


def mem_map_ranges(mem: KernelMemory, max_mapnr: int) -> tuple[str, list[MapRange]]:
    """The memory model ("sparsemem" or "flatmem") and the struct page
    ranges that cover pfns [0, max_mapnr), sorted; KernelViewError when
    VMCOREINFO cannot say where struct page lives."""
    info = mem.info
    if info.symbol("mem_section") is not None:
        return "sparsemem", _sparsemem_ranges(mem, max_mapnr)
    if (symbol := info.symbol("mem_map")) is not None:
        mem_map = mem.pointer(symbol)
        if not mem_map:
            raise KernelViewError(mem.path, "mem_map (FLATMEM) is NULL")
        return "flatmem", [(0, max_mapnr, mem_map)]
    raise KernelViewError(mem.path, "VMCOREINFO has neither SYMBOL(mem_section) nor "
                                    "SYMBOL(mem_map): struct page cannot be located "
                                    "(DISCONTIGMEM is not supported)")


def section_size_bits(mem: KernelMemory) -> int | None:
    """NUMBER(SECTION_SIZE_BITS) of a SPARSEMEM kernel (None for FLATMEM),
    validated: a memory section holds at least a page (x86_64 kernels that
    do not export it have 27)."""
    if mem.info.symbol("mem_section") is None:
        return None
    bits = mem.info.bounded("NUMBER(SECTION_SIZE_BITS)", mem.page_shift, MAX_ADDRESS_BITS,
                            mem.path, "a section is at least a page")
    if bits is None and mem.source.header.e_machine == EM_X86_64:
        return 27
    return bits


def max_physmem_bits(mem: KernelMemory) -> int | None:
    """NUMBER(MAX_PHYSMEM_BITS) of a SPARSEMEM kernel, validated: at most
    the 64 bits of an address (x86_64 kernels that do not export it: 52
    with 5-level paging, else 46)."""
    bits = mem.info.bounded("NUMBER(MAX_PHYSMEM_BITS)", mem.page_shift, MAX_ADDRESS_BITS,
                            mem.path, "bits of a physical address")
    if bits is None and mem.source.header.e_machine == EM_X86_64:
        return 52 if mem.info.number("pgtable_l5_enabled") else 46
    return bits


def _sparsemem_ranges(mem: KernelMemory, max_mapnr: int) -> list[MapRange]:
    info, path = mem.info, mem.path
    symbol = info.symbol("mem_section") or 0
    ptr = mem.pointer_size
    # struct mem_section is a few words; SPARSEMEM_EXTREME puts a page of them
    # in each root (SECTIONS_PER_ROOT = PAGE_SIZE / sizeof(struct mem_section))
    sec_size = info.bounded("SIZE(mem_section)", ptr, mem.page_size, path,
                            "a pointer to a page")
    sec_off = info.offset("mem_section.section_mem_map")
    section_bits = section_size_bits(mem)
    physmem_bits = max_physmem_bits(mem)
    if sec_size is None or sec_off is None or section_bits is None or physmem_bits is None:
        raise KernelViewError(path, "VMCOREINFO lacks SIZE(mem_section), "
                                    "OFFSET(mem_section.section_mem_map), "
                                    "NUMBER(SECTION_SIZE_BITS) or NUMBER(MAX_PHYSMEM_BITS)")
    if sec_off < 0 or sec_off + ptr > sec_size:
        raise KernelViewError(path, f"VMCOREINFO OFFSET(mem_section.section_mem_map)={sec_off} "
                                    f"is outside SIZE(mem_section)={sec_size}")
    if section_bits > physmem_bits:
        raise KernelViewError(path, f"VMCOREINFO NUMBER(SECTION_SIZE_BITS)={section_bits} is "
                                    f"more than NUMBER(MAX_PHYSMEM_BITS)={physmem_bits}: a "
                                    "memory section larger than the physical address space")
    # PFN_SECTION_SHIFT and NR_MEM_SECTIONS
    per_section = 1 << (section_bits - mem.page_shift)
    nr_sections = 1 << (physmem_bits - section_bits)
    # SPARSEMEM_EXTREME: mem_section is an array of pointers to root arrays
    # of SECTIONS_PER_ROOT sections (one page each); otherwise one flat array
    # (LENGTH(mem_section) is then NR_MEM_SECTIONS, not the number of roots)
    per_root = max(mem.page_size // sec_size, 1)
    length = info.length("mem_section")
    extreme = length is None or length == -(-nr_sections // per_root)
    if not extreme:
        per_root = 1
    needed = min(-(-max_mapnr // per_section), nr_sections)
    word = mem.endian + ("Q" if ptr == 8 else "I")

    def decode(root_array: int) -> dict[int, int]:
        """section number -> mem_map base, for sections present with a map
        (the kernel's valid_section() and section_mem_map_addr())."""
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
                if value & SECTION_MARKED_PRESENT and value & SECTION_MAP_MASK:
                    bases[first + i] = value & SECTION_MAP_MASK
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


def read_struct_pages(mem: KernelMemory, size: int, buffer: memoryview, first: int,
                      runs: Sequence[MapRange]) -> list[int]:
    """Read the struct pages of the pfn runs ``(a, b, base)`` into
    ``buffer`` (pfn ``first`` at offset 0); the pfn intervals read whole,
    flattened ``[a0, b0, a1, b1, ...]``.  Translated a mapping at a time
    (a 2 MiB vmemmap page is one translation), physically contiguous
    bytes one read; what cannot be translated is left out a virtual page
    at a time, what cannot be read a struct page at a time, and only the
    struct pages it touches are lost."""
    ok: list[int] = []
    for a, b, base in runs:
        vaddr, at, nbytes = (base + a * size) & MASK64, (a - first) * size, (b - a) * size
        good = a
        for lost_a, lost_b in _read_virtual(mem, buffer, at, vaddr, nbytes, size):
            # bytes lost -> the struct pages they touch
            lost_pfn, past = a + lost_a // size, a + -(-lost_b // size)
            if good < lost_pfn:
                ok += (good, lost_pfn)
            good = max(good, past)
        if good < b:
            ok += (good, b)
    return ok

def _read_virtual(mem: KernelMemory, buffer: memoryview, at: int, vaddr: int, nbytes: int,
                  grain: int) -> list[tuple[int, int]]:
    """Read ``nbytes`` of kernel virtual memory at ``vaddr`` into
    ``buffer[at:]``; the byte ranges (from vaddr) that could not be
    translated or read, sorted.  A read that fails is retried ``grain``
    bytes at a time (offsets from vaddr), to lose no more than that."""
    psize = mem.page_size
    source = mem.source
    bad: list[tuple[int, int]] = []
    pieces: list[tuple[int, int, int]] = []        # (offset, paddr, bytes)
    pos = 0
    while pos < nbytes:
        try:
            paddr, extent = mem.vtop_extent(vaddr + pos)
        except DumpError:
            step = min(psize - (vaddr + pos) % psize, nbytes - pos)
            bad.append((pos, pos + step))
            pos += step
            continue
        n = min(extent, nbytes - pos)
        if pieces and pieces[-1][0] + pieces[-1][2] == pos \
                and pieces[-1][1] + pieces[-1][2] == paddr:
            pieces[-1] = (pieces[-1][0], pieces[-1][1], pieces[-1][2] + n)
        else:
            pieces.append((pos, paddr, n))
        pos += n
    for off, paddr, n in pieces:
        try:
            source.read_phys_into(paddr, buffer[at + off:at + off + n])
            continue
        except DumpError:
            pass
        # again, a struct page at a time: a page the dump holds only in
        # part still gives the struct pages in the part it holds
        done = 0
        while done < n:
            step = min(grain - (off + done) % grain, n - done)
            try:
                source.read_phys_into(paddr + done, buffer[at + off + done:
                                                          at + off + done + step])
            except DumpError:
                if bad and bad[-1][1] == off + done:
                    bad[-1] = (bad[-1][0], off + done + step)
                else:
                    bad.append((off + done, off + done + step))
            done += step
    bad.sort()
    return bad
