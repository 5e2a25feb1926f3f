"""Check tests/synthcore.py against independent ELF readers.

GNU ``readelf`` (binutils) and ``eu-readelf`` (elfutils) parse every core the
builder makes; the tests assert that they do so without a warning and that
they see what the builder was asked to write: class, byte order, machine,
ET_CORE, header sizes, program headers (offsets, addresses, sizes), the notes
(owner, size, type, descriptor bytes) and, through eu-readelf's NT_PRSTATUS
decoder, the pid and register values.  Tools that are missing make the
corresponding tests skip.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import synthcore as sc
from tests.conftest import tool

# --------------------------------------------------------------------------
# Running and parsing the readers


def _run(name: str, *args: str | Path) -> str:
    """Run the reader ``name`` (missing: conftest's require-or-skip rule);
    fail on a non-zero exit or anything on stderr."""
    proc = subprocess.run(
        [tool(name), *map(str, args)],
        capture_output=True,
        text=True,
        env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert proc.returncode == 0, f"{name} {args} failed: {proc.stderr}"
    assert proc.stderr == "", f"{name} warned: {proc.stderr}"
    return proc.stdout


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@dataclass
class Phdr:
    """One program header as printed by ``readelf -W -l``."""

    type: str
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int


@dataclass
class ReadelfNote:
    """One note as printed by ``readelf -W -n``."""

    owner: str
    size: int
    description: str
    data: bytes | None


@dataclass
class ReadelfView:
    """What ``readelf -W -h -l -n`` reported."""

    header: dict[str, str]
    phdrs: list[Phdr]
    note_segments: list[list[ReadelfNote]]


_PHDR_RE = re.compile(
    r"^\s+(NOTE|LOAD)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)"
)
_RE_NOTE_RE = re.compile(r"^  (\S+)\s+0x([0-9a-f]{8})\s+([^\t]*?)\s*(?:\t|$)(.*)$")


def readelf(path: Path, options: str = "-hln") -> ReadelfView:
    """Parse GNU ``readelf -W -h -l -n`` (or a subset of those ``options``)."""
    out = _run("readelf", "-W", options, path)
    header: dict[str, str] = {}
    phdrs: list[Phdr] = []
    segments: list[list[ReadelfNote]] = []
    section = ""
    for line in out.splitlines():
        if line.startswith("ELF Header:"):
            section = "h"
        elif line.startswith("Program Headers:"):
            section = "l"
        elif line.startswith("Displaying notes"):
            section = "n"
            segments.append([])
        elif section == "h" and ":" in line:
            key, _, value = line.partition(":")
            header[key.strip()] = value.strip()
        elif section == "l" and (m := _PHDR_RE.match(line)):
            phdrs.append(Phdr(m[1], *(int(g, 16) for g in m.groups()[1:])))
        elif section == "n" and (m := _RE_NOTE_RE.match(line)):
            rest = m[4]
            data = None
            if "description data:" in rest:
                data = bytes.fromhex(rest.split("description data:", 1)[1])
            segments[-1].append(ReadelfNote(m[1], int(m[2], 16), m[3], data))
    return ReadelfView(header, phdrs, segments)


@dataclass
class EuNote:
    """One note as printed by ``eu-readelf -n``, with its decoded fields."""

    owner: str
    size: int
    type: str
    fields: dict[str, int] = field(default_factory=dict)
    text: list[str] = field(default_factory=list)


_EU_NOTE_RE = re.compile(r"^  ([^ ]\S*)\s+(\d+)\s+(\S.*)$")
_EU_FIELD_RE = re.compile(r"([A-Za-z_][\w.]*):\s+(-?(?:0x[0-9a-fA-F]+|\d+))(?![.\d])")


def eu_readelf(path: Path) -> list[list[EuNote]]:
    """Parse ``eu-readelf -n``: one list of notes per note segment."""
    out = _run("eu-readelf", "-n", path)
    segments: list[list[EuNote]] = []
    for line in out.splitlines():
        if line.startswith("Note segment of"):
            segments.append([])
        elif line.startswith("  Owner") or not line.strip():
            continue
        elif m := _EU_NOTE_RE.match(line):
            segments[-1].append(EuNote(m[1], int(m[2]), m[3].strip()))
        elif line.startswith("    ") and segments and segments[-1]:
            note = segments[-1][-1]
            note.text.append(line.strip())
            for name, value in _EU_FIELD_RE.findall(line):
                note.fields[name] = int(value, 0)
    return segments


# --------------------------------------------------------------------------
# The four variants: ELF64 LE / BE, ELF32 LE / BE

VMCI = {"OSRELEASE": "6.1.0-synthetic", "PAGESIZE": "4096", "CRASHTIME": "1795664350"}
MCE_MSG = b"Fatal local machine check\0"

X86_64_REGS = {name: 0x1111111100000000 + i * 0x1010101 for i, name in enumerate(sc.X86_64_REGS)}
X86_64_REGS |= {"rip": 0xFFFFFFFF81001234, "rsp": 0xFFFFC90000003F00, "cs": 0x10, "ss": 0x18}
X86_64_REGS |= {"ds": 0x2B, "es": 0x2B, "fs": 0x33, "gs": 0x3B, "eflags": 0x10046}
ARM64_REGS = {f"x{i}": 0xA000 + i for i in range(31)}
ARM64_REGS |= {"sp": 0xFFFF800080003F00, "pc": 0xFFFF800080101234, "pstate": 0x60000005}
I386_REGS = {name: 0x01010101 * (i + 1) for i, name in enumerate(sc.I386_REGS)}
I386_REGS |= {"eip": 0xC1001234, "esp": 0xC1003F00, "cs": 0x60, "ss": 0x68, "ds": 0x7B}
I386_REGS |= {"es": 0x7B, "fs": 0xD8, "gs": 0xE0, "eflags": 0x246}
I386_SEGMENT_REGS = {"cs", "ss", "ds", "es", "fs", "gs"}

# eu-readelf's names for our x86_64 register names
EU_X86_64_NAMES = {"eflags": "rflags", "fs_base": "fs.base", "gs_base": "gs.base"}


@dataclass
class Variant:
    """One core to build and the facts the readers must report about it."""

    id: str
    elf64: bool
    endian: str
    machine: int
    machine_text: str
    prstatus: list[bytes]
    regs: list[dict[str, int]]
    pids: list[int]
    loads: list[sc.Load]

    def notes(self) -> list[sc.Note]:
        """CORE notes, VMCOREINFO, then an NT_NOCOREDUMP note, like a marked vmcore."""
        notes = [sc.Note(b"CORE", sc.NT_PRSTATUS, desc) for desc in self.prstatus]
        notes.append(sc.Note(b"VMCOREINFO", 0, sc.vmcoreinfo(VMCI)))
        notes.append(sc.Note(b"PANIC_MCE", sc.NT_NOCOREDUMP, MCE_MSG))
        return notes

    def build(self, **kwargs: object) -> bytes:
        """Build the core (extra ``build_core`` keywords allowed)."""
        return sc.build_core(
            self.notes(),
            self.loads,
            elf64=self.elf64,
            endian=self.endian,
            machine=self.machine,
            **kwargs,  # type: ignore[arg-type]
        )


def _x86_64(cpu: int) -> dict[str, int]:
    return X86_64_REGS | {"rax": cpu, "rip": X86_64_REGS["rip"] + 0x100 * cpu}


VARIANTS = [
    Variant(
        "elf64-le-x86_64",
        True,
        "<",
        sc.EM_X86_64,
        "Advanced Micro Devices X86-64",
        [sc.prstatus_x86_64(cpu, _x86_64(cpu)) for cpu in range(2)],
        [_x86_64(cpu) for cpu in range(2)],
        [0, 1],
        [
            sc.Load(0x1000000, 0xFFFFFFFF81000000, sc.tagged_bytes(b"KTXT", 0x1000000, 0x2000)),
            sc.Load(0x100000, 0xFF11000000100000, sc.tagged_bytes(b"RAM:", 0x100000, 0x3000)),
            # unaligned start, short file part: like a [0x1000, 0x9fc00) RAM range
            sc.Load(0x1010, 0xFF11000000001010, b"\xa5" * 0x1F0, memsz=0x9EBF0),
        ],
    ),
    Variant(
        "elf64-be-aarch64",
        True,
        ">",
        sc.EM_AARCH64,
        "AArch64",
        [sc.prstatus_arm64(7, ARM64_REGS, endian=">")],
        [ARM64_REGS],
        [7],
        [
            sc.Load(0x40000000, 0xFFFF000000000000, sc.tagged_bytes(b"ARM:", 0x40000000, 0x1800)),
            sc.Load(0x80000000, 0xFFFF000040000000, b"\x5a" * 0x1000),
        ],
    ),
    Variant(
        "elf32-le-i386",
        False,
        "<",
        sc.EM_386,
        "Intel 80386",
        [sc.prstatus_i386(3, I386_REGS), sc.prstatus_i386(4, I386_REGS)],
        [I386_REGS, I386_REGS],
        [3, 4],
        [
            sc.Load(0x100000, 0xC0100000, sc.tagged_bytes(b"I386", 0x100000, 0x2000)),
            sc.Load(0x1000, 0xC0001000, b"\x3c" * 0x9E000),
        ],
    ),
    Variant(
        "elf32-be-i386",
        False,
        ">",
        sc.EM_386,
        "Intel 80386",
        [sc.prstatus_i386(5, I386_REGS, endian=">")],
        [I386_REGS],
        [5],
        [sc.Load(0x100000, 0xC0100000, sc.tagged_bytes(b"I386", 0x100000, 0x2000))],
    ),
]


@pytest.fixture(params=VARIANTS, ids=lambda v: v.id)
def variant(request: pytest.FixtureRequest) -> Variant:
    """Each of the four class / byte-order combinations."""
    return request.param


def _check_loads(core: bytes, phdrs: list[Phdr], loads: list[sc.Load], page_align: bool) -> None:
    """PT_LOADs as readelf printed them match ``loads`` and their bytes sit at p_offset."""
    pt_loads = [p for p in phdrs if p.type == "LOAD"]
    assert len(pt_loads) == len(loads)
    for phdr, load in zip(pt_loads, loads, strict=True):
        assert (phdr.paddr, phdr.vaddr) == (load.paddr, load.vaddr)
        assert phdr.filesz == len(load.data)
        assert phdr.memsz == (len(load.data) if load.memsz is None else load.memsz)
        assert core[phdr.offset : phdr.offset + phdr.filesz] == load.data
        if page_align:
            assert phdr.offset % sc.PAGE_SIZE == load.paddr % sc.PAGE_SIZE
    # segments do not overlap each other or the headers/notes
    spans = sorted((p.offset, p.offset + p.filesz) for p in phdrs if p.filesz)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start


# --------------------------------------------------------------------------
# readelf (binutils)


@pytest.mark.parametrize("page_align", [True, False], ids=["page-aligned", "packed"])
def test_readelf_headers_loads_notes(variant: Variant, page_align: bool, tmp_path: Path) -> None:
    """readelf -h -l -n: ELF header, PT_NOTE first, PT_LOADs, note list and descriptors."""
    core = variant.build(page_align=page_align)
    view = readelf(_write(tmp_path, f"{variant.id}.core", core))

    h = view.header
    assert h["Class"] == ("ELF64" if variant.elf64 else "ELF32")
    endian_text = "little endian" if variant.endian == "<" else "big endian"
    assert h["Data"] == f"2's complement, {endian_text}"
    assert h["Type"] == "CORE (Core file)"
    assert h["Machine"] == variant.machine_text
    assert h["Version"] == "0x1"
    assert h["Size of this header"] == ("64 (bytes)" if variant.elf64 else "52 (bytes)")
    assert h["Size of program headers"] == ("56 (bytes)" if variant.elf64 else "32 (bytes)")
    assert h["Start of program headers"] == f"{64 if variant.elf64 else 52} (bytes into file)"
    assert h["Number of program headers"] == str(1 + len(variant.loads))
    assert h["Number of section headers"] == "0"

    assert [p.type for p in view.phdrs] == ["NOTE"] + ["LOAD"] * len(variant.loads)
    note = view.phdrs[0]
    assert (note.vaddr, note.paddr) == (0, 0)
    assert note.filesz == note.memsz == sum(len(sc.note_bytes(n)) for n in variant.notes())
    if page_align:
        assert note.offset == sc.PAGE_SIZE
    else:
        ehsize, phentsize = (64, 56) if variant.elf64 else (52, 32)
        headers_end = ehsize + phentsize * (1 + len(variant.loads))
        assert note.offset == headers_end + (-headers_end % 4)
    _check_loads(core, view.phdrs, variant.loads, page_align)

    assert len(view.note_segments) == 1
    notes = view.note_segments[0]
    n_cpu = len(variant.prstatus)
    assert [(n.owner, n.size) for n in notes] == [
        *[("CORE", len(variant.prstatus[0]))] * n_cpu,
        ("VMCOREINFO", len(sc.vmcoreinfo(VMCI))),
        ("PANIC_MCE", len(MCE_MSG)),
    ]
    assert all(n.description == "NT_PRSTATUS (prstatus structure)" for n in notes[:n_cpu])
    assert notes[n_cpu].description == "Unknown note type: (0x00000000)"
    assert notes[n_cpu].data == sc.vmcoreinfo(VMCI)
    assert notes[n_cpu + 1].description == "Unknown note type: (0x00000015)"
    assert notes[n_cpu + 1].data == MCE_MSG


def test_readelf_per_note_segments(variant: Variant, tmp_path: Path) -> None:
    """note_segments="per-note": one PT_NOTE per note, each holding exactly that note."""
    core = variant.build(note_segments="per-note")
    view = readelf(_write(tmp_path, "per-note.core", core))
    n_notes = len(variant.notes())
    assert view.header["Number of program headers"] == str(n_notes + len(variant.loads))
    assert [p.type for p in view.phdrs] == ["NOTE"] * n_notes + ["LOAD"] * len(variant.loads)
    assert [len(seg) for seg in view.note_segments] == [1] * n_notes
    assert [seg[0].owner for seg in view.note_segments] == (
        ["CORE"] * len(variant.prstatus) + ["VMCOREINFO", "PANIC_MCE"]
    )
    for phdr, note in zip(view.phdrs, variant.notes(), strict=False):
        assert phdr.filesz == len(sc.note_bytes(note))
    _check_loads(core, view.phdrs, variant.loads, True)

    segments = eu_readelf(tmp_path / "per-note.core")
    assert [[n.owner for n in seg] for seg in segments] == [
        [owner] for owner in ["CORE"] * len(variant.prstatus) + ["VMCOREINFO", "PANIC_MCE"]
    ]


# --------------------------------------------------------------------------
# eu-readelf (elfutils)


def test_eu_readelf_notes_and_registers(variant: Variant, tmp_path: Path) -> None:
    """eu-readelf -n: note owners/sizes/types, VMCOREINFO text, pid and every register."""
    segments = eu_readelf(_write(tmp_path, f"{variant.id}.core", variant.build()))
    assert len(segments) == 1
    notes = segments[0]
    n_cpu = len(variant.prstatus)
    assert [(n.owner, n.size, n.type) for n in notes] == [
        *[("CORE", len(variant.prstatus[0]), "PRSTATUS")] * n_cpu,
        ("VMCOREINFO", len(sc.vmcoreinfo(VMCI)), "<unknown>: 0"),
        ("PANIC_MCE", len(MCE_MSG), "<unknown>: 21"),
    ]
    assert notes[n_cpu].text == [f"{k}={v}" for k, v in VMCI.items()]

    bits = 64 if variant.elf64 and variant.machine != sc.EM_386 else 32
    mask = (1 << bits) - 1
    for note, pid, regs in zip(notes, variant.pids, variant.regs, strict=False):
        assert note.fields["pid"] == pid
        for key in ("ppid", "pgrp", "sid", "fpvalid", "cursig"):
            assert note.fields[key] == 0
        for name, value in regs.items():
            if variant.machine == sc.EM_386 and variant.endian == ">" and name in I386_SEGMENT_REGS:
                # elfutils describes the i386 segment registers as 16-bit items
                # at the start of their 32-bit slot: right for LE only.
                continue
            if variant.machine == sc.EM_X86_64:
                name = EU_X86_64_NAMES.get(name, name)
            shown = note.fields[name]
            assert shown & mask == value, f"{name}: {shown:#x} != {value:#x}"


def test_eu_readelf_i386_notes_in_elf64(tmp_path: Path) -> None:
    """eu-readelf picks the prstatus layout by e_machine and size, not by ELF class."""
    core = sc.build_core(
        [sc.Note(b"CORE", sc.NT_PRSTATUS, sc.prstatus_i386(9, I386_REGS))],
        [sc.Load(0x100000, 0xC0100000, b"\0" * 16)],
        elf64=True,
        machine=sc.EM_386,
    )
    (note,) = eu_readelf(_write(tmp_path, "i386-elf64.core", core))[0]
    assert (note.owner, note.size, note.type) == ("CORE", 144, "PRSTATUS")
    assert note.fields["pid"] == 9
    assert all(note.fields[name] == value for name, value in I386_REGS.items())


# --------------------------------------------------------------------------
# sample_x86_64_core()


@pytest.mark.parametrize("ncpus", [1, 2, 4])
def test_sample_core_with_nocoredump(ncpus: int, tmp_path: Path) -> None:
    """The sample core: PRSTATUS per CPU, VMCOREINFO, PANIC_MCE, two tagged PT_LOADs."""
    core = sc.sample_x86_64_core(("PANIC_MCE", "Fatal local machine check"), ncpus=ncpus)
    path = _write(tmp_path, "sample.core", core)

    view = readelf(path)
    assert view.header["Machine"] == "Advanced Micro Devices X86-64"
    assert [p.type for p in view.phdrs] == ["NOTE", "LOAD", "LOAD"]
    text, ram = view.phdrs[1:]
    assert (text.offset, text.vaddr, text.paddr) == (0x2000, 0xFFFFFFFF81000000, 0x1000000)
    assert (ram.vaddr, ram.paddr) == (0xFF11000000100000, 0x100000)
    assert ram.offset == text.offset + text.filesz and ram.offset % sc.PAGE_SIZE == 0
    assert core[text.offset : text.offset + 32] == b"KTXT000001000000KTXT000001000010"
    assert core[ram.offset + 0x1230 : ram.offset + 0x1240] == b"RAM:000000101230"
    assert [n.owner for n in view.note_segments[0]] == ["CORE"] * ncpus + [
        "VMCOREINFO",
        "PANIC_MCE",
    ]
    assert view.note_segments[0][-1].data == b"Fatal local machine check\0"

    notes = eu_readelf(path)[0]
    assert notes[ncpus].text == [
        "OSRELEASE=6.1.0-synthetic",
        "PAGESIZE=4096",
        "SYMBOL(_stext)=ffffffff81000000",
        "NUMBER(phys_base)=-847249408",
        "NUMBER(pgtable_l5_enabled)=1",
        "KERNELOFFSET=0",
        "CRASHTIME=1795664350",
    ]
    assert (notes[-1].owner, notes[-1].type) == ("PANIC_MCE", "<unknown>: 21")
    rips = set()
    for cpu, note in enumerate(notes[:ncpus]):
        regs = sc.sample_regs_x86_64(cpu)
        assert note.fields["pid"] == cpu
        assert note.fields["rip"] == regs["rip"]
        assert note.fields["rsp"] == regs["rsp"]
        assert note.fields["cs"] == 0x10
        rips.add(regs["rip"])
    assert len(rips) == ncpus
    raw = _run("eu-readelf", "-n", path)
    last = ncpus - 1
    assert f"rip:      {sc.sample_regs_x86_64(last)['rip']:#x}" in raw
    assert f"pid: {last}, ppid: 0" in raw


def test_sample_core_without_nocoredump(tmp_path: Path) -> None:
    """Without ``nocoredump`` there is no NT_NOCOREDUMP note; ``ram`` replaces the RAM data."""
    core = sc.sample_x86_64_core(ram=b"\x11" * 100)
    path = _write(tmp_path, "plain.core", core)
    notes = eu_readelf(path)[0]
    assert [(n.owner, n.type) for n in notes] == [
        ("CORE", "PRSTATUS"),
        ("CORE", "PRSTATUS"),
        ("VMCOREINFO", "<unknown>: 0"),
    ]
    ram = readelf(path).phdrs[2]
    assert (ram.filesz, ram.memsz) == (100, 100)
    assert core[ram.offset : ram.offset + 100] == b"\x11" * 100


# --------------------------------------------------------------------------
# Edge cases the readers must agree on


def test_empty_name_note(tmp_path: Path) -> None:
    """name=b"" gives n_namesz 0 (the vmcore terminator shape); readers keep going after it."""
    notes = [
        sc.Note(b"CORE", sc.NT_PRSTATUS, sc.prstatus_x86_64(0, {})),
        sc.Note(b"", 0, b""),
        sc.Note(b"VMCOREINFO", 0, sc.vmcoreinfo(["PAGESIZE=4096"])),
    ]
    assert sc.note_bytes(notes[1]) == bytes(12)
    path = _write(tmp_path, "term.core", sc.build_core(notes, []))
    assert [(n.owner, n.size) for n in readelf(path).note_segments[0]] == [
        ("CORE", 336),
        ("(NONE)", 0),
        ("VMCOREINFO", 14),
    ]
    # eu-readelf silently omits notes without a name.
    assert [n.owner for n in eu_readelf(path)[0]] == ["CORE", "VMCOREINFO"]


def test_no_notes_no_loads(tmp_path: Path) -> None:
    """An empty merged PT_NOTE still parses (headers only: binutils 2.40 ``readelf -n``
    exits 1, silently, on a zero-length note segment)."""
    view = readelf(_write(tmp_path, "empty.core", sc.build_core([], [])), "-hl")
    assert [(p.type, p.offset, p.filesz) for p in view.phdrs] == [("NOTE", 0x1000, 0)]


# --------------------------------------------------------------------------
# Builder self-checks that need no external tool


def test_structure_sizes_and_framing() -> None:
    """Descriptor sizes, pid/register offsets, note framing and argument checks."""
    assert len(sc.prstatus_x86_64(0, {})) == 336
    assert len(sc.prstatus_arm64(0, {})) == 392
    assert len(sc.prstatus_i386(0, {})) == 144
    x = sc.prstatus_x86_64(0x01020304, {"rip": 0x1122334455667788}, endian=">")
    assert x[32:36] == b"\x01\x02\x03\x04"
    assert x[112 + 16 * 8 : 112 + 17 * 8] == bytes.fromhex("1122334455667788")
    i = sc.prstatus_i386(5, {"eip": 0xC1001234})
    assert i[24:28] == b"\x05\0\0\0" and i[72 + 12 * 4 : 72 + 13 * 4] == b"\x34\x12\x00\xc1"
    a = sc.prstatus_arm64(1, {"pc": 2, "pstate": 3})
    assert a[112 + 32 * 8 : 112 + 34 * 8] == (2).to_bytes(8, "little") + (3).to_bytes(8, "little")

    framed = sc.note_bytes(sc.Note(b"VMCOREINFO", 0, b"A=1\nB"), ">")
    assert framed[:12] == bytes.fromhex("0000000b 00000005 00000000")
    assert framed[12:24] == b"VMCOREINFO\0\0" and framed[24:] == b"A=1\nB\0\0\0"
    assert sc.vmcoreinfo({"A": "1", "B": "x"}) == b"A=1\nB=x\n"
    assert sc.vmcoreinfo(["A=1"]) == b"A=1\n"

    with pytest.raises(ValueError, match="unknown register"):
        sc.prstatus_x86_64(0, {"eip": 1})
    with pytest.raises(ValueError):
        sc.prstatus_i386(0, {"eip": 1 << 32})
    with pytest.raises(ValueError):
        sc.build_core([], [sc.Load(0, 0xFFFFFFFF81000000, b"")], elf64=False)
    with pytest.raises(ValueError):
        sc.build_core([], [], note_segments="bogus")
