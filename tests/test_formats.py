"""makedumpfile's file formats, written and read: kdump-compressed (every
codec), flattened (-F / -R) and filtered ELF (-E).

Oracles, all independent of slimdump: drgn (libkdumpfile) reads the pages
of every output and must see the source's bytes, and no bytes for excluded
pages; Debian's makedumpfile 1.7.2 extracts the same dmesg from our files as
from the source and rearranges our flattened streams; crash reads the
kernel release; and given the bitmaps of makedumpfile's own output, our
writers reproduce its files byte for byte.  Our readers read makedumpfile's
files (which proves them against the oracle too) and turn hostile headers
into one-line errors.

The page selections are our own (every present page; every other 2 MiB
block), since page classification is not this module's business.
"""

from __future__ import annotations

import contextlib
import filecmp
import functools
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from slimdump import codecs
from slimdump.bitmap import PfnBitmap
from slimdump.codecs import CODECS, compress_page, decompress
from slimdump.elf import EM_386, ET_CORE, ElfHeader, Note, frame_notes
from slimdump.errors import DumpError, NotInDump
from slimdump.kernel.header_facts import crash_time, kdump_phys_base, read_utsname
from slimdump.kernel.log import extract_dmesg
from slimdump.kernel.vmcoreinfo import VmcoreInfo
from slimdump.record import replace
from slimdump.sources import ElfCore, open_dump
from slimdump.sources.base import DumpSource
from slimdump.sources.flat import FlatFile, FlatStream, open_flattened
from slimdump.sources.kdump import KdumpFile
from slimdump.sources.kdump_headers import KdumpAbi, Utsname
from slimdump.sources.rawfile import RawFile
from slimdump.writers import kdump as kdump_writer
from slimdump.writers import pagepack
from slimdump.writers.atomic import AtomicOutput
from slimdump.writers.elf_filtered import write_filtered_elf
from slimdump.writers.flat import FlatWriter, flat_header, reassemble
from slimdump.writers.inputs import note_area, page_reader
from slimdump.writers.kdump import KdumpMeta, KdumpResult, write_kdump
from tests.conftest import real_vmcore, require_module, require_native, run, tool, vmcore_facts
from tests.oracles import held_page, partial_tail_pfns, readelf_loads

drgn = require_module("drgn")

SRC = "6.1-sysrq"
PAGE = 4096
# makedumpfile 1.7.2 (Debian 12) is built without snappy and zstd
MDF_CODECS = ("none", "zlib", "lzo")


# -- the source and our page selections -----------------------------------------


@dataclass
class Vm:
    path: Path
    source: DumpSource
    meta: KdumpMeta
    bitmap1: np.ndarray           # bool per pfn: present
    half: np.ndarray              # present and in an even 2 MiB block
    sample: np.ndarray            # pfns to compare
    prog: drgn.Program            # drgn on the source
    dmesg: bytes                  # makedumpfile --dump-dmesg of the source
    release: str                  # the lab's kernel package's release (uname -r)
    cpus: int                     # the lab guest's CPUs

    def read_source(self, pfn: int) -> bytes:
        try:
            return self.prog.read(pfn * PAGE, PAGE, True)
        except drgn.FaultError:
            # a page the vmcore holds in part (a PT_LOAD ends mid-page): what
            # it holds, zeros for the rest (README, "Oracles")
            if pfn not in self.tails:
                raise
            return held_page(self.path, pfn, PAGE)

    @functools.cached_property
    def tails(self) -> list[int]:
        """The pages makedumpfile 1.7.2 drops although the vmcore holds bytes of them."""
        return partial_tail_pfns(self.path, PAGE)

    def held_size(self, pfn: int) -> int:
        """Bytes of page ``pfn`` the vmcore holds from its start (readelf)."""
        if pfn not in self.tails:
            return PAGE
        return max(min(ld.paddr + ld.memsz, (pfn + 1) * PAGE) - pfn * PAGE
                   for ld in readelf_loads(self.path) if ld.paddr <= pfn * PAGE
                   < ld.paddr + ld.memsz)

    def tails_mask(self, nbits: int) -> np.ndarray:
        mask = np.zeros(nbits, dtype=bool)
        mask[self.tails] = True
        return mask


def packed(bits: np.ndarray) -> bytes:
    """A bool per pfn as the writers take a bitmap: packed, LSB first."""
    return np.packbits(bits, bitorder="little").tobytes()


def unpacked(bitmap: PfnBitmap) -> np.ndarray:
    """A bitmap as a bool per pfn."""
    raw = np.frombuffer(bytes(bitmap.read(0, bitmap.nbytes)), np.uint8)
    return np.unpackbits(raw, bitorder="little")[:bitmap.nbits].astype(bool)


