"""Dumps at the edges of the ELF core format, built by tests/synthcore.py
(issue 9): no memory, a flattened -E stream, overlapping segments where only
one holds the bytes, pages a segment covers in part, a dump with no pages.

The rule under test (README, "Which bytes a dump holds"): per byte, a
segment's file data beats a range another segment only declares (p_memsz
past p_filesz); among segments with file data the first in program-header
order wins; a page holding any byte of the dump is a page of the dump, its
other bytes zeros.  :func:`expected` is that rule written again here, from
the loads the test put into the core, never from slimdump's output.

Every output is read back by an independent reader: libkdumpfile (Debian's
/usr/bin/python3, physical reads), drgn, readelf, makedumpfile -R; the
bytes they return are compared with the bytes the test put in.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import real_vmcore, require_kdumpfile, require_module, run, slimdump, tool
from tests.mdfbitmap import read_kdump
from tests.oracles import readelf_loads
from tests.synthcore import (
    EM_X86_64,
    NT_PRSTATUS,
    Load,
    Note,
    build_core,
    flatten,
    prstatus_x86_64,
    sample_regs_x86_64,
    tagged_bytes,
    vmcoreinfo,
)

PAGE = 4096
NOT_PADDR = (1 << 64) - 1
DIRECT = 0xFFFF888000000000

# libkdumpfile, in Debian's python: physical reads of [addr, addr + n) as hex,
# or the exception's name; exit 3 when it cannot open the file
LIBKDUMPFILE = r"""
import json, sys
import kdumpfile
path, spans = sys.argv[1], json.loads(sys.argv[2])
try:
    k = kdumpfile.kdumpfile(path)
    fmt = k.attr["file.format"]
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__ + ": " + str(exc)}))
    sys.exit(3)
reads = []
for addr, n in spans:
    try:
        reads.append(bytes(k.read(kdumpfile.KDUMP_MACHPHYSADDR, addr, n)).hex())
    except Exception as exc:
        reads.append(type(exc).__name__)
