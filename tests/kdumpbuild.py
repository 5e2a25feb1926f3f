"""Independent kdump-compressed / diskdump / flattened file builder for tests.

The other side of slimdump's kdump reader and writer, in the spirit of
:mod:`tests.synthcore`: it imports nothing from ``slimdump`` and follows
``kdump-formats.md`` sections 2 and 3 directly, so a bug shared with the code
under test would have to be made twice.  It writes what makedumpfile and older
diskdump tools write, and a few things they only write on a bad day:

* ``disk_dump_header`` in the 64-bit layout (464 bytes) or the 32-bit one
  (452 bytes), either byte order;
* ``kdump_sub_header`` as header versions 1-6 define it (each version adds
  fields, 2.3), in the 64-bit, i386 ("32pack": 64-bit members on 4-byte
  boundaries) or ARM ("32pad": aligned to 8) layout;
* the merged note area (v4+) or VMCOREINFO alone (v3), eraseinfo (v5+);
* both bitmaps at full size, descriptors in pfn order, pages compressed one by
  one with zlib / LZO / snappy / zstd / nothing (chosen per page), the shared
  zero page (dump level bit 1), excluded pages (1st bitmap only), lost pages of
  an incomplete dump (descriptor offset 0, status 0x8);
* ``--split`` parts (full bitmaps, descriptor area sized for every part,
  this part's descriptors first) and the flattened wrapping (-F) of any file.

:func:`build_kdump` returns the file and the record of what it holds
(:attr:`KdumpImage.pages`: pfn -> the page's bytes, for every page a reader must
return), which is what conformance tests compare readers against.
"""

from __future__ import annotations

import itertools
import random
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "CODEC_FLAGS",
    "KdumpImage",
    "KdumpSpec",
    "build_kdump",
    "build_split",
    "flatten",
    "note_area",
]

KDUMP_SIGNATURE = b"KDUMP   "
DISKDUMP_SIGNATURE = b"DISKDUMP"
FLAT_SIGNATURE = b"makedumpfile\0\0\0\0"
FLAT_HEADER_SIZE = 4096
PAGE_DESC_FORMAT = "qIIQ"           # offset, size, flags, page_flags
PAGE_DESC_SIZE = 24
UTS_FIELD = 65

STATUS_INCOMPLETE = 0x8
CODEC_FLAGS: dict[str, int] = {"none": 0, "zlib": 0x1, "lzo": 0x2, "snappy": 0x4, "zstd": 0x20}

# disk_dump_header: signature, header_version, utsname, pad, tv_sec, tv_usec,
# status, block_size, sub_hdr_size, bitmap_blocks, max_mapnr, total_ram_blocks,
# device_blocks, written_blocks, current_cpu, nr_cpus
_HEADER = {"64": "8si390s6xqqIiiIIIIIIi", "32": "8si390s2xiiIiiIIIIIIi"}
# kdump_sub_header per layout: (format of each field, in order), sizes differ
# in where the 64-bit members sit (kdump-formats.md 2.3)
_SUB_FIELDS = ("phys_base", "dump_level", "split", "start_pfn", "end_pfn",
               "offset_vmcoreinfo", "size_vmcoreinfo", "offset_note", "size_note",
               "offset_eraseinfo", "size_eraseinfo", "start_pfn_64", "end_pfn_64",
               "max_mapnr_64")
_SUB_OFFSETS = {
    "64": (0, 8, 12, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96),
    "32pack": (0, 4, 8, 12, 16, 20, 28, 32, 40, 44, 52, 56, 64, 72),
    "32pad": (0, 4, 8, 12, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88),
}
_SUB_SIZE = {"64": 104, "32pack": 80, "32pad": 96}
# field codes: L = unsigned long (word), i = int, q = off_t, Q = u64
_SUB_CODES = ("L", "i", "i", "L", "L", "q", "L", "q", "L", "q", "L", "Q", "Q", "Q")
# the number of leading sub-header fields each header version defines
_FIELDS_IN_VERSION = {0: 1, 1: 2, 2: 5, 3: 7, 4: 9, 5: 11, 6: 14}


