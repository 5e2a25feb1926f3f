"""Real I/O faults in a real kdump capture kernel (issue 13, "Never lose a dump").

One boot of the lab's capture kernel (tests/lab/vmcorelab.py run_collector,
Debian's 6.1 kernel in QEMU) runs tests/lab/faults.sh, which makes the
faults with the kernel's own device mapper, loop devices and ext4 and runs
``slimdump capture`` on them:

- source EIO: the saved 6.1-sysrq vmcore through a read-only loop device and
  a dm table with two ``error`` segments under page data that makedumpfile
  -d 31 keeps (three whole pages; three sectors inside a fourth page);
- destination EIO: an ext4 whose free blocks (its data area, as dumpe2fs
  lists them) are mapped to ``error``; and an ext4 whose whole device fails
  every write (dm-flakey error_writes), so that its journal aborts;
- ENOSPC: a 40 MiB ext4 that holds the -d 31 dump but not the -d 0 one, and
  an 8 MiB one that holds neither.

The outcomes are checked on the host by independent readers: libkdumpfile
(tests/kdumpfile_oracle.py), drgn, makedumpfile 1.7.2, eu-readelf, and plain
struct reads of the kdump headers (tests/mdfbitmap.py; kdump-formats.md
section 2).  The capture kernel's own log (console.log) shows that the
faults were real.  One boot: about five minutes under TCG on two cores
(the capture kernel has one CPU; the source read over 9p and the three
captures of /proc/vmcore are most of it).

Where the source's bad sectors go: in pages makedumpfile -d 31 keeps with
content, held by one PT_LOAD only, and that slimdump's detection and page
selection do not read (recorded through the RawFile read seam on the host),
so that the fault hits the page copy, the path under test, and not the
struct page walk (whose loss is another scenario: every page is kept).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import (
    real_vmcore,
    require_kdumpfile,
    require_lab,
    require_module,
    run,
    slimdump,
    tool,
)
from tests.lab import vmcorelab
from tests.mdfbitmap import read_kdump
from tests.oracles import KDUMPFILE_ORACLE, Load, eu_readelf_notes, libkdumpfile_view, readelf_loads

FIXTURE = "6.1-sysrq"
PAGE = 4096
SECTOR = 512
SCRIPT = Path(__file__).parent / "lab" / "faults.sh"
MODULES = ("dm_mod", "dm_flakey", "loop", "ext4", "crc32c_generic")
STATUS_AT = 424                 # disk_dump_header.status, x86_64 (kdump-formats.md 2.2)
INCOMPLETE = 0x8                # DUMP_DH_COMPRESSED_INCOMPLETE
NT_SLIMDUMP_META = 0x534C0001   # nocoredump-note.md, "slimdump's own notes"
SMALLEST_CODECS = (0x20, 0x1)   # status of a zstd / zlib dump (kdump-formats.md 2.5)
PART = re.compile(r"\..+\.[0-9a-f]{8}\.part\b")


@dataclasses.dataclass
class Faults:
    out: Path
    src: Path
    result: vmcorelab.CollectorResult
    lost: list[int]                       # pfns under the source's error segments
    bad_sectors: list[tuple[int, int]]    # (first sector, count) of each segment
    console: str

    def dir(self, name: str) -> Path:
        return self.out / name

    def text(self, name: str, file: str) -> str:
        return (self.out / name / file).read_text(errors="replace")

    def rc(self, name: str) -> int:
        return int(self.text(name, "rc"))

    def section(self, name: str) -> str:
        """The console between the script's begin and end marks of ``name``."""
        begin = self.console.index(f"LAB-FAULT: begin {name}")
        return self.console[begin:self.console.index(f"LAB-FAULT: end {name}", begin)]


# -- where the bad sectors go ----------------------------------------------------------


