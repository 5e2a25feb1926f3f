"""Where the writers put bytes: anything with ``write(data, offset)``
(:class:`PositionedOutput`), such as :class:`FdOutput` on a file descriptor
or :class:`AtomicOutput`, output that appears under its final name only when
complete.

A dump is written to a temporary file beside the destination (mode 0600: a
dump holds secrets), fsynced, then renamed; the directory is fsynced too.
On any error the temporary file is removed, so a half-written file never
stands under the final name.

Written data is pushed to disk as it goes: every WRITEBACK_BYTES the file's
dirty pages are handed to writeback and its clean ones dropped from the page
cache (``posix_fadvise(DONTNEED)``).  A capture kernel has little memory to
hold gigabytes of dirty dump, and the final fsync then waits for the last
few MiB only, not for the whole file.
"""

from __future__ import annotations

import contextlib
import os
from types import TracebackType

from slimdump.errors import DumpError

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
            raise DumpError(self.name, f"write failed: {exc.strerror or exc}") from None


def as_output(out: PositionedOutput | int) -> PositionedOutput:
    """Accept a file descriptor where an output object is expected."""
    return FdOutput(out) if isinstance(out, int) else out


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
            tmp = os.path.join(directory, f".{os.path.basename(self.dst)}."
                                          f"{os.urandom(4).hex()}.part")
            try:
                self.fd = os.open(tmp, flags, 0o600)
            except FileExistsError:
                continue
            except OSError as exc:
                raise DumpError(self.dst, f"cannot create output: "
                                          f"{exc.strerror or exc}") from None
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
            raise DumpError(self.dst, f"write failed: {exc.strerror or exc}") from None
        self._unflushed += len(data)
        if self._unflushed >= WRITEBACK_BYTES:
            self._unflushed = 0
            with contextlib.suppress(OSError, AttributeError):   # only a hint
                os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def set_size(self, size: int) -> None:
        """Make the file ``size`` bytes long (a trailing hole stays a hole)."""
        try:
            os.ftruncate(self.fd, size)
        except OSError as exc:
            raise DumpError(self.dst, f"cannot set size: {exc.strerror or exc}") from None

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
            raise DumpError(self.dst, f"cannot complete output: {exc.strerror or exc}") from None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if not self.committed and self.tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp)
