"""Positioned, counted reads from one file.

Every byte slimdump takes from a dump goes through :meth:`RawFile.read_at`
(or :meth:`RawFile.read_into`, the same into a caller's buffer), so a
command can say (and a test can assert) exactly how much it read.
:meth:`RawFile.read_into`, the bulk reads (page data, the struct page
array), copies from mmap() windows where the file allows it
(:mod:`slimdump.sources.mapping`; ``use_mmap=False`` or a refused mmap():
preadv()); the small reads of headers, notes and the log are pread()s.
Short reads (a file shorter than its headers say) and I/O errors become
:class:`~slimdump.errors.SourceReadError` naming the file and the offset: a
one-line DumpError where the headers are read, a lost page where page data
are (the writers tell the two apart).
"""

from __future__ import annotations

import errno
import os
import stat
import threading

from slimdump.errors import DumpError, SourceReadError
from slimdump.sources.mapping import MappedWindows


class RawFile:
    """An open file with counted reads.  ``use_mmap``: bulk reads copy from
    mmap() windows (:attr:`mapped`) where the file can be mapped."""

    def __init__(self, path: str, fd: int, size: int, *, use_mmap: bool = False) -> None:
        self.path = path
        self.fd = fd
        self.size = size
        self.mapped = MappedWindows(fd, size) if use_mmap else None
        self.bytes_read = 0
        self.reads = 0
        # reads may come from several threads (the struct page walk): the
        # counts are updated under a lock so that none is lost
        self._count_lock = threading.Lock()

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, use_mmap: bool = True) -> RawFile:
        path = os.fspath(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise DumpError(path, exc.strerror or str(exc)) from None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise DumpError(path, "is a directory")
            size = st.st_size if stat.S_ISREG(st.st_mode) else os.lseek(fd, 0, os.SEEK_END)
        except DumpError:
            os.close(fd)
            raise
        except OSError as exc:
            os.close(fd)
            raise DumpError(path, exc.strerror or str(exc)) from None
        return cls(path, fd, size, use_mmap=use_mmap and stat.S_ISREG(st.st_mode))

    def read_at(self, offset: int, size: int, *, what: str = "data",
                allow_short: bool = False) -> bytes:
        """Read ``size`` bytes at ``offset``; SourceReadError if the file ends
        first (unless ``allow_short``) or the read fails."""
        if offset < 0 or offset + size > 1 << 63:
            raise SourceReadError(self.path, f"{what} at offset {offset:#x} lies beyond any "
                                             "file")
        chunks = []
        done = 0
        while done < size:
            try:
                chunk = self._pread(size - done, offset + done)
            except OSError as exc:
                raise SourceReadError(self.path, f"read error at offset {offset + done:#x} "
                                                 f"({what}): {exc.strerror or exc}") from None
            if not chunk:
                break
            chunks.append(chunk)
            done += len(chunk)
        self._count(done)
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if done < size and not allow_short:
            raise SourceReadError(self.path, f"truncated: {what} needs bytes {offset:#x}-"
                                             f"{offset + size:#x} but the file ends at "
                                             f"{offset + done:#x}")
        return data

    def read_into(self, offset: int, buf: memoryview, *, what: str = "data") -> None:
        """Fill ``buf`` (a writable byte view) from ``offset``: copied from
        the mapped file, or preadv() into the buffer itself (no intermediate
        bytes object: the struct page walk reads tens of MiB this way); counted and checked like
        :meth:`read_at`: SourceReadError if the file ends first (the bytes
        before the end are then in ``buf``) or the read fails."""
        size = len(buf)
        if offset < 0 or offset + size > 1 << 63:
            raise SourceReadError(self.path, f"{what} at offset {offset:#x} lies beyond any "
                                             "file")
        done = 0
        while done < size:
            try:
                got = self._copy_mapped(buf[done:], offset + done)
                if got is None:
                    got = self._preadv(buf[done:], offset + done)
            except OSError as exc:
                raise SourceReadError(self.path, f"read error at offset {offset + done:#x} "
                                                 f"({what}): {exc.strerror or exc}") from None
            if not got:
                break
            done += got
        self._count(done)
        if done < size:
            raise SourceReadError(self.path, f"truncated: {what} needs bytes {offset:#x}-"
                                             f"{offset + size:#x} but the file ends at "
                                             f"{offset + done:#x}")

    def _pread(self, size: int, offset: int) -> bytes:
        """One pread().  Bytes come from here, :meth:`_preadv` and
        :meth:`_copy_mapped` only: tests put failing sectors there."""
        return os.pread(self.fd, size, offset)

    def _preadv(self, buf: memoryview, offset: int) -> int:
        """One preadv() into ``buf``."""
        return os.preadv(self.fd, [buf], offset)

    def _copy_mapped(self, buf: memoryview, offset: int) -> int | None:
        """Fill ``buf`` from the mapped file (the third place bytes come
        from); the bytes copied (0 at the end of the file), None where the
        file is not or cannot be mapped.  A SIGBUS under the mapping is an
        OSError here, like the EIO a read() would have had."""
        mapped = self.mapped
        if mapped is None:
            return None
        got = mapped.copy(offset, buf)
        if got is None:
            self.mapped = None                  # refused: pread() from now on
        elif got == 0 and offset < self.size:
            raise OSError(errno.EIO, "SIGBUS under the mapping (the file was cut short "
                                     "or an I/O error hit the mapped page)")
        return got

    def _count(self, nbytes: int) -> None:
        """One read of ``nbytes`` more, counted."""
        with self._count_lock:
            self.bytes_read += nbytes
            self.reads += 1

    def close(self) -> None:
        if self.mapped is not None:
            self.mapped.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
