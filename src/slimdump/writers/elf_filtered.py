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
from collections import deque
from collections.abc import Callable, Iterator, Sequence

from slimdump.bitmap import PfnBitmap, bit_runs, is_zero
from slimdump.elf import PN_XNUM, PT_LOAD, PT_NOTE, ElfHeader, ProgramHeader
from slimdump.errors import DumpError
from slimdump.record import record, replace
from slimdump.sources.base import Segment
from slimdump.threadpool import ThreadPool, usable_cpus
from slimdump.writers.atomic import as_output
from slimdump.writers.inputs import BitmapLike, ReadPages, as_pfn_bitmap
from slimdump.writers.kdump import CYCLE_PAGES
from slimdump.writers.pagepack import zero_page_bits

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up)
if TYPE_CHECKING:
    from slimdump.writers.atomic import PositionedOutput

PFN_EXCLUDED = 256          # excluded pages that split a segment
READ_AHEAD = 3              # chunks read ahead of the one being written
PF_RWX = 7                  # what kexec-tools gives every vmcore PT_LOAD
SHT_NULL = 0


@record(frozen=True)
class ElfResult:
    """What was written."""

    size: int
    loads: list[ProgramHeader]
    data_bytes: int
    seconds: float
    zero_pages: int = 0          # dumpable pages left out as all zero (exclude_zero)


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
    return memoryview(bitmap).nbytes * 8


def clear_zero_pages(bitmap: BitmapLike | PfnBitmap, read_pages: ReadPages, page_size: int,
                     nbits: int | None = None, cycle_pages: int = CYCLE_PAGES) -> PfnBitmap:
    """The bitmap without its all-zero pages (makedumpfile's zero pass for
    ELF output), as a new bitmap stored like the given one; reads every page
    the bitmap sets once, ``cycle_pages`` at a time, in worker threads (one
    per CPU) when ``read_pages`` may be called from several."""
    source = as_pfn_bitmap(bitmap, nbits if nbits is not None else _bitmap_bits(bitmap))
    result = source.empty_like()
    workers = usable_cpus() if getattr(read_pages, "thread_safe", False) else 1
    pool = ThreadPool(workers) if workers > 1 else None

    def zero_bits(pfn: int, count: int) -> int:
        return int.from_bytes(zero_page_bits(read_pages(pfn, count), page_size), "little")

    try:
        window = max(cycle_pages, 1 << 16) // 8
        for offset, packed in source.windows(window, data_only=True):
            if is_zero(packed):
                continue
            start = offset * 8
            bits = int.from_bytes(packed, "little")
            chunks = [(at, min(cycle_pages, pfn + n - at))
                      for pfn, n in bit_runs(packed, start)
                      for at in range(pfn, pfn + n, cycle_pages)]
            if pool is None:
                for at, count in chunks:
                    bits &= ~(zero_bits(at, count) << (at - start))
            else:
                # a few chunks in flight per worker: bounded memory, busy CPUs
                pending: deque = deque()
                for at, count in chunks:
                    pending.append((at, pool.submit(zero_bits, at, count)))
                    while len(pending) > 2 * workers:
                        done_at, job = pending.popleft()
                        bits &= ~(job.result() << (done_at - start))
                for done_at, job in pending:
                    bits &= ~(job.result() << (done_at - start))
            result.write(offset, bits.to_bytes(len(packed), "little"))
    except BaseException:
        result.close()
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return result


def _copy_chunks(loads: Sequence[ProgramHeader], page_size: int,
                 cycle_pages: int) -> Iterator[tuple[int, int, int, int, int]]:
    """``(pfn, count, lo, hi, offset)``: read ``count`` pages from ``pfn``,
    write their bytes [lo, hi) at file offset ``offset``; the output
    segments' data in file order."""
    for load in loads:
        start, stop = load.p_paddr, load.p_paddr + load.p_filesz
        end_pfn = (stop + page_size - 1) // page_size
        for pfn in range(start // page_size, end_pfn, cycle_pages):
            count = min(cycle_pages, end_pfn - pfn)
            lo = max(start, pfn * page_size) - pfn * page_size
            hi = min(stop, (pfn + count) * page_size) - pfn * page_size
            yield pfn, count, lo, hi, load.p_offset + pfn * page_size + lo - start


def _write_chunk(target: PositionedOutput, chunk: tuple[int, int, int, int, int], data: object,
                 done: int, progress: Callable[[int], None] | None) -> int:
    """Write one chunk (its bytes, or the job reading them); bytes written so far."""
    _pfn, _count, lo, hi, offset = chunk
    if not isinstance(data, bytes | bytearray):
        data = data.result()  # type: ignore[attr-defined]
    target.write(memoryview(data)[lo:hi], offset)
    done += hi - lo
    if progress:
        progress(done)
    return done


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
    dumpable pfns (packed bytes or a PfnBitmap); ``read_pages(start_pfn, count)``
    whole pages.  ``progress(bytes_done)`` after each chunk of data."""
    started = time.monotonic()
    target = as_output(out)
    nbits = nbits if nbits is not None else _bitmap_bits(bitmap)
    zero_pages = 0
    if exclude_zero:
        with clear_zero_pages(bitmap, read_pages, page_size, nbits, cycle_pages) as nonzero:
            planned = plan_loads(loads, nonzero, page_size, nbits)
            zero_pages = as_pfn_bitmap(bitmap, nbits).popcount() - nonzero.popcount()
    else:
        planned = plan_loads(loads, bitmap, page_size, nbits)
    if not planned:
        # a dump without memory: one empty PT_LOAD (declaring no byte), as
        # libkdumpfile opens no ELF core without any ("No content found")
        planned = [ProgramHeader(PT_LOAD, PF_RWX, 0, 0, 0, 0, 0, 0)]
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
    # the copy: chunks of cycle_pages pages, read ahead in worker threads
    # (when read_pages allows it) while this thread writes them in order
    workers = usable_cpus() if getattr(read_pages, "thread_safe", False) else 1
    pool = ThreadPool(workers) if workers > 1 else None
    done = 0
    try:
        ahead: deque = deque()
        chunks = _copy_chunks(final, page_size, cycle_pages)
        for chunk in chunks:
            ahead.append((chunk, read_pages(chunk[0], chunk[1]) if pool is None
                          else pool.submit(read_pages, chunk[0], chunk[1])))
            if len(ahead) <= READ_AHEAD and pool is not None:
                continue
            done = _write_chunk(target, *ahead.popleft(), done, progress)
        while ahead:
            done = _write_chunk(target, *ahead.popleft(), done, progress)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return ElfResult(max(data_at, table_end + len(notes)), final, done,
                     time.monotonic() - started, zero_pages)
