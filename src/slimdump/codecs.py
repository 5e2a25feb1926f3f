"""Per-page compression as the kdump-compressed format stores it: the codec
table, one page compressed and one page decompressed.  The reader
(:mod:`slimdump.sources.kdump`) decompresses with it, the writers compress
with it (:mod:`slimdump.writers.pagepack` packs pages in batches).

makedumpfile compresses every page on its own and marks the method in the
page descriptor's ``flags`` (the same bits go into the file header's
``status``): zlib 0x1 (deflate level 1 with the zlib wrapper), LZO 0x2 (raw
LZO1X-1), snappy 0x4 (a raw snappy block, not the framed format) and zstd
0x20 (one zstd frame, level 1).  A page is stored compressed only when the
result is strictly smaller than a page; otherwise it is stored as is with
flags 0 (reference section 2.5).  Readers (crash, libkdumpfile) rely on that.
These are the formats, not the compressors: the C packer of
:mod:`slimdump.writers.pagepack` makes the same formats with faster
compressors (LZO1X-1 with a page-sized dictionary, libdeflate's zlib
streams); this module compresses as makedumpfile does.

The LZO (python-lzo) and snappy/zstd (cramjam) modules are imported when a
codec first needs them, so a missing module only matters to the one codec
that needs it, and the error says which module to install.  Debian packages
no cramjam: where it is absent, snappy and zstd fall back to Debian's
python3-snappy (``snappy``) and python3-zstandard (``zstandard``), which
write the same formats (the raw snappy block, one zstd frame of level 1).
cramjam stays first where it is installed.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable
from types import ModuleType

from slimdump.errors import DumpError
from slimdump.record import record

DUMP_DH_COMPRESSED_ZLIB = 0x1
DUMP_DH_COMPRESSED_LZO = 0x2
DUMP_DH_COMPRESSED_SNAPPY = 0x4
DUMP_DH_COMPRESSED_INCOMPLETE = 0x8
DUMP_DH_EXCLUDED_VMEMMAP = 0x10
DUMP_DH_COMPRESSED_ZSTD = 0x20
COMPRESSION_MASK = (DUMP_DH_COMPRESSED_ZLIB | DUMP_DH_COMPRESSED_LZO
                    | DUMP_DH_COMPRESSED_SNAPPY | DUMP_DH_COMPRESSED_ZSTD)


@record(frozen=True)
class Codec:
    """One page compression method: its name, makedumpfile's flag value, its
    makedumpfile option and the Python modules that implement it, the
    preferred first."""

    name: str
    flag: int
    option: str
    modules: tuple[str, ...]    # empty: the standard library suffices


CODECS: dict[str, Codec] = {
    "none": Codec("none", 0, "", ()),
    "zlib": Codec("zlib", DUMP_DH_COMPRESSED_ZLIB, "-c", ()),
    "lzo": Codec("lzo", DUMP_DH_COMPRESSED_LZO, "-l", ("lzo",)),
    "snappy": Codec("snappy", DUMP_DH_COMPRESSED_SNAPPY, "-p", ("cramjam", "snappy")),
    "zstd": Codec("zstd", DUMP_DH_COMPRESSED_ZSTD, "-z", ("cramjam", "zstandard")),
}
_BY_FLAG = {codec.flag: codec for codec in CODECS.values()}
# where each module comes from, for the error that names the missing ones
_INSTALL = {"lzo": "pip install python-lzo, or apt install python3-lzo",
            "cramjam": "pip install cramjam",
            "snappy": "apt install python3-snappy",
            "zstandard": "apt install python3-zstandard"}
# an attribute the module must have: another project's module of the same
# name (SnapPy, the 3-manifold program, is also ``snappy``) does not count
_API = {"lzo": "decompress", "cramjam": "zstd", "snappy": "uncompress",
        "zstandard": "ZstdCompressor"}


def get_codec(codec: str | Codec) -> Codec:
    """The codec called ``codec`` (one of :data:`CODECS`); ValueError otherwise."""
    if isinstance(codec, Codec):
        return codec
    try:
        return CODECS[codec]
    except KeyError:
        raise ValueError(f"unknown compression {codec!r} "
                         f"(one of {', '.join(CODECS)})") from None


def codec_for_flags(flags: int) -> Codec:
    """The codec a page descriptor's ``flags`` name; DumpError for flags that
    mix methods or name none known (crash and libkdumpfile reject them too)."""
    codec = _BY_FLAG.get(flags & COMPRESSION_MASK)
    if codec is None:
        raise DumpError(None, f"page compression flags {flags:#x} name no single known "
                              f"method")
    return codec


def implementation(codec: Codec) -> ModuleType | None:
    """The first of the codec's modules that imports here (None for the
    standard library's); DumpError naming them all when none does."""
    if not codec.modules:
        return None
    for name in codec.modules:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(mod, _API.get(name, "__name__")):
            return mod
    names = " or ".join(repr(name) for name in codec.modules)
    where = ", or ".join(_INSTALL.get(name, f"pip install {name}") for name in codec.modules)
    module_word = "module" if len(codec.modules) == 1 else "modules"
    raise DumpError(None, f"{codec.name} compression needs the Python {module_word} {names} "
                          f"({where})")


