"""kdump-compressed dump files ("KDUMP   ", makedumpfile's default output).

Layout (reference section 2): the disk_dump_header in block 0, the
kdump_sub_header at block 1 followed by a copy of the vmcore's merged note
area, the 1st bitmap (pages that exist) and the 2nd bitmap (pages dumped),
block aligned, then one 24-byte page descriptor per dumped page, then the
page data, each page compressed on its own (or not).

Every field is in the crashed machine's byte order and C layout, which the
file does not state: the byte order is the one in which header_version reads
as a small number, the word size follows from ``utsname.machine`` (64-bit
machines, i386's 4-byte packing, or the 8-byte alignment of ARM and other
32-bit ABIs), and for unknown machines from which layout gives a sane block
size.  The binary layouts live in :mod:`slimdump.sources.kdump_headers`
(shared with :mod:`slimdump.writers.kdump`).

Opening reads the headers, the notes and both bitmaps; pages are read only
by :meth:`KdumpFile.read_phys`, which finds a page's descriptor by counting
set bits of the 2nd bitmap below its pfn (a prefix count every 4096 pfns, as
crash does).  Every size and offset is checked against the file first, so a
hostile or truncated file gives a one-line :class:`DumpError`.
"""

from __future__ import annotations

import struct
from array import array
from collections import OrderedDict
from collections.abc import Callable
from itertools import accumulate
from operator import add
from typing import Protocol

from slimdump.bitmap import PfnBitmap
from slimdump.codecs import CODECS, DUMP_DH_COMPRESSED_INCOMPLETE
from slimdump.elf import (
    ET_CORE,
    EV_CURRENT,
    ElfFormatError,
    ElfHeader,
    Note,
    align4,
    parse_notes,
)
from slimdump.errors import DumpError, NotInDump
from slimdump.sources.base import DumpSource, Segment
from slimdump.sources.kdump_headers import (
    DISKDUMP_SIGNATURE,
    DL_EXCLUDE_ZERO,
    HEADER_VERSION,
    KDUMP_SIGNATURE,
    PAGE_DESC_SIZE,
    DiskDumpHeader,
    KdumpSubHeader,
    PageDescriptors,
    detect_abi,
    machine_info,
)
from slimdump.sources.kdump_pages import Lost, read_described

# More than this in a note area or eraseinfo is not something makedumpfile writes.
MAX_METADATA = 256 << 20
PREFIX_BLOCK = 4096          # pfns per prefix-count entry


class RawLike(Protocol):
    """What a kdump file is read through: :class:`RawFile`, or a view of a
    flattened stream (:class:`slimdump.sources.flat.FlatStream`)."""

    path: str
    size: int
    bytes_read: int

    def read_at(self, offset: int, size: int, *, what: str = "data",
                allow_short: bool = False) -> bytes: ...

    def close(self) -> None: ...


