"""``--split``: one dump written as N kdump-compressed parts, as makedumpfile does.

Every part is a whole kdump-compressed file (reference section 2.7): the same
disk_dump_header, notes and *full* bitmaps as the unsplit dump, a descriptor
table sized for every dumped page, and the shared zero page at the start of
the data; only the sub header's split fields (split = 1, start/end pfn) and
the pages differ: a part holds the pages of its pfn range, their descriptors
from the table's first slot.  Joining the parts (``makedumpfile
--reassemble``) gives the unsplit file byte for byte.

How makedumpfile (1.7.2) chooses the ranges, as observed on real dumps (its
output headers for splitblock sizes of 1 page to 1 GiB and 2 to 7 parts):
memory is cut into *splitblocks* of ``--splitblock-size`` KiB (default 1 GiB),
aligned at pfn 0; each part but the last takes whole splitblocks from where the
previous one ended until it holds at least ``dumped pages // parts`` pages (a
per-part quota fixed at the start, not recomputed); the last part takes the
rest up to max_mapnr.  On a machine smaller than one splitblock the first part
holds everything and the others are empty (start = end = max_mapnr).

:func:`join_parts` does what ``makedumpfile --reassemble`` does: the unsplit
file from the parts, copying stored page data as it is (nothing is
decompressed) and moving the descriptors to their slots and new offsets.
"""

from __future__ import annotations

import contextlib
import os
import sys
from array import array
from collections.abc import Callable, Sequence

from slimdump.bitmap import PfnBitmap
from slimdump.errors import DumpError
from slimdump.record import replace
from slimdump.sources.kdump_headers import DL_EXCLUDE_ZERO, PAGE_DESC_SIZE
from slimdump.writers.atomic import AtomicOutput
from slimdump.writers.kdump import KdumpMeta, KdumpResult, KdumpWriter

DEFAULT_SPLITBLOCK = 1 << 30        # bytes: makedumpfile's default --splitblock-size
JOIN_DESCRIPTORS = 4096             # descriptors moved at once when joining
JOIN_COPY = 4 << 20                 # page data bytes copied at once when joining

TYPE_CHECKING = False
if TYPE_CHECKING:
    from slimdump.sources.kdump_headers import PageDescriptors
    from slimdump.sources.split import SplitSource
    from slimdump.writers.atomic import PositionedOutput
    from slimdump.writers.inputs import ReadPages


