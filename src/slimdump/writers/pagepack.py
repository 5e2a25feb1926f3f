"""Pages packed for a kdump-compressed file, a batch at a time: the unit of
work of the writer's threads.

:func:`pack_pages` zero-tests a run of pages and compresses the others as
their descriptors will say (:mod:`slimdump.codecs`: compressed only when
strictly smaller than a page); :func:`build_descriptors` then writes the
run's 24-byte page descriptors.  Both run in C without the GIL where
:mod:`slimdump.writers._pagepack` is built (zlib, LZO and no compression;
the zero test for every codec), and in plain Python otherwise.  The C
packer compresses with faster compressors than makedumpfile's by default
(LZO1X-1 with a dictionary sized to the page; libdeflate for zlib streams,
where built with it): the same formats, other bytes.  With ``exact=True`` it
uses makedumpfile's compressors and writes the Python path's bytes (tests
hold the two together, and both to makedumpfile's file).
"""

from __future__ import annotations

import re
import struct
from array import array
from collections.abc import Callable
from types import ModuleType

from slimdump.codecs import Codec, compressor, get_codec, implementation

_ZERO_CACHE: dict[tuple[str, str, int], bytes] = {}


def compress_pages(codec_name: str, data: bytes, page_size: int) -> tuple[bytes, bytes, bytes]:
    """Compress ``len(data) // page_size`` consecutive pages, in Python.

    Returns ``(flags, sizes, blob)``: the flags and stored sizes as native
    uint32 arrays (``array('I')`` bytes) and the stored bytes of all pages
    back to back.  An all-zero page always compresses to the same bytes, so
    that result is computed once per process (memory dumps are mostly zeros).
    """
    codec = get_codec(codec_name)
    compress = compressor(codec)
    mod = implementation(codec)
    zero_key = (codec.name, mod.__name__ if mod else "", page_size)
    zero = bytes(page_size)
    if zero_key not in _ZERO_CACHE:
        _ZERO_CACHE[zero_key] = compress(zero)
    zero_packed = _ZERO_CACHE[zero_key]
    count = len(data) // page_size
    flags = array("I", bytes(4 * count))
    sizes = array("I", bytes(4 * count))
    parts: list[bytes] = []
    for i in range(count):
        page = data[i * page_size:(i + 1) * page_size]
        packed = zero_packed if page == zero else compress(page)
        if len(packed) < page_size:
            flags[i] = codec.flag
            sizes[i] = len(packed)
            parts.append(packed)
        else:
            sizes[i] = page_size
            parts.append(page)
    return flags.tobytes(), sizes.tobytes(), b"".join(parts)


PackedPages = tuple[bytes, bytes, bytes, bytes]
"""``(zero, flags, sizes, blob)`` for a run of pages: one byte per page (1 =
all zero), then native uint32 flags and stored sizes per non-zero page and
the stored bytes of the non-zero pages back to back."""


def _native() -> ModuleType | None:
    try:
        from slimdump.writers import _pagepack
    except ImportError:          # not built (no compiler or liblzo2 headers)
        return None
    return _pagepack


_NATIVE = _native()
#: the C accelerator's functions, None where it is not built (tests set them
#: to None to run the pure-Python paths; the functions below look them up
#: when called)
NATIVE_PACK: Callable[..., PackedPages] | None = \
    _NATIVE.pack if _NATIVE else None
NATIVE_ZERO_BITS: Callable[[bytes, int], bytes] | None = _NATIVE.zero_bits if _NATIVE else None
NATIVE_DESCRIPTORS: Callable[..., tuple[bytes, int, int]] | None = \
    _NATIVE.descriptors if _NATIVE else None
NATIVE_CODECS = frozenset({"none", "zlib", "lzo"})


