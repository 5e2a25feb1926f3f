"""Filtered ELF output (makedumpfile -E), reference section 4.

The file is an ELF core of the source's class, byte order and machine: the
header (only the program-header count differs from a fresh core header),
the PT_NOTE first, then the PT_LOADs, the notes copied verbatim right after
the program headers, and each PT_LOAD's data right after the previous one,
with no alignment anywhere.

Each source PT_LOAD is walked page by page (partial first and last pages by
their byte counts).  Runs of fewer than 256 excluded pages stay in the
segment with their original contents; a run of 256 or more that is followed
by a dumpable page ends the segment (its p_memsz covers the run, p_filesz
stops before it, so the hole reads as zeros) and a new PT_LOAD starts at the
dumpable page, its addresses advanced by the previous p_memsz.  Excluded
pages at the end of a segment only grow p_memsz; a segment without file data
gets p_offset 0.  Every source PT_LOAD is processed, so the kernel-image
segment and the RAM segment holding it both appear, as in makedumpfile's
output.

Zero pages (dump_level bit 1) are not in makedumpfile's ELF output: with
``exclude_zero`` this module reads the dumpable pages first and clears the
all-zero ones from the bitmap (makedumpfile's separate pass), or the caller
passes a bitmap that already lacks them.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from slimdump.bitmap import PfnBitmap
from slimdump.elf import PN_XNUM, PT_LOAD, PT_NOTE, ElfHeader, ProgramHeader
from slimdump.errors import DumpError
from slimdump.record import record, replace
from slimdump.sources.base import Segment
from slimdump.writers.kdump import (
    CYCLE_PAGES,
    BitmapLike,
    PositionedOutput,
    ReadPages,
    as_output,
    as_pfn_bitmap,
)

PFN_EXCLUDED = 256          # excluded pages that split a segment
PF_RWX = 7                  # what kexec-tools gives every vmcore PT_LOAD
SHT_NULL = 0


@record(frozen=True)
class ElfResult:
    """What was written."""

    size: int
    loads: list[ProgramHeader]
    data_bytes: int
    seconds: float


def _as_phdr(load: ProgramHeader | Segment) -> ProgramHeader:
    if isinstance(load, ProgramHeader):
        return load
    return ProgramHeader(PT_LOAD, PF_RWX, load.file_offset, load.virt_start, load.phys_start,
                         load.file_size, load.mem_size, 0)


def _dumpability_runs(bitmap: PfnBitmap, first: int,
                      count: int) -> Iterator[tuple[bool, int, int]]:
    """``(dumpable, lo, hi)``: maximal runs of equal dumpability over pages
    ``first + lo .. first + hi - 1`` (False past the bitmap's end), from the
    bitmap's runs of set bits, so empty stretches cost nothing."""
    at = 0
    for pfn, n in bitmap.runs(first, first + count):
        lo = pfn - first
        if lo > at:
            yield False, at, lo
        yield True, lo, lo + n
        at = lo + n
    if at < count:
        yield False, at, count


def plan_loads(loads: Sequence[ProgramHeader | Segment], bitmap: BitmapLike | PfnBitmap,
               page_size: int, nbits: int | None = None) -> list[ProgramHeader]:
    """The output PT_LOADs for ``loads`` under the dumpable ``bitmap``, with
    p_offset relative to the start of the segment data (fixed when written)."""
    bitmap = as_pfn_bitmap(bitmap, nbits if nbits is not None else _bitmap_bits(bitmap))
    out: list[ProgramHeader] = []
    for load in map(_as_phdr, loads):
        if load.p_type != PT_LOAD or load.p_memsz == 0:
            continue
        start, end = load.p_paddr, load.p_paddr + load.p_memsz
        first, last = start // page_size, (end - 1) // page_size
        count = last - first + 1
        paddr, vaddr, memsz, filesz, excluded = start, load.p_vaddr, 0, 0, 0
        for dumpable, lo, hi in _dumpability_runs(bitmap, first, count):
            # bytes of pages lo..hi-1, the first and last page of the load partial
            nbytes = min(end, (first + hi) * page_size) - max(start, (first + lo) * page_size)
            if not dumpable:
                memsz += nbytes
                excluded = hi - lo
                continue
            if excluded >= PFN_EXCLUDED:
                out.append(replace(load, p_offset=0, p_vaddr=vaddr, p_paddr=paddr,
                                   p_filesz=filesz, p_memsz=memsz))
                paddr, vaddr = paddr + memsz, (vaddr + memsz) & ((1 << 64) - 1)
                memsz = filesz = nbytes
            else:
                memsz += nbytes
                filesz = memsz
            excluded = 0
        out.append(replace(load, p_offset=0, p_vaddr=vaddr, p_paddr=paddr, p_filesz=filesz,
                           p_memsz=memsz))
    return out


def _bitmap_bits(bitmap: BitmapLike | PfnBitmap) -> int:
    if isinstance(bitmap, PfnBitmap):
        return bitmap.nbits
    if isinstance(bitmap, np.ndarray) and bitmap.dtype == np.bool_:
        return len(bitmap)
    return len(memoryview(bitmap).cast("B")) * 8 if not isinstance(bitmap, np.ndarray) \
        else bitmap.size * 8


def clear_zero_pages(bitmap: BitmapLike | PfnBitmap, read_pages: ReadPages, page_size: int,
                     nbits: int | None = None, cycle_pages: int = CYCLE_PAGES) -> PfnBitmap:
    """The bitmap without its all-zero pages (makedumpfile's zero pass for
    ELF output), as a new bitmap stored like the given one; reads every page
    the bitmap sets once."""
    source = as_pfn_bitmap(bitmap, nbits if nbits is not None else _bitmap_bits(bitmap))
    result = source.empty_like()
    window = max(cycle_pages, 1 << 16) // 8
    for offset, window_bytes in source.windows(window, data_only=True):
        if window_bytes.count(0) == len(window_bytes):
            continue
        start = offset * 8
        packed = np.frombuffer(window_bytes, np.uint8)
        bits = np.unpackbits(packed, bitorder="little").astype(np.bool_)
        edges = np.flatnonzero(np.diff(bits.astype(np.int8), prepend=0, append=0))
        for lo, hi in zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True):
            for at in range(lo, hi, cycle_pages):
                n = min(cycle_pages, hi - at)
                data = read_pages(start + at, n)
                pages = np.frombuffer(data, np.uint8).reshape(n, page_size)
                bits[at:at + n] &= pages.view(np.uint64).any(axis=1)
        result.write(offset, np.packbits(bits, bitorder="little"))
    return result