print(json.dumps({"format": fmt, "reads": reads}))
"""


# -- the cores ---------------------------------------------------------------------


def notes(page_size: int = PAGE) -> list[Note]:
    info = {"OSRELEASE": "6.1.0-edges", "PAGESIZE": str(page_size),
            "SYMBOL(swapper_pg_dir)": "ffffffff82a0a000", "NUMBER(phys_base)": "0",
            "KERNELOFFSET": "0", "NUMBER(pgtable_l5_enabled)": "0", "CRASHTIME": "1700000000"}
    return [Note(b"CORE", NT_PRSTATUS, prstatus_x86_64(1, sample_regs_x86_64(0))),
            Note(b"VMCOREINFO", 0, vmcoreinfo(info))]


def load(paddr: int, data: bytes, memsz: int | None = None) -> Load:
    return Load(paddr, (DIRECT + paddr) & ((1 << 64) - 1), data, memsz)


def write_core(tmp_path: Path, loads: list[Load], page_size: int = PAGE,
               name: str = "vmcore") -> Path:
    path = tmp_path / name
    path.write_bytes(build_core(notes(page_size), loads, machine=EM_X86_64))
    return path


def expected(loads: list[Load], addr: int, size: int) -> bytes | None:
    """The bytes the dump holds at [addr, addr + size) by the rule (the
    test's own reading of the loads it wrote); None where no load covers a
    byte."""
    out = bytearray(size)
    for i in range(size):
        a = addr + i
        declared = False
        for ld in loads:
            memsz = len(ld.data) if ld.memsz is None else ld.memsz
            if ld.paddr == NOT_PADDR or not ld.paddr <= a < ld.paddr + memsz:
                continue
            if a - ld.paddr < len(ld.data):
                out[i] = ld.data[a - ld.paddr]
                break
            declared = True
        else:
            if not declared:
                return None
    return bytes(out)


def page_bytes(loads: list[Load], pfn: int, page_size: int = PAGE) -> bytes:
    """The whole page as a kdump-compressed file must hold it: the dump's
    bytes, zeros for the part no load covers."""
    out = bytearray(page_size)
    for i in range(page_size):
        b = expected(loads, pfn * page_size + i, 1)
        if b is not None:
            out[i] = b[0]
    return bytes(out)


# -- the readers ----------------------------------------------------------------------


def libkdumpfile(path: Path, spans: list[tuple[int, int]]) -> dict:
    res = subprocess.run([require_kdumpfile(), "-c", LIBKDUMPFILE, str(path),
                          json.dumps(spans)], capture_output=True, text=True, check=False)
    assert res.returncode in (0, 3), res.stderr
    return json.loads(res.stdout)


def lk_reads(path: Path, spans: list[tuple[int, int]]) -> list[bytes | str]:
    got = libkdumpfile(path, spans)
    assert "error" not in got, f"libkdumpfile cannot open {path.name}: {got['error']}"
    return [bytes.fromhex(r) if all(c in "0123456789abcdef" for c in r) else r
            for r in got["reads"]]


def kdump_notes(path: Path) -> list[tuple[bytes, int, bytes]]:
    """The notes of a kdump-compressed file (x86_64 layout): the sub
    header's offset_note/size_note (kdump-formats.md 2.2), framed as ELF."""
    data = path.read_bytes()
    block = struct.unpack_from("<i", data, 8 + 4 + 390 + 6 + 16 + 4)[0]
    offset_note, size_note = struct.unpack_from("<QQ", data, block + 48)
    area = data[offset_note:offset_note + size_note]
    out, at = [], 0
    while at + 12 <= len(area):
        namesz, descsz, ntype = struct.unpack_from("<III", area, at)
        name = area[at + 12:at + 12 + namesz].rstrip(b"\0")
        desc_at = at + 12 + (namesz + 3) // 4 * 4
        out.append((name, ntype, area[desc_at:desc_at + descsz]))
        at = desc_at + (descsz + 3) // 4 * 4
    return out


def slimdump_metadata(path: Path) -> dict | None:
    for name, ntype, desc in kdump_notes(path):
        if name == b"SLIMDUMP" and ntype == 0x534C0001:
            return json.loads(desc.rstrip(b"\0"))
    return None


def kdump_promised_size(path: Path) -> int:
    """The end of the bitmaps by the disk_dump_header (x86_64 layout)."""
    head = path.read_bytes()[:4096]
    block, sub_hdr, bitmap_blocks = struct.unpack_from("<iii", head, 8 + 4 + 390 + 6 + 16 + 4)
    return (1 + sub_hdr + bitmap_blocks) * block


# -- the outputs ------------------------------------------------------------------------

FORMATS = {"default": [], "lzo": ["-l"], "zlib": ["-c"], "elf": ["-E"], "flat": ["-F", "-c"],
           "full": ["--full"]}


def capture(src: Path, fmt: str, tmp_path: Path, *extra: str) -> Path:
    """``slimdump capture`` in one format; a flattened stream is rebuilt with
    makedumpfile -R (the file a user would keep).  Exit 0, no traceback."""
    dst = tmp_path / f"{src.name}.{fmt}{''.join(extra)}"
    if fmt == "flat":
        stream = dst.with_suffix(".stream")
        with stream.open("wb") as out:
            res = subprocess.run([sys.executable, "-m", "slimdump", "capture", *FORMATS[fmt],
                                  *extra, str(src)], stdout=out, stderr=subprocess.PIPE,
                                 check=False)
        stderr = res.stderr.decode()
        assert res.returncode == 0 and "Traceback" not in stderr, stderr
        with stream.open("rb") as f:
            subprocess.run([tool("makedumpfile"), "-R", str(dst)], stdin=f, check=True,
                           capture_output=True)
        return dst
    res = slimdump("capture", *FORMATS[fmt], *extra, src, dst)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    return dst


# -- 1. no memory ------------------------------------------------------------------------

NO_MEMORY = {
    "no PT_LOAD": [],
    "p_memsz 0": [load(0x100000, b"")],
    "p_paddr all-ones": [Load(NOT_PADDR, 0xFFFFFFFF81000000, b"\x5a" * PAGE)],
}


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("kind", list(NO_MEMORY))
def test_no_memory(kind: str, fmt: str, tmp_path: Path) -> None:
    """A core without memory gives a valid file in every format: the notes,
    no page; libkdumpfile opens it (--full: the byte copy of the source),
    slimdump inspect reads it back."""
    src = write_core(tmp_path, NO_MEMORY[kind])
    dst = capture(src, fmt, tmp_path)
    if fmt == "full":
        assert dst.read_bytes() == src.read_bytes()
    else:
        if fmt == "elf":
            loads = readelf_loads(dst)
            assert loads and all(ld.filesz == 0 for ld in loads)
        else:
            dump = read_kdump(dst)
            assert dump.max_mapnr >= 1 and not dump.bitmap1.any() and not dump.bitmap2.any()
            assert dst.stat().st_size >= kdump_promised_size(dst)
        got = libkdumpfile(dst, [(0x100000, 16)])
        assert "error" not in got, got
        assert got["reads"][0] in ("NoDataException", "AddressTranslationException")
    res = slimdump("inspect", dst)
    assert res.returncode == 0 and "6.1.0-edges" in res.stdout, res.stderr


# -- 2. a flattened -E stream -------------------------------------------------------------

FLAT_LOADS = [load(0x100000, tagged_bytes(b"FLAT", 0x100000, 40 * PAGE)),
              load(0x1000000, tagged_bytes(b"HIGH", 0x1000000, 3 * PAGE + 0x400))]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_flattened_elf_source(fmt: str, tmp_path: Path) -> None:
    """makedumpfile can flatten -E output: every command works on such a
    stream (records out of order, some overwritten), and every output
    holds the ELF core's bytes; --full is the ELF file itself."""
    elf = build_core(notes(), FLAT_LOADS, machine=EM_X86_64)
    src = tmp_path / "elf.flat"
    src.write_bytes(flatten(elf, record=5000, reverse=True, overlap=True))
    res = slimdump("inspect", src)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    dst = capture(src, fmt, tmp_path, "-d", "0") if fmt != "full" else capture(src, fmt,
                                                                                tmp_path)
    if fmt == "full":
        assert dst.read_bytes() == elf
    spans = [(ld.paddr + at, 256) for ld in FLAT_LOADS
             for at in (0, len(ld.data) // 2, len(ld.data) - 256)]
    assert lk_reads(dst, spans) == [expected(FLAT_LOADS, a, n) for a, n in spans]


# -- 3. overlapping segments ----------------------------------------------------------------

A = tagged_bytes(b"AAAA", 0x100000, PAGE)
B = tagged_bytes(b"BBBB", 0x101000, PAGE)
C = tagged_bytes(b"CCCC", 0x101000, PAGE)
OVERLAPS = {
    # A declares two pages and stores one; B stores the second
    "declared first": [load(0x100000, A, 2 * PAGE), load(0x101000, B)],
    "declared last": [load(0x101000, B), load(0x100000, A, 2 * PAGE)],
    # p_filesz 0: a segment that declares everything, listed first
    "p_filesz 0 first": [load(0x100000, b"", 3 * PAGE), load(0x100000, A + B)],
    # both store page 1: the first in program-header order wins
    "both stored": [load(0x100000, A + B), load(0x101000, C)],
}


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("kind", list(OVERLAPS))
def test_overlapping_segments(kind: str, fmt: str, tmp_path: Path) -> None:
    """Whichever segment holds the bytes of a page wins over one that only
    declares it, in every output (-d 0 and --full), read by libkdumpfile."""
    loads = OVERLAPS[kind]
    src = write_core(tmp_path, loads)
    dst = capture(src, fmt, tmp_path, "-d", "0") if fmt != "full" else capture(src, fmt,
                                                                                tmp_path)
    spans = [(0x100000, PAGE), (0x101000, PAGE)]
    want = [expected(loads, a, n) for a, n in spans]
    assert want == [A, B]                        # stored bytes win; C comes second
    if kind == "p_filesz 0 first":
        spans.append((0x102000, PAGE))
        want.append(bytes(PAGE))                 # declared only: zeros
    got = lk_reads(dst, spans)
    if fmt == "full" and kind == "p_filesz 0 first":
        # the byte copy keeps the source's declared-only page, which
        # libkdumpfile 0.5.1 takes for absent (README, "Oracles"); drgn
        # reads it as the ELF zeros it is
        assert got[:2] == want[:2] and got[2] == "NoDataException"
        prog = require_module("drgn").Program()
        prog.set_core_dump(str(dst))
        assert prog.read(0x102000, PAGE, True) == bytes(PAGE)
    else:
        assert got == want
    if fmt == "elf":
        # drgn, which lets the last segment win, agrees on our -E output:
        # every segment there holds the bytes that won
        drgn = require_module("drgn")
        prog = drgn.Program()
        prog.set_core_dump(str(dst))
        assert [prog.read(a, n, True) for a, n in spans] == want


# -- 4. pages a segment covers in part ---------------------------------------------------------

LOW = tagged_bytes(b"LOW_", 0x1000, 0x9EC00)
PARTIAL = {
    # x86's first RAM range on real machines: pfn 0x9f holds 0xc00 bytes
    "x86 first range": (PAGE, [load(0x1000, LOW)], [0x9F]),
    # a segment starting mid-page, and one ending mid-page beyond it
    "both ends": (PAGE, [load(0x100800, tagged_bytes(b"MID_", 0x100800, 2 * PAGE))],
                  [0x100, 0x102]),
    # a 4 KiB segment inside a 64 KiB page
    "4k in 64k": (0x10000, [load(0x23000, tagged_bytes(b"SMAL", 0x23000, PAGE))], [0x2]),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("kind", list(PARTIAL))
def test_partial_pages(kind: str, fmt: str, tmp_path: Path) -> None:
    """At -d 0 a page only partly covered is kept, every byte the source
    holds is in the output; a kdump-compressed file holds the page whole
    (the rest zeros) and its SLIMDUMP metadata lists it with the bytes the
    source held; -E's p_filesz covers every byte held."""
    page_size, loads, partial = PARTIAL[kind]
    src = write_core(tmp_path, loads, page_size)
    dst = capture(src, fmt, tmp_path, "-d", "0") if fmt != "full" else capture(src, fmt,
                                                                                tmp_path)
    spans = [(ld.paddr, len(ld.data)) for ld in loads]
    assert lk_reads(dst, spans) == [ld.data for ld in loads]
    if fmt == "elf":
        got = readelf_loads(dst)
        assert [(g.paddr, g.filesz, g.memsz) for g in got] == \
            [(ld.paddr, len(ld.data), len(ld.data)) for ld in loads]
    elif fmt != "full":
        dump = read_kdump(dst)
        assert all(dump.bitmap2[p] for p in partial)
        assert lk_reads(dst, [(p * page_size, page_size) for p in partial]) == \
            [page_bytes(loads, p, page_size) for p in partial]
        meta = slimdump_metadata(dst)
        assert meta is not None
        held = {}
        for p in partial:
            base = p * page_size
            held[p] = [[max(ld.paddr, base) - base,
                        min(ld.paddr + len(ld.data), base + page_size) - base]
                       for ld in loads
                       if ld.paddr < base + page_size and ld.paddr + len(ld.data) > base]
        assert meta["partial_pages"] == [{"pfn": p, "held": held[p]} for p in partial]


def test_partial_page_vs_makedumpfile(tmp_path: Path) -> None:
    """makedumpfile 1.7.2 drops the trailing partial page of x86's first RAM
    range (pfn 0x9f: 0xc00 bytes of RAM) at -d 0; slimdump keeps it.  The
    difference in the 1st bitmap is exactly the pages where a PT_LOAD (by
    readelf) ends mid-page; those pages read back as the source's bytes."""
    src = real_vmcore("6.1-sysrq")
    ours = tmp_path / "ours"
    res = slimdump("capture", "-l", "-d", "0", src, ours)
    assert res.returncode == 0, res.stderr
    theirs = tmp_path / "theirs"
    run(tool("makedumpfile"), "--message-level", "0", "-l", "-d", "0", src, theirs)
    a, b = read_kdump(ours), read_kdump(theirs)
    loads = readelf_loads(src)
    tails = {(ld.paddr + ld.memsz) // PAGE for ld in loads if (ld.paddr + ld.memsz) % PAGE}
    tails -= {int(p) for p in b.bitmap1.nonzero()[0] if p in tails}
    assert tails == {0x9F}
    assert set(map(int, (a.bitmap1 & ~b.bitmap1).nonzero()[0])) == tails
    assert not (b.bitmap1 & ~a.bitmap1).any()
    assert set(map(int, (a.bitmap2 ^ b.bitmap2).nonzero()[0])) == tails
    with src.open("rb") as f:
        first = next(ld for ld in loads if ld.paddr <= 0x9F000 < ld.paddr + ld.memsz)
        f.seek(first.offset + 0x9F000 - first.paddr)
        held = f.read(first.paddr + first.filesz - 0x9F000)
    assert lk_reads(ours, [(0x9F000, PAGE)]) == [held + bytes(PAGE - len(held))]
    assert slimdump_metadata(ours)["partial_pages"] == [{"pfn": 0x9F, "held": [[0, len(held)]]}]


# -- 5. a dump with no pages, flattened --------------------------------------------------------


@pytest.mark.parametrize("level", ["0", "31"])
def test_empty_flattened_dump_reassembles(level: str, tmp_path: Path) -> None:
    """-F of a dump that ends up with no pages still carries the bitmaps:
    slimdump reassemble and makedumpfile -R both give a file as long as its
    header promises, which inspect and libkdumpfile open."""
    src = write_core(tmp_path, NO_MEMORY["p_paddr all-ones"])
    stream = tmp_path / "stream"
    with stream.open("wb") as out:
        res = subprocess.run([sys.executable, "-m", "slimdump", "capture", "-F",
                              "-d", level, str(src)], stdout=out, stderr=subprocess.PIPE,
                             check=False)
    assert res.returncode == 0, res.stderr
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    res = slimdump("reassemble", "--input", stream, ours)
    assert res.returncode == 0, res.stderr
    with stream.open("rb") as f:
        subprocess.run([tool("makedumpfile"), "-R", str(theirs)], stdin=f, check=True,
                       capture_output=True)
    assert ours.read_bytes() == theirs.read_bytes()
    assert ours.stat().st_size >= kdump_promised_size(ours)
    dump = read_kdump(ours)
    assert dump.max_mapnr >= 1 and not dump.bitmap1.any() and not dump.bitmap2.any()
    assert slimdump("inspect", ours).returncode == 0
    assert "error" not in libkdumpfile(ours, [(0x100000, 16)])


def test_reassemble_refuses_a_short_file(tmp_path: Path) -> None:
    """A stream whose records stop before the end its kdump header promises
    (here: the header and nothing else): reassemble exits 1 with one line
    and writes no file."""
    src = write_core(tmp_path, [load(0x100000, tagged_bytes(b"DATA", 0x100000, PAGE))])
    kdump = capture(src, "lzo", tmp_path, "-d", "0")
    stream = tmp_path / "short.flat"
    stream.write_bytes(flatten(kdump.read_bytes()[:PAGE]))
    dst = tmp_path / "rebuilt"
    res = slimdump("reassemble", "--input", stream, dst)
    assert res.returncode == 1
    assert len(res.stderr.strip().splitlines()) == 1 and "promise" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not dst.exists()


def test_reads_follow_the_rule(tmp_path: Path) -> None:
    """slimdump's physical reads of a core with many overlapping segments
    (stored, declared-only, mid-page ends, in random order) equal the
    rule applied by :func:`expected` to the loads the test wrote.  (No
    oracle shares the rule byte for byte when overlaps start mid-page:
    libkdumpfile picks one segment per page, drgn the last one.)"""
    import random

    from slimdump.errors import NotInDump
    from slimdump.sources import open_dump

    rng = random.Random(9)
    loads = []
    for i in range(12):
        start = 0x100000 + rng.randrange(0, 6 * PAGE, 0x200)
        stored = rng.randrange(0, 3 * PAGE, 0x100)
        loads.append(load(start, tagged_bytes(b"S%03d" % i, start, stored),
                          stored + rng.choice([0, 0, 0x300, PAGE])))
    src = write_core(tmp_path, loads)
    with open_dump(src) as dump:
        for addr in range(0x100000 - PAGE, 0x100000 + 10 * PAGE, 0x100):
            want = expected(loads, addr, 0x100)
            if want is None:
                with pytest.raises(NotInDump):
                    dump.read_phys(addr, 0x100)
            else:
                assert dump.read_phys(addr, 0x100) == want, hex(addr)