def present_pages(path: Path) -> np.ndarray:
    """A bool per pfn: the pages holding any byte of a PT_LOAD (readelf),
    partial pages at a segment's ends included."""
    loads = [ld for ld in readelf_loads(path) if ld.memsz and ld.paddr != (1 << 64) - 1]
    nbits = -(-max(ld.paddr + ld.memsz for ld in loads) // PAGE)
    present = np.zeros(nbits, bool)
    for ld in loads:
        present[ld.paddr // PAGE:-(-(ld.paddr + ld.memsz) // PAGE)] = True
    return present


def meta_of(source: DumpSource, dump_level: int, max_mapnr: int) -> KdumpMeta:
    """The headers' facts as slimdump's filtered dump gathers them."""
    info = VmcoreInfo.from_notes(source.notes)
    return KdumpMeta(source.header, note_area(source), read_utsname(source, info),
                     crash_time(source, info), kdump_phys_base(source, info), dump_level,
                     max_mapnr, PAGE)


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vm]:
    path = real_vmcore(SRC)
    source = open_dump(path)
    bitmap1 = present_pages(path)
    meta = meta_of(source, 1, len(bitmap1))
    pfns = np.arange(meta.max_mapnr)
    half = bitmap1 & ((pfns >> 9) % 2 == 0)
    present = np.flatnonzero(bitmap1)
    edges = np.flatnonzero(np.diff(bitmap1.astype(np.int8), prepend=0, append=0))
    sample = np.unique(np.concatenate([
        present[np.linspace(0, len(present) - 1, 400).astype(int)],
        edges, edges - 1,                                   # run edges, both sides
        np.arange(0x19200, 0x19200 + 2048, 97),             # kernel image area
        np.arange(511, meta.max_mapnr, 512 * 37),           # ends of 2 MiB blocks
        np.arange(512, meta.max_mapnr, 512 * 41),           # starts of 2 MiB blocks
    ]))
    sample = sample[(sample >= 0) & (sample < meta.max_mapnr)]
    prog = drgn.Program()
    prog.set_core_dump(str(path))
    log = tmp_path_factory.mktemp("dmesg") / "source.log"
    run(tool("makedumpfile"), "--dump-dmesg", path, log)
    facts = vmcore_facts(SRC)
    yield Vm(path, source, meta, bitmap1, half, sample, prog, log.read_bytes(),
             facts["kernel_release"], facts["cpus"])
    source.close()


def write_kdump_file(vm: Vm, dst: Path, bitmap2: np.ndarray, codec: str, *,
                     dump_level: int = 1, workers: int | None = 2,
                     exact_compression: bool = False) -> KdumpResult:
    meta = replace(vm.meta, dump_level=dump_level)
    done: list[int] = []
    with AtomicOutput(dst) as out:
        result = write_kdump(out, meta, packed(vm.bitmap1), packed(bitmap2),
                             page_reader(vm.source, PAGE),
                             codec=codec, workers=workers, progress=done.append,
                             exact_compression=exact_compression)
        out.commit()
    assert done == sorted(done) and done[-1] == int(bitmap2.sum()) == result.pages
    assert dst.stat().st_size == result.size
    assert dst.stat().st_mode & 0o777 == 0o600
    return result


def check_drgn(vm: Vm, dump: Path, kept: np.ndarray, *, holes_read_zero: bool = False) -> None:
    """drgn sees the source's bytes for kept pages of the sample, and no page
    (or, in ELF holes, zeros) for the others."""
    prog = drgn.Program()
    prog.set_core_dump(str(dump))
    for pfn in vm.sample.tolist():
        if kept[pfn]:
            assert prog.read(pfn * PAGE, PAGE, True) == vm.read_source(pfn), hex(pfn)
        elif holes_read_zero and vm.bitmap1[pfn]:
            with contextlib.suppress(drgn.FaultError):
                assert prog.read(pfn * PAGE, PAGE, True) == bytes(PAGE), hex(pfn)
        else:
            with pytest.raises(drgn.FaultError):
                prog.read(pfn * PAGE, PAGE, True)


def check_reader(vm: Vm, dump: KdumpFile, kept: np.ndarray) -> None:
    """Our reader agrees with drgn on the source, page by page and in bulk."""
    for pfn in vm.sample.tolist():
        if kept[pfn]:
            assert dump.read_phys(pfn * PAGE, PAGE) == vm.read_source(pfn), hex(pfn)
        else:
            with pytest.raises(NotInDump):
                dump.read_phys(pfn * PAGE, PAGE)
    # a bulk read across many pages, at an unaligned address
    start = int(np.flatnonzero(kept[0x19200:])[0]) + 0x19200
    run_end = start
    while run_end < len(kept) and kept[run_end] and run_end - start < 600:
        run_end += 1
    addr, size = start * PAGE + 100, (run_end - start - 1) * PAGE
    assert dump.read_phys(addr, size) == vm.prog.read(addr, size, True)


def makedumpfile_dmesg(dump: Path, tmp_path: Path) -> bytes:
    out = tmp_path / f"{dump.name}.dmesg"
    res = run(tool("makedumpfile"), "--dump-dmesg", dump, out, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return out.read_bytes()


def crash_osrelease(dump: Path) -> str:
    res = run(tool("crash"), "--osrelease", dump, check=False)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def note_tuples(source: DumpSource) -> list[tuple[bytes, int, bytes]]:
    return [(n.raw_name, n.type, n.desc) for n in source.notes]


def open_kdump(path: Path) -> KdumpFile:
    return KdumpFile(RawFile.open(path))


# -- codecs ------------------------------------------------------------------


@pytest.mark.parametrize("codec", list(CODECS))
def test_codec_round_trip(codec: str) -> None:
    text = (b"slimdump writes pages " * 200)[:PAGE]
    noise = np.random.default_rng(7).integers(0, 256, PAGE, np.uint8).tobytes()
    for page in (text, bytes(PAGE), noise):
        flags, data = compress_page(codec, page)
        if flags:
            assert flags == CODECS[codec].flag and len(data) < PAGE
        else:
            assert data == page
        assert decompress(flags, data, PAGE) == page
    # incompressible pages are stored as they are
    assert compress_page(codec, noise) == (0, noise)
    if codec != "none":
        assert compress_page(codec, text)[0] == CODECS[codec].flag


def test_codec_flag_values() -> None:
    assert {name: c.flag for name, c in CODECS.items()} == {
        "none": 0, "zlib": 0x1, "lzo": 0x2, "snappy": 0x4, "zstd": 0x20}


@pytest.mark.parametrize("codec", ["zlib", "lzo", "snappy", "zstd"])
def test_codec_rejects_bad_pages(codec: str) -> None:
    flag = CODECS[codec].flag
    with pytest.raises(DumpError):
        decompress(flag, b"\x00garbage that is no compressed page", PAGE)
    # a valid stream of the wrong length (two pages, or half a page)
    for size in (2 * PAGE, PAGE // 2):
        _, data = compress_page(codec, bytes(size))
        with pytest.raises(DumpError, match=r"decompresses to|does not decompress"):
            decompress(flag, data, PAGE)
    with pytest.raises(DumpError):
        decompress(flag | 0x2 if flag != 0x2 else 0x3, b"x", PAGE)


def test_codec_missing_module(monkeypatch: pytest.MonkeyPatch) -> None:
    real = codecs.importlib.import_module

    def no_lzo(name: str) -> object:
        if name == "lzo":
            raise ImportError("No module named 'lzo'")
        return real(name)

    monkeypatch.setattr(codecs.importlib, "import_module", no_lzo)
    with pytest.raises(DumpError) as err:
        compress_page("lzo", bytes(PAGE))
    assert "'lzo'" in str(err.value) and "python-lzo" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(DumpError, match="'lzo'"):
        kdump_writer.KdumpWriter(0, _synthetic_meta(_elf_header(True, "<", 62))[0],
                                 b"\xff", b"\xff", codec="lzo")
    assert compress_page("zlib", bytes(PAGE))[0] == 1          # the others still work


# -- kdump-compressed output ---------------------------------------------------------


@pytest.mark.parametrize("codec", list(CODECS))
def test_kdump_every_codec(vm: Vm, codec: str, tmp_path: Path) -> None:
    """All present pages, zero pages shared (dump level 1)."""
    dst = tmp_path / f"vmcore.{codec}"
    result = write_kdump_file(vm, dst, vm.bitmap1, codec)
    assert result.zero_pages > 0 and result.pages == int(vm.bitmap1.sum())
    if codec != "none":
        assert result.compressed_pages > 0
    check_drgn(vm, dst, vm.bitmap1)
    with open_kdump(dst) as dump:
        assert dump.compression == codec
        assert dump.dump_level == 1 and dump.nr_cpus == vm.cpus
        assert dump.utsname.release == vm.release.encode() and dump.utsname.machine == b"x86_64"
        assert dump.note_area == note_area(vm.source)
        assert note_tuples(dump) == note_tuples(vm.source)
        assert dump.data_end == dump.size == result.size and not dump.truncated
        check_reader(vm, dump, vm.bitmap1)
    assert crash_osrelease(dst) == vm.release
    if codec in MDF_CODECS:
        assert makedumpfile_dmesg(dst, tmp_path) == vm.dmesg


def test_kdump_excluded_pages(vm: Vm, tmp_path: Path) -> None:
    """Every other 2 MiB block: the others are absent for drgn and for us; the
    output does not depend on how many processes compressed it."""
    pooled, single = tmp_path / "pooled", tmp_path / "single"
    result = write_kdump_file(vm, pooled, vm.half, "zlib", workers=2)
    assert result.workers == 2
    assert write_kdump_file(vm, single, vm.half, "zlib", workers=1).workers == 1
    assert filecmp.cmp(pooled, single, shallow=False)
    check_drgn(vm, pooled, vm.half)
    with open_kdump(pooled) as dump:
        check_reader(vm, dump, vm.half)
        assert dump.num_dumpable == int(vm.half.sum())
        assert [(s.phys_start, s.mem_size) for s in dump.segments] == [
            (s.phys_start, s.mem_size) for s in open_kdump_segments(vm)]


def open_kdump_segments(vm: Vm) -> list:
    """The 1st bitmap's runs, as the reader should present them."""
    edges = np.flatnonzero(np.diff(vm.bitmap1.astype(np.int8), prepend=0, append=0))
    from slimdump.sources.base import Segment
    return [Segment(int(a) * PAGE, 0, int(b - a) * PAGE, 0, int(b - a) * PAGE)
            for a, b in zip(edges[0::2], edges[1::2], strict=True)]


@pytest.mark.parametrize("dump_level", [1, 0])
@pytest.mark.parametrize("codec", ["none", "zlib", "lzo", "snappy", "zstd"])
def test_output_independent_of_threads_and_packer(vm: Vm, tmp_path: Path, codec: str,
                                                  dump_level: int,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker threads and the C packer change only the speed: 2 workers and
    1 worker write the same file; with makedumpfile's compressors
    (exact_compression) the C packer writes the pure-Python packer's and
    descriptor builder's file; zero pages shared (level 1) or stored in
    place (level 0).  The C packer's faster compressors write the same pages
    (drgn reads them equal to the source)."""
    some = vm.half & (np.arange(len(vm.half)) < 0x20000)
    threaded, single, exact, python = (tmp_path / name for name in
                                       ("threaded", "single", "exact", "python"))
    result = write_kdump_file(vm, threaded, some, codec, workers=2, dump_level=dump_level)
    assert result.workers == 2
    assert (result.zero_pages > 0) == (dump_level == 1)
    assert write_kdump_file(vm, single, some, codec, workers=1,
                            dump_level=dump_level).workers == 1
    write_kdump_file(vm, exact, some, codec, dump_level=dump_level, exact_compression=True)
    monkeypatch.setattr(pagepack, "NATIVE_PACK", None)
    monkeypatch.setattr(pagepack, "NATIVE_ZERO_BITS", None)
    monkeypatch.setattr(pagepack, "NATIVE_DESCRIPTORS", None)
    write_kdump_file(vm, python, some, codec, workers=2, dump_level=dump_level)
    assert filecmp.cmp(threaded, single, shallow=False)
    assert filecmp.cmp(exact, python, shallow=False)
    if codec in ("zlib", "lzo"):
        assert not filecmp.cmp(threaded, exact, shallow=False)
    if codec in pagepack.NATIVE_CODECS:
        check_drgn(vm, threaded, some)


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("big_endian", [False, True])
def test_native_descriptors_equal_python(share: bool, big_endian: bool) -> None:
    """The C descriptor builder writes what descriptors_python writes, which
    is checked here field by field against the format (offset, size, flags,
    zero page_flags; 24 bytes each in the dump's byte order)."""
    require_native(pagepack.NATIVE_DESCRIPTORS, "slimdump.writers._pagepack")
    rng = np.random.default_rng(7)
    zero = (rng.random(300) < 0.3).astype(np.uint8)
    n = int(len(zero) - zero.sum())
    flags = rng.choice([0, 2], n).astype(np.uint32)
    sizes = np.where(flags == 0, 4096, rng.integers(10, 4095, n)).astype(np.uint32)
    args = (zero.tobytes(), flags.tobytes(), sizes.tobytes(), 1 << 33, 0x5000, 4096, 2, 70,
            big_endian, share)
    native = pagepack.NATIVE_DESCRIPTORS(*args)
    assert native == pagepack.descriptors_python(*args)
    descs = np.frombuffer(native[0], np.dtype([("offset", ">i8" if big_endian else "<i8"),
                                               ("size", ">u4" if big_endian else "<u4"),
                                               ("flags", ">u4" if big_endian else "<u4"),
                                               ("pf", "u8")]))
    z = zero.astype(bool)
    assert (descs["pf"] == 0).all()
    assert list(descs["size"][~z]) == list(sizes) and list(descs["flags"][~z]) == list(flags)
    if share:
        assert (descs["offset"][z] == 0x5000).all() and (descs["size"][z] == 4096).all()
        stored = descs[~z]
    else:
        assert (descs["size"][z] == 70).all() and (descs["flags"][z] == 2).all()
        stored = descs
    offsets = (1 << 33) + np.cumsum(stored["size"].astype(np.int64)) - stored["size"]
    assert (stored["offset"] == offsets).all()
    assert native[1] == int(stored["size"].astype(np.int64).sum())
    assert native[2] == int((stored["flags"] != 0).sum())


def test_native_packer_built() -> None:
    """CI builds the C packer (make setup installs gcc, liblzo2-dev and
    libdeflate-dev); a silent fallback to Python, or to zlib for -c, would
    only show as a slow benchmark."""
    require_native(pagepack.NATIVE_PACK, "slimdump.writers._pagepack")
    from slimdump.writers import _pagepack
    assert _pagepack.ZLIB_COMPRESSOR.startswith("libdeflate "), _pagepack.ZLIB_COMPRESSOR


@pytest.mark.parametrize("page_size", [1024, 4096, 65536])
@pytest.mark.parametrize("codec", ["none", "zlib", "lzo"])
def test_native_pack_equals_python(vm: Vm, codec: str, page_size: int) -> None:
    """The C packer's zero test, flags, sizes and bytes equal the Python
    path's (which test_kdump_codecs holds to makedumpfile and drgn): real
    memory, zero pages, incompressible pages, and a page that is zero but
    for its last byte."""
    require_native(pagepack.NATIVE_PACK, "slimdump.writers._pagepack")
    real = vm.source.read_phys(0x1000000, 64 * 4096)
    almost = bytearray(page_size)
    almost[-1] = 1
    data = (real[:32 * 4096] + bytes(3 * page_size) + os.urandom(2 * page_size)
            + bytes(almost) + real[32 * 4096:])
    data = data[:len(data) // page_size * page_size]
    found = codecs.get_codec(codec)
    native = pagepack.NATIVE_PACK(data, page_size, found.flag, True)
    python = pagepack.pack_pages_python(found, data, page_size)
    assert native == python
    zero = np.frombuffer(native[0], np.uint8)
    assert zero.sum() >= 3 and len(zero) == len(data) // page_size
    if codec != "none":
        flags = np.frombuffer(native[1], np.uint32)
        assert (flags == 0).sum() >= 2 and (flags == found.flag).any()
    # an unaligned view reads the same
    odd = memoryview(b"x" + data)[1:]
    assert pagepack.NATIVE_PACK(odd, page_size, found.flag, True) == native


@pytest.mark.parametrize("page_size", [1024, 4096, 65536])
@pytest.mark.parametrize("codec", ["zlib", "lzo"])
def test_fast_pack_stores_the_same_pages(vm: Vm, codec: str, page_size: int) -> None:
    """The C packer's default compressors (LZO1X-1 with a page-sized
    dictionary up to 4 KiB pages, libdeflate's zlib streams) store other
    bytes than makedumpfile's compressors, and the same pages: the same zero
    test, and every stored page decompresses, with zlib's inflate and
    python-lzo (liblzo2), to the source page; compressed where the flag says."""
    require_native(pagepack.NATIVE_PACK, "slimdump.writers._pagepack")
    lzo = require_module("lzo")
    data = vm.source.read_phys(0x1000000, 64 * 4096) + os.urandom(2 * page_size)
    data = data[:len(data) // page_size * page_size]
    found = codecs.get_codec(codec)
    zero, flags, sizes, blob = pagepack.NATIVE_PACK(data, page_size, found.flag, False)
    exact = pagepack.NATIVE_PACK(data, page_size, found.flag, True)
    assert zero == exact[0]
    # LZO above 4 KiB pages keeps makedumpfile's LZO1X-1
    assert (blob == exact[3]) == (codec == "lzo" and page_size > 4096)
    pages = [data[i * page_size:(i + 1) * page_size] for i in range(len(zero)) if not zero[i]]
    at = 0
    for page, flag, size in zip(pages, np.frombuffer(flags, np.uint32),
                                np.frombuffer(sizes, np.uint32), strict=True):
        stored = blob[at:at + size]
        at += int(size)
        if flag == 0:
            assert stored == page
            continue
        assert flag == found.flag and size < page_size
        plain = (zlib.decompress(stored) if codec == "zlib"
                 else lzo.decompress(stored, False, page_size))
        assert plain == page
    assert at == len(blob) and (np.frombuffer(flags, np.uint32) != 0).sum() >= 2


@pytest.mark.parametrize("codec", ["snappy", "zstd", "lzo", "none"])
def test_zero_native_pack_equals_python(vm: Vm, codec: str) -> None:
    """Codecs the C packer lacks: zero test in C, compression in Python,
    the same (zero, flags, sizes, blob) as the numpy path."""
    require_native(pagepack.NATIVE_ZERO_BITS, "slimdump.writers._pagepack")
    data = (vm.source.read_phys(0x1000000, 16 * 4096) + bytes(3 * 4096) + os.urandom(4096)
            + vm.source.read_phys(0x2000000, 8 * 4096))
    found = codecs.get_codec(codec)
    mixed = pagepack.pack_pages_zero_native(found, data, 4096)
    assert mixed == pagepack.pack_pages_python(found, data, 4096)
    assert sum(mixed[0]) >= 3


@pytest.mark.parametrize("page_size", [1024, 4096])
def test_native_zero_bits_equal_python(vm: Vm, page_size: int) -> None:
    """The C zero test of the -E zero pass agrees with plain Python on real
    memory with zero pages, a page zero but for its last byte, and page
    counts that do not fill the last byte of bits."""
    require_native(pagepack.NATIVE_ZERO_BITS, "slimdump.writers._pagepack")
    almost = bytearray(page_size)
    almost[-1] = 1
    data = (vm.source.read_phys(0x1000000, 8 * 4096) + bytes(3 * page_size) + bytes(almost)
            + os.urandom(page_size) + bytes(page_size))
    for count in (1, 7, 8, 9, len(data) // page_size):
        part = data[:count * page_size]
        native = pagepack.NATIVE_ZERO_BITS(part, page_size)
        assert native == pagepack.zero_page_bits_python(part, page_size)
        assert len(native) == (count + 7) // 8
    bits = int.from_bytes(pagepack.NATIVE_ZERO_BITS(data, page_size), "little")
    n = len(data) // page_size
    assert [bits >> i & 1 for i in range(n - 6, n)] == [1, 1, 1, 0, 0, 1]
    with pytest.raises(ValueError):
        pagepack.NATIVE_ZERO_BITS(b"x" * 100, 64)


@pytest.mark.parametrize("bad", [(b"x" * 4095, 4096, 0), (bytes(4096), 3000, 0),
                                 (bytes(4096), 4096, 0x4)])
def test_native_pack_refuses(bad: tuple[bytes, int, int]) -> None:
    require_native(pagepack.NATIVE_PACK, "slimdump.writers._pagepack")
    with pytest.raises(ValueError):
        pagepack.NATIVE_PACK(*bad)


# -- flattened --------------------------------------------------------------------


def test_flattened_round_trip(vm: Vm, tmp_path: Path) -> None:
    """-F then -R (ours and makedumpfile's) gives the file written directly;
    drgn, crash and our FlatFile read the stream itself."""
    direct, flat = tmp_path / "direct", tmp_path / "dump.flat"
    write_kdump_file(vm, direct, vm.half, "lzo")
    with flat.open("wb") as stream:
        writer = FlatWriter(stream, name=str(flat))
        write_kdump(writer, vm.meta, packed(vm.bitmap1), packed(vm.half),
                    page_reader(vm.source), codec="lzo")
        writer.finish()
    ours = tmp_path / "ours.kdump"
    with flat.open("rb") as stream, AtomicOutput(ours) as out:
        assert reassemble(stream, out, name=str(flat)) == direct.stat().st_size
        out.commit()
    assert filecmp.cmp(ours, direct, shallow=False)
    theirs = tmp_path / "theirs.kdump"
    with flat.open("rb") as stream:
        res = subprocess.run([tool("makedumpfile"), "-R", str(theirs)], stdin=stream,
                             capture_output=True, check=False)
    assert res.returncode == 0, res.stderr
    assert filecmp.cmp(theirs, direct, shallow=False)
    check_drgn(vm, flat, vm.half)
    assert crash_osrelease(flat) == vm.release
    with open_flattened(RawFile.open(flat)) as dump:
        assert isinstance(dump, FlatFile) and dump.format == "flattened"
        assert not dump.truncated and dump.size == direct.stat().st_size
        check_reader(vm, dump, vm.half)


# -- filtered ELF ---------------------------------------------------------------------


def test_filtered_elf(vm: Vm, tmp_path: Path) -> None:
    """-E of every present page minus zero pages: split PT_LOADs, drgn reads
    the kept pages, makedumpfile reads the log from it."""
    dst = tmp_path / "vmcore.elf"
    src = vm.source
    assert isinstance(src, ElfCore)
    with AtomicOutput(dst) as out:
        result = write_filtered_elf(out, src.header, note_area(src), src.phdrs,
                                    packed(vm.bitmap1),
                                    page_reader(src), exclude_zero=True,
                                    nbits=vm.meta.max_mapnr)
        out.commit()
    assert dst.stat().st_size == result.size < vm.path.stat().st_size // 3
    assert len(result.loads) > len([p for p in src.phdrs if p.p_type == 1])
    with open_dump(dst) as elf:
        assert note_tuples(elf) == note_tuples(src)
        nonzero = vm.bitmap1.copy()
        for pfn in vm.sample.tolist():
            if vm.bitmap1[pfn]:
                page = vm.read_source(pfn)
                nonzero[pfn] = page != bytes(PAGE)
                # a partial page: -E holds what the vmcore held, no more
                size = vm.held_size(pfn)
                assert elf.read_phys(pfn * PAGE, size) == page[:size]
    check_drgn(vm, dst, nonzero, holes_read_zero=True)
    assert makedumpfile_dmesg(dst, tmp_path) == vm.dmesg
    assert crash_osrelease(dst) == vm.release


# -- against makedumpfile's own files ------------------------------------------------


@pytest.fixture(scope="module")
def mdf(vm: Vm, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """makedumpfile -d 31 outputs of the source: -c, -l, -p (uncompressed in
    Debian's build), -E, -F -c and its -R."""
    out = tmp_path_factory.mktemp("makedumpfile")
    mdf_bin = tool("makedumpfile")
    files: dict[str, Path] = {}
    for name, opts in (("c", ["-c"]), ("l", ["-l"]), ("p", ["-p"]), ("E", ["-E"])):
        files[name] = out / f"d31.{name}"
        res = run(mdf_bin, *opts, "-d", "31", vm.path, files[name], check=False)
        assert res.returncode == 0, res.stdout + res.stderr
    files["F"] = out / "d31.flat"
    with files["F"].open("wb") as stream:
        res2 = subprocess.run([mdf_bin, "-F", "-c", "-d", "31", str(vm.path)], stdout=stream,
                              stderr=subprocess.PIPE, check=False)
    assert res2.returncode == 0, res2.stderr
    files["R"] = out / "d31.R"
    with files["F"].open("rb") as stream:
        subprocess.run([mdf_bin, "-R", str(files["R"])], stdin=stream, capture_output=True,
                       check=True)
    return files


@pytest.mark.parametrize("name", ["c", "l", "p", "F", "R"])
def test_reads_makedumpfile_output(vm: Vm, mdf: dict[str, Path], name: str) -> None:
    path = mdf[name]
    with (open_flattened(RawFile.open(path)) if name == "F" else open_kdump(path)) as dump:
        assert isinstance(dump, KdumpFile)
        assert dump.format == ("flattened" if name == "F" else "kdump")
        assert dump.dump_level == 31 and dump.nr_cpus == vm.cpus and not dump.truncated
        assert dump.compression == {"c": "zlib", "l": "lzo", "p": "none", "F": "zlib",
                                    "R": "zlib"}[name]
        assert dump.utsname.release == vm.release.encode()
        assert dump.note_area == note_area(vm.source)
        assert dump.phys_base == vm.meta.phys_base
        assert dump.max_mapnr == vm.meta.max_mapnr
        kept = unpacked(dump.bitmap2)
        theirs = unpacked(dump.bitmap1)
        tails = vm.tails_mask(dump.max_mapnr)
        assert vm.tails and not (theirs & tails).any()
        assert np.array_equal(theirs | tails, vm.bitmap1)
        assert 0 < kept.sum() < vm.bitmap1.sum()
        check_reader(vm, dump, kept)
        # the kernel layer reads the log through the kdump reader
        assert extract_dmesg(dump) == vm.dmesg
        assert dump.bytes_read < dump.size // 2


@pytest.mark.parametrize(("name", "codec"), [("c", "zlib"), ("l", "lzo"), ("p", "none")])
def test_same_bytes_as_makedumpfile(vm: Vm, mdf: dict[str, Path], name: str, codec: str,
                                    tmp_path: Path) -> None:
    """Given makedumpfile's bitmaps and compressors, our file is
    makedumpfile's file.  With our default compressors it holds the same
    headers, bitmaps and pages: drgn reads every kept page of both equal."""
    with open_kdump(mdf[name]) as theirs:
        meta = replace(vm.meta, dump_level=theirs.dump_level)
        ours, fast = tmp_path / "ours", tmp_path / "fast"
        for dst, exact in ((ours, True), (fast, False)):
            with AtomicOutput(dst) as out:
                writer = kdump_writer.KdumpWriter(out, meta, theirs.bitmap1, theirs.bitmap2,
                                                  codec=codec, exact_compression=exact)
                writer.write(page_reader(vm.source))
                out.commit()
        kept = np.flatnonzero(unpacked(theirs.bitmap2))
    assert filecmp.cmp(ours, mdf[name], shallow=False)
    head = writer.desc_offset
    assert fast.read_bytes()[:head] == mdf[name].read_bytes()[:head]
    if codec != "none":
        assert fast.read_bytes() != mdf[name].read_bytes()
    progs = []
    for path in (fast, mdf[name]):
        prog = drgn.Program()
        prog.set_core_dump(str(path))
        progs.append(prog)
    for pfn in kept.tolist():
        assert progs[0].read(pfn * PAGE, PAGE, True) == progs[1].read(pfn * PAGE, PAGE, True)


def test_same_elf_as_makedumpfile(vm: Vm, mdf: dict[str, Path], tmp_path: Path) -> None:
    """-E: makedumpfile's 2nd bitmap (from its -l file, zero pages still set)
    with our zero pass gives makedumpfile's -E file byte for byte."""
    src = vm.source
    assert isinstance(src, ElfCore)
    with open_kdump(mdf["l"]) as theirs:
        dst = tmp_path / "ours.elf"
        with AtomicOutput(dst) as out:
            write_filtered_elf(out, src.header, note_area(src), src.phdrs, theirs.bitmap2,
                               page_reader(src), exclude_zero=True, nbits=theirs.max_mapnr)
            out.commit()
    assert filecmp.cmp(dst, mdf["E"], shallow=False)


# -- synthetic files: other ABIs, hostile headers, flattened edge cases --------------


def _elf_header(elf64: bool, endian: str, machine: int) -> ElfHeader:
    return ElfHeader(elf64, endian, 0, ET_CORE, machine, 1, 0, 64 if elf64 else 52, 0, 0,
                     64 if elf64 else 52, 56 if elf64 else 32, 0, 0, 0, 0)


def _synthetic_meta(header: ElfHeader, nbits: int = 200,
                    page: int = PAGE) -> tuple[KdumpMeta, bytes]:
    """A small machine: pages of text, zeros and noise, two CPUs' notes, and
    the VMCOREINFO keys libkdumpfile wants before it reads anything."""
    keys = {62: b"SYMBOL(swapper_pg_dir)=ffffffff82000000\nNUMBER(pgtable_l5_enabled)=0\n",
            EM_386: b"SYMBOL(swapper_pg_dir)=c1000000\n",
            40: b"SYMBOL(swapper_pg_dir)=c0004000\nSYMBOL(_stext)=c0008000\n",
            21: b"SYMBOL(swapper_pg_dir)=c000000001000000\n"}[header.e_machine]
    vmcoreinfo = (b"OSRELEASE=6.1.0-synthetic\nPAGESIZE=%d\n" % page + keys
                  + b"KERNELOFFSET=0\nCRASHTIME=1700000000\n")
    prstatus = bytes({62: 336, EM_386: 144, 40: 148, 21: 504}[header.e_machine])
    notes = frame_notes([Note.make("CORE", 1, prstatus), Note.make("CORE", 1, prstatus),
                         Note.make("VMCOREINFO", 0, vmcoreinfo)], header.endian)
    rng = np.random.default_rng(3)
    pages = []
    for pfn in range(nbits):
        kind = pfn % 5
        if kind == 0:
            pages.append(bytes(page))
        elif kind == 1:
            pages.append(rng.integers(0, 256, page, np.uint8).tobytes())
        else:
            pages.append((f"page {pfn:#x} ".encode() * (page // 8))[:page])
    machine = {62: b"x86_64", 3: b"i686", 40: b"armv7l", 21: b"ppc64"}[header.e_machine]
    uts = Utsname(release=b"6.1.0-synthetic", version=b"#1", machine=machine)
    meta = KdumpMeta(header, notes, uts, 1700000000, -0x2000000, 1, nbits, page)
    return meta, b"".join(pages)


def _synthetic_kdump(path: Path, header: ElfHeader, codec: str = "zlib", nbits: int = 200,
                     page: int = PAGE) -> tuple[bytes, np.ndarray]:
    meta, memory = _synthetic_meta(header, nbits, page)
    bitmap1 = np.ones(nbits, bool)
    bitmap1[:3] = False
    bitmap2 = bitmap1 & (np.arange(nbits) % 7 != 3)
    with AtomicOutput(path) as out:
        write_kdump(out, meta, packed(bitmap1), packed(bitmap2),
                    lambda pfn, count: memory[pfn * page:(pfn + count) * page],
                    codec=codec, workers=1)
        out.commit()
    return memory, bitmap2


# (elf64, endian, machine, page size, header size, sub header size, offset of status)
ABIS = [(True, "<", 62, PAGE, 464, 104, 424), (False, "<", EM_386, PAGE, 452, 80, 412),
        (False, "<", 40, PAGE, 452, 96, 412), (True, ">", 21, 1 << 16, 464, 104, 424)]


@pytest.mark.parametrize(("elf64", "endian", "machine", "page", "hsize", "ssize", "status_at"),
                         ABIS, ids=["x86_64", "i386", "arm", "ppc64"])
def test_other_abis(tmp_path: Path, elf64: bool, endian: str, machine: int, page: int,
                    hsize: int, ssize: int, status_at: int) -> None:
    """Word size and byte order follow the crashed machine; our reader finds
    them again from utsname.machine and header_version, and so does
    libkdumpfile (through drgn)."""
    header = _elf_header(elf64, endian, machine)
    abi = KdumpAbi.for_elf(header)
    assert (abi.header_size, abi.sub_header_size) == (hsize, ssize)
    path = tmp_path / "synthetic.kdump"
    memory, bitmap2 = _synthetic_kdump(path, header, "lzo", page=page)
    data = path.read_bytes()
    assert data[:8] == b"KDUMP   "
    assert struct.unpack_from(endian + "i", data, 8)[0] == 6
    assert struct.unpack_from(endian + "I", data, status_at)[0] == 0x2        # LZO
    assert struct.unpack_from(endian + "i", data, status_at + 4)[0] == page  # block_size
    assert struct.unpack_from(endian + "i", data, status_at + 16)[0] == 200  # max_mapnr
    with open_kdump(path) as dump:
        assert dump.abi == abi and dump.block_size == page
        assert (dump.header.elf64, dump.header.endian, dump.header.e_machine) == (
            elf64, endian, machine)
        assert dump.phys_base == -0x2000000 and dump.nr_cpus == 2
        assert dump.sub_header.offset_note == page + ssize
        assert [n.name for n in dump.notes] == ["CORE", "CORE", "VMCOREINFO"]
        vmcoreinfo = dump.notes[2].desc
        at = dump.sub_header.offset_vmcoreinfo
        assert data[at:at + dump.sub_header.size_vmcoreinfo] == vmcoreinfo
        for pfn in range(len(bitmap2)):
            if bitmap2[pfn]:
                assert dump.read_phys(pfn * page, page) == memory[pfn * page:(pfn + 1) * page]
            else:
                with pytest.raises(NotInDump):
                    dump.read_phys(pfn * page, page)
    prog = drgn.Program()
    prog.set_core_dump(str(path))
    for pfn in range(len(bitmap2)):
        if bitmap2[pfn]:
            assert prog.read(pfn * page, page, True) == memory[pfn * page:(pfn + 1) * page]
        else:
            with pytest.raises(drgn.FaultError):
                prog.read(pfn * page, page, True)


def _hostile_variants(data: bytes, ndesc: int) -> Iterator[tuple[str, bytes]]:
    """Truncations and corrupted fields of a valid x86_64 file."""
    def patched(offset: int, fmt: str, value: int) -> bytes:
        out = bytearray(data)
        struct.pack_into("<" + fmt, out, offset, value)
        return bytes(out)

    for cut in (0, 7, 100, 463, PAGE, PAGE + 50, 3 * PAGE - 1, 4 * PAGE + 10,
                len(data) // 2, len(data) - 1):
        yield f"truncated at {cut}", data[:cut]
    yield "header version", patched(8, "i", 0x41414141)
    yield "block size", patched(428, "i", 3)
    yield "block size 0", patched(428, "i", 0)
    yield "sub header blocks", patched(432, "i", 0x7FFFFFFF)
    yield "negative sub header", patched(432, "i", -5)
    yield "bitmap blocks", patched(436, "I", 0xFFFFFFFF)
    yield "no bitmap", patched(436, "I", 0)
    yield "max_mapnr_64", patched(PAGE + 96, "Q", 1 << 50)
    yield "max_mapnr zero", patched(PAGE + 96, "Q", 0)
    yield "note size", patched(PAGE + 56, "Q", 1 << 40)
    yield "note offset", patched(PAGE + 48, "q", 1 << 40)
    yield "vmcoreinfo size", patched(PAGE + 40, "Q", 1 << 62)
    yield "eraseinfo size", patched(PAGE + 72, "Q", 1 << 40)
    yield "note record", patched(PAGE + 104, "I", 0xFFFFFF)
    desc = 4 * PAGE                       # sub header 1 block, bitmaps 2 blocks
    yield "page size in descriptor", patched(desc + 8, "I", PAGE + 1)
    yield "page offset in descriptor", patched(desc, "q", 1 << 50)
    yield "negative page offset", patched(desc, "q", -4096)
    yield "mixed flags", patched(desc + 12, "I", 0x3)
    yield "uncompressed short page", patched(desc + 12, "I", 0)
    data_at = desc + 24 * ndesc + PAGE        # after the shared zero page
    yield "garbage page data", data[:data_at] + bytes(len(data) - data_at)


def test_hostile_kdump_headers(tmp_path: Path) -> None:
    """Every damaged variant is a one-line DumpError naming the file, at
    open or when its pages are read; never another exception."""
    good = tmp_path / "good.kdump"
    _, bitmap2 = _synthetic_kdump(good, _elf_header(True, "<", 62))
    data = good.read_bytes()
    with open_kdump(good) as dump:
        assert dump.desc_offset == 4 * PAGE and dump.num_dumpable == int(bitmap2.sum())
    for what, variant in _hostile_variants(data, int(bitmap2.sum())):
        path = tmp_path / "bad.kdump"
        path.write_bytes(variant)
        with pytest.raises(DumpError) as err, open_kdump(path) as dump:
            for pfn in range(dump.max_mapnr):
                if dump.is_dumped(pfn):
                    dump.read_phys(pfn * PAGE, PAGE)
        assert not isinstance(err.value, NotInDump), what
        assert "\n" not in str(err.value), what
        assert str(err.value).startswith(f"{path}: "), what


def test_flattened_edge_cases(tmp_path: Path) -> None:
    """Overlapping records (the later wins, as makedumpfile -R does), records
    out of order, a stream cut short, and no zero-length records."""
    flat = tmp_path / "edge.flat"
    with flat.open("wb") as stream:
        writer = FlatWriter(stream, max_record=5000)
        writer.write(b"KDUMP   " + b"A" * 9000, 0)
        writer.write(b"B" * 3000, 20000)
        writer.write(b"", 50)                                  # nothing
        writer.write(b"C" * 100, 4000)                         # overwrites part of A
        writer.write(b"D" * 10, 8990)                          # straddles A's end
        writer.finish()
    raw = flat.read_bytes()
    assert raw[:4096] == flat_header() and raw.endswith(b"\xff" * 16)
    expected = bytearray(23000)
    expected[0:9008] = b"KDUMP   " + b"A" * 9000
    expected[20000:23000] = b"B" * 3000
    expected[4000:4100] = b"C" * 100
    expected[8990:9000] = b"D" * 10
    ours = tmp_path / "ours"
    with flat.open("rb") as stream, AtomicOutput(ours) as out:
        assert reassemble(stream, out) == 23000
        out.commit()
    assert ours.read_bytes() == bytes(expected)
    theirs = tmp_path / "theirs"
    with flat.open("rb") as stream:
        subprocess.run([tool("makedumpfile"), "-R", str(theirs)], stdin=stream,
                       capture_output=True, check=True)
    assert theirs.read_bytes() == bytes(expected)
    view = FlatStream(RawFile.open(flat))
    assert view.complete and view.size == 23000
    assert view.read_at(0, 23000) == bytes(expected)
    assert view.read_at(8980, 40) == bytes(expected[8980:9020])
    with pytest.raises(DumpError, match="truncated"):
        view.read_at(22990, 20)
    view.close()
    # cut short: indexed as far as it goes, and -R refuses it
    cut = tmp_path / "cut.flat"
    cut.write_bytes(raw[:4096 + 16 + 3000])
    short = FlatStream(RawFile.open(cut))
    assert not short.complete and short.size == 3000
    short.close()
    with cut.open("rb") as stream, pytest.raises(DumpError, match="truncated"):
        reassemble(stream, os.open(os.devnull, os.O_WRONLY))
    bad = tmp_path / "bad.flat"
    bad.write_bytes(flat_header() + struct.pack(">qq", 0, 0))
    with bad.open("rb") as stream, pytest.raises(DumpError, match="claims 0 bytes"):
        reassemble(stream, os.open(os.devnull, os.O_WRONLY))
    with pytest.raises(DumpError, match="claims 0 bytes"):
        FlatStream(RawFile.open(bad))
    notflat = tmp_path / "notflat"
    notflat.write_bytes(b"makedumpfile\0\0\0\0" + struct.pack(">qq", 2, 1))
    with notflat.open("rb") as stream, pytest.raises(DumpError, match="type 2"):
        reassemble(stream, os.open(os.devnull, os.O_WRONLY))


def test_truncated_flat_kdump_is_marked(tmp_path: Path) -> None:
    path = tmp_path / "synthetic.kdump"
    _synthetic_kdump(path, _elf_header(True, "<", 62))
    flat = tmp_path / "synthetic.flat"
    data = path.read_bytes()
    with flat.open("wb") as stream:
        writer = FlatWriter(stream, max_record=PAGE)
        writer.write(data, 0)
        writer.finish()
    with open_flattened(RawFile.open(flat)) as dump:
        assert not dump.truncated
    flat.write_bytes(flat.read_bytes()[:-5000])
    with open_flattened(RawFile.open(flat)) as dump:
        assert dump.truncated
        with pytest.raises(DumpError, match="truncated"):
            dump.read_phys(199 * PAGE, PAGE)


def test_flat_to_stdout_with_a_pool(tmp_path: Path) -> None:
    """-F on standard output while worker threads compress: the stream is the
    one written to a file with one worker (no byte written twice)."""
    script = (
        "import sys, numpy as np\n"
        "from tests.test_formats import _synthetic_meta, _elf_header, PAGE\n"
        "from slimdump.writers.flat import FlatWriter\n"
        "from slimdump.writers.kdump import write_kdump\n"
        "meta, memory = _synthetic_meta(_elf_header(True, '<', 62), 3000)\n"
        "bits = np.arange(3000) % 11 != 4\n"
        "writer = FlatWriter(sys.stdout.buffer)\n"
        "result = write_kdump(writer, meta, bytes([255]) * 375, np.packbits(bits, "
        "bitorder='little').tobytes(),\n"
        "    lambda p, n: memory[p * PAGE:(p + n) * PAGE], codec='zlib', workers=2,\n"
        "    cycle_pages=512)\n"
        "writer.finish()\n"
        "assert result.workers == 2\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, check=False,
                         cwd=Path(__file__).resolve().parent.parent)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    meta, memory = _synthetic_meta(_elf_header(True, "<", 62), 3000)
    expected = tmp_path / "expected.flat"
    with expected.open("wb") as stream:
        writer = FlatWriter(stream)
        write_kdump(writer, meta, b"\xff" * 375, packed(np.arange(3000) % 11 != 4),
                    lambda p, n: memory[p * PAGE:(p + n) * PAGE], codec="zlib", workers=1,
                    cycle_pages=512)
        writer.finish()
    assert res.stdout == expected.read_bytes()


def _join_reference(offsets: list[int], sizes: list[int], zero_at: int, data_start: int,
                    limit: int, delta: int) -> tuple[list[int], int] | None:
    """The joining rule, one descriptor at a time: every offset but the
    shared zero page's and lost pages' (0) moves by ``delta``; the data end
    is the highest end of a moved page; a moved page outside [data_start,
    limit] is an error (None)."""
    moved = [o not in (zero_at, 0) for o in offsets]
    ends = [o + n for o, n, m in zip(offsets, sizes, moved, strict=True) if m]
    if any(o < data_start for o, m in zip(offsets, moved, strict=True) if m) or \
            any(e > limit for e in ends):
        return None
    return ([o + delta if m else o for o, m in zip(offsets, moved, strict=True)],
            max(ends, default=data_start))


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("seed", range(30))
def test_join_moves_offsets_by_the_rule(seed: int, endian: str) -> None:
    """join_parts moves a batch of page descriptors at once (lanes of one
    big integer); it gives what the rule gives descriptor by descriptor, for
    makedumpfile-like batches (data back to back, zero and lost pages among
    them) and damaged ones (pages out of order, overlapping, before the
    data, past the file, negative or huge offsets)."""
    from slimdump.sources.kdump_headers import PageDescriptors
    from slimdump.writers import split

    rng = np.random.default_rng(seed)
    zero_at, data_start, count = 0x5000, 0x6000, int(rng.integers(1, 600))
    offsets, sizes, at = [], [], data_start
    for _ in range(count):
        kind = rng.random()
        if kind < 0.3 and seed % 3:
            offsets.append(zero_at)
            sizes.append(PAGE)
        elif kind < 0.33 and seed % 2:
            offsets.append(0)                                 # a lost page
            sizes.append(0)
        else:
            size = int(rng.integers(1, PAGE + 1))
            offsets.append(at)
            sizes.append(size)
            at += size
    limit = at + int(rng.integers(0, 3))
    damage = seed % 10
    i = int(rng.integers(0, count))
    if damage == 1 and count > 1:
        j = int(rng.integers(0, count))
        offsets[i], offsets[j] = offsets[j], offsets[i]
    elif damage == 2:
        offsets[i] = data_start - 1
    elif damage == 3:
        sizes[i] = limit
    elif damage == 4:
        offsets[i] = -int(rng.integers(1, 1 << 40))
    elif damage == 5:
        offsets[i] = (1 << 56) + int(rng.integers(0, 1 << 20))
    elif damage == 6:
        offsets[i] = (1 << 63) - 1
    elif damage == 7 and count > 1:
        offsets[i] = offsets[i - 1]                           # overlapping data
    data = b"".join(struct.pack(endian + "qIIQ", o, n, 1, 0)
                    for o, n in zip(offsets, sizes, strict=True))
    delta = int(rng.integers(0, 1 << 40)) if seed % 4 else 0
    want = _join_reference(offsets, sizes, zero_at, data_start, limit, delta)
    descs = PageDescriptors(data, endian)
    if want is None:
        with pytest.raises(DumpError, match="outside the page data"):
            split._move_data(descs, zero_at, data_start, limit, delta, "part")
        return
    assert split._move_data(descs, zero_at, data_start, limit, delta, "part") == want[1]
    assert list(descs.offsets) == want[0]
    moved = descs.pack()
    assert moved == b"".join(struct.pack(endian + "qIIQ", o, n, 1, 0)
                             for o, n in zip(want[0], sizes, strict=True))


def test_reads_split_files(vm: Vm, mdf: dict[str, Path], tmp_path: Path) -> None:
    """makedumpfile --split: each file holds the descriptors of its own pfn
    range; together they hold the pages of the unsplit file."""
    parts = [tmp_path / "split.1", tmp_path / "split.2"]
    res = run(tool("makedumpfile"), "--split", "-l", "-d", "31", vm.path, *parts, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    with open_kdump(mdf["l"]) as whole:
        kept = unpacked(whole.bitmap2)
        total = whole.num_dumpable
    found = 0
    for part in parts:
        with open_kdump(part) as dump:
            assert dump.split
            first, last = dump.pfn_range
            found += dump.num_dumpable
            for pfn in vm.sample.tolist():
                if first <= pfn < last and kept[pfn]:
                    assert dump.read_phys(pfn * PAGE, PAGE) == vm.read_source(pfn)
                elif not first <= pfn < last:
                    with pytest.raises(NotInDump):
                        dump.read_phys(pfn * PAGE, PAGE)
    assert found == total


class _FullDisk:
    """An output that fails like a full disk once ``limit`` bytes are in use."""

    def __init__(self, path: Path, limit: int) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self.limit = limit

    def write(self, data: bytes, offset: int) -> None:
        if offset + len(data) > self.limit:
            raise DumpError("full", "write failed: No space left on device")
        os.pwrite(self.fd, data, offset)


def test_incomplete_dump(tmp_path: Path) -> None:
    """A write that fails part way leaves readable pages and lost ones;
    mark_incomplete() sets the header flag makedumpfile uses."""
    meta, memory = _synthetic_meta(_elf_header(True, "<", 62), 3000)
    path = tmp_path / "incomplete.kdump"
    disk = _FullDisk(path, 2 << 20)
    writer = kdump_writer.KdumpWriter(disk, meta, b"\xff" * 375, b"\xff" * 375,
                                      codec="none", cycle_pages=256)
    with pytest.raises(DumpError, match="No space"):
        writer.write(lambda p, n: memory[p * PAGE:(p + n) * PAGE])
    writer.mark_incomplete()
    os.close(disk.fd)
    with open_kdump(path) as dump:
        assert dump.incomplete and dump.status == 0x8
        assert dump.read_phys(7 * PAGE, PAGE) == memory[7 * PAGE:8 * PAGE]
        with pytest.raises(NotInDump, match="lost"):
            dump.read_phys(2999 * PAGE, PAGE)


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6])
def test_older_header_versions(tmp_path: Path, version: int) -> None:
    """Fields a version does not define are ignored: notes from version 4,
    VMCOREINFO alone in version 3, max_mapnr_64 only from version 6."""
    path = tmp_path / "old.kdump"
    memory, bitmap2 = _synthetic_kdump(path, _elf_header(True, "<", 62))
    data = bytearray(path.read_bytes())
    struct.pack_into("<i", data, 8, version)
    path.write_bytes(bytes(data))
    with open_kdump(path) as dump:
        assert dump.header_version == version and dump.max_mapnr == 200
        names = [n.name for n in dump.notes]
        assert names == (["CORE", "CORE", "VMCOREINFO"] if version >= 4
                         else ["VMCOREINFO"] if version == 3 else [])
        assert dump.dump_level == (1 if version >= 1 else 0)
        for pfn in np.flatnonzero(bitmap2).tolist():
            assert dump.read_phys(pfn * PAGE, PAGE) == memory[pfn * PAGE:(pfn + 1) * PAGE]