def write_filtered_elf(out: PositionedOutput | int, header: ElfHeader, notes: bytes,
                       loads: Sequence[ProgramHeader | Segment],
                       bitmap: BitmapLike | PfnBitmap, read_pages: ReadPages, *,
                       page_size: int = 4096,
                       exclude_zero: bool = False, nbits: int | None = None,
                       progress: Callable[[int], None] | None = None,
                       cycle_pages: int = CYCLE_PAGES) -> ElfResult:
    """Write the -E file.  ``header``: the source's ELF header (class, byte
    order, machine); ``notes``: its merged note area; ``loads``: its PT_LOADs
    (program headers, or Segments taken as RWX with p_align 0); ``bitmap``:
    dumpable pfns (bool per pfn or packed); ``read_pages(start_pfn, count)``
    whole pages.  ``progress(bytes_done)`` after each chunk of data."""
    started = time.monotonic()
    target = as_output(out)
    nbits = nbits if nbits is not None else _bitmap_bits(bitmap)
    if exclude_zero:
        with clear_zero_pages(bitmap, read_pages, page_size, nbits, cycle_pages) as nonzero:
            planned = plan_loads(loads, nonzero, page_size, nbits)
    else:
        planned = plan_loads(loads, bitmap, page_size, nbits)
    phnum = 1 + len(planned)
    extended = phnum >= PN_XNUM
    elf = header.core_like(PN_XNUM if extended else phnum)
    shdr_size = 64 if elf.elf64 else 40
    table_end = elf.size + phnum * elf.phdr_size
    if extended:
        elf = replace(elf, e_shoff=table_end, e_shentsize=shdr_size, e_shnum=1)
        table_end += shdr_size
    data_at = table_end + len(notes)
    final: list[ProgramHeader] = []
    for load in planned:
        final.append(replace(load, p_offset=data_at if load.p_filesz else 0))
        data_at += load.p_filesz
    note = ProgramHeader(PT_NOTE, 0, table_end, 0, 0, len(notes), len(notes), 0)
    try:
        head = elf.pack() + b"".join(ph.pack(elf) for ph in [note, *final])
        if extended:
            # section header 0 carries the real count in sh_info
            fmt = elf.endian + ("IIQQQQIIQQ" if elf.elf64 else "IIIIIIIIII")
            head += struct.pack(fmt, 0, SHT_NULL, 0, 0, 0, 0, 0, phnum, 0, 0)
    except struct.error:
        raise DumpError(None, f"the filtered segments do not fit in {elf.class_name} "
                              f"program headers") from None
    target.write(head + notes, 0)
    done = 0
    for load in final:
        start, stop = load.p_paddr, load.p_paddr + load.p_filesz
        first_pfn = start // page_size
        for pfn in range(first_pfn, (stop + page_size - 1) // page_size, cycle_pages):
            count = min(cycle_pages, (stop + page_size - 1) // page_size - pfn)
            data = read_pages(pfn, count)
            lo = max(start, pfn * page_size) - pfn * page_size
            hi = min(stop, (pfn + count) * page_size) - pfn * page_size
            target.write(data[lo:hi], load.p_offset + pfn * page_size + lo - start)
            done += hi - lo
            if progress:
                progress(done)
    return ElfResult(max(data_at, table_end + len(notes)), final, done,
                     time.monotonic() - started)