def _compress(codec: str, page: bytes) -> bytes:
    """One page as makedumpfile's codec stores it (raw streams, level 1)."""
    if codec == "zlib":
        return zlib.compress(page, 1)
    if codec == "lzo":
        import lzo  # python-lzo: LZO1X-1 without python-lzo's own 5-byte header

        return lzo.compress(page, 1, False)
    if codec == "snappy":
        import cramjam

        return bytes(cramjam.snappy.compress_raw(page))
    if codec == "zstd":
        import cramjam

        return bytes(cramjam.zstd.compress(page, level=1))
    if codec == "none":
        return page
    raise ValueError(f"unknown codec {codec!r}")


def note_area(notes: Sequence[tuple[bytes, int, bytes]], endian: str = "<") -> tuple[bytes, int]:
    """Framed notes ``(name without NUL, type, desc)`` and the offset of the
    VMCOREINFO note's descriptor inside them (-1 if there is none)."""
    out = bytearray()
    vmcoreinfo_at = -1
    for name, ntype, desc in notes:
        full = name + b"\0" if name else b""
        out += struct.pack(endian + "III", len(full), len(desc), ntype)
        out += full + b"\0" * (-len(full) % 4)
        if name == b"VMCOREINFO" and vmcoreinfo_at < 0:
            vmcoreinfo_at = len(out)
        out += desc + b"\0" * (-len(desc) % 4)
    return bytes(out), vmcoreinfo_at


@dataclass
class KdumpSpec:
    """What goes into one kdump-compressed file.

    ``pages`` are the dumped pages (pfn -> exactly ``block_size`` bytes);
    ``excluded`` pfns exist (1st bitmap) but were filtered out (not in the 2nd);
    ``lost`` pfns are dumped pages whose data an incomplete dump never wrote.
    ``codec`` is one codec name for every page, or a sequence cycled over the
    pages in pfn order (several codecs in one file).  ``layout`` is "64",
    "32pack" (i386) or "32pad" (ARM and other 32-bit ABIs).
    """

    pages: dict[int, bytes]
    max_mapnr: int
    excluded: set[int] = field(default_factory=set)
    lost: set[int] = field(default_factory=set)
    codec: str | Sequence[str] = "zlib"
    version: int = 6
    endian: str = "<"
    layout: str = "64"
    machine: bytes = b"x86_64"
    release: bytes = b"6.1.0-kdumpbuild"
    block_size: int = 4096
    dump_level: int = 31
    notes: Sequence[tuple[bytes, int, bytes]] = ()
    eraseinfo: bytes = b""
    phys_base: int = 0
    crashtime: int = 1795664350
    signature: bytes = KDUMP_SIGNATURE
    status: int | None = None       # None: the first codec's flag (| 0x8 if pages are lost)

    def codec_of(self, index: int) -> str:
        if isinstance(self.codec, str):
            return self.codec
        return self.codec[index % len(self.codec)]


@dataclass
class KdumpImage:
    """A built file and what a correct reader finds in it."""

    data: bytes
    pages: dict[int, bytes]         # every page a reader must return, pfn -> bytes
    dumpable: set[int]              # the 2nd bitmap (including lost pages)
    present: set[int]               # the 1st bitmap


def _word(layout: str) -> str:
    return "Q" if layout == "64" else "I"


def _sub_header(spec: KdumpSpec, values: dict[str, int]) -> bytes:
    """The sub header with the fields ``spec.version`` defines; later ones stay 0."""
    out = bytearray(_SUB_SIZE[spec.layout])
    known = _FIELDS_IN_VERSION[min(spec.version, 6)]
    word = _word(spec.layout)
    mask = (1 << (64 if spec.layout == "64" else 32)) - 1
    for i, name in enumerate(_SUB_FIELDS[:known]):
        code = _SUB_CODES[i]
        value = values.get(name, 0)
        if code == "L":
            code, value = word, value & mask
        struct.pack_into(spec.endian + code, out, _SUB_OFFSETS[spec.layout][i], value)
    return bytes(out)