def require(codec: str | Codec) -> Codec:
    """Check up front that ``codec`` can run here; DumpError naming the
    missing module if not.  Returns the codec."""
    found = get_codec(codec)
    implementation(found)
    return found


def compressor(codec: str | Codec) -> Callable[[bytes], bytes]:
    """A function compressing one page with ``codec`` exactly as makedumpfile
    does (identity for "none")."""
    found = get_codec(codec)
    mod = implementation(found)
    if found.name == "zlib":
        return lambda page: zlib.compress(page, 1)
    if found.name == "lzo":
        assert mod is not None
        lzo_compress = mod.compress
        return lambda page: lzo_compress(page, 1, False)
    if found.name == "snappy":
        assert mod is not None
        if mod.__name__ == "snappy":                # python3-snappy: raw blocks too
            return mod.compress
        snappy_compress = mod.snappy.compress_raw
        return lambda page: bytes(snappy_compress(page))
    if found.name == "zstd":
        assert mod is not None
        if mod.__name__ == "zstandard":
            # a compressor per call: one is not to be shared between threads
            return mod.ZstdCompressor(level=1).compress
        zstd_compress = mod.zstd.compress
        return lambda page: bytes(zstd_compress(page, level=1))
    return bytes


def _claimed_size(codec: Codec, mod: ModuleType, data: bytes) -> int:
    """The decompressed size a snappy block or zstd frame header claims (-1:
    not stated): checked before python3-snappy or python3-zstandard allocate
    it, so that a hostile header cannot make them allocate more than a page."""
    if codec.name == "zstd":
        return int(mod.frame_content_size(data))
    size = shift = 0
    for byte in data[:5]:                   # the block starts with a varint
        size |= (byte & 0x7F) << shift
        if byte < 0x80:
            return size
        shift += 7
    raise ValueError("no length at the start of the block")


def compress_page(codec: str | Codec, page: bytes) -> tuple[int, bytes]:
    """``(flags, data)`` for one page: compressed with the codec's flag when
    that is strictly smaller than the page, else the page itself and 0."""
    found = get_codec(codec)
    if found.flag == 0:
        return 0, bytes(page)
    data = compressor(found)(page)
    if len(data) < len(page):
        return found.flag, data
    return 0, bytes(page)


def decompress(flags: int, data: bytes, page_size: int) -> bytes:
    """One page from its stored bytes and descriptor flags.  DumpError unless
    the result is exactly ``page_size`` bytes (what crash requires)."""
    codec = codec_for_flags(flags)
    if codec.flag == 0:
        if len(data) != page_size:
            raise DumpError(None, f"uncompressed page holds {len(data)} bytes, "
                                  f"not {page_size}")
        return bytes(data)
    mod = implementation(codec)
    try:
        if codec.name == "zlib":
            page = zlib.decompressobj().decompress(data, page_size + 1)
        elif codec.name == "lzo":
            assert mod is not None
            page = mod.decompress(bytes(data), False, page_size)
        elif mod is not None and mod.__name__ in ("snappy", "zstandard"):
            claimed = _claimed_size(codec, mod, bytes(data))
            if claimed > page_size:
                raise DumpError(None, f"{codec.name} page decompresses to {claimed} "
                                      f"bytes, not {page_size}")
            page = (mod.uncompress(bytes(data)) if codec.name == "snappy" else
                    mod.ZstdDecompressor().decompress(bytes(data), max_output_size=page_size))
        else:
            # into a page-sized buffer: a hostile size claim cannot make the
            # library allocate more than one page
            assert mod is not None
            out = bytearray(page_size)
            into = (mod.snappy.decompress_raw_into if codec.name == "snappy"
                    else mod.zstd.decompress_into)
            page = bytes(out[:into(bytes(data), out)])
    except DumpError:
        raise
    except Exception as exc:  # every library has its own error classes
        raise DumpError(None, f"{codec.name} page does not decompress: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                        ) from None
    if len(page) != page_size:
        raise DumpError(None, f"{codec.name} page decompresses to {len(page)} bytes, "
                              f"not {page_size}")
    return page