def makedumpfile_kept(src: Path, work: Path) -> np.ndarray:
    """bool[pfn]: pages makedumpfile -c -d 31 stores with content."""
    out = work / "makedumpfile-d31"
    run(tool("makedumpfile"), "--message-level", "0", "-c", "-d", "31", src, out)
    kept = read_kdump(out).kept_with_content
    out.unlink()
    return kept


def pages_read_before_copy(src: Path, nbits: int, loads: list[Load]) -> np.ndarray:
    """bool[pfn]: pages slimdump reads to decide and to select pages (the
    log, the struct page walk): the fault must not hit those."""
    from slimdump.capture.decision import decide_safely
    from slimdump.filtered import select_pages
    from slimdump.sources import open_dump
    from slimdump.sources.rawfile import RawFile

    spans: list[tuple[int, int]] = []

    class Recording(RawFile):
        def _pread(self, size: int, offset: int) -> bytes:
            spans.append((offset, offset + size))
            return super()._pread(size, offset)

        def _preadv(self, buf: memoryview, offset: int) -> int:
            spans.append((offset, offset + len(buf)))
            return super()._preadv(buf, offset)

        def _copy_mapped(self, buf: memoryview, offset: int) -> int | None:
            if self.mapped is not None:
                spans.append((offset, offset + len(buf)))
            return super()._copy_mapped(buf, offset)

    with open_dump(src) as source:
        source.raw.__class__ = Recording
        decide_safely(source, None, want_log=True)
        select_pages(source, 31).close()
    read = np.zeros(nbits, dtype=bool)
    for ld in loads:
        for lo, hi in spans:
            lo, hi = max(lo, ld.offset), min(hi, ld.offset + ld.filesz)
            if lo < hi:
                first = (lo - ld.offset + ld.paddr) // PAGE
                read[first:(hi - 1 - ld.offset + ld.paddr) // PAGE + 1] = True
    return read


def file_offset(loads: list[Load], pfn: int) -> int:
    (ld,) = [ld for ld in loads
             if ld.paddr <= pfn * PAGE and (pfn + 1) * PAGE <= ld.paddr + ld.filesz]
    return ld.offset + pfn * PAGE - ld.paddr


def choose_bad_pages(src: Path, work: Path) -> tuple[list[int], list[tuple[int, int]]]:
    """Three pages in a row (all their sectors bad) and, further on, one page
    with three bad sectors in its middle: (lost pfns, [(sector, count)])."""
    loads = readelf_loads(src)
    kept = makedumpfile_kept(src, work)
    once = np.zeros(len(kept), dtype=int)
    for ld in loads:
        once[ld.paddr // PAGE:(ld.paddr + ld.filesz) // PAGE] += 1
    good = kept & (once == 1) & ~pages_read_before_copy(src, len(kept), loads)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], good.astype(np.int8), [0]))))
    runs = [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)
            if b - a >= 16]
    assert len(runs) >= 4, runs
    a = sum(runs[len(runs) // 4]) // 2
    b = sum(runs[3 * len(runs) // 4]) // 2
    a_at, b_at = file_offset(loads, a), file_offset(loads, b)
    assert file_offset(loads, a + 2) == a_at + 2 * PAGE and a_at + 3 * PAGE <= b_at
    return [a, a + 1, a + 2, b], [(a_at // SECTOR, 3 * PAGE // SECTOR),
                                  (b_at // SECTOR + 3, 3)]


# -- the one boot ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Faults:
    require_lab("cannot run a capture kernel")
    src = real_vmcore(FIXTURE)
    work = tmp_path_factory.mktemp("real-faults")
    lost, bad = choose_bad_pages(src, work)
    out = work / "out"
    (a0, an), (b0, bn) = bad
    command = ["/bin/sh", str(SCRIPT), "{out}", str(src), str(a0), str(an), str(b0), str(bn)]
    result = vmcorelab.run_collector("6.1", "sysrq", command, out, timeout_s=900,
                                     modules=MODULES, log=lambda m: print(m, flush=True))
    stderr = result.stderr.read_text(errors="replace")
    assert result.returncode == 0, (f"faults.sh exited {result.returncode}: {stderr} "
                                    f"(console: {result.console_log})")
    console = result.console_log.read_text(errors="replace")
    return Faults(out, src, result, lost, bad, console)


# -- independent readings ---------------------------------------------------------------


def source_hashes(src: Path, pfns: list[int]) -> dict[int, str]:
    """blake2b-128 of each page as the ELF vmcore holds it (readelf's
    PT_LOADs; the first in header order wins; zeros where none holds a
    byte), as tests/kdumpfile_oracle.py hashes libkdumpfile's pages."""
    loads = readelf_loads(src)
    out: dict[int, str] = {}
    with src.open("rb") as f:
        for pfn in pfns:
            base, page = pfn * PAGE, bytearray(PAGE)
            for ld in reversed(loads):
                lo, hi = max(base, ld.paddr), min(base + PAGE, ld.paddr + ld.filesz)
                if lo < hi:
                    f.seek(ld.offset + lo - ld.paddr)
                    page[lo - base:hi - base] = f.read(hi - lo)
            out[pfn] = hashlib.blake2b(bytes(page), digest_size=16).hexdigest()
    return out


def kdumpfile_read(path: Path, pfns: list[int]) -> dict[str, dict[int, str]]:
    """libkdumpfile's answer for these pfns: ``pages`` {pfn: hash},
    ``missing`` {pfn: exception name}."""
    proc = subprocess.run([require_kdumpfile(), str(KDUMPFILE_ORACLE), str(path),
                           *map(str, pfns)], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout)
    return {"pages": {p: h for p, h in result["pages"]},
            "missing": {p: e for p, e in result["missing"]}}


def kdumpfile_find(path: Path, needle: bytes) -> list[int]:
    """Pfns of the pages libkdumpfile reads from ``path`` that hold ``needle``."""
    script = ("import json, sys, kdumpfile\n"
              "k = kdumpfile.kdumpfile(sys.argv[1])\n"
              "size, top = k.attr['arch.page_size'], k.attr['max_pfn']\n"
              "bits = k.attr['file.pagemap'].get_bits(0, top - 1)\n"
              "found = []\n"
              "for pfn in range(top):\n"
              "    if bits[pfn >> 3] >> (pfn & 7) & 1:\n"
              "        page = bytes(k.read(kdumpfile.KDUMP_MACHPHYSADDR, pfn * size, size))\n"
              "        if sys.argv[2].encode() in page:\n"
              "            found.append(pfn)\n"
              "print(json.dumps(found))\n")
    proc = subprocess.run([require_kdumpfile(), "-c", script, str(path), needle.decode()],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def header_fields(path: Path) -> dict[str, int]:
    """disk_dump_header.status and block_size (offsets 424, 428), and the
    kdump_sub_header's dump_level (block_size + 8): kdump-formats.md 2.2, 2.3."""
    with path.open("rb") as f:
        head = f.read(432)
        status, block_size = struct.unpack_from("<Ii", head, STATUS_AT)
        f.seek(block_size + 8)
        (dump_level,) = struct.unpack("<i", f.read(4))
    return {"signature": head[:8], "status": status, "block_size": block_size,
            "dump_level": dump_level}


def slimdump_metadata(path: Path) -> dict[str, Any]:
    """The SLIMDUMP metadata note of a kdump-compressed file, from the note
    area the sub header points at (offset_note, size_note at block_size + 48)."""
    block_size = header_fields(path)["block_size"]
    with path.open("rb") as f:
        f.seek(block_size + 48)
        offset, size = struct.unpack("<qQ", f.read(16))
        f.seek(offset)
        area = f.read(size)
    pos, found = 0, []
    while pos + 12 <= len(area):
        namesz, descsz, kind = struct.unpack_from("<III", area, pos)
        if namesz == descsz == kind == 0:
            break
        name = area[pos + 12:pos + 12 + namesz].rstrip(b"\0")
        desc_at = pos + 12 + (namesz + 3) // 4 * 4
        if name == b"SLIMDUMP" and kind == NT_SLIMDUMP_META:
            found.append(json.loads(area[desc_at:desc_at + descsz].rstrip(b"\0")))
        pos = desc_at + (descsz + 3) // 4 * 4
    (meta,) = found
    return meta


def listing(faults: Faults, name: str) -> list[str]:
    """Names ``ls -la`` showed in the destination directory afterwards."""
    rows = faults.text(name, "ls").splitlines()[1:]
    return sorted(row.split()[-1] for row in rows if row.split()[-1] not in (".", ".."))


def stderr_lines(faults: Faults, name: str) -> list[str]:
    text = faults.text(name, "stderr")
    assert "Traceback" not in text, text
    return text.splitlines()


def logical_blocks(console: str, what: str) -> set[int]:
    """Blocks of the block layer's "Buffer I/O error on dev(ice) dm-N,
    logical block B[, what]" lines."""
    return {int(m[1]) for m in re.finditer(
        rf"Buffer I/O error on dev(?:ice)? dm-\d+, logical block (\d+){what}", console, re.M)}


# -- source EIO ----------------------------------------------------------------------------


def test_source_eio_saves_the_dump_and_says_so(faults: Faults) -> None:
    assert faults.rc("src-eio") == 0, faults.text("src-eio", "stderr")
    device = faults.text("src-eio", "device").strip()
    lines = stderr_lines(faults, "src-eio")
    assert [x for x in lines if "could not be read" in x] == [
        f"slimdump: warning: {len(faults.lost)} page(s) could not be read from {device} and "
        "are missing from the dump (listed in its SLIMDUMP metadata)"]
    assert not any("error:" in x for x in lines), lines
    # the block device's size, as the kernel gives it, is the file's
    assert int(faults.text("src-eio", "device-size")) == faults.src.stat().st_size
    names = sorted(p.name for p in faults.dir("src-eio").iterdir())
    assert "dump" in names and "dump.triage" in names
    assert not [n for n in names if PART.match(n)], names
    head = header_fields(faults.dir("src-eio") / "dump")
    assert head["signature"] == b"KDUMP   " and head["dump_level"] == 31
    assert not head["status"] & INCOMPLETE


def test_source_eio_was_real(faults: Faults) -> None:
    """The capture kernel's block layer failed the reads of exactly those
    sectors (its 4 KiB blocks), and dd failed there too."""
    section = faults.section("src-eio")
    blocks = logical_blocks(section, ", async page read")
    bad = {s * SECTOR // PAGE for s, n in faults.bad_sectors
           for s in range(s, s + n)}
    (a0, _), (b0, _) = faults.bad_sectors
    assert blocks and blocks <= bad, (sorted(blocks), sorted(bad))
    assert {a0 * SECTOR // PAGE, b0 * SECTOR // PAGE} <= blocks
    assert int(faults.text("src-eio", "dd-bad.rc")) != 0
    assert "Input/output error" in faults.text("src-eio", "dd-bad")
    assert int(faults.text("src-eio", "dd-good.rc")) == 0


def test_source_eio_pages_are_missing_not_zero(faults: Faults) -> None:
    """libkdumpfile: the pages under the bad sectors are not in the dump
    (NoDataException; a zero page would read as zeros); every page it does
    read is the source's, and every page makedumpfile -d 31 keeps with
    content is there but those."""
    dump, lost = faults.dir("src-eio") / "dump", faults.lost
    asked = kdumpfile_read(dump, lost)
    assert asked["missing"] == {p: "NoDataException" for p in lost}
    view = libkdumpfile_view(dump)
    assert "error" not in view and not view["missing"]
    pages: dict[int, str] = view["pages"]  # type: ignore[assignment]
    assert not set(lost) & set(pages)
    assert pages == source_hashes(faults.src, sorted(pages))
    kept = np.flatnonzero(makedumpfile_kept(faults.src, faults.out))
    assert set(kept.tolist()) - set(pages) == set(lost)
    # the 1st bitmap still says the memory exists; the 2nd leaves it out
    k = read_kdump(dump)
    assert k.bitmap1[lost].all() and not k.bitmap2[lost].any()


def test_source_eio_drgn_faults(faults: Faults) -> None:
    drgn = require_module("drgn")
    prog = drgn.Program()
    prog.set_core_dump(str(faults.dir("src-eio") / "dump"))
    for pfn in faults.lost:
        with pytest.raises(drgn.FaultError):
            prog.read(pfn * PAGE, PAGE, True)
    near = [faults.lost[0] - 1, faults.lost[2] + 1, faults.lost[3] - 1, faults.lost[3] + 1]
    theirs = {p: hashlib.blake2b(prog.read(p * PAGE, PAGE, True), digest_size=16).hexdigest()
              for p in near}
    assert theirs == source_hashes(faults.src, near)


def test_source_eio_metadata_lists_the_pages(faults: Faults) -> None:
    a, _, c, b = faults.lost
    meta = slimdump_metadata(faults.dir("src-eio") / "dump")
    assert meta["unreadable_pages"] == {"count": 4, "ranges": [[a, c], [b, b]]}
    assert meta["source"]["path"] == faults.text("src-eio", "device").strip()


# -- destination EIO -------------------------------------------------------------------


def free_blocks(dumpe2fs: str) -> list[tuple[int, int]]:
    """The per-group "Free blocks: a-b, c" ranges of dumpe2fs (inclusive)."""
    spans = []
    for m in re.finditer(r"^  +Free blocks: (.*)$", dumpe2fs, re.M):
        for item in filter(None, (x.strip() for x in m[1].split(","))):
            lo, _, hi = item.partition("-")
            spans.append((int(lo), int(hi or lo)))
    return spans


def test_destination_eio_one_line_and_nothing_left(faults: Faults) -> None:
    assert faults.rc("dst-eio") == 1
    assert stderr_lines(faults, "dst-eio") == [
        "slimdump: /mnt/dst-eio/dump: write failed: Input/output error"]
    # neither the dump nor its temporary file: the directory as mkfs left it
    assert listing(faults, "dst-eio") == ["lost+found"]
    assert faults.text("dst-eio", "umount") == ""


def test_destination_eio_was_real(faults: Faults) -> None:
    """ext4's writeback of the dump's blocks failed on the dm error target,
    in the blocks dumpe2fs listed free; the metadata blocks stayed good."""
    section = faults.section("dst-eio")
    assert re.search(r"EXT4-fs warning \(device dm-\d+\): ext4_end_bio:\d+: I/O error 10 "
                     r"writing to inode \d+", section), section
    blocks = logical_blocks(section, r"\s*$")
    spans = free_blocks(faults.text("dst-eio", "dumpe2fs"))
    assert blocks and all(any(lo <= b <= hi for lo, hi in spans) for b in blocks)
    assert "EXT4-fs error" not in section and "Aborting journal" not in section


def test_destination_eio_keeps_the_triage_slimdump(faults: Faults) -> None:
    triage = faults.dir("dst-eio") / "dump.triage"
    res = slimdump("inspect", triage)
    assert res.returncode == 0, res.stderr
    assert "sysrq triggered crash" in res.stdout
    owners = {n.owner for n in eu_readelf_notes(triage)}
    assert {"CORE", "VMCOREINFO", "SLIMDUMP"} <= owners


def test_dead_destination_one_line(faults: Faults) -> None:
    """Every write to the device fails: ext4 aborts its journal while the
    -d 31 dump is written.  Exit 1 with one line naming the destination;
    nothing under DST; the triage slimdump (elsewhere) is whole.  The
    temporary file cannot be removed from a dead file system: the next
    capture into that directory removes it (remove_stale_parts).

    ext4's "Remounting filesystem read-only" is not asserted: it comes when
    ext4 next notices the aborted journal, which may be after the script has
    unmounted the file system and closed the section (seen in CI on an
    unchanged tree).  The journal abort and the lost page writes are the
    kernel's own record that every write failed."""
    name = "dst-dead-d31"
    assert not (faults.dir(name) / "stuck").exists(), faults.text(name, "stuck")
    assert faults.rc(name) == 1, faults.text(name, "stderr")
    (line,) = stderr_lines(faults, name)
    assert re.fullmatch(rf"slimdump: /mnt/{name}/dump: .*"
                        r"(Input/output error|Read-only file system)", line), line
    assert "dump" not in listing(faults, name)
    section = faults.section(name)
    assert re.search(r"Aborting journal on device dm-\d+", section), section
    assert logical_blocks(section, ", lost (a)?sync page write")
    res = slimdump("inspect", faults.dir(name) / "dump.triage")
    assert res.returncode == 0 and "sysrq triggered crash" in res.stdout, res.stderr


# -- ENOSPC ------------------------------------------------------------------------------


def test_full_disk_gets_the_smallest_dump(faults: Faults) -> None:
    assert faults.rc("nospc-fit") == 0, faults.text("nospc-fit", "stderr")
    lines = stderr_lines(faults, "nospc-fit")
    warnings = [x for x in lines if x.startswith("slimdump: warning:")]
    assert len(warnings) == 1 and "No space left on device" in warnings[0]
    assert "smallest dump" in warnings[0] and "-d 31" in warnings[0]
    assert listing(faults, "nospc-fit") == ["dump", "dump.triage", "lost+found"]
    dump = faults.dir("nospc-fit") / "dump"
    head = header_fields(dump)
    assert head["signature"] == b"KDUMP   "
    assert head["dump_level"] == 31 and head["status"] in SMALLEST_CODECS
    view = libkdumpfile_view(dump)
    assert "error" not in view and view["pages"] and not view["missing"], view.get("error")
    # the crashed kernel's log is in it (Debian 12's makedumpfile 1.7.2 is
    # built without zstd and cannot read a zstd dump: libkdumpfile reads it)
    assert kdumpfile_find(dump, b"sysrq triggered crash")


def test_disk_too_small_for_any_dump_keeps_it_cut_short(faults: Faults) -> None:
    """Exit 2; the dump stays, its header marked incomplete; libkdumpfile
    reads the pages written before the cut, and they are the same pages the
    complete -d 31 dump of the same crash (nospc-fit) holds."""
    assert faults.rc("nospc-cut") == 2, faults.text("nospc-cut", "stderr")
    lines = stderr_lines(faults, "nospc-cut")
    assert any("No space left on device" in x and "smallest dump" in x for x in lines)
    assert any(x.startswith("slimdump: warning: no room even for the smallest dump")
               for x in lines), lines
    assert listing(faults, "nospc-cut") == ["dump", "dump.triage", "lost+found"]
    dump = faults.dir("nospc-cut") / "dump"
    head = header_fields(dump)
    assert head["signature"] == b"KDUMP   " and head["dump_level"] == 31
    assert head["status"] & INCOMPLETE and head["status"] & ~INCOMPLETE in SMALLEST_CODECS
    cut, whole = libkdumpfile_view(dump), libkdumpfile_view(faults.dir("nospc-fit") / "dump")
    assert "error" not in cut, cut["error"]
    pages: dict[int, str] = cut["pages"]  # type: ignore[assignment]
    full: dict[int, str] = whole["pages"]  # type: ignore[assignment]
    assert pages and cut["missing"]
    assert {p: full[p] for p in pages} == pages
    assert set(pages) | {p for p, _ in cut["missing"]} == set(full)  # type: ignore[attr-defined]
    # what the metadata says was written is what libkdumpfile can read
    assert slimdump_metadata(dump)["incomplete"]["pages_written"] == len(pages)
