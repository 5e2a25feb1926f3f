"""Which page frames the dump holds: makedumpfile's 1st bitmap, by pfn.

The dump's PT_LOAD segments say which physical memory it holds.  Two views
of them by pfn matter, and they differ at the edges of a segment:

* the pages holding any byte the dump holds (the 1st bitmap: what a
  reader can ask for), floor(start/P) .. ceil(end/P) - 1;
* the pfns whose first byte lies in a segment (makedumpfile's
  ``is_in_segs(pfn << PAGE_SHIFT)``, the pfns its struct page walk
  judges), ceil(start/P) .. ceil(end/P) - 1.

makedumpfile 1.7.2 drops a trailing partial page from its 1st bitmap
(floor(end/P) - 1; x86's first RAM range 0x1000-0x9fbff loses pfn 0x9f);
slimdump keeps it, its other bytes zeros (README, "Oracles").

Everything here works on sorted pfn intervals ``[(a, b), ...]`` and packs
them into bitmaps a range at a time, so memory stays bounded by the range
(callers go cycle by cycle, like makedumpfile's ``--cyclic-buffer``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from slimdump.sources.base import Segment, merge_intervals, page_intervals, resolve_extents

#: pfns per cycle for callers that do not choose one (1 GiB of 4 KiB pages)
DEFAULT_CYCLE = 1 << 18


def usable_segments(segments: Sequence[Segment]) -> list[Segment]:
    """The PT_LOADs makedumpfile uses: those with a real p_paddr."""
    return [s for s in segments if s.usable]


def max_mapnr(segments: Sequence[Segment], page_size: int) -> int:
    """Number of pfns the dump's bitmaps cover: the highest physical end over
    all PT_LOADs, rounded up to a page (makedumpfile ``get_max_mapnr()``)."""
    ends = [s.phys_end for s in usable_segments(segments)]
    if not ends:
        return 0
    return -(-max(ends) // page_size)


def present_intervals(segments: Sequence[Segment], page_size: int) -> list[tuple[int, int]]:
    """Pfn intervals [a, b) of the 1st bitmap: the pages holding any byte
    the dump holds (:func:`~slimdump.sources.base.page_intervals`, the rule
    every reader and writer shares).  A segment with p_paddr all-ones is
    ignored; the kernel-image PT_LOAD, which duplicates RAM, sets the same
    pfns again."""
    return page_intervals(resolve_extents(segments), page_size)


def walked_intervals(segments: Sequence[Segment], page_size: int) -> list[tuple[int, int]]:
    """Pfn intervals [a, b) whose first byte lies in a segment: the pfns
    the struct page walk judges."""
    out = []
    for s in usable_segments(segments):
        a, b = -(-s.phys_start // page_size), -(-s.phys_end // page_size)
        if a < b:
            out.append((a, b))
    return out


def clip(intervals: Sequence[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    """``intervals`` cut to [start, end), sorted and merged."""
    return merge_intervals((max(a, start), min(b, end)) for a, b in intervals
                           if max(a, start) < min(b, end))


def pack_intervals(intervals: Sequence[tuple[int, int]], start: int, end: int) -> bytes:
    """The pfns of ``intervals`` in [start, end) as a packed bitmap: bit i of
    byte k is pfn start + 8k + i; ceil((end - start) / 8) bytes, bits past
    ``end`` clear."""
    n = max(end - start, 0)
    out = bytearray((n + 7) // 8)
    for a, b in clip(intervals, start, end):
        a, b = a - start, b - start
        first_full, last_full = -(-a // 8), b // 8
        if first_full > last_full:                    # inside one byte
            out[a // 8] |= ((1 << (b - a)) - 1) << (a % 8)
            continue
        if a % 8:
            out[a // 8] |= (0xFF << (a % 8)) & 0xFF
        out[first_full:last_full] = b"\xff" * (last_full - first_full)
        if b % 8:
            out[last_full] |= (1 << (b % 8)) - 1
    return bytes(out)


def present_packed(segments: Sequence[Segment], page_size: int, start: int,
                   end: int) -> bytes:
    """The 1st bitmap for pfns [start, end), packed as :func:`pack_intervals`."""
    return pack_intervals(present_intervals(segments, page_size), start, end)


def cycles(start: int, end: int, size: int = DEFAULT_CYCLE) -> Iterator[tuple[int, int]]:
    """[start, end) cut into ranges of ``size`` pfns aligned on ``size``
    (as makedumpfile's cycles are), the first and last possibly shorter."""
    if size <= 0:
        raise ValueError("cycle size must be positive")
    lo = start
    while lo < end:
        hi = min(end, (lo // size + 1) * size)
        yield lo, hi
        lo = hi
