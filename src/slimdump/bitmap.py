"""Page bitmaps of any size in bounded memory.

A kdump file's two bitmaps hold one bit per page frame up to the highest
physical address: 32 MiB each for 1 TiB of RAM, 512 MiB each for a machine
whose memory map reaches 16 TiB, however little of it is populated.  A
capture kernel has tens of MiB to spare, so :class:`PfnBitmap` keeps a small
bitmap in memory and a large one in an unlinked temporary file (sparse:
zero chunks are never written and read back as holes); a bitmap inside a
saved kdump file is read from there (:meth:`PfnBitmap.over`).  Every user
works on windows of it: :meth:`PfnBitmap.read`, :meth:`PfnBitmap.write`,
:meth:`PfnBitmap.runs`, :meth:`PfnBitmap.popcount`.

Bits are packed LSB first (bit ``pfn % 8`` of byte ``pfn // 8``), as the
kdump-compressed format stores them.

Windows are plain ``bytearray`` objects and bits are counted and scanned with
Python's big integers (``int.bit_count``, shifts), all in C: a capture kernel
has no memory to spare for an array library.
"""

from __future__ import annotations

import os
import re
from array import array
from collections.abc import Callable, Iterator

from slimdump.errors import DumpError

# Bitmaps up to this many bytes stay in memory (two of them: 16 MiB, enough
# for 256 GiB of physical address space).
MEMORY_LIMIT = 8 << 20
# Bytes per window when a whole bitmap is walked (8 Mi pfns).
WINDOW_BYTES = 1 << 20
# Bytes of a window scanned as one integer by runs(): small enough that the
# shifts stay cheap whatever the pattern, large enough for few iterations.
_RUN_CHUNK = 512
_NONZERO = re.compile(rb"[^\x00]+")


def popcount(data: bytes | bytearray | memoryview) -> int:
    """Set bits in packed bytes."""
    return int.from_bytes(data, "little").bit_count()


def is_zero(data: bytes | bytearray | memoryview) -> bool:
    """No bit set."""
    if isinstance(data, memoryview):
        data = data.tobytes()
    return data.count(0) == len(data)


def bit_runs(packed: bytes | bytearray, first_bit: int = 0) -> Iterator[tuple[int, int]]:
    """``(first, count)`` of each run of set bits in ``packed`` (bit ``i`` of
    byte ``k`` is number ``first_bit + 8 * k + i``), in order; runs that
    touch are not joined when they cross a scan chunk (callers join)."""
    for match in _NONZERO.finditer(packed):
        a, b = match.span()
        for at in range(a, b, _RUN_CHUNK):
            end = min(at + _RUN_CHUNK, b)
            x = int.from_bytes(packed[at:end], "little")
            pos = first_bit + 8 * at
            while x:
                low = (x & -x).bit_length() - 1      # clear bits before the run
                x >>= low
                pos += low
                n = ((x + 1) & ~x).bit_length() - 1  # set bits in the run
                yield pos, n
                x >>= n
                pos += n


