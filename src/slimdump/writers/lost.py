"""Pages a kdump-compressed file leaves out because the source could not
give them (an I/O error, a file cut short, a page lost from an incomplete
saved dump): never written as zeros.

:func:`gather_pages` reads a task's runs and closes up the pages read;
:class:`LostPages` keeps count of the others and clears their bits in the
file's 2nd bitmap, which the writer does before it writes any later page's
descriptor (descriptors are positional: the i-th set bit owns descriptor
i); :func:`zero_fill` puts zeros over descriptors a failed write may have
left in part.
"""

from __future__ import annotations

import contextlib

from slimdump.errors import DumpError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up)
if TYPE_CHECKING:
    from slimdump.bitmap import PfnBitmap
    from slimdump.sources.kdump_pages import Lost
    from slimdump.writers.atomic import PositionedOutput
    from slimdump.writers.inputs import ReadPages


def gather_pages(read_pages: ReadPages, runs: list[tuple[int, int]], buf: memoryview,
                 page_size: int) -> tuple[memoryview, Lost]:
    """The pages of ``runs`` (``(pfn, count)``) read into ``buf`` (at least
    as long) back to back, and the pages the source could not give (from
    ``read_pages.read_into`` where it has one), which take no place."""
    into = getattr(read_pages, "read_into", None)
    lost: Lost = []
    at = 0
    for pfn, count in runs:
        part = buf[at:at + count * page_size]
        if into is None:
            data = read_pages(pfn, count)
            if len(data) != count * page_size:
                raise DumpError(None, f"reading pfns {pfn:#x}-{pfn + count - 1:#x} "
                                      f"gave {len(data)} bytes, not {count * page_size}")
            part[:] = data
        else:
            lost += into(pfn, count, part) or ()
        at += count * page_size
    if not lost:
        return buf[:at], lost
    gone = {pfn for pfn, _exc in lost}
    pfns = (pfn for first, count in runs for pfn in range(first, first + count))
    kept = [buf[i * page_size:(i + 1) * page_size] for i, pfn in enumerate(pfns)
            if pfn not in gone]
    return memoryview(b"".join(kept)), lost


class LostPages:
    """The pages left out of one file: ``count``, ``ranges`` (``[[first,
    last], ...]``, inclusive, in pfn order) and ``error``, the first of
    their errors.  ``bitmap2`` is the 2nd bitmap the file was written with,
    at ``bitmap2_at`` in ``out``."""

    def __init__(self, out: PositionedOutput, bitmap2: PfnBitmap, bitmap2_at: int) -> None:
        self.out = out
        self.bitmap2 = bitmap2
        self.bitmap2_at = bitmap2_at
        self.count = 0
        self.ranges: list[list[int]] = []
        self.error = ""
        self._cleared: dict[int, int] = {}      # bitmap bytes rewritten: index -> value

    def lose(self, lost: Lost) -> None:
        """Leave out ``lost`` (in pfn order, after every page lost before):
        their bits cleared in the file, counted, merged into ranges."""
        touched: list[int] = []
        for pfn, exc in lost:
            index = pfn // 8
            value = self._cleared.get(index)
            if value is None:
                value = self.bitmap2.read(index, 1)[0]
            self._cleared[index] = value & ~(1 << (pfn % 8)) & 0xFF
            if not touched or touched[-1] != index:
                touched.append(index)
            if self.ranges and self.ranges[-1][1] + 1 == pfn:
                self.ranges[-1][1] = pfn
            else:
                self.ranges.append([pfn, pfn])
            if not self.error:
                self.error = str(exc)
        self.count += len(lost)
        first = 0               # the bytes changed, a write per stretch of them
        for k in range(1, len(touched) + 1):
            if k == len(touched) or touched[k] != touched[k - 1] + 1:
                span = touched[first:k]
                self.out.write(bytes(self._cleared[i] for i in span),
                               self.bitmap2_at + span[0])
                first = k


def zero_fill(out: PositionedOutput, offset: int, size: int) -> None:
    """Zeros over ``size`` bytes at ``offset``, a 4 KiB block at a time,
    errors ignored: after a write failed for room (a descriptor across a
    block the file system could not allocate), a block that takes the zeros
    had part of it, one that does not stays a hole, which reads as zeros."""
    end = offset + size
    while offset < end:
        step = min(end, (offset // 4096 + 1) * 4096) - offset
        with contextlib.suppress(DumpError):
            out.write(bytes(step), offset)
        offset += step
