"""Writing kdump-compressed files (header_version 6), as makedumpfile does.

The layout is reference section 2: disk_dump_header at 0, kdump_sub_header
at block 1 followed by the merged ELF notes, the 1st and 2nd bitmaps, one
24-byte page descriptor per page of the 2nd bitmap, then the page data back
to back.  The caller decides which pages go in (the final 2nd bitmap); this
module only formats them, so the file is byte for byte what makedumpfile
writes for the same bitmaps.

Memory stays bounded: the 2nd bitmap's pages go out in tasks of TASK_PAGES
pages, a few per CPU in flight, and the descriptors of a task are written
with its data, which is possible because the data start is known from the
popcount of the 2nd bitmap (zero pages are found while writing and still
take a descriptor: the shared one pointing at the zero page written first).
Worker threads, one per CPU, read, zero-test and compress the tasks
(:func:`~slimdump.writers.pagepack.pack_pages`: C without the GIL for none,
zlib and LZO); results are written in pfn order, so the file does not
depend on worker timing.

A page the source cannot give is left out, never written as zeros
(:mod:`slimdump.writers.lost`): excluded in the file's 2nd bitmap, without
a descriptor (the table keeps its size; its last slots stay zero), counted
in :class:`KdumpResult`; :meth:`KdumpWriter.append_notes` then puts a new
note area (listing them) after the page data.

Output goes to anything with ``write(data, offset)``:
:class:`~slimdump.writers.atomic.AtomicOutput`,
:class:`~slimdump.writers.atomic.FdOutput` or
:class:`~slimdump.writers.flat.FlatWriter` (the -F stream); pages come from
``read_pages`` (:class:`~slimdump.writers.inputs.PageReader` over a source).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from functools import cached_property

from slimdump.bitmap import PfnBitmap, is_zero
from slimdump.codecs import DUMP_DH_COMPRESSED_INCOMPLETE, Codec, compress_page, require
from slimdump.elf import ElfHeader, align4, parse_notes
from slimdump.errors import DumpError
from slimdump.record import field, record
from slimdump.sources.kdump_headers import (
    DL_EXCLUDE_ZERO,
    HEADER_VERSION,
    KDUMP_SIGNATURE,
    PAGE_DESC_SIZE,
    DiskDumpHeader,
    KdumpAbi,
    KdumpSubHeader,
    Utsname,
)
from slimdump.threadpool import ThreadPool, usable_cpus
from slimdump.writers.atomic import as_output
from slimdump.writers.inputs import as_pfn_bitmap
from slimdump.writers.lost import LostPages, gather_pages, zero_fill
from slimdump.writers.pagepack import PackedPages, build_descriptors, interleave, pack_pages

CYCLE_PAGES = 4096           # pfns per cycle (ELF writer: pages read at once)
SCAN_PFNS = 1 << 16          # pfns of the 2nd bitmap looked at at once for runs
TASK_PAGES = 256             # pages per unit of work sent to a worker thread

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up)
if TYPE_CHECKING:
    from concurrent.futures import Executor
    from typing import Any

    from slimdump.sources.kdump_pages import Lost
    from slimdump.writers.atomic import PositionedOutput
    from slimdump.writers.inputs import BitmapLike, ReadPages


@record(frozen=True)
class KdumpMeta:
    """What the headers say about the crashed machine, as values: the
    caller reads them from the kernel (:mod:`slimdump.kernel.header_facts`), the
    writer only formats them.

    ``header``: the source's ELF header (word size, byte order, machine);
    ``notes`` is the merged note area, copied after the sub header;
    ``crashtime``: seconds since the epoch; ``phys_base`` may be negative
    (stored as its 64-bit pattern); ``max_mapnr``: pfns the bitmaps cover;
    ``nr_cpus`` None means the number of CORE/NT_PRSTATUS notes.
    """

    header: ElfHeader
    notes: bytes
    utsname: Utsname
    crashtime: int
    phys_base: int
    dump_level: int
    max_mapnr: int
    page_size: int = 4096
    nr_cpus: int | None = None


@record
class KdumpResult:
    """What was written."""

    size: int = 0                # file size (end of the page data)
    pages: int = 0               # descriptors written (popcount of the 2nd bitmap)
    zero_pages: int = 0          # pointing at the shared zero page
    compressed_pages: int = 0
    raw_pages: int = 0           # stored as is (incompressible, or no codec)
    data_bytes: int = 0          # page data, zero page included
    seconds: float = 0.0
    workers: int = 0
    extra: dict[str, int] = field(default_factory=dict)
    lost_pages: int = 0          # pages the source could not give, left out
    lost_ranges: list[list[int]] = field(default_factory=list)   # [[first, last], ...]
    lost_error: str = ""         # the first of their errors


@record
class _Task:
    """A run of the 2nd bitmap's pages on its way out: read, zero-tested and
    compressed by a worker thread (or in this thread), written in order."""

    count: int
    packed: Any            # (PackedPages, Lost), or a job/future that returns them


class KdumpWriter:
    """One kdump-compressed file: the layout is computed on construction
    (``num_dumpable``, ``desc_offset``, ``data_offset``...), :meth:`write`
    writes everything.

    ``bitmap1``/``bitmap2``: :class:`~slimdump.bitmap.PfnBitmap` (used as
    they are, whatever their size) or packed bytes (copied into memory).
    ``workers``: worker threads (default: all CPUs; 1 does everything in
    the calling thread).  ``executor``: an existing pool to use instead of
    starting one.  ``cycle_pages``: pfns of the 2nd bitmap scanned at once
    (at least SCAN_PFNS).  ``pfn_range``: write one part of a ``--split``
    set (:mod:`slimdump.writers.split`): the same headers, bitmaps and
    descriptor table size, the sub header's split fields set, and only the
    pages of ``[start, end)``, their descriptors from the table's first slot.
    ``lose_pages``: leave out a page the source cannot give (False: raise
    its SourceReadError; a --split part's bitmaps must be the same in every
    part).  ``exact_compression``: compress as makedumpfile does, for a file
    byte-identical to its (:func:`~slimdump.writers.pagepack.pack_pages`);
    by default faster compressors writing the same formats.

    After :meth:`write`, or after it failed while writing page data
    (``writing_pages``), ``pages_written`` and ``data_end`` say how far the
    file is complete.
    """

    def __init__(self, out: PositionedOutput | int, meta: KdumpMeta,
                 bitmap1: BitmapLike | PfnBitmap, bitmap2: BitmapLike | PfnBitmap, *,
                 codec: str | Codec = "zlib", workers: int | None = None,
                 cycle_pages: int = CYCLE_PAGES, executor: Executor | None = None,
                 pfn_range: tuple[int, int] | None = None, lose_pages: bool = True,
                 exact_compression: bool = False) -> None:
        self.out = as_output(out)
        self.exact_compression = exact_compression
        self.lose_pages = lose_pages
        if pfn_range is not None and not 0 <= pfn_range[0] <= pfn_range[1] <= meta.max_mapnr:
            raise ValueError(f"split range {pfn_range} is not within 0-{meta.max_mapnr}")
        self.pfn_range = pfn_range
        self.meta = meta
        self.codec = require(codec)
        self.abi = KdumpAbi.for_elf(meta.header)
        ps = meta.page_size
        if ps < 1024 or ps & (ps - 1):
            raise ValueError(f"page size {ps} is not a power of two >= 1024")
        if meta.max_mapnr <= 0:
            raise ValueError(f"max_mapnr {meta.max_mapnr} must be positive")
        if cycle_pages <= 0 or cycle_pages % 8:
            raise ValueError("cycle_pages must be a positive multiple of 8")
        self.cycle_pages = cycle_pages
        self.workers = workers if workers is not None else usable_cpus()
        self.executor = executor
        self.bitmap1 = as_pfn_bitmap(bitmap1, meta.max_mapnr)
        self.bitmap2 = as_pfn_bitmap(bitmap2, meta.max_mapnr)
        if not self.bitmap2.is_subset_of(self.bitmap1):
            raise ValueError("the 2nd bitmap sets pages that the 1st bitmap does not")
        self.num_dumpable = self.bitmap2.popcount()
        self.notes = meta.notes
        self.sub_hdr_size = -(-(self.abi.sub_header_size + len(self.notes)) // ps)
        self.bitmap_bytes = (meta.max_mapnr + 7) // 8
        self.bitmap_blocks = 2 * -(-self.bitmap_bytes // ps)
        self.bitmap_offset = (1 + self.sub_hdr_size) * ps
        self.desc_offset = self.bitmap_offset + self.bitmap_blocks * ps
        self.data_offset = self.desc_offset + PAGE_DESC_SIZE * self.num_dumpable
        self.share_zero = bool(meta.dump_level & DL_EXCLUDE_ZERO)
        self.status = self.codec.flag
        self._local = threading.local()         # each worker's read buffer
        self._note_at = self.note_offset        # where the sub header says the notes are
        self._vmcoreinfo = self._vmcoreinfo_location()
        self.lost = LostPages(self.out, self.bitmap2,
                              self.bitmap_offset + self.bitmap_blocks // 2 * ps)
        self.result = KdumpResult(workers=1)
        self.pages_written = 0                  # descriptors written, in slot order
        self.data_end = self.data_offset        # end of the page data written
        self.writing_pages = False              # headers and bitmaps written

    # -- headers ---------------------------------------------------------------

    def _vmcoreinfo_location(self) -> tuple[int, int]:
        """(offset in the file, size) of the VMCOREINFO descriptor, or (0, 0)."""
        try:
            notes = parse_notes(self.notes, self.abi.endian)
        except ValueError:
            return 0, 0
        for note in notes:
            if note.name == "VMCOREINFO":
                desc_at = note.offset + 12 + align4(len(note.raw_name))
                return self.note_offset + desc_at, len(note.desc)
        return 0, 0

    @property
    def note_offset(self) -> int:
        return self.meta.page_size + self.abi.sub_header_size

    def _nr_cpus(self) -> int:
        if self.meta.nr_cpus is not None:
            return self.meta.nr_cpus
        try:
            notes = parse_notes(self.notes, self.abi.endian)
        except ValueError:
            return 0
        return sum(1 for n in notes if n.name == "CORE" and n.type == 1)

    def header_bytes(self) -> bytes:
        """The disk_dump_header."""
        meta = self.meta
        return DiskDumpHeader(KDUMP_SIGNATURE, HEADER_VERSION, meta.utsname, meta.crashtime, 0,
                              self.status, meta.page_size, self.sub_hdr_size,
                              self.bitmap_blocks, min(meta.max_mapnr, 0xFFFFFFFF), 0, 0, 0, 0,
                              self._nr_cpus()).pack(self.abi)

    def sub_header_bytes(self) -> bytes:
        """The kdump_sub_header (version 6 fields; no eraseinfo)."""
        meta = self.meta
        vmcoreinfo_at, vmcoreinfo_size = self._vmcoreinfo
        first, end = self.pfn_range or (0, 0)
        return KdumpSubHeader(
            phys_base=meta.phys_base & ((1 << 64) - 1), dump_level=meta.dump_level,
            split=int(self.pfn_range is not None), start_pfn=first, end_pfn=end,
            start_pfn_64=first, end_pfn_64=end,
            offset_vmcoreinfo=vmcoreinfo_at, size_vmcoreinfo=vmcoreinfo_size,
            offset_note=self._note_at if self.notes else 0, size_note=len(self.notes),
            max_mapnr_64=meta.max_mapnr).pack(self.abi)

    def mark_incomplete(self) -> None:
        """Set DUMP_DH_COMPRESSED_INCOMPLETE in the header (makedumpfile's
        marker for a dump cut short, e.g. after :meth:`write` failed with
        ENOSPC): the pages whose descriptors were not written read as lost."""
        self.status |= DUMP_DH_COMPRESSED_INCOMPLETE
        self.out.write(self.header_bytes(), 0)

    def append_notes(self, notes: bytes, at: int) -> int:
        """Write the note area ``notes`` at file offset ``at`` (after the page
        data) and point the sub header's offset_note/size_note at it; the
        first copy, after the sub header, stays as it is (offset_vmcoreinfo
        still points into it).  Returns the end of the new copy."""
        self.out.write(notes, at)
        self.notes, self._note_at = notes, at
        self.out.write(self.sub_header_bytes(), self.meta.page_size)
        return at + len(notes)

    def _write_metadata(self) -> None:
        ps = self.meta.page_size
        self.out.write(self.header_bytes(), 0)
        self.out.write(self.sub_header_bytes() + self.notes, ps)
        per_bitmap = self.bitmap_blocks // 2 * ps
        # a new file reads zeros where nothing was written: zero windows of a
        # huge, mostly empty bitmap stay holes
        holes = getattr(self.out, "holes_read_zero", False)
        for index, bitmap in enumerate((self.bitmap1, self.bitmap2)):
            base = self.bitmap_offset + index * per_bitmap
            for at, part in bitmap.windows(data_only=holes):
                if not holes or not is_zero(part):
                    self.out.write(part, base + at)
            if bitmap.nbytes < per_bitmap and not holes:    # pad to whole blocks
                self.out.write(bytes(per_bitmap - bitmap.nbytes), base + bitmap.nbytes)
        if holes:
            # the last byte of the bitmaps, zero or not: a file rebuilt from
            # the records (-F, then -R) reaches the end its header promises
            # even when the bitmaps end in zeros and no page follows
            last = self.bitmap2.read(per_bitmap - 1, 1) if self.bitmap2.nbytes >= per_bitmap \
                else b"\0"
            self.out.write(bytes(last), self.desc_offset - 1)

    # -- pages -----------------------------------------------------------------

    def write(self, read_pages: ReadPages,
              progress: Callable[[int], None] | None = None) -> KdumpResult:
        """Write the whole file; ``progress(pages_done)`` as pages are written.
        ``read_pages`` must return whole pages (zero-filled where the source
        has no bytes, e.g. the partial page at a segment's edge); it is called
        from the worker threads when it says it may be (``thread_safe``)."""
        started = time.monotonic()
        result = self.result
        self._write_metadata()
        self.writing_pages = True
        ps = self.meta.page_size
        data_at = self.data_offset
        if self.share_zero:
            self.out.write(bytes(ps), data_at)
            data_at += ps
            result.data_bytes += ps
        self.data_end = data_at
        executor, own = self._executor()
        if executor is not None:
            result.workers = self.workers
        # bounds the packed data held at once; with no worker thread each task
        # is packed when made, so holding it would only cost memory (a capture
        # kernel's one CPU: 3.6 MiB at -d 31, bench/results/crashkernel.md)
        in_flight = 4 * self.workers if executor is not None else 0
        pending: deque[_Task] = deque()
        pos = 0
        try:
            for task in self._tasks(read_pages, executor):
                pending.append(task)
                while len(pending) > in_flight:
                    pos, data_at = self._finish(pending.popleft(), pos, data_at, result)
                    if progress:
                        progress(pos + result.lost_pages)
            while pending:
                pos, data_at = self._finish(pending.popleft(), pos, data_at, result)
                if progress:
                    progress(pos + result.lost_pages)
        finally:
            if own and executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
        result.pages = pos
        result.size = data_at
        result.seconds = time.monotonic() - started
        return result

    def _executor(self) -> tuple[Executor | ThreadPool | None, bool]:
        if self.executor is not None:
            return self.executor, False
        if self.workers <= 1 or self.num_dumpable < 2 * TASK_PAGES:
            return None, False
        # Threads, not processes: the C packer, zlib and the pread()s release
        # the GIL, and a thread needs no copy of the page data.
        return ThreadPool(self.workers), True

    def _tasks(self, read_pages: ReadPages,
               executor: Executor | ThreadPool | None) -> Iterator[_Task]:
        """The 2nd bitmap's pages in pfn order, cut into tasks of at most
        TASK_PAGES pages, each read and packed by a worker."""
        lo, hi = self.pfn_range or (0, self.meta.max_mapnr)
        parallel_reads = executor is not None and getattr(read_pages, "thread_safe", False)
        runs: list[tuple[int, int]] = []
        size = 0
        for first, count in self.bitmap2.runs(lo, hi, max(self.cycle_pages, SCAN_PFNS)):
            pfn, left = first, count
            while left:
                take = min(left, TASK_PAGES - size)
                runs.append((pfn, take))
                size += take
                pfn += take
                left -= take
                if size == TASK_PAGES:
                    yield self._task(read_pages, runs, size, executor, parallel_reads)
                    runs, size = [], 0
        if runs:
            yield self._task(read_pages, runs, size, executor, parallel_reads)

    def _task(self, read_pages: ReadPages, runs: list[tuple[int, int]], count: int,
              executor: Executor | ThreadPool | None, parallel_reads: bool) -> _Task:
        if executor is None:
            return _Task(count, self._pack(read_pages, runs))
        if parallel_reads:
            return _Task(count, executor.submit(self._pack, read_pages, runs))
        # reads from this thread into a buffer of the task's own; packed by a worker
        data, lost = gather_pages(read_pages, runs, memoryview(bytearray(
            count * self.meta.page_size)), self.meta.page_size)
        return _Task(count, executor.submit(self._pack_data, data, lost))

    def _pack_data(self, data: memoryview, lost: Lost) -> tuple[PackedPages, Lost]:
        return (pack_pages(self.codec, data, self.meta.page_size, exact=self.exact_compression),
                lost)

    def _pack(self, read_pages: ReadPages,
              runs: list[tuple[int, int]]) -> tuple[PackedPages, Lost]:
        # read into this thread's own buffer, reused task after task: a fresh
        # megabyte per task costs more in page faults than the read itself
        buf = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = memoryview(bytearray(TASK_PAGES * self.meta.page_size))
        data, lost = gather_pages(read_pages, runs, buf, self.meta.page_size)
        return (pack_pages(self.codec, data, self.meta.page_size, exact=self.exact_compression),
                lost)

    def _finish(self, task: _Task, pos: int, data_at: int,
                result: KdumpResult) -> tuple[int, int]:
        """Write one task's data and descriptors; return the new position in
        the descriptor table and the new data offset."""
        packed, lost = task.packed if isinstance(task.packed, tuple) else task.packed.result()
        if lost:
            if not self.lose_pages:
                raise lost[0][1]
            self.lost.lose(lost)
            result.lost_pages, result.lost_ranges = self.lost.count, self.lost.ranges
            result.lost_error = self.lost.error
        zero, nz_flags, nz_sizes, nz_blob = packed
        nzero = zero.count(1)
        zero_flag, zero_stored = (0, b"") if self.share_zero else self._zero
        descs, stored, ncompressed = build_descriptors(
            zero, nz_flags, nz_sizes, data_at, self.data_offset, self.meta.page_size,
            zero_flag, len(zero_stored), self.abi.endian == ">", self.share_zero)
        if self.share_zero:
            blob = nz_blob
            result.zero_pages += nzero
        else:
            blob = interleave(zero, nz_sizes, nz_blob, self._zero[1]) if nzero else nz_blob
        assert len(blob) == stored
        # data before descriptors: if the data cannot be written (ENOSPC), the
        # task's descriptors stay zero, which readers take as "page lost"
        if blob:
            self.out.write(blob, data_at)
        desc_at = self.desc_offset + PAGE_DESC_SIZE * pos
        try:
            self.out.write(descs, desc_at)
        except DumpError:
            zero_fill(self.out, desc_at, len(descs))
            raise
        result.compressed_pages += ncompressed
        result.raw_pages += len(zero) - (nzero if self.share_zero else 0) - ncompressed
        result.data_bytes += len(blob)
        pos, data_at = pos + len(zero), data_at + len(blob)
        self.pages_written, self.data_end = pos, data_at
        return pos, data_at

    @cached_property
    def _zero(self) -> tuple[int, bytes]:
        """How an all-zero page is stored when it is not shared: (flag, bytes)."""
        return compress_page(self.codec, bytes(self.meta.page_size))


def write_kdump(out: PositionedOutput | int, meta: KdumpMeta, bitmap1: BitmapLike,
                bitmap2: BitmapLike, read_pages: ReadPages, *, codec: str | Codec = "zlib",
                workers: int | None = None, progress: Callable[[int], None] | None = None,
                cycle_pages: int = CYCLE_PAGES, executor: Executor | None = None,
                exact_compression: bool = False) -> KdumpResult:
    """Write a kdump-compressed file; see :class:`KdumpWriter`."""
    writer = KdumpWriter(out, meta, bitmap1, bitmap2, codec=codec, workers=workers,
                         cycle_pages=cycle_pages, executor=executor,
                         exact_compression=exact_compression)
    return writer.write(read_pages, progress)


__all__ = ["KdumpMeta", "KdumpResult", "KdumpWriter", "write_kdump"]