class PfnBitmap:
    """``nbits`` bits, all clear at first, packed LSB first.

    ``directory``: where the temporary file of a large bitmap goes; choose
    the dump's own file system (in a capture kernel /tmp is often RAM).
    ``memory_limit``: the largest bitmap (in bytes) kept in memory
    (default :data:`MEMORY_LIMIT`).
    """

    def __init__(self, nbits: int, *, directory: str | None = None,
                 memory_limit: int | None = None) -> None:
        if nbits < 0:
            raise ValueError("a bitmap cannot have a negative size")
        self.nbits = nbits
        self.nbytes = (nbits + 7) // 8
        self._array: bytearray | None = None
        self._reader: Callable[[int, int], bytes] | None = None
        self._cached: tuple[int, bytearray] | None = None
        self._fd = -1                           # the temporary file, when there is one
        self._directory = directory
        self._name = directory or "$TMPDIR"
        if self.nbytes <= (MEMORY_LIMIT if memory_limit is None else memory_limit):
            self._array = bytearray(self.nbytes)
            return
        import tempfile  # only for big bitmaps: a module the capture path spares

        self._name = directory or tempfile.gettempdir()
        try:
            self._fd, path = tempfile.mkstemp(prefix=".slimdump-bitmap-", dir=directory)
            os.unlink(path)
            os.ftruncate(self._fd, self.nbytes)
        except OSError as exc:
            if self._fd >= 0:
                os.close(self._fd)
            raise DumpError(self._name, f"cannot create a {self.nbytes >> 20} MiB page "
                                        f"bitmap file: {exc.strerror or exc}") from None

    @classmethod
    def over(cls, read: Callable[[int, int], bytes], nbits: int) -> PfnBitmap:
        """A read-only bitmap whose bytes ``read(offset, size)`` returns (a
        region of a dump file): loaded whole when small, else read a window
        at a time, the last window cached."""
        nbytes = (nbits + 7) // 8
        if nbytes <= MEMORY_LIMIT:
            return cls.from_bytes(read(0, nbytes), nbits)
        bitmap = cls(0)
        bitmap.nbits, bitmap.nbytes, bitmap._array = nbits, nbytes, None
        bitmap._reader = read
        return bitmap

    def empty_like(self) -> PfnBitmap:
        """A new, clear bitmap of the same size, stored the same way."""
        if self._array is not None or self._reader is not None:
            return PfnBitmap(self.nbits, directory=self._directory)
        return PfnBitmap(self.nbits, directory=self._directory, memory_limit=0)

    @classmethod
    def from_bytes(cls, packed: bytes | bytearray | memoryview, nbits: int) -> PfnBitmap:
        """An in-memory bitmap holding a copy of the packed bytes ``packed``
        (bits past ``nbits`` cleared; missing bytes are zero)."""
        bitmap = cls(nbits, memory_limit=max(MEMORY_LIMIT, (nbits + 7) // 8))
        src = memoryview(packed).cast("B")
        take = min(len(src), bitmap.nbytes)
        assert bitmap._array is not None
        bitmap._array[:take] = src[:take]
        if nbits % 8 and bitmap.nbytes:
            bitmap._array[-1] &= (1 << (nbits % 8)) - 1
        return bitmap

    def counts(self, block: int) -> array[int]:
        """Set bits per ``block`` pfns (a multiple of 8), for a rank index:
        entry ``i`` covers pfns ``[i * block, (i + 1) * block)``."""
        if block <= 0 or block % 8:
            raise ValueError("count blocks are a positive multiple of 8 pfns")
        per = block // 8
        out = array("q", bytes(8 * -(-self.nbytes // per)))
        size = max(WINDOW_BYTES // per, 1) * per
        for offset, window in self.windows(size, data_only=True):
            view = memoryview(window)
            sums = array("q", [int.from_bytes(view[at:at + per], "little").bit_count()
                               for at in range(0, len(view), per)])
            out[offset // per:offset // per + len(sums)] = sums
        return out

    @property
    def in_memory(self) -> bool:
        return self._array is not None

    # -- bytes ------------------------------------------------------------------

    def read(self, offset: int, size: int) -> bytearray:
        """Bytes [offset, offset + size) (a copy), zeros past the end."""
        end = min(self.nbytes, offset + size)
        if offset >= end:
            return bytearray(max(size, 0))
        if self._array is not None:
            out = self._array[offset:end]
            if len(out) < size:
                out += bytes(size - len(out))
            return out
        out = bytearray(max(size, 0))
        if self._reader is not None:
            self._read_through(offset, end, out)
            return out
        self._pread_into(offset, memoryview(out)[:end - offset])
        return out

    def _pread_into(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` from the temporary file (sized on creation: a short
        read is an error of the file system, not a hole)."""
        done = 0
        try:
            while done < len(buf):
                got = os.preadv(self._fd, [buf[done:]], offset + done)
                if not got:
                    raise OSError(0, f"the file ends at {offset + done:#x}")
                done += got
        except OSError as exc:
            raise DumpError(self._name, f"page bitmap read failed: "
                                        f"{exc.strerror or exc}") from None

    def _read_through(self, offset: int, end: int, out: bytearray) -> None:
        """Fill ``out`` with bytes [offset, end) of a read-only bitmap, a
        cached window at a time (lookups of single pfns stay cheap)."""
        assert self._reader is not None
        at = offset
        while at < end:
            base = at // WINDOW_BYTES * WINDOW_BYTES
            if self._cached is None or self._cached[0] != base:
                size = min(WINDOW_BYTES, self.nbytes - base)
                window = bytearray(self._reader(base, size))
                if base + size == self.nbytes and self.nbits % 8:
                    window[-1] &= (1 << (self.nbits % 8)) - 1
                self._cached = (base, window)
            window = self._cached[1]
            stop = min(end, base + len(window))
            out[at - offset:stop - offset] = window[at - base:stop - base]
            at = stop

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Store packed bytes at ``offset`` (within the bitmap)."""
        if offset < 0 or offset + len(data) > self.nbytes:
            raise ValueError("write past the end of the bitmap")
        if self._reader is not None:
            raise ValueError("a bitmap inside a dump file is read-only")
        if self._array is not None:
            self._array[offset:offset + len(data)] = data
            return
        view = memoryview(data).cast("B")
        try:
            while view:
                n = os.pwrite(self._fd, view, offset)
                view, offset = view[n:], offset + n
        except OSError as exc:
            raise DumpError(self._name, f"page bitmap write failed: "
                                        f"{exc.strerror or exc}") from None

    def windows(self, size: int = WINDOW_BYTES, *, data_only: bool = False,
                start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytearray]]:
        """``(byte offset, bytes)`` over bytes [start, end) (default: all),
        ``size`` bytes at a time.  ``data_only``: skip windows that are
        certainly zero (holes of the temporary file, found with SEEK_DATA), so
        walking a mostly empty 16 TiB map costs what its populated part does."""
        end = self.nbytes if end is None else min(end, self.nbytes)
        offset = start
        while offset < end:
            if data_only and self._fd >= 0:
                try:
                    found = os.lseek(self._fd, offset, os.SEEK_DATA)
                except OSError:                 # ENXIO: only holes from here on
                    return
                if found >= end:
                    return
                offset = max(offset, start + (found - start) // size * size)
            n = min(size, end - offset)
            yield offset, self.read(offset, n)
            offset += n

    # -- bits -------------------------------------------------------------------

    def first_clear(self, start: int, end: int) -> int:
        """The first pfn of [start, end) whose bit is clear (pfns past the
        bitmap are clear), or ``end`` if there is none."""
        if start >= end:
            return end
        first = start // 8
        packed = self.read(first, (end + 7) // 8 - first)
        count = end - start
        clear = ~(int.from_bytes(packed, "little") >> (start - first * 8)) & ((1 << count) - 1)
        return start + (clear & -clear).bit_length() - 1 if clear else end

    def clear(self, pfn: int) -> None:
        if 0 <= pfn < self.nbits:
            byte = self.read(pfn // 8, 1)
            byte[0] &= ~(1 << (pfn % 8)) & 0xFF
            self.write(pfn // 8, byte)

    def popcount(self) -> int:
        """Set bits."""
        return sum(popcount(w) for _, w in self.windows(data_only=True))

    def runs(self, start: int = 0, end: int | None = None,
             window: int = WINDOW_BYTES * 8) -> Iterator[tuple[int, int]]:
        """``(first_pfn, count)`` for each run of set bits in [start, end),
        found a window at a time (``window`` pfns, rounded to bytes; holes
        skipped); runs crossing windows are joined."""
        end = self.nbits if end is None else min(end, self.nbits)
        if start >= end:
            return
        pending: tuple[int, int] | None = None
        for offset, packed in self.windows(max(window // 8, 1), data_only=True,
                                           start=start // 8, end=(end + 7) // 8):
            for a, n in bit_runs(packed, offset * 8):
                b = min(a + n, end)
                a = max(a, start)
                if a >= b:
                    continue
                if pending is not None and pending[0] + pending[1] == a:
                    pending = (pending[0], pending[1] + b - a)
                    continue
                if pending is not None:
                    yield pending
                pending = (a, b - a)
        if pending is not None:
            yield pending

    def is_subset_of(self, other: PfnBitmap) -> bool:
        """No bit set here that ``other`` lacks."""
        for offset, mine in self.windows(data_only=True):
            theirs = other.read(offset, len(mine))
            if int.from_bytes(mine, "little") & ~int.from_bytes(theirs, "little"):
                return False
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._array = None

    def __enter__(self) -> PfnBitmap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