def zero_page_bits_python(data: bytes | memoryview, page_size: int) -> bytes:
    """:func:`zero_page_bits` in plain Python (same bytes, slower)."""
    view = memoryview(data).cast("B")
    zero = bytes(page_size)
    count = len(view) // page_size
    bits = 0
    for i in range(count):
        if view[i * page_size:(i + 1) * page_size] == zero:
            bits |= 1 << i
    return bits.to_bytes((count + 7) // 8, "little")


def zero_page_bits(data: bytes | memoryview, page_size: int) -> bytes:
    """Which whole pages of ``data`` are all zero, as packed bits (bit i of
    byte k for page 8k + i, like the dump bitmaps); C without the GIL when
    built."""
    if NATIVE_ZERO_BITS is not None:
        return NATIVE_ZERO_BITS(data, page_size)
    return zero_page_bits_python(data, page_size)


def pack_pages_python(codec: Codec, data: bytes | memoryview, page_size: int) -> PackedPages:
    """:func:`pack_pages` in plain Python, for machines without the C
    accelerator.  Same bytes, slower."""
    return _pack_pages_with(zero_page_bits_python, codec, data, page_size)


def pack_pages_zero_native(codec: Codec, data: bytes | memoryview,
                           page_size: int) -> PackedPages:
    """:func:`pack_pages` for codecs the C packer lacks (snappy, zstd): the
    zero test in C (:func:`zero_page_bits`), the compression per page in
    Python.  Same bytes as :func:`pack_pages_python`."""
    return _pack_pages_with(zero_page_bits, codec, data, page_size)


def _pack_pages_with(zero_bits: Callable[[bytes | memoryview, int], bytes], codec: Codec,
                     data: bytes | memoryview, page_size: int) -> PackedPages:
    count = len(data) // page_size
    view = memoryview(data)
    bits = int.from_bytes(zero_bits(view[:count * page_size], page_size), "little")
    zero = bytes(bits >> i & 1 for i in range(count))
    rest = b"".join(view[i * page_size:(i + 1) * page_size]
                    for i in range(count) if not bits >> i & 1)
    flags, sizes, blob = compress_pages(codec.name, rest, page_size)
    return zero, flags, sizes, blob


def pack_pages(codec: str | Codec, data: bytes, page_size: int, *,
               exact: bool = False) -> PackedPages:
    """Zero-test whole pages and store the others as a kdump descriptor wants
    them (compressed with ``codec`` when strictly smaller than a page).  Uses
    the C accelerator, which runs without the GIL, where it serves the codec,
    and its zero test for the other codecs.  ``exact``: compress with
    makedumpfile's compressors (zlib level 1, LZO1X-1), so that the bytes are
    makedumpfile's; otherwise the C accelerator's faster ones."""
    found = get_codec(codec)
    if NATIVE_PACK is not None and found.name in NATIVE_CODECS:
        return NATIVE_PACK(data, page_size, found.flag, exact)
    if NATIVE_ZERO_BITS is not None and found.flag:
        return pack_pages_zero_native(found, data, page_size)
    return pack_pages_python(found, data, page_size)


def descriptors_python(zero: bytes, flags: bytes, sizes: bytes, data_at: int,
                       zero_offset: int, page_size: int, zero_flag: int, zero_size: int,
                       big_endian: bool, share_zero: bool) -> tuple[bytes, int, int]:
    """The page descriptors of one task packed by
    :func:`pack_pages` (``zero``: a byte per page,
    1 = all zero; ``flags``/``sizes``: native uint32 per other page), its
    data starting at file offset ``data_at``.  Zero pages point at the
    shared zero page at ``zero_offset`` (``share_zero``, dump level with
    bit 1) or are stored in place as ``zero_size`` bytes with ``zero_flag``.
    Returns (descriptors, bytes of data they cover, descriptors with a
    compression flag).  :mod:`slimdump.writers._pagepack` has the same in C."""
    desc = struct.Struct((">" if big_endian else "<") + "qII8x")
    nz_flags, nz_sizes = array("I", flags), array("I", sizes)
    out = bytearray(desc.size * len(zero))
    at, k, compressed = data_at, 0, 0
    for i, page_is_zero in enumerate(zero):
        if page_is_zero and share_zero:
            desc.pack_into(out, i * desc.size, zero_offset, page_size, 0)
            continue
        if page_is_zero:
            size, flag = zero_size, zero_flag
        else:
            size, flag = nz_sizes[k], nz_flags[k]
            k += 1
        desc.pack_into(out, i * desc.size, at, size, flag)
        at += size
        compressed += flag != 0
    return bytes(out), at - data_at, compressed


def build_descriptors(zero: bytes, flags: bytes, sizes: bytes, data_at: int,
                      zero_offset: int, page_size: int, zero_flag: int, zero_size: int,
                      big_endian: bool, share_zero: bool) -> tuple[bytes, int, int]:
    """:func:`descriptors_python`'s result, in C when built."""
    build = NATIVE_DESCRIPTORS or descriptors_python
    return build(zero, flags, sizes, data_at, zero_offset, page_size, zero_flag, zero_size,
                 big_endian, share_zero)


_ZERO_RUNS = re.compile(rb"\x01+")


def interleave(zero: bytes, nz_sizes: bytes, nz_blob: bytes, zero_stored: bytes) -> bytes:
    """A task's stored bytes in pfn order when zero pages are not shared:
    runs of the other pages' data from ``nz_blob`` (their stored sizes in
    ``nz_sizes``) with ``zero_stored`` for each zero page (``zero``: a byte
    per page, 1 = all zero)."""
    sizes = array("I", nz_sizes)
    parts: list[bytes] = []
    done = at = 0               # pages looked at; bytes of nz_blob consumed
    used = 0                    # non-zero pages consumed
    for match in _ZERO_RUNS.finditer(zero):
        lo, hi = match.span()
        if lo > done:           # non-zero pages done .. lo - 1
            n = sum(sizes[used:used + lo - done])
            parts.append(nz_blob[at:at + n])
            at, used = at + n, used + lo - done
        parts.append(zero_stored * (hi - lo))
        done = hi
    parts.append(nz_blob[at:])
    return b"".join(parts)
