"""The normal dump: the pages an engineer needs, in makedumpfile's formats.

:func:`select_pages` decides which page frames go in: the 1st bitmap (pages
the source holds) and the 2nd (dumpable at the dump level, from
:class:`~slimdump.kernel.dump_level.PageClassifier`, minus any pages the caller
excludes, such as the page of a fatal machine check).  :func:`write_dump`
writes them as kdump-compressed (any codec), flattened (-F) or filtered ELF
(-E).  If the pages cannot be classified (VMCOREINFO keys missing), every
page the source holds is kept and a warning says so: a dump is never lost
because filtering failed.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property

from slimdump.bitmap import PfnBitmap, is_zero
from slimdump.elf import Note, frame_notes
from slimdump.errors import DumpError, OutputError, SourceReadError
from slimdump.kernel.dump_level import DL_ZERO, ExclusionCounts, PageClassifier
from slimdump.kernel.header_facts import crash_time, kdump_phys_base, read_utsname
from slimdump.kernel.memmap import MAX_PHYSMEM_BITS, memory_map
from slimdump.kernel.memory import KernelMemory
from slimdump.kernel.physmem import (
    DEFAULT_CYCLE,
    cycles,
    max_mapnr,
    present_packed,
    usable_segments,
)
from slimdump.kernel.vmcoreinfo import VmcoreInfo
from slimdump.notes import find_metadata, with_metadata
from slimdump.progress import Progress
from slimdump.record import field, record
from slimdump.sources.base import DumpSource, Segment, partial_pages
from slimdump.writers.atomic import AtomicOutput
from slimdump.writers.inputs import note_area, page_reader
from slimdump.writers.kdump import KdumpMeta, KdumpResult, KdumpWriter
from slimdump.writers.options import ELF, FLAT, DumpOptions, output_path

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up)
if TYPE_CHECKING:
    from typing import Any

# Pages per -E write cycle: 4 MiB of page data at a time.  (The kdump writer
# bounds its own memory: TASK_PAGES-page tasks, a few per CPU in flight.)
CYCLE_PAGES = 1024


@record
class PageSelection:
    """Both bitmaps (1st: the source holds the page; 2nd: the page goes in),
    as :class:`~slimdump.bitmap.PfnBitmap` (in memory when small, in
    a temporary file beside the dump when large)."""

    bitmap1: PfnBitmap
    bitmap2: PfnBitmap
    max_mapnr: int
    page_size: int
    counts: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: pages the source covers only in part (``(pfn, [(lo, hi), ...])``, the
    #: byte ranges it holds): in the bitmaps, their other bytes zeros
    partial: list[tuple[int, list[tuple[int, int]]]] = field(default_factory=list)
    #: the source's segments that the bitmaps cover (none past 52 bits)
    segments: list[Segment] = field(default_factory=list)
    #: pages left out because the file ends before them (inclusive pfn
    #: ranges, and how many): lost, as pages that fail to read are
    past_end: list[list[int]] = field(default_factory=list)
    past_end_count: int = 0

    @cached_property
    def dumpable_pages(self) -> int:
        return self.bitmap2.popcount()

    def kept_partial(self) -> list[dict[str, Any]]:
        """The partial pages that go in, as the SLIMDUMP metadata records
        them (``partial_pages``): a kdump-compressed page is whole, so this
        is where a reader learns which of its bytes are not memory."""
        return [{"pfn": pfn, "held": [[lo, hi] for lo, hi in ranges]}
                for pfn, ranges in self.partial
                if self.bitmap2.read(pfn // 8, 1)[0] >> (pfn % 8) & 1]

    def close(self) -> None:
        self.bitmap1.close()
        self.bitmap2.close()


def _populated_cycles(segments: Sequence[Segment], page_size: int,
                      nr: int) -> Iterator[tuple[int, int]]:
    """The classification cycles that hold any pfn of a segment, in order:
    a memory map with a few GiB at 0 and a few at 16 TiB is not walked
    through the hole."""
    spans = sorted((s.phys_start // page_size, -(-s.phys_end // page_size))
                   for s in usable_segments(segments))
    done = 0
    for a, b in spans:
        first = max(a // DEFAULT_CYCLE * DEFAULT_CYCLE, done)
        last = min(nr, -(-b // DEFAULT_CYCLE) * DEFAULT_CYCLE)    # whole cycles
        for start, end in cycles(first, last):
            yield start, end
            done = end


def select_pages(source: DumpSource, dump_level: int,
                 exclude_pfns: Iterable[int] = (), *,
                 directory: str | None = None) -> PageSelection:
    """The two bitmaps for ``dump_level``, classified cycle by cycle (cycles
    are multiples of 8 pfns, so each lands on whole bytes).  Large bitmaps
    live in an unlinked file in ``directory`` (default: TMPDIR)."""
    info = VmcoreInfo.from_notes(source.notes)
    warnings: list[str] = []
    page_size = 4096
    try:
        page_size = (info.valid_page_size(source.path) if info else None) or page_size
    except DumpError as exc:
        warnings.append(f"{exc.problem}; writing pages of {page_size} bytes")
    # the map the bitmaps cover (kernel.memmap): nothing past 52 bits, past
    # the end of a file cut short, or only declared where the kernel had
    # no memory.  A dump without memory (no usable PT_LOAD) still gets
    # bitmaps of one pfn, absent: makedumpfile and libkdumpfile take no
    # kdump file with max_mapnr 0, and the notes (registers, VMCOREINFO)
    # are worth keeping
    memmap = memory_map(source, info, page_size)
    warnings += memmap.warnings
    segments, past_end = memmap.segments, memmap.past_end
    nr = max(1, max_mapnr(segments, page_size))
    reach = nr * page_size
    # a kernel's own MAX_PHYSMEM_BITS smaller than the map it left is the
    # VMCOREINFO value that is wrong, not the map
    bits = info.number("MAX_PHYSMEM_BITS") if info else None
    if bits is not None and (not 0 <= bits <= 64 or reach > 1 << bits):
        warnings.append(f"VMCOREINFO NUMBER(MAX_PHYSMEM_BITS)={bits} is smaller than the "
                        f"dump's memory map (it reaches {reach:#x}): ignored, the map "
                        f"is held to {MAX_PHYSMEM_BITS} bits")
    bitmap1 = PfnBitmap(nr, directory=directory)
    try:
        bitmap2 = PfnBitmap(nr, directory=directory)
    except DumpError:
        bitmap1.close()
        raise
    selection = PageSelection(bitmap1, bitmap2, nr, page_size, warnings=warnings,
                              partial=[(pfn, held) for pfn, held
                                       in partial_pages(source.extents, page_size) if pfn < nr],
                              segments=segments,
                              past_end=[[a, b - 1] for a, b in past_end],
                              past_end_count=sum(b - a for a, b in past_end))
    try:
        _classify_into(source, info, dump_level, selection)
        for pfn in exclude_pfns:
            bitmap2.clear(pfn)
    except BaseException:
        selection.close()
        raise
    return selection


def _classify_into(source: DumpSource, info: VmcoreInfo | None, dump_level: int,
                   selection: PageSelection) -> None:
    page_size = selection.page_size
    classifier = None
    if dump_level & ~DL_ZERO:
        try:
            if info is None:
                raise DumpError(source.path, "no VMCOREINFO note")
            classifier = PageClassifier(KernelMemory(source, info))
        except DumpError as exc:
            selection.warnings.append(f"cannot classify pages ({exc.problem}); keeping "
                                      f"every page (dump level {dump_level & DL_ZERO})")
    counts = ExclusionCounts()
    dumped = getattr(source, "bitmap2", None)     # a kdump-compressed source's own choice
    for start, end in _populated_cycles(selection.segments, page_size, selection.max_mapnr):
        present = present_packed(selection.segments, page_size, start, end)
        if is_zero(present):
            continue                               # both bitmaps are zero already
        keep = present
        if classifier is not None:
            try:
                classes = classifier.classify(dump_level, start, end)
            except DumpError as exc:
                selection.warnings.append(f"cannot classify pages from pfn {start:#x} on "
                                          f"({exc.problem}); keeping every page from there")
                classifier = None
            else:
                keep = classes.keep
                counts.add(classes.counts)
        if dumped is not None:   # re-filtering a saved dump: what it left out stays out
            kept = int.from_bytes(keep, "little") & int.from_bytes(
                dumped.read(start // 8, len(keep)), "little")
            keep = kept.to_bytes(len(keep), "little")
        selection.bitmap1.write(start // 8, present)
        selection.bitmap2.write(start // 8, keep)
    selection.counts = counts.as_dict() if classifier is not None else {}


@record
class DumpResult:
    size: int
    pages: int
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


# the SLIMDUMP metadata lists at most this many ranges of lost pages
MAX_LOST_RANGES = 4096


def unreadable_metadata(count: int, ranges: list[list[int]],
                        before: object = None) -> dict[str, Any]:
    """``unreadable_pages`` for the SLIMDUMP metadata: how many pages the
    source could not give and their pfn ranges (inclusive), the first
    MAX_LOST_RANGES of them.  ``before``: the source's own entry (a saved
    dump re-filtered), whose pages are still missing: counted and listed too."""
    truncated = False
    if isinstance(before, dict):
        old = before.get("ranges")
        old_count = before.get("count")
        if isinstance(old_count, int) and old_count > 0 and isinstance(old, list):
            spans = [r for r in old if isinstance(r, list) and len(r) == 2
                     and all(isinstance(x, int) for x in r)]
            ranges = _merge_ranges(spans + ranges)
            count += old_count
            truncated = bool(before.get("ranges_truncated"))
    entry: dict[str, Any] = {"count": count, "ranges": ranges[:MAX_LOST_RANGES]}
    if truncated or len(ranges) > MAX_LOST_RANGES:
        entry["ranges_truncated"] = True
    return entry


def _merge_ranges(ranges: list[list[int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], last)
        else:
            out.append([first, last])
    return out


def write_dump(source: DumpSource, dst: str | None, options: DumpOptions,
               selection: PageSelection, *, extra_notes: list[Note] | None = None,
               overwrite: bool = False, progress: bool | None = None,
               metadata: dict[str, Any] | None = None,
               keep_incomplete: bool = False) -> DumpResult:
    """Write the selected pages to ``dst`` (None or "-" with FLAT: stdout).

    A page the source cannot give (an I/O error, a file cut short, a page
    lost from an incomplete saved dump) is left out of a kdump-compressed
    file (-F too): excluded in its 2nd bitmap, counted in
    ``details["unreadable"]`` and ``details["unreadable_ranges"]`` (pfn
    ranges, inclusive), and listed in the file's SLIMDUMP metadata note
    (``unreadable_pages``): ``metadata``, the dict the caller put in a note
    of ``extra_notes`` if any, which that note is rewritten from (else the
    source's own metadata note, else a new one).  An ELF output (-E) or a
    --split set cannot leave a page out: the read's SourceReadError, one
    line naming the offset, and no file.

    ``keep_incomplete``: if the disk fills (ENOSPC, EFBIG) while the page
    data of a kdump-compressed file (not -F, -E or --split) are written,
    keep the pages written so far as a dump marked incomplete (makedumpfile's
    DUMP_DH_COMPRESSED_INCOMPLETE: readers take the rest as lost), with
    ``details["incomplete"]`` True, rather than raise the OutputError."""
    notes = note_area(source)
    if extra_notes:
        notes += frame_notes(extra_notes, source.header.endian)
    read_pages = page_reader(source, selection.page_size)
    total = selection.dumpable_pages
    if selection.past_end_count and (options.format == ELF or options.split):
        raise SourceReadError(source.path, f"truncated: {selection.past_end_count} page(s) "
                                           f"lie past the end of the file ({source.size} bytes)")
    if options.format == ELF:
        from slimdump.writers.elf_filtered import write_filtered_elf

        bar = Progress(total * selection.page_size, "Copying data", enabled=progress)
        with AtomicOutput(output_path(dst), overwrite=overwrite) as out:
            result = write_filtered_elf(
                out, source.header, notes, selection.segments, selection.bitmap2, read_pages,
                page_size=selection.page_size, exclude_zero=bool(options.dump_level & DL_ZERO),
                nbits=selection.max_mapnr, progress=bar.update, cycle_pages=CYCLE_PAGES)
            out.commit()
        bar.finish()
        return DumpResult(result.size, total - result.zero_pages, result.seconds,
                          {"loads": len(result.loads), "data_bytes": result.data_bytes,
                           "zero_excluded": result.zero_pages, "unreadable": 0,
                           "unreadable_ranges": []})

    # the headers' facts about the crashed kernel, read here: writers only format them
    info = VmcoreInfo.from_notes(source.notes)
    meta = KdumpMeta(source.header, notes, read_utsname(source, info), crash_time(source, info),
                     kdump_phys_base(source, info), options.dump_level, selection.max_mapnr,
                     selection.page_size)
    bar = Progress(total, "Copying data", enabled=progress)
    bar_update = bar.update
    if options.split:
        from slimdump.writers.split import write_split

        parts = write_split(options.split, meta, selection.bitmap1, selection.bitmap2,
                            read_pages, codec=options.codec, workers=options.threads,
                            splitblock=options.splitblock, overwrite=overwrite,
                            progress=bar_update)
        bar.finish()
        return DumpResult(sum(r.size for _, r in parts), sum(r.pages for _, r in parts),
                          sum(r.seconds for _, r in parts),
                          {"parts": [{"path": dst, "pfn_start": lo, "pfn_end": hi,
                                      "pages": r.pages, "size": r.size}
                                     for dst, ((lo, hi), r) in zip(options.split, parts,
                                                                   strict=True)],
                           "unreadable": 0, "unreadable_ranges": []})

    keep = keep_incomplete and options.format != FLAT
    incomplete: dict[str, Any] = {}

    def run(out: Any) -> KdumpResult:
        writer = KdumpWriter(out, meta, selection.bitmap1, selection.bitmap2,
                             codec=options.codec, workers=options.threads)
        try:
            result = writer.write(read_pages, bar_update)
        except OutputError as exc:
            if not (keep and exc.errno in (errno.ENOSPC, errno.EFBIG)
                    and writer.writing_pages):
                raise
            try:
                writer.mark_incomplete()
            except DumpError:
                raise exc from None
            result = writer.result
            result.pages, result.size = writer.pages_written, writer.data_end
            incomplete.update(pages_written=writer.pages_written,
                              pages_missing=total - writer.pages_written - result.lost_pages,
                              error=exc.problem)
        # the pages past the end of the file are lost too, left out before
        if selection.past_end_count:
            result.lost_pages += selection.past_end_count
            result.lost_ranges = _merge_ranges(selection.past_end + result.lost_ranges)
            result.lost_error = result.lost_error or (
                f"{source.path}: the file ends at {source.size:#x}")
        if result.lost_pages or incomplete:
            additions: dict[str, Any] = {}
            if result.lost_pages:
                before = (find_metadata(notes, source.header.endian) or {}).get(
                    "unreadable_pages")
                additions["unreadable_pages"] = unreadable_metadata(
                    result.lost_pages, result.lost_ranges, before)
            if incomplete:
                additions["incomplete"] = dict(incomplete)
            area = with_metadata(notes, source.header.endian, metadata, additions)
            try:
                result.size = writer.append_notes(area, result.size)
            except OutputError:
                if not incomplete:
                    raise
        return result

    if options.format == FLAT:
        from slimdump.writers.flat import flat_output

        with flat_output(dst, overwrite=overwrite) as flat:
            result = run(flat)
    else:
        with AtomicOutput(output_path(dst), overwrite=overwrite) as out:
            result = run(out)
            out.set_size(result.size)
            out.commit()
    bar.finish()
    # with -d 1 a zero page stays in the 2nd bitmap of a kdump-compressed
    # file, its descriptor pointing at the one zero page stored (as
    # makedumpfile writes it, and counts it among the excluded pages)
    zero = result.zero_pages if options.dump_level & DL_ZERO else 0
    details: dict[str, Any] = {
        "zero_pages": result.zero_pages, "zero_excluded": zero,
        "compressed": result.compressed_pages, "raw": result.raw_pages,
        "workers": result.workers, "unreadable": result.lost_pages,
        "unreadable_ranges": result.lost_ranges}
    if result.lost_error:
        details["unreadable_error"] = result.lost_error
    if incomplete:
        details["incomplete"] = True
        details["pages_written"] = incomplete["pages_written"]
        details["incomplete_error"] = incomplete["error"]
    return DumpResult(result.size, result.pages, result.seconds, details)
