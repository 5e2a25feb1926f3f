"""Flattened dump streams (makedumpfile -F) read in place, without -R.

Opening indexes the records (16-byte headers only: payloads are skipped,
never loaded), resolves overlaps the way rearranging would (a later record
wins), and presents the logical file through :class:`FlatStream`, which has
the counted ``read_at`` of :class:`~slimdump.sources.rawfile.RawFile`.  The
dump inside is then read by the ordinary source: :class:`FlatFile` (a
:class:`~slimdump.sources.kdump.KdumpFile`) for kdump-compressed content,
:class:`~slimdump.sources.elfcore.ElfCore` for a flattened -E file.
Unwritten ranges read as zeros, as holes do in the rearranged file.
"""

from __future__ import annotations

import heapq
import itertools
import struct
from bisect import bisect_right

from slimdump.errors import DumpError, SourceReadError
from slimdump.sources.base import DumpSource
from slimdump.sources.elfcore import ElfCore
from slimdump.sources.kdump import KdumpFile
from slimdump.sources.kdump_headers import DISKDUMP_SIGNATURE, KDUMP_SIGNATURE
from slimdump.sources.rawfile import RawFile

FLAT_SIGNATURE = b"makedumpfile\0\0\0\0"
FLAT_HEADER_SIZE = 4096
TYPE_FLAT_HEADER = 1
_RECORD = struct.Struct(">qq")
_MAX_OFFSET = 1 << 62


