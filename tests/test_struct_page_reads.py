"""The struct page walk's building blocks: reads straight into a buffer
(``DumpSource.read_phys_into``, ``RawFile.read_into``) counted like any
other, and a classification that does not depend on how the walk is cut up
(chunk size, cycle size), with struct pages lost to a hole in the dump kept
and counted as unreadable."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from slimdump.errors import DumpError, NotInDump
from slimdump.kernel import dump_level
from slimdump.kernel.dump_level import ExclusionCounts, PageClassifier
from slimdump.kernel.memory import KernelMemory
from slimdump.kernel.physmem import DEFAULT_CYCLE, cycles, present_packed
from slimdump.kernel.vmcoreinfo import VmcoreInfo
from slimdump.sources import DumpSource, ElfCore, open_dump
from slimdump.sources.rawfile import RawFile
from tests import synthcore as sc
from tests.conftest import real_vmcore, require_native
from tests.test_pages import (
    LEVELS,
    MEMMAP,
    SP,
    UNREADABLE,
    V61,
    V612,
    Style,
    bit,
    dropped,
    expected_excluded,
    pfns_of,
    synthetic_core,
)

PAGE = 4096


@pytest.fixture
def native_classifier() -> None:
    require_native(dump_level.NATIVE, "slimdump.kernel._pageclass")


needs_native = pytest.mark.usefixtures("native_classifier")


# ---------------------------------------------------------------------------
# Reads into a buffer


def ram_core(tmp_path: Path) -> tuple[Path, bytes, bytes]:
    ram = sc.tagged_bytes(b"RAM:", 0x100000, 3 * PAGE)
    high = sc.tagged_bytes(b"HIGH", 0x40000800, PAGE + 100)
    loads = [sc.Load(0x100000, 0xC0100000, ram),
             sc.Load(0x40000800, 0xC8000800, high, memsz=len(high) + 4000)]
    path = tmp_path / "core"
    path.write_bytes(sc.build_core([], loads))
    return path, ram, high


def test_read_phys_into_is_read_phys(tmp_path: Path) -> None:
    """Same bytes, same errors, same count as read_phys: in one segment,
    into the zero tail past p_filesz, and outside every segment."""
    path, ram, high = ram_core(tmp_path)
    with open_dump(path) as core:
        assert isinstance(core, ElfCore)
        for paddr, size in ((0x100000 + 5000, 300), (0x100000, len(ram)),
                            (0x40000800 + len(high) - 10, 20), (0x40000800 + 10, 0)):
            buf = bytearray(b"\xaa" * size)
            before = core.bytes_read
            core.read_phys_into(paddr, memoryview(buf))
            into = core.bytes_read - before
            assert bytes(buf) == core.read_phys(paddr, size)
            assert core.bytes_read - before == 2 * into
        assert into == 0
        with pytest.raises(NotInDump, match="0x103000 is not in the dump"):
            core.read_phys_into(0x100000 + len(ram) - 4, memoryview(bytearray(8)))
        # into a slice of a larger buffer, as the struct page walk does
        big = bytearray(b"\xaa" * 192)
        core.read_phys_into(0x100000 + 64, memoryview(big)[64:128])
        assert big[64:128] == ram[64:128] and big[:64] == big[128:] == b"\xaa" * 64


def test_read_phys_into_of_a_truncated_core(tmp_path: Path) -> None:
    path, ram, _high = ram_core(tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut"
    cut.write_bytes(data[:len(data) - len(ram) // 2 - 5000])   # inside the 1st segment
    with open_dump(cut) as core, pytest.raises(DumpError, match="truncated"):
        core.read_phys_into(0x100000, memoryview(bytearray(len(ram))))


class _BytesOnly(DumpSource):
    """A source with only read_phys (like the kdump reader)."""

    def __init__(self, memory: bytes) -> None:
        self.memory = memory
        self.reads = 0

    def read_phys(self, paddr: int, size: int) -> bytes:
        if paddr + size > len(self.memory):
            raise NotInDump(None, f"physical address {paddr:#x} is not in the dump")
        self.reads += 1
        return self.memory[paddr:paddr + size]


def test_read_phys_into_falls_back_to_read_phys() -> None:
    src = _BytesOnly(bytes(range(256)) * 4)
    buf = bytearray(16)
    src.read_phys_into(100, memoryview(buf))
    assert bytes(buf) == src.memory[100:116] and src.reads == 1
    with pytest.raises(NotInDump):
        src.read_phys_into(1020, memoryview(bytearray(8)))


def test_read_into_counts_every_byte_from_two_threads(tmp_path: Path) -> None:
    path = tmp_path / "data"
    data = bytes(range(256)) * 4096                     # 1 MiB
    path.write_bytes(data)
    raw = RawFile.open(path)
    try:
        def hammer(offset: int) -> None:
            buf = bytearray(100)
            for i in range(2000):
                raw.read_into(offset + i, memoryview(buf))
                assert bytes(buf) == data[offset + i:offset + i + 100]

        threads = [threading.Thread(target=hammer, args=(k * 4096,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert raw.bytes_read == 2 * 2000 * 100 and raw.reads == 4000
        with pytest.raises(DumpError, match="truncated"):
            raw.read_into(len(data) - 10, memoryview(bytearray(20)))
        assert raw.bytes_read == 400010
    finally:
        raw.close()


# ---------------------------------------------------------------------------
# The walk, however it is cut up


def classifier(src: DumpSource) -> PageClassifier:
    info = VmcoreInfo.from_notes(src.notes)
    assert info is not None
    return PageClassifier(KernelMemory(src, info))


def classify_all(pc: PageClassifier, level: int, cycle: int
                 ) -> tuple[set[int], set[int], ExclusionCounts]:
    """(pfns dropped, pfns kept, counts) over the whole dump, ``cycle`` pfns
    at a time."""
    gone: set[int] = set()
    kept: set[int] = set()
    total = ExclusionCounts()
    for a, b in cycles(0, pc.max_mapnr, cycle):
        c = pc.classify(level, a, b)
        gone |= dropped(c)
        kept |= pfns_of(c.keep, a)
        total.add(c.counts)
    return gone, kept, total


# struct pages of pfns 0x3000 .. 0x30ff (no page of the scenario) lie in the
# physical pages 0x1c2000 .. 0x1c5fff; the hole starts and ends inside them,
# and the struct pages it touches are lost, not the whole pages around it
HOLE = (MEMMAP + 0x3000 * SP + 0x800, MEMMAP + 0x3100 * SP - 0x800)
LOST = range((HOLE[0] - MEMMAP) // SP, -(-(HOLE[1] - MEMMAP) // SP))


def core_with_hole(tmp_path: Path, style: Style) -> Path:
    """The scenario of test_pages' synthetic cores, with the physical memory
    of HOLE missing from the dump."""
    with open_dump(synthetic_core(tmp_path, style)) as src:
        notes = [sc.Note(n.raw_name.rstrip(b"\0"), n.type, n.desc) for n in src.notes]
        loads = []
        for s in src.segments:
            data = src.read_phys(s.phys_start, s.file_size)
            if s.phys_start < HOLE[0] < s.phys_start + s.mem_size:
                cut_a, cut_b = HOLE[0] - s.phys_start, HOLE[1] - s.phys_start
                loads.append(sc.Load(s.phys_start, s.virt_start, data[:cut_a]))
                loads.append(sc.Load(HOLE[1], s.virt_start + cut_b, data[cut_b:],
                                     memsz=s.mem_size - cut_b))
            else:
                loads.append(sc.Load(s.phys_start, s.virt_start, data, memsz=s.mem_size))
    path = tmp_path / "hole.vmcore"
    path.write_bytes(sc.build_core(notes, loads))
    return path


@needs_native
@pytest.mark.parametrize("style", [V61, V612], ids=lambda s: s.name)
def test_unreadable_struct_pages_whatever_the_cut(tmp_path: Path, style: Style,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Struct pages in a hole of the dump: their pages are kept and counted
    unreadable, every other page classified as without the hole, for chunks
    of 512 to 16384 pfns (boundaries at the hole and just after it) and cycles
    of 777 pfns to the default."""
    path = core_with_hole(tmp_path, style)
    with open_dump(path) as src:
        present = pfns_of(present_packed(src.segments, PAGE, 0, 0x8400))
        assert set(LOST) <= present
        for chunk_bytes in (512 * SP, 0x1800 * SP, 0x3200 * SP, 1 << 20):
            monkeypatch.setattr(dump_level, "_CHUNK_BYTES", chunk_bytes)
            pc = classifier(src)
            for level in LEVELS:
                for cycle in (777, 4096, DEFAULT_CYCLE):
                    gone, kept, counts = classify_all(pc, level, cycle)
                    want = expected_excluded(level)
                    assert gone == want, (chunk_bytes, level, cycle, sorted(gone ^ want)[:10])
                    assert kept == present - want
                    assert set(LOST) <= kept and set(UNREADABLE) <= kept
                    walked = pc.needs_struct_pages(level)
                    assert counts.unreadable == (len(UNREADABLE) + len(LOST) if walked else 0)
                    assert counts.excluded == len(want)
            whole = pc.classify(31, 0, pc.max_mapnr)
            assert all(bit(whole.keep, p) for p in LOST)
            assert whole.counts.unreadable > 0


@pytest.mark.vmcore
@needs_native
@pytest.mark.parametrize("name", ["6.1-sysrq", "6.12-mce"])
def test_chunk_size_changes_nothing(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a real vmcore: how many struct pages are read and walked at a time
    changes neither the verdict nor a byte of what is read."""
    results = []
    for chunk_bytes in (1 << 21, 64 << 10, 512 * 64):
        monkeypatch.setattr(dump_level, "_CHUNK_BYTES", chunk_bytes)
        with open_dump(real_vmcore(name)) as src:
            pc = classifier(src)
            before = src.bytes_read
            per_level = [[pc.classify(level, a, b) for a, b in cycles(0, pc.max_mapnr)]
                         for level in (31, 16, 8, 2)]
            results.append((per_level, src.bytes_read - before, pc.struct_page_bytes))
    (base, base_read, base_asked), *others = results
    assert base_asked > 0
    for per_level, read, asked in others:
        assert read == base_read
        assert asked == base_asked
        assert per_level == base
