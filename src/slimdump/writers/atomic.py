"""Where the writers put bytes: anything with ``write(data, offset)``
(:class:`PositionedOutput`), such as :class:`FdOutput` on a file descriptor
or :class:`AtomicOutput`, output that appears under its final name only when
complete.

A dump is written to a temporary file beside the destination (mode 0600: a
dump holds secrets), fsynced, then renamed; the directory is fsynced too.
On any error the temporary file is removed, so a half-written file never
stands under the final name.

Written data is pushed to disk as it goes: every WRITEBACK_BYTES the file
is fdatasync'ed and its pages dropped from the page cache
(``posix_fadvise(DONTNEED)``).  A capture kernel has little memory to hold
gigabytes of dirty dump, the final fsync then waits for the last few MiB
only, and a disk that stops taking writes is an error within a few MiB
rather than a writer stuck in the kernel's dirty-page throttle.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from types import TracebackType

from slimdump.errors import DumpError, OutputError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up)
if TYPE_CHECKING:
    from typing import Protocol

    class PositionedOutput(Protocol):
        """Where writers put bytes: ``write(data, offset)`` writes all of it."""

        def write(self, data: bytes, offset: int) -> None: ...

# Bytes written between two writebacks.
WRITEBACK_BYTES = 8 << 20


class FdOutput:
    """``write(data, offset)`` on an open file descriptor, with pwrite()."""

    def __init__(self, fd: int, name: str = "output") -> None:
        self.fd = fd
        self.name = name

    def write(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.pwrite(self.fd, view, offset)
                view = view[n:]
                offset += n
        except OSError as exc:
            raise OutputError(self.name, f"write failed: {exc.strerror or exc}",
                              exc.errno) from None


def as_output(out: PositionedOutput | int) -> PositionedOutput:
    """Accept a file descriptor where an output object is expected."""
    return FdOutput(out) if isinstance(out, int) else out


def write_back(fd: int, name: str) -> None:
    """Push a file's dirty pages to disk, then drop them from the page cache
    (every WRITEBACK_BYTES written).  fdatasync, not a hint: a disk that
    stopped taking writes (EIO, an aborted journal) fails here, within
    WRITEBACK_BYTES, instead of leaving the writer asleep in the kernel's
    dirty-page throttle forever."""
    try:
        os.fdatasync(fd)
    except OSError as exc:
        raise OutputError(name, f"write failed: {exc.strerror or exc}", exc.errno) from None
    with contextlib.suppress(OSError, AttributeError):   # only a hint
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def part_name(dst: str) -> str:
    """A temporary name for ``dst`` (a hidden file in its directory)."""
    return f".{os.path.basename(dst)}.{os.urandom(4).hex()}.part"


_PART = re.compile(r"\..+\.[0-9a-f]{8}\.part\Z")


def remove_stale_parts(directory: str) -> list[str]:
    """Remove the temporary files a killed run left in ``directory`` (SIGKILL,
    a crash, a power cut): those that match :func:`part_name` and that no
    process holds locked.  A run still writing holds its lock, so two
    captures into one directory leave each other alone.  Returns the names
    removed; never raises."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if not _PART.match(name):
            continue
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(path)
            removed.append(name)
        except OSError:
            pass                 # held by a live run, or already gone
        finally:
            os.close(fd)
    return removed


class AtomicOutput:
    """Context manager: ``with AtomicOutput(dst) as out: os.write(out.fd, ...)``,
    then ``out.commit()``.  Leaving the block without commit() discards."""

    holes_read_zero = True      # a new file: writers may leave zero ranges unwritten

    def __init__(self, dst: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        self.dst = os.fspath(dst)
        self.overwrite = overwrite
        self.tmp = ""
        self.fd = -1
        self.committed = False
        self._unflushed = 0

    def __enter__(self) -> AtomicOutput:
        if os.path.lexists(self.dst) and not self.overwrite:
            raise DumpError(self.dst, "already exists (use -f to overwrite)")
        directory = os.path.dirname(os.path.abspath(self.dst))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        for _ in range(100):
            tmp = os.path.join(directory, part_name(self.dst))
            try:
                self.fd = os.open(tmp, flags, 0o600)
            except FileExistsError:
                continue
            except OSError as exc:
                raise OutputError(self.dst, f"cannot create output: {exc.strerror or exc}",
                                  exc.errno) from None
            # held until the file is renamed or removed: a temporary file
            # nobody holds is a killed run's (remove_stale_parts)
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.tmp = tmp
            return self
        raise DumpError(self.dst, "cannot create output: no free temporary name")

    def write(self, data: bytes, offset: int | None = None) -> None:
        """Write all of ``data`` (at ``offset`` when given); DumpError on failure."""
        view = memoryview(data)
        try:
            while view:
                n = (os.write(self.fd, view) if offset is None
                     else os.pwrite(self.fd, view, offset))
                view = view[n:]
                if offset is not None:
                    offset += n
        except OSError as exc:
            raise OutputError(self.dst, f"write failed: {exc.strerror or exc}",
                              exc.errno) from None
        self._unflushed += len(data)
        if self._unflushed >= WRITEBACK_BYTES:
            self._unflushed = 0
            self._write_back()

    def _write_back(self) -> None:
        write_back(self.fd, self.dst)

    def set_size(self, size: int) -> None:
        """Make the file ``size`` bytes long (a trailing hole stays a hole)."""
        try:
            os.ftruncate(self.fd, size)
        except OSError as exc:
            raise OutputError(self.dst, f"cannot set size: {exc.strerror or exc}",
                              exc.errno) from None

    def commit(self) -> None:
        try:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            os.replace(self.tmp, self.dst)
            self.committed = True
            dirfd = os.open(os.path.dirname(os.path.abspath(self.dst)), os.O_RDONLY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
        except OSError as exc:
            raise OutputError(self.dst, f"cannot complete output: {exc.strerror or exc}",
                              exc.errno) from None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if not self.committed and self.tmp:
            # a file system that went read-only keeps it: the error that
            # matters is the one that brought us here, not this one
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)
