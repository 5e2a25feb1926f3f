"""A kdump-compressed file's pages read from their descriptors, a page at a
time where reading fails: the pages that cannot be given are reported, each
with its error, never read as zeros.

A page is lost (:class:`~slimdump.sources.base.PageLost`) where its
descriptor is zero (the dump was cut short before it was written), and
cannot be read (:class:`~slimdump.errors.SourceReadError`) where its
descriptor makes no sense, its data lie past the end of the file or fail
to read, or they do not decompress to a page.  Other pages are unaffected:
one bad sector costs only the pages whose data it holds.
"""

from __future__ import annotations

from collections.abc import Sequence

from slimdump.codecs import decompress
from slimdump.errors import DumpError, SourceReadError
from slimdump.sources.base import PageLost

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up)
if TYPE_CHECKING:
    from slimdump.sources.kdump import RawLike

Lost = list[tuple[int, SourceReadError]]
"""Pages that cannot be given: ``[(pfn, the error), ...]`` in pfn order."""

STRETCH_PAGES = 1024        # pages whose data lie back to back read at once


def pfn_span(first: int, last: int, page_size: int) -> str:
    """Pages ``first``-``last`` (inclusive) as an error names them."""
    if first == last:
        return f"physical address {first * page_size:#x} (pfn {first:#x})"
    return (f"physical addresses {first * page_size:#x}-{(last + 1) * page_size - 1:#x} "
            f"(pfns {first:#x}-{last:#x})")


def check_descriptor(path: str, pfn: int, offset: int, size: int, page_size: int) -> None:
    """PageLost for a zero descriptor, SourceReadError for one that makes no sense."""
    if offset == 0:
        raise PageLost(path, f"{pfn_span(pfn, pfn, page_size)} was lost: the dump is "
                             "incomplete")
    if offset < 0 or not 0 < size <= page_size:
        raise SourceReadError(path, f"page descriptor of pfn {pfn:#x} claims {size} bytes "
                                    f"at offset {offset:#x}")


def read_described(raw: RawLike, pfn: int, offsets: Sequence[int], sizes: Sequence[int],
                   flags: Sequence[int], buf: memoryview, page_size: int) -> Lost:
    """Pages ``pfn``, ``pfn + 1``... as their descriptors (``offsets``,
    ``sizes``, ``flags``) say, into ``buf``; returns those that cannot be
    given (their bytes in ``buf`` undefined)."""
    count = len(offsets)
    lost: Lost = []
    stored: list[bytes | None]
    i = 0
    while i < count:
        if offsets[i] == 0:     # never written: one error for the run of them
            j = i + 1
            while j < count and offsets[j] == 0:
                j += 1
            gone = PageLost(raw.path, f"{pfn_span(pfn + i, pfn + j - 1, page_size)} "
                                      f"{'was' if j - i == 1 else 'were'} lost: the dump is "
                                      "incomplete")
            lost += [(pfn + k, gone) for k in range(i, j)]
            i = j
            continue
        try:
            check_descriptor(raw.path, pfn + i, offsets[i], sizes[i], page_size)
        except SourceReadError as exc:
            lost.append((pfn + i, exc))
            i += 1
            continue
        j = i + 1
        while (j < count and j - i < STRETCH_PAGES and 0 < sizes[j] <= page_size
               and offsets[j] == offsets[j - 1] + sizes[j - 1]):
            j += 1
        try:
            blob = raw.read_at(offsets[i], offsets[j - 1] + sizes[j - 1] - offsets[i],
                               what=f"page data of pfn {pfn + i:#x}")
            stored = [blob[o - offsets[i]:o - offsets[i] + n]
                      for o, n in zip(offsets[i:j], sizes[i:j], strict=True)]
        except SourceReadError:
            stored = []         # again page by page
            for k in range(i, j):
                try:
                    stored.append(raw.read_at(offsets[k], sizes[k],
                                              what=f"page data of pfn {pfn + k:#x}"))
                except SourceReadError as exc:
                    lost.append((pfn + k, exc))
                    stored.append(None)
        for k, data in enumerate(stored, i):
            if data is None:
                continue
            try:
                buf[k * page_size:(k + 1) * page_size] = decompress(flags[k], data, page_size)
            except DumpError as exc:
                lost.append((pfn + k, SourceReadError(
                    raw.path, f"page at {(pfn + k) * page_size:#x} (pfn {pfn + k:#x}, data at "
                              f"offset {offsets[k]:#x}): {exc.problem}")))
        i = j
    lost.sort(key=lambda item: item[0])
    return lost
