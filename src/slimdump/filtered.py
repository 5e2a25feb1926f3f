"""The normal dump: the pages an engineer needs, in makedumpfile's formats.

:func:`select_pages` decides which page frames go in: the 1st bitmap (pages
the source holds) and the 2nd (dumpable at the dump level, from
:class:`~slimdump.kernel.pages.PageClassifier`, minus any pages the caller
excludes, such as the page of a fatal machine check).  :func:`write_dump`
writes them as kdump-compressed (any codec), flattened (-F) or filtered ELF
(-E).  If the pages cannot be classified (VMCOREINFO keys missing), every
page the source holds is kept and a warning says so: a dump is never lost
because filtering failed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slimdump.elf import Note, frame_notes
from slimdump.errors import DumpError
from slimdump.kernel.memory import KernelMemory
from slimdump.kernel.pages import (
    DL_ZERO,
    ExclusionCounts,
    PageClassifier,
    cycles,
    max_mapnr,
    present_range,
)
from slimdump.kernel.vmcoreinfo import VmcoreInfo
from slimdump.progress import Progress
from slimdump.sources.base import DumpSource
from slimdump.writers.atomic import AtomicOutput
from slimdump.writers.kdump import KdumpMeta, KdumpWriter, note_area, page_reader
from slimdump.writers.options import ELF, FLAT, DumpOptions, output_path

# Pages per -E write cycle: 4 MiB of page data at a time.  (The kdump writer
# bounds its own memory: TASK_PAGES-page tasks, a few per CPU in flight.)
CYCLE_PAGES = 1024


# Packed bitmaps beyond this many bytes (two of them) would break the memory
# bound; no real machine slimdump has met needs it (1 GiB = 32 TiB of RAM).
MAX_BITMAP_BYTES = 1 << 30


@dataclass
class PageSelection:
    """Both bitmaps, packed (LSB = lowest pfn, as in the kdump file)."""

    bitmap1: np.ndarray           # uint8: the source holds the page
    bitmap2: np.ndarray           # uint8: the page goes in
    max_mapnr: int
    page_size: int
    counts: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def dumpable_pages(self) -> int:
        return int(np.unpackbits(self.bitmap2).sum())


def select_pages(source: DumpSource, dump_level: int,
                 exclude_pfns: Iterable[int] = ()) -> PageSelection:
    """The two bitmaps for ``dump_level``, classified cycle by cycle (cycles
    are multiples of 8 pfns, so each lands on whole bytes)."""
    info = VmcoreInfo.from_notes(source.notes)
    page_size = (info.page_size if info else None) or 4096
    nr = max_mapnr(source.segments, page_size)
    nbytes = (nr + 7) // 8
    if nbytes > MAX_BITMAP_BYTES:
        raise DumpError(source.path, f"memory map claims {nr * page_size:#x} bytes of "
                                     "physical memory, more than slimdump can filter")
    bitmap1 = np.zeros(nbytes, np.uint8)
    bitmap2 = np.zeros(nbytes, np.uint8)
    selection = PageSelection(bitmap1, bitmap2, nr, page_size)
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
    for start, end in cycles(0, nr):
        present = present_range(source.segments, page_size, start, end)
        keep = present
        if classifier is not None:
            try:
                classes = classifier.classify(dump_level, start, end)
            except DumpError as exc:
                selection.warnings.append(f"cannot classify pages from pfn {start:#x} on "
                                          f"({exc.problem}); keeping every page from there")
                classifier = None
            else:
                keep = present & ~classes.excluded
                counts.add(classes.counts)
        if dumped is not None:   # re-filtering a saved dump: what it left out stays out
            keep = keep & np.unpackbits(dumped[start // 8:(end + 7) // 8],
                                        bitorder="little")[:end - start].astype(bool)
        bitmap1[start // 8:(end + 7) // 8] = np.packbits(present, bitorder="little")
        bitmap2[start // 8:(end + 7) // 8] = np.packbits(keep, bitorder="little")
    selection.counts = counts.as_dict() if classifier is not None else {}
    for pfn in exclude_pfns:
        if 0 <= pfn < nr:
            bitmap2[pfn // 8] &= ~np.uint8(1 << (pfn % 8))
    return selection


@dataclass
class DumpResult:
    size: int
    pages: int
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)


def write_dump(source: DumpSource, dst: str | None, options: DumpOptions,
               selection: PageSelection, *, extra_notes: list[Note] | None = None,
               overwrite: bool = False, progress: bool | None = None) -> DumpResult:
    """Write the selected pages to ``dst`` (None or "-" with FLAT: stdout)."""
    notes = note_area(source)
    if extra_notes:
        notes += frame_notes(extra_notes, source.header.endian)
    read_pages = page_reader(source, selection.page_size)
    total = selection.dumpable_pages
    if options.format == ELF:
        from slimdump.writers.elf_filtered import write_filtered_elf

        bar = Progress(total * selection.page_size, "Copying data", enabled=progress)
        with AtomicOutput(output_path(dst), overwrite=overwrite) as out:
            result = write_filtered_elf(
                out, source.header, notes, source.segments, selection.bitmap2, read_pages,
                page_size=selection.page_size, exclude_zero=bool(options.dump_level & DL_ZERO),
                nbits=selection.max_mapnr, progress=bar.update, cycle_pages=CYCLE_PAGES)
            out.commit()
        bar.finish()
        return DumpResult(result.size, total, result.seconds,
                          {"loads": len(result.loads), "data_bytes": result.data_bytes})

    meta = KdumpMeta.from_source(source, dump_level=options.dump_level,
                                 page_size=selection.page_size)
    meta = KdumpMeta(meta.header, notes, meta.utsname, meta.crashtime, meta.phys_base,
                     meta.dump_level, selection.max_mapnr, meta.page_size, meta.nr_cpus)
    bar = Progress(total, "Copying data", enabled=progress)
    bar_update = bar.update

    def run(out: Any) -> Any:
        writer = KdumpWriter(out, meta, selection.bitmap1, selection.bitmap2,
                             codec=options.codec)
        return writer.write(read_pages, bar_update)

    if options.format == FLAT:
        from slimdump.writers.flat import FlatWriter

        if dst in (None, "-"):
            flat = FlatWriter(sys.stdout.buffer)
            result = run(flat)
            flat.finish()
        else:
            with AtomicOutput(dst, overwrite=overwrite) as out:
                flat = FlatWriter(out.fd, name=dst)
                result = run(flat)
                flat.finish()
                out.commit()
    else:
        with AtomicOutput(output_path(dst), overwrite=overwrite) as out:
            result = run(out)
            out.set_size(result.size)
            out.commit()
    bar.finish()
    return DumpResult(result.size, result.pages, result.seconds,
                      {"zero_pages": result.zero_pages, "compressed": result.compressed_pages,
                       "raw": result.raw_pages, "workers": result.workers})
