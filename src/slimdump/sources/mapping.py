"""Reading a dump through mmap() windows, as makedumpfile does by default.

Every read() of /proc/vmcore makes the capture kernel map each page of the
old memory, copy it and unmap it again; a mapping of /proc/vmcore is set up
once per window (the kernel fills its page table at mmap() time) and then
read at memory speed.  :class:`MappedWindows` maps a file WINDOW bytes at a
time, one window per thread (the writer's threads read different parts of
the file), and copies out of it with :mod:`slimdump.sources._mapcopy`,
which turns a SIGBUS (the file cut short while mapped, an I/O error under
the mapping) into a short copy instead of a dead process.

Where a window cannot be mapped (a kernel or filesystem without mmap for
the file, a pipe, the C module not built) the file is read with pread()
instead, for good: :meth:`MappedWindows.copy` returns None and the caller
reads the bytes itself.
"""

from __future__ import annotations

import mmap
import threading
from types import ModuleType

WINDOW = 4 << 20        # bytes mapped at once (makedumpfile maps 4 MiB too)


def _native() -> ModuleType | None:
    try:
        from slimdump.sources import _mapcopy
    except ImportError:     # not built: without SIGBUS handling, no mapping
        return None
    return _mapcopy


_MAPCOPY = _native()


class MappedWindows:
    """Read-only windows of the file behind ``fd`` (``size`` bytes long),
    mapped on demand; each thread keeps its own last window."""

    def __init__(self, fd: int, size: int, window: int = WINDOW) -> None:
        if window % mmap.ALLOCATIONGRANULARITY:
            raise ValueError(f"window {window} is not a multiple of the mapping granularity")
        self.fd = fd
        self.size = size
        self.window = window
        self.usable = _MAPCOPY is not None      # False: read with pread() instead
        self.maps = 0                          # windows mapped, for a reader who counts
        self._local = threading.local()        # (start, mmap) of this thread's window
        self._open: set[mmap.mmap] = set()
        self._lock = threading.Lock()

    def copy(self, offset: int, buf: memoryview) -> int | None:
        """Copy bytes at ``offset`` into ``buf``, up to the end of the file
        as opened; the bytes copied (fewer than ``len(buf)`` at the end of
        the file, or where a SIGBUS stopped the copy), or None when the file
        cannot be mapped (nothing copied: read it otherwise)."""
        done, want = 0, min(len(buf), max(self.size - offset, 0))
        while done < want:
            at = offset + done
            mapped = self._window(at)
            if mapped is None:
                return None if done == 0 else done
            start, view = mapped
            n = min(want - done, start + len(view) - at)
            assert _MAPCOPY is not None
            got = _MAPCOPY.copy(view, at - start, buf[done:done + n])
            done += got
            if got < n:             # SIGBUS: the page at offset + done is unreadable
                break
        return done

    def _window(self, offset: int) -> tuple[int, mmap.mmap] | None:
        """This thread's window holding ``offset``, mapped if need be."""
        current = getattr(self._local, "current", None)
        if current is not None and current[0] <= offset < current[0] + len(current[1]):
            return current
        if not self.usable:
            return None
        start = offset - offset % self.window
        length = min(self.window, self.size - start)
        try:
            view = mmap.mmap(self.fd, length, mmap.MAP_SHARED, mmap.PROT_READ, offset=start)
        except (OSError, ValueError):   # refused (or the file shrank): pread() from now on
            self.usable = False
            return None
        with self._lock:
            if current is not None:
                self._open.discard(current[1])
                current[1].close()
            self._open.add(view)
            self.maps += 1
        self._local.current = (start, view)
        return self._local.current

    def close(self) -> None:
        """Unmap every window (no thread may be reading any more)."""
        with self._lock:
            for view in self._open:
                view.close()
            self._open.clear()
        self._local = threading.local()
