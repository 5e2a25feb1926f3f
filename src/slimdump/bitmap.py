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
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator

import numpy as np

from slimdump.errors import DumpError
from slimdump.sources.rawfile import RawFile

# Bitmaps up to this many bytes stay in memory (two of them: 16 MiB, enough
# for 256 GiB of physical address space).
MEMORY_LIMIT = 8 << 20
# Bytes per window when a whole bitmap is walked (8 Mi pfns).
WINDOW_BYTES = 1 << 20

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


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
        self._array: np.ndarray | None = None
        self._reader: Callable[[int, int], bytes] | None = None
        self._cached: tuple[int, np.ndarray] | None = None
        self._fd = -1
        self._file: RawFile | None = None       # the temporary file, for reads
        self._directory = directory
        self._name = directory or tempfile.gettempdir()
        if self.nbytes <= (MEMORY_LIMIT if memory_limit is None else memory_limit):
            self._array = np.zeros(self.nbytes, np.uint8)
            return
        try:
            self._fd, path = tempfile.mkstemp(prefix=".slimdump-bitmap-", dir=directory)
            os.unlink(path)
            os.ftruncate(self._fd, self.nbytes)
            self._file = RawFile(self._name, self._fd, self.nbytes)
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
            return cls.from_array(np.frombuffer(read(0, nbytes), np.uint8), nbits)
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
    def from_array(cls, packed: np.ndarray | bytes | bytearray, nbits: int) -> PfnBitmap:
        """An in-memory bitmap holding a copy of ``packed`` (bits past
        ``nbits`` cleared; missing bytes are zero)."""
        bitmap = cls(nbits, memory_limit=max(MEMORY_LIMIT, (nbits + 7) // 8))
        src = np.frombuffer(bytes(packed), np.uint8) if not isinstance(packed, np.ndarray) \
            else packed.astype(np.uint8, copy=False).reshape(-1)
        take = min(len(src), bitmap.nbytes)
        assert bitmap._array is not None
        bitmap._array[:take] = src[:take]
        if nbits % 8 and bitmap.nbytes:
            bitmap._array[-1] &= (1 << (nbits % 8)) - 1
        return bitmap

    def counts(self, block: int) -> np.ndarray:
        """Set bits per ``block`` pfns (a multiple of 8), int64, for a rank
        index: block ``i`` covers pfns ``[i * block, (i + 1) * block)``."""
        if block <= 0 or block % 8:
            raise ValueError("count blocks are a positive multiple of 8 pfns")
        per = block // 8
        out = np.zeros(-(-self.nbytes // per), np.int64)
        size = max(WINDOW_BYTES // per, 1) * per
        for offset, window in self.windows(size, data_only=True):
            pad = (-len(window)) % per
            counts = _POPCOUNT[np.concatenate([window, np.zeros(pad, np.uint8)])]
            sums = counts.reshape(-1, per).sum(axis=1, dtype=np.int64)
            out[offset // per:offset // per + len(sums)] = sums
        return out

    @property
    def in_memory(self) -> bool:
        return self._array is not None

    # -- bytes ------------------------------------------------------------------

    def read(self, offset: int, size: int) -> np.ndarray:
        """Bytes [offset, offset + size) as a uint8 array (a copy), zeros past
        the end."""
        out = np.zeros(max(size, 0), np.uint8)
        end = min(self.nbytes, offset + size)
        if offset >= end:
            return out
        if self._array is not None:
            out[:end - offset] = self._array[offset:end]
            return out
        if self._reader is not None:
            self._read_through(offset, end, out)
            return out
        assert self._file is not None
        self._file.read_into(offset, memoryview(out)[:end - offset], what="page bitmap")
        return out

    def _read_through(self, offset: int, end: int, out: np.ndarray) -> None:
        """Fill ``out`` with bytes [offset, end) of a read-only bitmap, a
        cached window at a time (lookups of single pfns stay cheap)."""
        assert self._reader is not None
        at = offset
        while at < end:
            base = at // WINDOW_BYTES * WINDOW_BYTES
            if self._cached is None or self._cached[0] != base:
                size = min(WINDOW_BYTES, self.nbytes - base)
                window = np.frombuffer(self._reader(base, size), np.uint8).copy()
                if base + size == self.nbytes and self.nbits % 8:
                    window[-1] &= (1 << (self.nbits % 8)) - 1
                self._cached = (base, window)
            window = self._cached[1]
            stop = min(end, base + len(window))
            out[at - offset:stop - offset] = window[at - base:stop - base]
            at = stop

    def write(self, offset: int, data: np.ndarray | bytes) -> None:
        """Store bytes at ``offset`` (within the bitmap)."""
        packed = np.frombuffer(data, np.uint8) if isinstance(data, bytes | bytearray) \
            else data.astype(np.uint8, copy=False)
        if offset < 0 or offset + len(packed) > self.nbytes:
            raise ValueError("write past the end of the bitmap")
        if self._reader is not None:
            raise ValueError("a bitmap inside a dump file is read-only")
        if self._array is not None:
            self._array[offset:offset + len(packed)] = packed
            return
        raw = packed.tobytes()
        try:
            while raw:
                n = os.pwrite(self._fd, raw, offset)
                raw, offset = raw[n:], offset + n
        except OSError as exc:
            raise DumpError(self._name, f"page bitmap write failed: "
                                        f"{exc.strerror or exc}") from None

    def windows(self, size: int = WINDOW_BYTES, *, data_only: bool = False,
                start: int = 0, end: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
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

    def bits(self, start: int, count: int) -> np.ndarray:
        """bool[count] for pfns [start, start + count), False past the end."""
        if count <= 0:
            return np.zeros(0, np.bool_)
        first = start // 8
        packed = self.read(first, (start + count + 7) // 8 - first)
        bits = np.unpackbits(packed, bitorder="little")[start - first * 8:][:count]
        return bits.astype(np.bool_)

    def set_bits(self, start: int, bits: np.ndarray) -> None:
        """Store bool ``bits`` for pfns from ``start``, a multiple of 8."""
        if start % 8:
            raise ValueError("bits are stored from a multiple of 8")
        self.write(start // 8, np.packbits(bits, bitorder="little"))

    def clear(self, pfn: int) -> None:
        if 0 <= pfn < self.nbits:
            byte = self.read(pfn // 8, 1)
            byte[0] &= ~np.uint8(1 << (pfn % 8))
            self.write(pfn // 8, byte)

    def popcount(self) -> int:
        """Set bits."""
        return sum(int(_POPCOUNT[w].sum(dtype=np.int64))
                   for _, w in self.windows(data_only=True))

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
            if not packed.any():
                continue
            lo = offset * 8
            # bits with a clear bit either side; edges where neighbours differ
            # (int8 throughout: np.diff with prepend=0 would widen to int64)
            padded = np.zeros(len(packed) * 8 + 2, np.int8)
            padded[1:-1] = np.unpackbits(packed, bitorder="little")
            padded[1:1 + max(start - lo, 0)] = 0
            padded[1 + min(end - lo, len(packed) * 8):] = 0
            edges = np.flatnonzero(padded[1:] != padded[:-1])
            for a, b in zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True):
                if pending is not None and pending[0] + pending[1] == lo + a:
                    pending = (pending[0], pending[1] + b - a)
                    continue
                if pending is not None:
                    yield pending
                pending = (lo + a, b - a)
        if pending is not None:
            yield pending

    def is_subset_of(self, other: PfnBitmap) -> bool:
        """No bit set here that ``other`` lacks."""
        for offset, mine in self.windows(data_only=True):
            if (mine & ~other.read(offset, len(mine))).any():
                return False
        return True

    def to_array(self) -> np.ndarray:
        """The whole packed bitmap in memory (for small bitmaps and tests)."""
        return self._array.copy() if self._array is not None else self.read(0, self.nbytes)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._file = None
        self._array = None

    def __enter__(self) -> PfnBitmap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
