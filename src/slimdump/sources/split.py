"""A makedumpfile ``--split`` set read as one dump.

``makedumpfile --split`` writes N kdump-compressed files (reference section
2.7).  Each has the whole dump's headers, notes and bitmaps; only the sub
header's split fields (split = 1, start_pfn/end_pfn) and the pages differ:
a part holds the dumped pages of its pfn range.  :class:`SplitSource` reads
the parts, given in any order, as the dump they came from: notes, memory
map and bitmaps from one part, each page from the part whose range holds it.

Opening checks what a join needs, each failure one line naming a file:
every file is a part (split = 1), no file is given twice, all parts come
from the same dump (same header, sub header but for the split fields, notes
and bitmaps), and their ranges cover pfns 0 to max_mapnr without a gap or an
overlap.  The format records neither a part's number nor how many parts
there are, so a missing part is found as a gap; only an empty part (start =
end, as makedumpfile writes when the memory fits in fewer splitblocks than
parts) can go missing unseen, and it holds nothing.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Sequence

from slimdump.errors import DumpError, NotInDump
from slimdump.record import replace
from slimdump.sources.base import DumpSource
from slimdump.sources.kdump import KdumpFile

# bitmap bytes compared between parts at a time
_COMPARE_BYTES = 1 << 20


def _pfns(lo: int, hi: int) -> str:
    return f"pfns {lo:#x}-{hi - 1:#x}"


class SplitSource(DumpSource):
    """The parts of one ``--split`` set (already opened), read as one dump.

    Attributes other code looks for on a kdump source (``bitmap2``,
    ``dump_level``, ``max_mapnr``, ``utsname``, ``phys_base``, ``crashtime``,
    ``note_area``, ``compression``...) are the first part's: they are the
    same in every part, which opening checks."""

    format = "kdump"

    def __init__(self, parts: Sequence[KdumpFile]) -> None:
        if len(parts) < 2:
            raise DumpError(parts[0].path if parts else None,
                            "a --split set has at least two parts")
        self._check_parts(parts)
        # sorted by range; empty parts (start = end) go last and are never read
        self.parts = sorted(parts, key=lambda p: (p.pfn_range[0] == p.pfn_range[1],
                                                  p.pfn_range))
        self._check_coverage()
        first = self.parts[0]
        self.first = first
        self.path = first.path
        self.paths = [p.path for p in parts]
        self.header = first.header
        self.notes = first.notes
        self.segments = first.segments
        self.size = sum(p.size for p in parts)
        held = [p for p in self.parts if p.pfn_range[0] < p.pfn_range[1]]
        self._held = held
        self._starts = [p.pfn_range[0] for p in held]

    # -- checks -----------------------------------------------------------------

    @staticmethod
    def _check_parts(parts: Sequence[KdumpFile]) -> None:
        seen: dict[tuple[int, int], str] = {}
        first = parts[0]
        for part in parts:
            if not isinstance(part, KdumpFile):
                raise DumpError(part.path, "is not a kdump-compressed file, so not a part of a "
                                           "makedumpfile --split set")
            if not part.split:
                raise DumpError(part.path, "is a whole dump, not a part of a --split set: "
                                           "give it alone")
            try:
                st = os.stat(part.path)
            except OSError:
                st = None
            if st is not None:
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    raise DumpError(part.path, f"given twice (also as {seen[key]})")
                seen[key] = part.path
            if part is not first:
                what = _difference(first, part)
                if what:
                    raise DumpError(part.path, f"is not a part of the same dump as "
                                               f"{first.path}: the {what} differ")

    def _check_coverage(self) -> None:
        names = ", ".join(p.path for p in self.parts)
        max_mapnr = self.parts[0].max_mapnr
        expected, previous = 0, None
        for part in self.parts:
            lo, hi = part.pfn_range
            if lo == hi:
                continue
            if lo > expected:
                raise DumpError(names, f"{_pfns(expected, lo)} are in none of the parts given: "
                                       "a part of the --split set is missing")
            if lo < expected:
                assert previous is not None
                same = previous.pfn_range == part.pfn_range
                raise DumpError(part.path, f"holds {_pfns(lo, hi)}, "
                                           f"{'as' if same else 'overlapping'} {previous.path} "
                                           f"({_pfns(*previous.pfn_range)})"
                                           + (": the same part twice?" if same else ""))
            expected, previous = hi, part
        if expected < max_mapnr:
            raise DumpError(names, f"{_pfns(expected, max_mapnr)} are in none of the parts "
                                   "given: a part of the --split set is missing")

    # -- facts ------------------------------------------------------------------

    def __getattr__(self, name: str) -> object:
        # only for what the class does not define: the first part's facts
        if name in _SHARED:
            return getattr(self.__dict__["first"], name)
        raise AttributeError(name)

    @property
    def bytes_read(self) -> int:
        return sum(p.bytes_read for p in self.parts)

    @property
    def data_end(self) -> int:
        return sum(p.data_end for p in self.parts)

    @property
    def truncated(self) -> bool:
        return any(p.truncated for p in self.parts)

    @property
    def pfn_range(self) -> tuple[int, int]:
        return (0, self.first.max_mapnr)

    @property
    def num_dumpable(self) -> int:
        return self.first.total_dumpable

    @property
    def held_parts(self) -> list[KdumpFile]:
        """The parts that hold pages, in pfn order (empty parts left out)."""
        return list(self._held)

    def split_facts(self) -> dict[str, object]:
        return {"parts": [{"path": p.path, "pfn_start": p.pfn_range[0],
                           "pfn_end": p.pfn_range[1], "pages": p.num_dumpable}
                          for p in self.parts],
                "max_mapnr": self.first.max_mapnr, "set_pages": self.first.total_dumpable}

    def split_text(self) -> str:
        held = ", ".join(f"{os.path.basename(p.path)} {_pfns(*p.pfn_range)}"
                         for p in self._held)
        empty = len(self.parts) - len(self._held)
        return (f"a makedumpfile --split set of {len(self.parts)} parts ({held}"
                + (f"; {empty} empty" if empty else "") + ")")

    # -- reading ------------------------------------------------------------------

    def part_for(self, pfn: int) -> KdumpFile | None:
        """The part whose range holds ``pfn`` (None past max_mapnr)."""
        i = bisect.bisect_right(self._starts, pfn) - 1
        if i >= 0 and pfn < self._held[i].pfn_range[1]:
            return self._held[i]
        return None

    def is_dumped(self, pfn: int) -> bool:
        part = self.part_for(pfn)
        return part is not None and part.is_dumped(pfn)

    def read_phys(self, paddr: int, size: int) -> bytes:
        """Physical memory, each page from the part that holds it; NotInDump
        as a single dump would say it."""
        if paddr < 0 or size < 0:
            raise NotInDump(self.path, f"physical address {paddr:#x} is not in the dump")
        bs = self.first.block_size
        chunks: list[bytes] = []
        at, end = paddr, paddr + size
        while at < end:
            part = self.part_for(at // bs)
            if part is None:
                raise NotInDump(self.path, f"physical address {at:#x} is not in the dump")
            stop = min(end, part.pfn_range[1] * bs)
            chunks.append(part.read_phys(at, stop - at))
            at = stop
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def close(self) -> None:
        for part in self.parts:
            part.close()


# facts of the dump that every part holds alike, taken from the first part
_SHARED = frozenset({
    "abi", "bitmap1", "bitmap2", "block_size", "compression", "crashtime", "dump_header",
    "dump_level", "eraseinfo", "header_version", "incomplete", "is_kdump", "max_mapnr",
    "note_area", "nr_cpus", "phys_base", "status", "sub_header", "total_dumpable", "utsname",
})


def _difference(a: KdumpFile, b: KdumpFile) -> str | None:
    """What differs between two parts that one dump's parts share, or None."""
    if a.dump_header != b.dump_header or a.abi != b.abi:
        return "kdump headers"
    unsplit = {"split": 0, "start_pfn": 0, "end_pfn": 0, "start_pfn_64": 0, "end_pfn_64": 0}
    if replace(a.sub_header, **unsplit) != replace(b.sub_header, **unsplit):
        return "sub headers"
    if a.note_area != b.note_area:
        return "notes"
    for mine, theirs, what in ((a.bitmap1, b.bitmap1, "1st bitmaps"),
                               (a.bitmap2, b.bitmap2, "2nd bitmaps")):
        if mine.nbytes != theirs.nbytes:
            return what
        for offset, window in mine.windows(_COMPARE_BYTES):
            if theirs.read(offset, len(window)) != window:
                return what
    return None


def open_split(paths: Sequence[str | os.PathLike[str]], *,
               use_mmap: bool = True) -> SplitSource:
    """Open the parts of a ``--split`` set, in any order, as one dump
    (``use_mmap``: as :func:`~slimdump.sources.open_dump`)."""
    from slimdump.sources import open_dump

    parts: list[KdumpFile] = []
    try:
        for path in paths:
            source = open_dump(path, use_mmap=use_mmap)
            parts.append(source)  # type: ignore[arg-type]  # checked by SplitSource
        return SplitSource(parts)
    except BaseException:
        for part in parts:
            part.close()
        raise