class KdumpFile(DumpSource):
    """A kdump-compressed (or old diskdump) file opened for reading."""

    format = "kdump"

    def __init__(self, raw: RawLike) -> None:
        self.raw = raw
        self.path = raw.path
        self.size = raw.size
        block0 = raw.read_at(0, 1024, what="kdump header", allow_short=True)
        if len(block0) < 464:
            raise DumpError(self.path, f"truncated kdump header ({len(block0)} bytes)")
        if block0[:8] not in (KDUMP_SIGNATURE, DISKDUMP_SIGNATURE):
            raise DumpError(self.path, "not a kdump-compressed file (no KDUMP signature)")
        self.is_kdump = block0[:8] == KDUMP_SIGNATURE
        self.abi, machine = detect_abi(self.path, block0)
        self._desc_format = struct.Struct(self.abi.endian + "qII8x")
        self.dump_header = DiskDumpHeader.unpack(block0, self.abi)
        hdr = self.dump_header
        self.header_version = hdr.header_version
        if self.is_kdump and not hdr.header_version >= 1:
            raise DumpError(self.path, f"kdump header version {hdr.header_version} is not one "
                                       f"makedumpfile writes (1 to {HEADER_VERSION})")
        self.block_size = bs = hdr.block_size
        if not (1024 <= bs <= 1 << 20 and bs & (bs - 1) == 0):
            raise DumpError(self.path, f"kdump block size {bs} is not a page size")
        if hdr.sub_hdr_size < 0 or hdr.bitmap_blocks <= 0:
            raise DumpError(self.path, f"kdump header claims {hdr.sub_hdr_size} sub-header "
                                       f"blocks and {hdr.bitmap_blocks} bitmap blocks")
        self.bitmap_offset = (1 + hdr.sub_hdr_size) * bs
        self.desc_offset = self.bitmap_offset + hdr.bitmap_blocks * bs
        if self.desc_offset > self.size:
            raise DumpError(self.path, f"truncated: the kdump bitmaps end at {self.desc_offset:#x}"
                                       f" but the file ends at {self.size:#x}")
        self.utsname = hdr.utsname
        self.crashtime = hdr.tv_sec
        self.status = hdr.status
        self.sub_header = self._read_sub_header()
        sub = self.sub_header
        self.max_mapnr = (sub.max_mapnr_64 if self.header_version >= 6 and self.is_kdump
                          else hdr.max_mapnr)
        self.dump_level = sub.dump_level
        self.split = bool(sub.split)
        self._read_bitmaps()
        self.note_area = self._read_note_area()
        self.notes = self._parse_notes()
        self.header = self._elf_header(machine)
        self.segments = [Segment(start * bs, 0, count * bs, 0, count * bs)
                         for start, count in self.bitmap1.runs()]
        self._cache: OrderedDict[int, bytes] = OrderedDict()

    # -- opening ---------------------------------------------------------------

    def _read_sub_header(self) -> KdumpSubHeader:
        if not self.is_kdump or self.dump_header.sub_hdr_size == 0:
            return KdumpSubHeader()
        size = self.abi.sub_header_size
        if self.dump_header.sub_hdr_size * self.block_size < size:
            raise DumpError(self.path, f"kdump sub header ({size} bytes) does not fit in "
                                       f"{self.dump_header.sub_hdr_size} block(s)")
        data = self.raw.read_at(self.block_size, size, what="kdump sub header")
        sub = KdumpSubHeader.unpack(data, self.abi, self.header_version)
        for name in ("vmcoreinfo", "note", "eraseinfo"):
            offset, length = getattr(sub, f"offset_{name}"), getattr(sub, f"size_{name}")
            if length == 0:
                continue
            if length > MAX_METADATA or offset < 0 or offset + length > self.size:
                raise DumpError(self.path, f"kdump sub header puts {length} bytes of {name} at "
                                           f"offset {offset:#x}, outside the file "
                                           f"({self.size} bytes)")
        return sub

    def _read_bitmaps(self) -> None:
        bs, hdr = self.block_size, self.dump_header
        if self.max_mapnr <= 0:
            raise DumpError(self.path, f"kdump header claims max_mapnr {self.max_mapnr}")
        nbytes = (self.max_mapnr + 7) // 8
        one = (nbytes + bs - 1) // bs                  # blocks of one bitmap
        two_bitmaps = hdr.bitmap_blocks >= 2 * one
        capacity = (hdr.bitmap_blocks // 2 if two_bitmaps else hdr.bitmap_blocks) * bs
        if nbytes > capacity:
            raise DumpError(self.path, f"kdump bitmaps ({hdr.bitmap_blocks} blocks) are too "
                                       f"small for max_mapnr {self.max_mapnr}")
        def region(offset: int, what: str) -> Callable[[int, int], bytes]:
            return lambda at, size: self.raw.read_at(offset + at, size, what=what)

        # small bitmaps are loaded, large ones read a window at a time: a
        # saved dump of a 16 TiB memory map holds 512 MiB bitmaps
        self.bitmap1 = PfnBitmap.over(region(self.bitmap_offset, "1st bitmap"),
                                      self.max_mapnr)
        self.bitmap2 = (PfnBitmap.over(region(self.bitmap_offset + hdr.bitmap_blocks // 2 * bs,
                                              "2nd bitmap"), self.max_mapnr)
                        if two_bitmaps else self.bitmap1)
        # rank index: set bits before each block of pfns, at most ~1M blocks
        block = PREFIX_BLOCK
        while -(-self.max_mapnr // block) > 1 << 20:
            block *= 2
        self._prefix_block = block
        self._prefix = array("q", accumulate(self.bitmap2.counts(block), initial=0))
        if self.split:
            first, last = self.sub_header.start_pfn_64, self.sub_header.end_pfn_64
            if self.header_version < 6:
                first, last = self.sub_header.start_pfn, self.sub_header.end_pfn
            if not 0 <= first <= last <= self.max_mapnr:
                raise DumpError(self.path, f"kdump sub header says this --split part holds "
                                           f"pfns {first:#x}-{last:#x}, outside 0-"
                                           f"{self.max_mapnr:#x}")
            self.pfn_range = (first, last)
        else:
            self.pfn_range = (0, self.max_mapnr)
        self._first_pos = self._rank(self.pfn_range[0])
        self.num_dumpable = self._rank(self.pfn_range[1]) - self._first_pos
        self.total_dumpable = int(self._prefix[-1])
        self.data_offset = self.desc_offset + PAGE_DESC_SIZE * self.total_dumpable

    def _read_note_area(self) -> bytes:
        sub = self.sub_header
        if self.header_version >= 4 and sub.size_note:
            return self.raw.read_at(sub.offset_note, sub.size_note, what="kdump notes")
        return b""

    def _parse_notes(self) -> list[Note]:
        sub = self.sub_header
        if self.note_area:
            try:
                return parse_notes(self.note_area, self.abi.endian, sub.offset_note)
            except ElfFormatError as exc:
                raise DumpError(self.path, str(exc)) from None
        if self.header_version >= 3 and sub.size_vmcoreinfo:
            # version 3 files keep VMCOREINFO alone: present it as the note
            desc = self.raw.read_at(sub.offset_vmcoreinfo, sub.size_vmcoreinfo,
                                    what="VMCOREINFO")
            return [Note(b"VMCOREINFO\0", 0, desc,
                         sub.offset_vmcoreinfo - 12 - align4(len(b"VMCOREINFO\0")))]
        return []

    def _elf_header(self, machine: str | None) -> ElfHeader:
        e_machine = machine_info(machine)[0] if machine and machine_info(machine) else 0
        elf64 = self.abi.elf64
        return ElfHeader(elf64, self.abi.endian, 0, ET_CORE, e_machine, EV_CURRENT, 0,
                         0, 0, 0, 64 if elf64 else 52, 56 if elf64 else 32, 0, 0, 0, 0)

    # -- facts -----------------------------------------------------------------

    @property
    def phys_base(self) -> int:
        """phys_base as the signed number VMCOREINFO states."""
        value, bits = self.sub_header.phys_base, 64 if self.abi.elf64 else 32
        return value - (1 << bits) if value >> (bits - 1) else value

    @property
    def compression(self) -> str:
        """The compression method the header's status names ("none" if none)."""
        for codec in CODECS.values():
            if codec.flag and self.status & codec.flag:
                return codec.name
        return "none"

    @property
    def incomplete(self) -> bool:
        """makedumpfile ran out of space (or hit -L) while writing the file."""
        return bool(self.status & DUMP_DH_COMPRESSED_INCOMPLETE)

    @property
    def nr_cpus(self) -> int:
        return self.dump_header.nr_cpus

    @property
    def eraseinfo(self) -> bytes:
        sub = self.sub_header
        if self.header_version < 5 or not sub.size_eraseinfo:
            return b""
        return self.raw.read_at(sub.offset_eraseinfo, sub.size_eraseinfo, what="eraseinfo")

    @property
    def bytes_read(self) -> int:
        return self.raw.bytes_read

    @property
    def data_end(self) -> int:
        """Where the headers say the data ends: the descriptor table, the end
        of the furthest of the last (up to 4096) pages' data, eraseinfo."""
        end = self.data_offset
        if self.dump_level & DL_EXCLUDE_ZERO:   # the shared zero page comes first
            end += self.block_size
        count = min(self.num_dumpable, PREFIX_BLOCK)
        first = self.num_dumpable - count
        table_end = self.desc_offset + PAGE_DESC_SIZE * (first + count)
        if count and table_end <= self.size:
            descs = self.descriptors(first, count)
            end = max(end, max(map(add, descs.offsets, descs.sizes)))
        else:
            end = max(end, table_end)
        sub = self.sub_header
        if sub.size_eraseinfo:
            end = max(end, sub.offset_eraseinfo + sub.size_eraseinfo)
        return end

    # -- --split parts ---------------------------------------------------------

    @property
    def holds_all(self) -> bool:
        """The file holds every dumped page: a whole dump, or the one part of
        a --split set that got them all (the others are empty)."""
        return self.pfn_range == (0, self.max_mapnr)

    def split_range_text(self) -> str:
        """This part's pfns as one phrase (inclusive ends, hex)."""
        lo, hi = self.pfn_range
        if lo == hi:
            return "no pages (an empty part)"
        return f"pfns {lo:#x}-{hi - 1:#x} ({self.num_dumpable} of the set's " \
               f"{self.total_dumpable} dumped pages)"

    def split_facts(self) -> dict[str, object] | None:
        """What the sub header says about the --split set (None if not a part).

        The format records a part's pfn range, not its number nor how many
        parts there are: ``position`` is told from the range (the first part
        starts at pfn 0, the last ends at max_mapnr)."""
        if not self.split:
            return None
        lo, hi = self.pfn_range
        position = ("only" if self.holds_all else "empty" if lo == hi else
                    "first" if lo == 0 else "last" if hi == self.max_mapnr else "middle")
        return {"part": position, "pfn_start": lo, "pfn_end": hi, "max_mapnr": self.max_mapnr,
                "pages": self.num_dumpable, "set_pages": self.total_dumpable}

    def split_text(self) -> str | None:
        """One line for ``inspect`` about a part opened alone (None if not a part)."""
        facts = self.split_facts()
        if facts is None:
            return None
        if facts["part"] == "only":
            return ("one part of a makedumpfile --split set, holding every dumped page "
                    "(the other parts are empty)")
        where = {"first": "the first part", "last": "the last part", "empty": "an empty part",
                 "middle": "a middle part"}[str(facts["part"])]
        return (f"{where} of a makedumpfile --split set: it holds {self.split_range_text()}; "
                "give every part together to read the rest")

    def is_dumped(self, pfn: int) -> bool:
        """The page is in the 2nd bitmap (and in this file's split range)."""
        if not self.pfn_range[0] <= pfn < self.pfn_range[1]:
            return False
        return bool(self.bitmap2.read(pfn >> 3, 1)[0] >> (pfn & 7) & 1)

    def _rank(self, pfn: int) -> int:
        """Set bits of the 2nd bitmap below ``pfn`` (0 <= pfn <= max_mapnr)."""
        block = pfn // self._prefix_block
        first_byte, last_byte = block * (self._prefix_block // 8), pfn >> 3
        rank = int(self._prefix[block])
        if last_byte > first_byte or pfn & 7:
            part = self.bitmap2.read(first_byte, last_byte - first_byte + 1)
            rank += int.from_bytes(part[:-1], "little").bit_count()
            if pfn & 7:
                rank += (part[-1] & ((1 << (pfn & 7)) - 1)).bit_count()
        return rank

    @property
    def first_slot(self) -> int:
        """The descriptor slot of this file's first page in the whole dump's
        table (a --split part writes its descriptors from slot 0)."""
        return self._first_pos

    def descriptors(self, pos: int, count: int) -> PageDescriptors:
        """``count`` page descriptors of this file from slot ``pos``, unchecked."""
        return PageDescriptors(self._descriptor_bytes(pos, count), self.abi.endian)

    def _descriptor_bytes(self, pos: int, count: int) -> bytes:
        return self.raw.read_at(self.desc_offset + PAGE_DESC_SIZE * pos, PAGE_DESC_SIZE * count,
                                what="page descriptors")

    # -- reading ---------------------------------------------------------------

    def pages(self, pfn: int, count: int) -> list[bytes]:
        """``count`` consecutive dumped pages from ``pfn``; NotInDump at the
        first page the file does not hold, PageLost or SourceReadError at the
        first it holds but cannot give."""
        bs = self.block_size
        buf = bytearray(max(count, 0) * bs)
        lost = self.read_pages_lost(pfn, count, memoryview(buf))
        if lost:
            raise lost[0][1]
        return [bytes(buf[i * bs:(i + 1) * bs]) for i in range(max(count, 0))]

    def _require_dumped(self, pfn: int, count: int) -> None:
        """NotInDump unless every page of [pfn, pfn + count) is dumped in this file."""
        lo, hi = self.pfn_range
        end = pfn + count
        # the first pfn not held: before the range, not dumped, or past the range
        at = pfn if pfn < lo else self.bitmap2.first_clear(pfn, max(pfn, min(end, hi)))
        if at < end:
            dumped = self.bitmap2.read(at >> 3, 1)[0] >> (at & 7) & 1
            if self.split and not lo <= at < hi and dumped:
                raise NotInDump(self.path, f"physical address {at * self.block_size:#x} "
                                           f"(pfn {at:#x}) is in another part of this "
                                           f"makedumpfile --split set; this part holds "
                                           f"{self.split_range_text()}: give every part")
            raise NotInDump(self.path, f"physical address {at * self.block_size:#x} "
                                       f"(pfn {at:#x}) is not in the dump")

    def read_pages_lost(self, pfn: int, count: int,
                        buf: memoryview) -> Lost:
        """The dumped pages [pfn, pfn + count) into ``buf`` (``count`` pages
        long), page by page where a read fails; returns the pages that
        cannot be given, ``[(pfn, PageLost or SourceReadError)]`` in pfn
        order (their bytes in ``buf`` undefined).  NotInDump if a page is
        not dumped at all; SourceReadError if the descriptors cannot be read."""
        if count <= 0:
            return []
        self._require_dumped(pfn, count)
        pos = self._rank(pfn) - self._first_pos   # split files: slot 0 = their first page
        offsets, sizes, flags = zip(*self._desc_format.iter_unpack(
            self._descriptor_bytes(pos, count)), strict=True)
        return read_described(self.raw, pfn, offsets, sizes, flags, buf, self.block_size)

    def _page(self, pfn: int) -> bytes:
        page = self._cache.get(pfn)
        if page is None:
            page = self.pages(pfn, 1)[0]
            self._cache[pfn] = page
            if len(self._cache) > 64:
                self._cache.popitem(last=False)
        return page

    def read_phys(self, paddr: int, size: int) -> bytes:
        """Physical memory; NotInDump for pages the dump does not hold (not in
        the 2nd bitmap), PageLost (a NotInDump) for pages lost in an
        incomplete dump, SourceReadError for pages whose data cannot be read
        (an I/O error, a file cut short, data that do not decompress).  Zero
        pages written as the shared zero page read as zeros like any other
        page."""
        if paddr < 0 or size < 0:
            raise NotInDump(self.path, f"physical address {paddr:#x} is not in the dump")
        bs = self.block_size
        if size <= bs and paddr // bs == (paddr + size - 1) // bs:
            if size == 0:
                return b""
            off = paddr % bs
            return self._page(paddr // bs)[off:off + size]
        first, last = paddr // bs, (paddr + size - 1) // bs
        out = bytearray((last + 1 - first) * bs)
        view = memoryview(out)
        for start in range(first, last + 1, 1024):
            count = min(1024, last + 1 - start)
            at = (start - first) * bs
            lost = self.read_pages_lost(start, count, view[at:at + count * bs])
            if lost:
                raise lost[0][1]
        off = paddr - first * bs
        return bytes(out[off:off + size])

    def close(self) -> None:
        self.raw.close()

