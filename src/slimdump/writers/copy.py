"""Fast byte-exact copying of file ranges, keeping holes sparse.

The kernel copies where it can: ``copy_file_range`` (reflinks on file
systems that share extents), then ``sendfile``, then plain reads and writes.
Holes in the source (SEEK_DATA/SEEK_HOLE) are skipped, and on the read/write
path all-zero blocks are skipped too, so /proc/vmcore, which has no holes to
report, still gives a sparse copy.  The destination must be truncated to its
final size by the caller so that a trailing hole exists.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable, Iterator

from slimdump.errors import DumpError, OutputError, SourceReadError
from slimdump.writers.atomic import WRITEBACK_BYTES, write_back

CHUNK = 8 << 20          # bytes per system call, and per progress update
ZERO_BLOCK = 1 << 20     # granularity of zero skipping on the read/write path
_FALLBACK_ERRNOS = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF,
                    errno.ENOTSUP, errno.EPERM}


@functools.cache
def _zeros() -> bytes:
    """ZERO_BLOCK zero bytes, made on first use: a capture that copies no
    byte range does not carry them (a megabyte of a small crashkernel=)."""
    return bytes(ZERO_BLOCK)


def is_zero_block(block: memoryview) -> bool:
    """``block`` (at most ZERO_BLOCK bytes) is all zeros."""
    return block == _zeros()[:len(block)]


def data_extents(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """The [begin, end) ranges of ``fd`` within [start, end) that hold data.
    Files whose file system cannot say (procfs) are one extent."""
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:      # only a hole up to EOF
                return
            yield pos, end                    # SEEK_DATA unsupported: all data
            return
        if data >= end:
            return
        try:
            hole = os.lseek(fd, data, os.SEEK_HOLE)
        except OSError:
            hole = end
        yield data, min(hole, end)
        pos = hole


def _knows_holes(fd: int) -> bool:
    """Whether the file system stores this file and can say where its holes
    are.  /proc/vmcore answers SEEK_DATA (the generic llseek calls it all
    data) but occupies no blocks: its zero pages are only found by reading."""
    try:
        st = os.fstat(fd)
        os.lseek(fd, 0, os.SEEK_DATA)
    except OSError as exc:
        return exc.errno == errno.ENXIO       # a file that is one hole
    return st.st_blocks > 0 or st.st_size == 0


class RangeCopier:
    """Copies ranges from one fd to another, remembering which kernel path
    works so that a failing one is tried once only."""

    def __init__(self, src_fd: int, dst_fd: int, src_name: str, dst_name: str,
                 on_progress: Callable[[int], None] | None = None) -> None:
        self.src_fd, self.dst_fd = src_fd, dst_fd
        self.src_name, self.dst_name = src_name, dst_name
        self.on_progress = on_progress or (lambda n: None)
        # A file that cannot say where its holes are (/proc/vmcore) is read
        # and written here, skipping all-zero blocks, so the copy stays
        # sparse; copy_file_range and sendfile would write every zero.
        self.method = "copy_file_range" if _knows_holes(src_fd) else "read/write"
        self.copied = 0      # data bytes moved
        self.done = 0        # bytes of source ranges covered, holes included
        self._unsynced = 0   # bytes moved since the last fdatasync

    def copy(self, src_off: int, dst_off: int, length: int) -> None:
        """Copy ``length`` bytes; holes of the source stay holes."""
        base = self.done - src_off
        for begin, end in list(data_extents(self.src_fd, src_off, src_off + length)):
            self._copy_data(begin, dst_off + (begin - src_off), end - begin, base)
        self.done = base + src_off + length
        self.on_progress(self.done)

    def _copy_data(self, src_off: int, dst_off: int, length: int, base: int) -> None:
        while length > 0:
            n = min(length, CHUNK)
            done = self._one(src_off, dst_off, n)
            if done == 0:
                raise SourceReadError(self.src_name, f"truncated: no data at offset "
                                                     f"{src_off:#x}")
            src_off += done
            dst_off += done
            length -= done
            self.copied += done
            self.done = base + src_off
            self._unsynced += done
            if self._unsynced >= WRITEBACK_BYTES:
                self._unsynced = 0
                write_back(self.dst_fd, self.dst_name)
            self.on_progress(self.done)

    def _one(self, src_off: int, dst_off: int, n: int) -> int:
        if self.method == "copy_file_range":
            try:
                return os.copy_file_range(self.src_fd, self.dst_fd, n, src_off, dst_off)
            except OSError as exc:
                if exc.errno not in _FALLBACK_ERRNOS:
                    raise self._error(exc, src_off) from None
                self.method = "sendfile"
        if self.method == "sendfile":
            try:
                os.lseek(self.dst_fd, dst_off, os.SEEK_SET)
                return os.sendfile(self.dst_fd, self.src_fd, src_off, n)
            except OSError as exc:
                if exc.errno not in _FALLBACK_ERRNOS:
                    raise self._error(exc, src_off) from None
                self.method = "read/write"
        return self._read_write(src_off, dst_off, n)

    def _read_write(self, src_off: int, dst_off: int, n: int) -> int:
        try:
            data = os.pread(self.src_fd, n, src_off)
        except OSError as exc:
            raise SourceReadError(self.src_name, f"read error at offset {src_off:#x}: "
                                                 f"{exc.strerror or exc}") from None
        view = memoryview(data)
        for at in range(0, len(data), ZERO_BLOCK):
            block = view[at:at + ZERO_BLOCK]
            if not is_zero_block(block):
                self._pwrite_all(block, dst_off + at)
        return len(data)

    def _pwrite_all(self, block: memoryview, offset: int) -> None:
        try:
            while block:
                written = os.pwrite(self.dst_fd, block, offset)
                block, offset = block[written:], offset + written
        except OSError as exc:
            raise OutputError(self.dst_name, f"write failed: {exc.strerror or exc}",
                              exc.errno) from None

    def _error(self, exc: OSError, src_off: int) -> DumpError:
        """The error of a copy in the kernel: the destination's when it is
        full, else the source's (an I/O error reading it), naming the
        offset of the range that failed."""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return OutputError(self.dst_name, f"write failed: {exc.strerror}", exc.errno)
        return SourceReadError(self.src_name, f"copy failed at offset {src_off:#x}: "
                                              f"{exc.strerror or exc}")