def splitblock_pages(splitblock_bytes: int, page_size: int) -> int:
    """Pages per splitblock (at least one)."""
    return max(splitblock_bytes // page_size, 1)


def split_ranges(bitmap2: PfnBitmap, nbits: int, parts: int,
                 block_pages: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` pfn range of each of ``parts`` parts, chosen as
    makedumpfile chooses them (module docstring): contiguous, covering
    ``[0, nbits)``, cut at multiples of ``block_pages``."""
    if parts < 1 or block_pages < 1:
        raise ValueError("a split needs at least one part and one page per block")
    quota = bitmap2.popcount() // parts
    ranges: list[tuple[int, int]] = []
    start = 0
    if quota == 0:
        # fewer dumped pages than parts: each part is satisfied by its first block
        while len(ranges) < parts - 1:
            end = min(nbits, (start // block_pages + 1) * block_pages) if start < nbits else nbits
            ranges.append((start, end))
            start = end
    else:
        held = 0                                # pages of the current part so far
        for first, count in bitmap2.runs(0, nbits):
            last = first + count
            while len(ranges) < parts - 1:
                first = max(first, start)
                if first >= last:
                    break
                if held + last - first < quota:
                    held += last - first
                    break
                # the part's quota is reached at this page: it ends with its block
                reached = first + quota - held - 1
                end = min(nbits, (reached // block_pages + 1) * block_pages)
                ranges.append((start, end))
                start, held = end, 0
            if len(ranges) == parts - 1:
                break
        while len(ranges) < parts - 1:          # the pages ran out: the rest are empty
            ranges.append((start, nbits))
            start = nbits
    ranges.append((start, nbits))
    return ranges


def write_split(dsts: Sequence[str], meta: KdumpMeta, bitmap1: PfnBitmap, bitmap2: PfnBitmap,
                read_pages: ReadPages, *, codec: str, workers: int | None = None,
                splitblock: int = DEFAULT_SPLITBLOCK, overwrite: bool = False,
                progress: Callable[[int], None] | None = None
                ) -> list[tuple[tuple[int, int], KdumpResult]]:
    """Write one part per name in ``dsts``; return each part's range and result.

    Every part is written under a temporary name and renamed only when all
    are complete: an error leaves none of them, never a set with a part
    missing.  An existing name is refused before anything is written."""
    if len(dsts) < 2:
        raise DumpError(None, "--split needs at least two output files")
    if len({os.path.abspath(d) for d in dsts}) != len(dsts):
        raise DumpError(None, f"--split output files must differ: {' '.join(dsts)}")
    ranges = split_ranges(bitmap2, meta.max_mapnr, len(dsts),
                          splitblock_pages(splitblock, meta.page_size))
    results = []
    done = 0
    with contextlib.ExitStack() as stack:
        outs = [stack.enter_context(AtomicOutput(dst, overwrite=overwrite)) for dst in dsts]
        for out, pfn_range in zip(outs, ranges, strict=True):
            def step(pages: int, base: int = done) -> None:
                if progress:
                    progress(base + pages)

            # a page lost would have to leave every part's bitmaps, and their
            # descriptor tables would no longer give the joined file's: the
            # read error ends the set (no part is kept)
            writer = KdumpWriter(out, meta, bitmap1, bitmap2, codec=codec, workers=workers,
                                 pfn_range=pfn_range, lose_pages=False)
            result = writer.write(read_pages, step)
            out.set_size(result.size)
            done += result.pages
            results.append((pfn_range, result))
        for out in outs:
            out.commit()
    return results


def join_parts(source: SplitSource, out: PositionedOutput) -> int:
    """Write the unsplit kdump-compressed file of a --split set to ``out``;
    return its size.  Parts written by makedumpfile or slimdump give the
    unsplit file byte for byte: the first part's headers, notes and bitmaps
    with the split fields cleared, the shared zero page, then each part's
    page data in pfn order."""
    first = source.first
    if first.header_version < 6:
        raise DumpError(first.path, f"joining --split parts of kdump header version "
                                    f"{first.header_version} is not supported (6 is)")
    if first.sub_header.size_eraseinfo:
        raise DumpError(first.path, "joining --split parts that carry eraseinfo is not supported")
    bs = first.block_size
    out.write(first.raw.read_at(0, first.desc_offset, what="kdump headers"), 0)
    unsplit = replace(first.sub_header, split=0, start_pfn=0, end_pfn=0, start_pfn_64=0,
                      end_pfn_64=0)
    out.write(unsplit.pack(first.abi), bs)
    zero_at = first.data_offset if first.dump_level & DL_EXCLUDE_ZERO else -1
    data_start = first.data_offset + (bs if zero_at >= 0 else 0)
    if zero_at >= 0:
        out.write(bytes(bs), zero_at)
    at = data_start
    for part in source.held_parts:
        count = part.num_dumpable
        end = data_start
        for pos in range(0, count, JOIN_DESCRIPTORS):
            descs = part.descriptors(pos, min(JOIN_DESCRIPTORS, count - pos))
            end = max(end, _move_data(descs, zero_at, data_start, part.size, at - data_start,
                                      part.path))
            out.write(descs.pack(), first.desc_offset + PAGE_DESC_SIZE
                      * (part.first_slot + pos))
        for offset in range(data_start, end, JOIN_COPY):
            size = min(JOIN_COPY, end - offset)
            out.write(part.raw.read_at(offset, size, what="page data"),
                      at + offset - data_start)
        at += end - data_start
    return at


# -- moving a part's data offsets, a batch of descriptors at a time ----------------
#
# A batch's offsets are worked on as 8-byte lanes of one big integer (bytes
# slices and int arithmetic, all in C): which lanes move (not the shared zero
# page, not a lost page), whether every moved page lies within the part's
# page data, where the data end, and the move itself.  Lanes are compared by
# subtracting with each lane's top bit set, so no borrow crosses lanes; that
# needs every offset below 2**56.  Anything else (a hostile file) takes the
# plain path, one descriptor at a time, which also names the error.

_ORDER = sys.byteorder
_LOW, _HIGH = (0, 7) if _ORDER == "little" else (7, 0)    # a lane's low and high byte
_TOP_BIT = bytes(i >> 7 for i in range(256))              # byte -> its top bit
_EQUAL: dict[int, bytes] = {}                             # byte -> table: 1 where equal


def _equal(byte: int) -> bytes:
    table = _EQUAL.get(byte)
    if table is None:
        table = _EQUAL[byte] = bytes(int(i == byte) for i in range(256))
    return table


def _lanes_equal(raw: bytes, value: int) -> int:
    """One byte per lane (the first lane the highest), 1 where it is ``value``."""
    want = value.to_bytes(8, _ORDER, signed=True)
    found = -1
    for k in range(8):
        found &= int.from_bytes(raw[k::8].translate(_equal(want[k])), "big")
    return found


def _lanes_at_least(a: int, b: int, one: int, count: int) -> int:
    """One byte per lane, 1 where the lane of ``a`` is at least that of
    ``b`` (every lane below 2**62)."""
    diff = (a | one << 63) - b
    return int.from_bytes(diff.to_bytes(8 * count, _ORDER)[_HIGH::8].translate(_TOP_BIT),
                          "big")


def _move_fast(descs: PageDescriptors, zero_at: int, data_start: int, limit: int,
               delta: int) -> int | None:
    """:func:`_move_data` in lanes, or None where it cannot say."""
    count = len(descs)
    raw = descs.offsets.tobytes()
    if raw[_HIGH::8].count(0) != count:
        return None
    ones = int.from_bytes(b"\1" * count, "big")
    moved = ones & ~_lanes_equal(raw, 0)
    if zero_at >= 0:
        moved &= ~_lanes_equal(raw, zero_at)
    flags = moved.to_bytes(count, "big")
    last = flags.rfind(1)
    if last < 0:
        return data_start
    one = int.from_bytes((1).to_bytes(8, _ORDER) * count, _ORDER)
    offsets = int.from_bytes(raw, _ORDER)
    wide = bytearray(8 * count)                 # the sizes as lanes
    sizes = descs.sizes.tobytes()
    for k in range(4):
        wide[(k if _ORDER == "little" else 4 + k)::8] = sizes[k::4]
    ends = offsets + int.from_bytes(wide, _ORDER)
    high = descs.offsets[last] + descs.sizes[last]      # the last moved page's end...
    if (high > limit
            or _lanes_at_least(offsets, data_start * one, one, count) & moved != moved
            or _lanes_at_least(high * one, ends, one, count) & moved != moved):
        return None                                     # ...is the highest: checked
    if delta:
        step = bytearray(8 * count)
        step[_LOW::8] = flags
        moved_offsets = offsets + int.from_bytes(step, _ORDER) * delta
        descs.offsets = array("q", moved_offsets.to_bytes(8 * count, _ORDER))
    return high


def _move_data(descs: PageDescriptors, zero_at: int, data_start: int, limit: int, delta: int,
               path: str) -> int:
    """Move the data offsets of ``descs`` by ``delta``, all but the shared
    zero page's (``zero_at``) and lost pages' (0); return where the data of
    the moved pages ends (``data_start`` if none moves).  DumpError if a
    page's data is not within [data_start, limit]."""
    fast = _move_fast(descs, zero_at, data_start, limit, delta)
    if fast is not None:
        return fast
    moved = [(o, o + s) for o, s in zip(descs.offsets, descs.sizes, strict=True)
             if o != zero_at and o != 0]
    if not moved:
        return data_start
    if min(o for o, _ in moved) < data_start or max(e for _, e in moved) > limit:
        raise DumpError(path, "a page descriptor points outside the page data")
    descs.offsets = array("q", [o if o == zero_at or o == 0 else o + delta
                                for o in descs.offsets])
    return max(e for _, e in moved)