def _layout_kdump(spec: KdumpSpec, descs_total: int, part: tuple[int, int] | None
                  ) -> tuple[bytearray, int, int, int]:
    """Header blocks, bitmaps; returns (buffer, desc_offset, data_offset, bitmap_blocks)."""
    bs, e = spec.block_size, spec.endian
    notes, vmcoreinfo_at = note_area(spec.notes, e)
    sub_size = _SUB_SIZE[spec.layout]
    meta_off = bs + sub_size
    if spec.version >= 4:
        meta = notes
    elif spec.version == 3 and vmcoreinfo_at >= 0:
        # v3 keeps VMCOREINFO alone after the sub header
        desc_len = struct.unpack_from(e + "I", notes, vmcoreinfo_at - 20)[0]
        meta = notes[vmcoreinfo_at:vmcoreinfo_at + desc_len]
        vmcoreinfo_at = 0
    else:
        meta = b""
    sub_hdr_size = -(-(sub_size + len(meta)) // bs)
    one_bitmap = ((spec.max_mapnr + 7) // 8 + bs - 1) // bs
    bitmap_blocks = 2 * one_bitmap
    bitmap_off = (1 + sub_hdr_size) * bs
    desc_off = bitmap_off + bitmap_blocks * bs
    data_off = desc_off + PAGE_DESC_SIZE * descs_total
    values: dict[str, int] = {"phys_base": spec.phys_base, "dump_level": spec.dump_level,
                              "max_mapnr_64": spec.max_mapnr}
    if spec.version >= 3 and vmcoreinfo_at >= 0:
        values["offset_vmcoreinfo"] = meta_off + vmcoreinfo_at
        values["size_vmcoreinfo"] = (len(meta) if spec.version == 3 else struct.unpack_from(
            e + "I", notes, vmcoreinfo_at - 20)[0])
    if spec.version >= 4 and notes:
        values["offset_note"], values["size_note"] = meta_off, len(notes)
    if part is not None:
        values.update(split=1, start_pfn=part[0], end_pfn=part[1], start_pfn_64=part[0],
                      end_pfn_64=part[1])
    out = bytearray(data_off)
    status = spec.status
    if status is None:
        status = CODEC_FLAGS[spec.codec_of(0)] | (STATUS_INCOMPLETE if spec.lost else 0)
    kind = "64" if spec.layout == "64" else "32"
    uts = b"".join(f[:UTS_FIELD - 1].ljust(UTS_FIELD, b"\0") for f in (
        b"Linux", b"kdumpbuild", spec.release, b"#1 SMP", spec.machine, b"(none)"))
    header = struct.pack(e + _HEADER[kind], spec.signature, spec.version, uts, spec.crashtime,
                         0, status, bs, sub_hdr_size, bitmap_blocks,
                         min(spec.max_mapnr, 0xFFFFFFFF), 0, 0, 0, 0,
                         sum(1 for n in spec.notes if n[0] == b"CORE"))
    out[0:len(header)] = header
    if spec.signature == KDUMP_SIGNATURE:
        out[bs:bs + sub_size] = _sub_header(spec, values)
        out[meta_off:meta_off + len(meta)] = meta
    # bitmaps: bit i = pfn i, LSB first
    present = set(spec.pages) | spec.excluded
    for pfn in present:
        out[bitmap_off + pfn // 8] |= 1 << (pfn % 8)
    bitmap2 = bitmap_off + one_bitmap * bs
    for pfn in spec.pages:
        out[bitmap2 + pfn // 8] |= 1 << (pfn % 8)
    return out, desc_off, data_off, bitmap_blocks


def _check(spec: KdumpSpec) -> None:
    if spec.layout not in _SUB_SIZE or spec.endian not in "<>" or not 1 <= spec.version <= 6:
        raise ValueError("bad layout, byte order or header version")
    for pfn, page in spec.pages.items():
        if not 0 <= pfn < spec.max_mapnr or len(page) != spec.block_size:
            raise ValueError(f"page {pfn:#x}: outside max_mapnr or not one block")
    if spec.excluded & set(spec.pages) or not spec.lost <= set(spec.pages):
        raise ValueError("excluded pages must not be dumped; lost pages must be")


def _write_pages(spec: KdumpSpec, out: bytearray, pfns: list[int], desc_off: int,
                 data_off: int, first_index: int) -> dict[int, bytes]:
    """Descriptors at ``desc_off`` for ``pfns`` and their data from ``data_off``."""
    bs, e = spec.block_size, spec.endian
    data = bytearray()
    zero_off = None
    if spec.dump_level & 1:
        zero_off = data_off                      # the shared zero page comes first
        data += bytes(bs)
    readable: dict[int, bytes] = {}
    for i, pfn in enumerate(pfns):
        page = spec.pages[pfn]
        at = desc_off + PAGE_DESC_SIZE * i
        if pfn in spec.lost:
            struct.pack_into(e + PAGE_DESC_FORMAT, out, at, 0, 0, 0, 0)
            continue
        readable[pfn] = page
        if zero_off is not None and not any(page):
            struct.pack_into(e + PAGE_DESC_FORMAT, out, at, zero_off, bs, 0, 0)
            continue
        codec = spec.codec_of(first_index + i)
        stored, flags = _compress(codec, page), CODEC_FLAGS[codec]
        if len(stored) >= bs:
            stored, flags = page, 0
        struct.pack_into(e + PAGE_DESC_FORMAT, out, at, data_off + len(data), len(stored),
                         flags, 0)
        data += stored
    out += data
    if spec.eraseinfo and spec.version >= 5:
        end = len(out)
        out += spec.eraseinfo
        sub_off = bs + _SUB_OFFSETS[spec.layout][9]
        struct.pack_into(e + "q", out, sub_off, end)
        struct.pack_into(e + _word(spec.layout), out, bs + _SUB_OFFSETS[spec.layout][10],
                         len(spec.eraseinfo))
    return readable


def build_kdump(spec: KdumpSpec) -> KdumpImage:
    """One kdump-compressed (or DISKDUMP) file."""
    _check(spec)
    pfns = sorted(spec.pages)
    out, desc_off, data_off, _ = _layout_kdump(spec, len(pfns), None)
    readable = _write_pages(spec, out, pfns, desc_off, data_off, 0)
    return KdumpImage(bytes(out), readable, set(spec.pages), set(spec.pages) | spec.excluded)


def build_split(spec: KdumpSpec, bounds: Sequence[int]) -> list[KdumpImage]:
    """``--split`` parts: part i holds pfns [bounds[i], bounds[i+1]).  Every
    part has the full bitmaps and a descriptor area sized for all dumpable
    pages; its own descriptors come first (kdump-formats.md 2.7)."""
    _check(spec)
    pfns = sorted(spec.pages)
    parts = []
    for lo, hi in itertools.pairwise(bounds):
        mine = [p for p in pfns if lo <= p < hi]
        out, desc_off, data_off, _ = _layout_kdump(spec, len(pfns), (lo, hi))
        readable = _write_pages(spec, out, mine, desc_off, data_off, pfns.index(mine[0])
                                if mine else 0)
        parts.append(KdumpImage(bytes(out), readable, set(mine),
                                set(spec.pages) | spec.excluded))
    return parts


def flatten(data: bytes, *, chunk: int = 65536, seed: int = 1,
            skip_zero: bool = True, rewrite_header: bool = True) -> bytes:
    """The flattened stream (-F) of ``data``: a 4096-byte start header, then
    records (offset, size: big-endian i64) in shuffled order, the first block
    written twice (first with garbage, then right: a later record wins), all-zero
    chunks left out (holes), the (-1, -1) end marker (kdump-formats.md 3)."""
    head = FLAT_SIGNATURE + struct.pack(">qq", 1, 1)
    out = bytearray(head.ljust(FLAT_HEADER_SIZE, b"\0"))
    records: list[tuple[int, bytes]] = []
    for off in range(0, len(data), chunk):
        piece = data[off:off + chunk]
        last = off + chunk >= len(data)
        if skip_zero and not any(piece) and not last:
            continue
        records.append((off, piece))
    random.Random(seed).shuffle(records)
    if rewrite_header and data:
        first = min(len(data), 512)
        records.insert(0, (0, b"\xa5" * first))     # overwritten by the real block below
        records.sort(key=lambda r: r[0] == 0 and r[1] != b"\xa5" * first)
    for off, piece in records:
        out += struct.pack(">qq", off, len(piece)) + piece
    out += struct.pack(">qq", -1, -1)
    return bytes(out)


def pages_from(loader: Callable[[int], bytes], pfns: Sequence[int]) -> dict[int, bytes]:
    """pfn -> page for ``pfns``: a small helper for building specs."""
    return {pfn: loader(pfn) for pfn in pfns}
