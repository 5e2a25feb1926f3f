"""The ELF core reader against cores built by tests/synthcore.py, an
independent builder that eu-readelf and readelf vouch for
(test_synthcore_oracle.py): every class and byte order, notes in one or
many segments, physical reads across PT_LOADs."""

from __future__ import annotations

from pathlib import Path

import pytest

from slimdump.errors import DumpError, NotInDump
from slimdump.kernel.memmap import declared_within, kernel_memory, sections_holding_data
from slimdump.kernel.vmcoreinfo import VmcoreInfo
from slimdump.notes import decode_prstatus
from slimdump.sources import ElfCore, open_dump
from slimdump.sources.base import Segment, subtract_intervals
from tests import synthcore as sc

VARIANTS = [(True, "<", sc.EM_X86_64), (True, ">", sc.EM_AARCH64),
            (False, "<", sc.EM_386), (False, ">", sc.EM_386)]


def write(tmp_path: Path, data: bytes, name: str = "core") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(("elf64", "endian", "machine"), VARIANTS)
@pytest.mark.parametrize("note_segments", ["merged", "per-note"])
def test_header_notes_and_memory(tmp_path: Path, elf64: bool, endian: str, machine: int,
                                 note_segments: str) -> None:
    info = sc.vmcoreinfo({"OSRELEASE": "4.19.0-test", "PAGESIZE": "4096"})
    notes = [sc.Note(b"CORE", sc.NT_PRSTATUS, b"\x11" * 144),
             sc.Note(b"VMCOREINFO", 0, info),
             sc.Note(b"PANIC_MCE", sc.NT_NOCOREDUMP, b"Fatal machine check\0"),
             sc.Note(b"ODDOWNER", 0x1234, b"\x01\x02\x03")]
    ram = sc.tagged_bytes(b"RAM:", 0x100000, 3 * 4096)
    high = sc.tagged_bytes(b"HIGH", 0x40000800, 4096 + 100)
    loads = [sc.Load(0x100000, 0xC0100000, ram),
             sc.Load(0x40000800, 0xC8000800, high, memsz=len(high) + 4000)]
    path = write(tmp_path, sc.build_core(notes, loads, elf64=elf64, endian=endian,
                                         machine=machine, note_segments=note_segments))
    with open_dump(path) as core:
        assert isinstance(core, ElfCore)
        assert core.header.elf64 is elf64
        assert core.header.endian == endian
        assert core.header.e_machine == machine
        assert [(n.name, n.type, n.desc) for n in core.notes] == [
            ("CORE", 1, b"\x11" * 144), ("VMCOREINFO", 0, info),
            ("PANIC_MCE", 21, b"Fatal machine check\0"), ("ODDOWNER", 0x1234, b"\x01\x02\x03")]
        assert [(s.phys_start, s.mem_size, s.file_size) for s in core.segments] == [
            (0x100000, len(ram), len(ram)), (0x40000800, len(high) + 4000, len(high))]
        # reads within, across the end of the file part, and the zero tail
        assert core.read_phys(0x100000 + 5000, 300) == ram[5000:5300]
        assert core.read_phys(0x40000800 + len(high) - 10, 20) == high[-10:] + bytes(10)
        with pytest.raises(NotInDump, match="0x103000 is not in the dump"):
            core.read_phys(0x100000 + len(ram) - 4, 8)
        assert not core.truncated


@pytest.mark.parametrize(("maker", "machine", "elf64", "names"), [
    (sc.prstatus_x86_64, sc.EM_X86_64, True, sc.X86_64_REGS),
    (sc.prstatus_arm64, sc.EM_AARCH64, True, sc.ARM64_REGS),
    (sc.prstatus_i386, sc.EM_386, False, sc.I386_REGS),
])
@pytest.mark.parametrize("endian", ["<", ">"])
def test_prstatus_layouts(maker, machine: int, elf64: bool, names: tuple[str, ...],
                          endian: str) -> None:
    regs = {name: (0x1111 * (i + 1)) & 0xFFFFFFFF for i, name in enumerate(names)}
    status = decode_prstatus(maker(4242, regs, endian=endian), machine, elf64, endian)
    assert status.pid == 4242
    assert status.registers == regs
    assert status.pc == regs[{62: "rip", 183: "pc", 3: "eip"}[machine]]
    assert status.sp == regs[{62: "rsp", 183: "sp", 3: "esp"}[machine]]


def test_notes_stop_at_terminator(tmp_path: Path) -> None:
    """A pre-capture note buffer ends with an empty note and zero padding."""
    notes = [sc.Note(b"CORE", 1, bytes(336)), sc.Note(b"", 0, b""),
             sc.Note(b"", 0, b"")]
    path = write(tmp_path, sc.build_core(notes, []))
    with open_dump(path) as core:
        assert [n.name for n in core.notes] == ["CORE"]