class FlatStream:
    """The file a flattened stream describes, readable like a RawFile
    (``read_at``, ``read_into``, ``size``, the counts; no ``fd``: nothing
    may read the stream's bytes as if they were the file's).

    ``size`` is the logical file size (the furthest record end);
    ``stream_size`` the stream's; ``complete`` says whether the end marker
    was found (a stream cut short is indexed as far as it goes).
    """

    def __init__(self, raw: RawFile) -> None:
        self.raw = raw
        self.path = raw.path
        self.stream_size = raw.size
        head = raw.read_at(0, FLAT_HEADER_SIZE, what="flattened header", allow_short=True)
        if not head.startswith(FLAT_SIGNATURE):
            raise DumpError(self.path, "not a makedumpfile flattened stream")
        if len(head) < len(FLAT_SIGNATURE) + 16:
            raise DumpError(self.path, f"truncated flattened header ({len(head)} bytes)")
        kind = struct.unpack_from(">q", head, len(FLAT_SIGNATURE))[0]
        if kind != TYPE_FLAT_HEADER:
            raise DumpError(self.path, f"flattened header has type {kind}, not "
                                       f"{TYPE_FLAT_HEADER}")
        self.complete = False
        self.records = self._scan()
        self._build_index()

    def _scan(self) -> list[tuple[int, int, int]]:
        """``[(offset, size, stream_position)]`` in stream order."""
        records: list[tuple[int, int, int]] = []
        pos, end = FLAT_HEADER_SIZE, self.raw.size
        while pos + _RECORD.size <= end:
            offset, size = _RECORD.unpack(self.raw.read_at(pos, _RECORD.size,
                                                           what="flattened record header"))
            if offset == -1 and size == -1:
                self.complete = True
                break
            if offset < 0 or size <= 0 or offset + size > _MAX_OFFSET:
                raise DumpError(self.path, f"flattened record at stream offset {pos:#x} "
                                           f"claims {size} bytes at offset {offset}")
            payload = pos + _RECORD.size
            size = min(size, end - payload)          # a stream cut inside a record
            if size > 0:
                records.append((offset, size, payload))
            pos = payload + size
        return records

    def _build_index(self) -> None:
        """Sorted, non-overlapping pieces ``(start, end, stream_position)``;
        where records overlap, the later one's bytes win."""
        recs = self.records
        order = sorted(range(len(recs)), key=lambda i: recs[i][0])
        overlapping = any(recs[a][0] + recs[a][1] > recs[b][0]
                          for a, b in itertools.pairwise(order))
        pieces: list[tuple[int, int, int]] = []
        if not overlapping:
            pieces = [(recs[i][0], recs[i][0] + recs[i][1], recs[i][2]) for i in order]
        else:
            # sweep over all boundaries; the active record with the highest
            # stream index owns each elementary interval
            bounds = sorted({b for off, size, _ in recs for b in (off, off + size)})
            starts: dict[int, list[int]] = {}
            for i, (off, _, _) in enumerate(recs):
                starts.setdefault(off, []).append(i)
            active: list[int] = []
            for lo, hi in itertools.pairwise(bounds):
                for i in starts.get(lo, ()):
                    heapq.heappush(active, -i)
                while active and recs[-active[0]][0] + recs[-active[0]][1] <= lo:
                    heapq.heappop(active)
                if not active:
                    continue
                off, _, stream_pos = recs[-active[0]]
                at = stream_pos + lo - off
                if pieces and pieces[-1][1] == lo and pieces[-1][2] + lo - pieces[-1][0] == at:
                    pieces[-1] = (pieces[-1][0], hi, pieces[-1][2])
                else:
                    pieces.append((lo, hi, at))
        self._starts = [p[0] for p in pieces]
        self._pieces = pieces
        self.size = pieces[-1][1] if pieces else 0

    @property
    def bytes_read(self) -> int:
        return self.raw.bytes_read

    @property
    def reads(self) -> int:
        return self.raw.reads

    def read_at(self, offset: int, size: int, *, what: str = "data",
                allow_short: bool = False) -> bytes:
        """``size`` bytes of the logical file at ``offset``; zeros where no
        record wrote; DumpError past the logical end unless ``allow_short``."""
        if offset < 0:
            raise SourceReadError(self.path, f"{what} at offset {offset:#x} lies beyond any "
                                             "file")
        end = offset + size
        if end > self.size:
            if not allow_short:
                raise SourceReadError(self.path, f"truncated: {what} needs bytes {offset:#x}-"
                                                 f"{end:#x} but the flattened stream only "
                                                 f"holds data up to {self.size:#x}")
            end = max(offset, self.size)
        out = bytearray(end - offset)
        index = max(0, bisect_right(self._starts, offset) - 1)
        while index < len(self._pieces):
            lo, hi, at = self._pieces[index]
            if lo >= end:
                break
            a, b = max(lo, offset), min(hi, end)
            if a < b:
                out[a - offset:b - offset] = self.raw.read_at(at + a - lo, b - a, what=what)
            index += 1
        return bytes(out)

    def read_into(self, offset: int, buf: memoryview, *, what: str = "data") -> None:
        """:meth:`read_at` of ``len(buf)`` bytes into ``buf``, as
        :meth:`RawFile.read_into <slimdump.sources.rawfile.RawFile.read_into>`
        (what :class:`~slimdump.sources.elfcore.ElfCore` reads pages with)."""
        buf[:] = self.read_at(offset, len(buf), what=what)

    def close(self) -> None:
        self.raw.close()


class FlatFile(KdumpFile):
    """A flattened kdump-compressed dump (Debian's kdump-tools default)."""

    format = "flattened"

    def __init__(self, stream: FlatStream) -> None:
        self.stream = stream
        super().__init__(stream)

    @property
    def truncated(self) -> bool:
        return not self.stream.complete or super().truncated


def open_flattened(raw: RawFile) -> DumpSource:
    """The dump inside a flattened stream: a :class:`FlatFile` for
    kdump-compressed content, an :class:`ElfCore` for a flattened ELF (-E -F)."""
    stream = FlatStream(raw)
    magic = stream.read_at(0, 8, what="file signature", allow_short=True)
    if magic in (KDUMP_SIGNATURE, DISKDUMP_SIGNATURE):
        return FlatFile(stream)
    if magic[:4] == b"\x7fELF":
        core = ElfCore(stream)  # type: ignore[arg-type]
        core.format = "flattened-elf"
        return core
    if not stream.records:
        raise DumpError(raw.path, "flattened stream holds no data")
    raise DumpError(raw.path, f"flattened stream holds no dump (first bytes {magic.hex()})")
