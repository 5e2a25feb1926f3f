"""An independent reader of makedumpfile's kdump-compressed files, for tests.

It reads only what the page-filtering tests need, straight from the layout in
``kdump-formats.md`` section 2 and without any slimdump code: the
``disk_dump_header`` and ``kdump_sub_header`` (x86_64 / little-endian 64-bit
layout), both bitmaps as numpy bool arrays indexed by absolute pfn, and the
``page_desc`` array, from which it tells which dumpable pfns carry the shared
zero-page descriptor.

makedumpfile keeps zero pages in the 2nd bitmap of kdump-compressed output
(they point at the one zero block written first when ``-d`` has bit 1), so
"the pages makedumpfile kept with content" is the 2nd bitmap minus the
zero-descriptor pfns: :attr:`KdumpFile.kept_with_content`.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SIGNATURES = (b"KDUMP   ", b"DISKDUMP")
HEADER = struct.Struct("<8si390s6xqqIiiIIIIIIi")        # disk_dump_header, 464 bytes
SUB_HEADER = struct.Struct("<QiiQQqQqQqQQQQ")           # kdump_sub_header, 104 bytes
PAGE_DESC = np.dtype([("offset", "<i8"), ("size", "<u4"), ("flags", "<u4"),
                      ("page_flags", "<u8")])
DL_ZERO = 1


class KdumpFormatError(ValueError):
    """The file is not a kdump-compressed file this reader understands."""


@dataclass
class KdumpFile:
    """What a kdump-compressed file says about which pages it holds."""

    path: str
    block_size: int
    header_version: int
    status: int
    dump_level: int
    max_mapnr: int
    bitmap1: np.ndarray             # bool[max_mapnr]: page in some PT_LOAD
    bitmap2: np.ndarray             # bool[max_mapnr]: page dumped (zero pages included)
    desc_offset: np.ndarray         # int64[popcount(bitmap2)]: data offset per dumped pfn
    desc_size: np.ndarray           # uint32, stored size per dumped pfn
    desc_flags: np.ndarray          # uint32, compression flags per dumped pfn
    data_start: int                 # where page data begins (the zero block, with bit 1)

    @property
    def dumped_pfns(self) -> np.ndarray:
        """The pfns set in the 2nd bitmap, ascending: descriptor i is pfn [i]."""
        return np.flatnonzero(self.bitmap2)

    @property
    def zero_pfns(self) -> np.ndarray:
        """Dumped pfns whose descriptor is the shared zero page (only when the
        dump level has bit 1: then every all-zero page points at the first
        data block, whose size is one full page and whose flags are 0)."""
        if not self.dump_level & DL_ZERO:
            return np.zeros(0, dtype=np.int64)
        shared = ((self.desc_offset == self.data_start) & (self.desc_flags == 0)
                  & (self.desc_size == self.block_size))
        return self.dumped_pfns[shared]

    @property
    def kept_with_content(self) -> np.ndarray:
        """bool[max_mapnr]: pfns makedumpfile stored real data for."""
        kept = self.bitmap2.copy()
        kept[self.zero_pfns] = False
        return kept


def _bits(raw: bytes, count: int) -> np.ndarray:
    """Bitmap bytes -> bool array: bit i is pfn i, LSB first within a byte."""
    return np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")[:count] \
        .astype(bool)


def read_kdump(path: str | os.PathLike[str]) -> KdumpFile:
    """Parse the headers, bitmaps and page descriptors of ``path``."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(HEADER.size)
        if len(head) < HEADER.size or head[:8] not in SIGNATURES:
            raise KdumpFormatError(f"{path}: not a kdump-compressed file")
        (_sig, version, _uts, _sec, _usec, status, block_size, sub_hdr_size, bitmap_blocks,
         max_mapnr32, *_rest) = HEADER.unpack(head)
        if block_size <= 0 or block_size & (block_size - 1):
            raise KdumpFormatError(f"{path}: block_size {block_size}")
        f.seek(block_size)
        sub = SUB_HEADER.unpack(f.read(SUB_HEADER.size))
        dump_level = sub[1]
        max_mapnr = sub[13] if version >= 6 else max_mapnr32
        per_bitmap = (max_mapnr + 7) // 8
        blocks_each = -(-per_bitmap // block_size)
        if bitmap_blocks < 2 * blocks_each:
            raise KdumpFormatError(f"{path}: single-bitmap (old diskdump) file")
        bitmap1_off = (1 + sub_hdr_size) * block_size
        bitmap2_off = bitmap1_off + bitmap_blocks // 2 * block_size
        f.seek(bitmap1_off)
        bitmap1 = _bits(f.read(per_bitmap), max_mapnr)
        f.seek(bitmap2_off)
        bitmap2 = _bits(f.read(per_bitmap), max_mapnr)
        ndesc = int(bitmap2.sum())
        desc_off = (1 + sub_hdr_size + bitmap_blocks) * block_size
        f.seek(desc_off)
        raw = f.read(ndesc * PAGE_DESC.itemsize)
        if len(raw) != ndesc * PAGE_DESC.itemsize:
            raise KdumpFormatError(f"{path}: page descriptors truncated")
        desc = np.frombuffer(raw, dtype=PAGE_DESC)
    return KdumpFile(path=path, block_size=block_size, header_version=version, status=status,
                     dump_level=dump_level, max_mapnr=max_mapnr, bitmap1=bitmap1,
                     bitmap2=bitmap2, desc_offset=desc["offset"].astype(np.int64),
                     desc_size=desc["size"].astype(np.uint32),
                     desc_flags=desc["flags"].astype(np.uint32),
                     data_start=desc_off + ndesc * PAGE_DESC.itemsize)


def describe(path: str | Path) -> str:
    """One line for test failure messages."""
    k = read_kdump(path)
    return (f"{k.path}: level {k.dump_level}, max_mapnr {k.max_mapnr}, "
            f"{int(k.bitmap1.sum())} present, {int(k.bitmap2.sum())} dumped, "
            f"{len(k.zero_pfns)} zero")