def test_note_size_past_segment(tmp_path: Path) -> None:
    data = bytearray(sc.build_core([sc.Note(b"CORE", 1, bytes(336))], []))
    at = 4096  # the note area starts on the first page boundary
    data[at + 4:at + 8] = (0x7FFFFFF0).to_bytes(4, "little")
    path = write(tmp_path, bytes(data))
    with pytest.raises(DumpError, match="past the end of its segment") as err:
        open_dump(path)
    assert str(path) in str(err.value)


def test_truncated_after_notes_still_opens(tmp_path: Path) -> None:
    data = sc.sample_x86_64_core()
    path = write(tmp_path, data[:8192])
    with open_dump(path) as core:
        assert core.truncated
        assert len(core.notes) == 3
        with pytest.raises(DumpError, match="truncated"):
            core.read_phys(sc.SAMPLE_RAM_PADDR, 16)


@pytest.mark.parametrize(("intervals", "minus", "want"), [
    ([(0, 10)], [(2, 3), (5, 7)], [(0, 2), (3, 5), (7, 10)]),
    ([(0, 10), (20, 30)], [(5, 25)], [(0, 5), (25, 30)]),
    ([(0, 10)], [], [(0, 10)]),
    ([(0, 10)], [(0, 10)], []),
    ([(5, 6)], [(0, 3), (4, 8)], []),
    ([(0, 4), (6, 9)], [(4, 6)], [(0, 4), (6, 9)]),
])  # fmt: skip
def test_subtract_intervals(intervals: list[tuple[int, int]], minus: list[tuple[int, int]],
                            want: list[tuple[int, int]]) -> None:
    """Worked by hand: what is left of each [a, b) once ``minus`` is taken out."""
    assert subtract_intervals(intervals, minus) == want


K = 0x1000


@pytest.mark.parametrize("segments, keep, want, cut", [
    # a segment holding all it declares is untouched, whatever keep says
    ([Segment(0, 0, 4 * K, 0x100, 4 * K)], [], [Segment(0, 0, 4 * K, 0x100, 4 * K)], []),
    # declared tail inside keep: untouched
    ([Segment(0, 0, 4 * K, 0x100, K)], [(0, 8 * K)], [Segment(0, 0, 4 * K, 0x100, K)], []),
    # declared tail past keep: held part, then the declared part inside keep
    ([Segment(0, 0x10, 16 * K, 0x100, K)], [(0, 4 * K)],
     [Segment(0, 0x10, K, 0x100, K), Segment(K, 0x10 + K, 3 * K, 0, 0)], [12 * K]),
    # keep with a hole: the declared part splits around it
    ([Segment(0, 0, 8 * K, 0x100, K)], [(0, 2 * K), (4 * K, 5 * K)],
     [Segment(0, 0, K, 0x100, K), Segment(K, K, K, 0, 0), Segment(4 * K, 4 * K, K, 0, 0)],
     [5 * K]),
    # all declared, none in keep: nothing left of it
    ([Segment(16 * K, 0, 4 * K, 0, 0)], [(0, 4 * K)], [], [4 * K]),
])
def test_declared_within(segments: list[Segment], keep: list[tuple[int, int]],
                         want: list[Segment], cut: list[int]) -> None:
    """Worked by hand: the memory a segment only declares (past p_filesz)
    kept within ``keep``, the bytes it holds in the file untouched."""
    assert declared_within(segments, keep) == (want, cut)


def test_sections_holding_data() -> None:
    """Worked by hand, 16 KiB sections: those holding a byte of file data,
    merged; declared-only memory and segments without a p_paddr hold none."""
    segments = [Segment(0x5000, 0, 0x100000, 0x100, 0x1000),    # holds 0x5000-0x6000
                Segment(0x13000, 0, 0x2000, 0x2000, 0x2000),     # 0x13000-0x15000
                Segment(0x40000, 0, 0x1000, 0, 0),               # declared only
                Segment((1 << 64) - 1, 0, 0x1000, 0x3000, 0x1000)]
    assert sections_holding_data(segments, 14) == [(0x4000, 0x8000), (0x10000, 0x18000)]


def test_kernel_memory_without_memory() -> None:
    """No PT_LOAD with a physical address: no sections are looked for (the
    source is never read) and the answer is "unknown", not an exception."""
    info = VmcoreInfo.parse("PAGESIZE=4096\nSYMBOL(mem_section)=ffffffff82000000\n")
    unusable = [Segment((1 << 64) - 1, 0, 0x1000, 0x1000, 0x1000)]
    assert kernel_memory(None, info, unusable, 4096) is None  # type: ignore[arg-type]
    assert kernel_memory(None, info, [], 4096) is None  # type: ignore[arg-type]
