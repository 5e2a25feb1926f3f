"""Pages the source cannot give are lost, never zeros (issue 13).

A read error under a page (EIO on chosen file offsets, put in through
:class:`FailingRaw`, the one seam: ``RawFile._pread``/``_preadv``/``_copy_mapped``), a
kdump-compressed source cut short, and a disk that fills up while the page
data are written.  Every outcome is read back by independent readers:
libkdumpfile (Debian's python3-libkdumpfile, tests/kdumpfile_oracle.py),
drgn, makedumpfile 1.7.2 (``--dump-dmesg``, re-filtering, ``-R``), and plain
struct reads of the headers and notes (tests/mdfbitmap.py, the layout of
kdump-formats.md section 2).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slimdump.errors import DumpError, OutputError, SourceReadError
from slimdump.filtered import select_pages, write_dump
from slimdump.notes import metadata_note
from slimdump.sources import open_dump
from slimdump.sources.elfcore import ElfCore
from slimdump.sources.rawfile import RawFile
from slimdump.writers.options import DumpOptions
from tests.conftest import real_vmcore, require, require_kdumpfile, require_module, run, tool
from tests.mdfbitmap import read_kdump
from tests.oracles import KDUMPFILE_ORACLE, held_page, libkdumpfile_view, readelf_loads

drgn = require_module("drgn")
PAGE = 4096
STATUS_AT = 424                 # disk_dump_header.status, x86_64 (kdump-formats.md 2.2)
INCOMPLETE = 0x8                # DUMP_DH_COMPRESSED_INCOMPLETE
NT_SLIMDUMP_META = 0x534C0001   # nocoredump-note.md, "slimdump's own notes"


class FailingRaw(RawFile):
    """A RawFile whose reads fail with EIO where they touch ``bad`` (file
    offset ranges [lo, hi)), as a disk with bad sectors would."""

    bad: tuple[tuple[int, int], ...] = ()

    def _fail(self, offset: int, size: int) -> None:
        if any(offset < hi and offset + size > lo for lo, hi in self.bad):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    def _pread(self, size: int, offset: int) -> bytes:
        self._fail(offset, size)
        return super()._pread(size, offset)

    def _preadv(self, buf: memoryview, offset: int) -> int:
        self._fail(offset, len(buf))
        return super()._preadv(buf, offset)

    def _copy_mapped(self, buf: memoryview, offset: int) -> int | None:
        if self.mapped is not None:
            self._fail(offset, len(buf))
        return super()._copy_mapped(buf, offset)


def failing(path: Path, bad: list[tuple[int, int]]) -> Any:
    """``path`` opened as slimdump opens it, its reads failing on ``bad``."""
    source = open_dump(path)
    raw = source.raw
    raw.__class__ = FailingRaw
    raw.bad = bad
    return source


def file_offset(src: Path, pfn: int) -> int:
    """Where page ``pfn``'s bytes are in the ELF file, by readelf's PT_LOADs
    (pages of exactly one PT_LOAD only)."""
    loads = [ld for ld in readelf_loads(src)
             if ld.paddr <= pfn * PAGE and (pfn + 1) * PAGE <= ld.paddr + ld.filesz]
    assert len(loads) == 1, pfn
    return loads[0].offset + pfn * PAGE - loads[0].paddr


def lone_pages(src: Path, kept: np.ndarray, count: int) -> list[int]:
    """``count`` pfns inside long runs of kept pages, spread over memory,
    each held by one PT_LOAD only."""
    loads = readelf_loads(src)
    once = np.zeros(len(kept), dtype=int)
    for ld in loads:
        once[ld.paddr // PAGE:(ld.paddr + ld.filesz) // PAGE] += 1
    good = kept & (once == 1)
    # the middle of runs of at least 16 good pages
    edges = np.flatnonzero(np.diff(np.concatenate(([0], good.astype(np.int8), [0]))))
    runs = [(a, b) for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a >= 16]
    picks = np.linspace(0, len(runs) - 1, count).astype(int)
    return [int((runs[i][0] + runs[i][1]) // 2) for i in picks]


def note_area(path: Path) -> tuple[bytes, int, int]:
    """The note area the kdump sub header points at (offset_note, size_note
    at block 1 + 48 and + 56): (bytes, offset, size)."""
    with path.open("rb") as f:
        f.seek(PAGE + 48)
        offset, size = struct.unpack("<qQ", f.read(16))
        f.seek(offset)
        return f.read(size), offset, size


def notes_of(area: bytes) -> list[tuple[str, int, bytes]]:
    """(owner, type, desc) of each note, parsed with struct."""
    out, pos = [], 0
    while pos + 12 <= len(area):
        namesz, descsz, kind = struct.unpack_from("<III", area, pos)
        if namesz == descsz == kind == 0:
            break
        name = area[pos + 12:pos + 12 + namesz].rstrip(b"\0").decode()
        desc_at = pos + 12 + (namesz + 3) // 4 * 4
        out.append((name, kind, area[desc_at:desc_at + descsz]))
        pos = desc_at + (descsz + 3) // 4 * 4
    return out


def slimdump_metadata(path: Path) -> list[dict[str, Any]]:
    return [json.loads(desc.rstrip(b"\0")) for name, kind, desc in notes_of(note_area(path)[0])
            if name == "SLIMDUMP" and kind == NT_SLIMDUMP_META]


def elf_note_segment(path: Path) -> bytes:
    """The ELF core's PT_NOTE bytes (plain struct: ELF64 little-endian)."""
    with path.open("rb") as f:
        head = f.read(64)
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
        for i in range(phnum):
            kind, _flags, offset, _v, _p, filesz, _m, _a = struct.unpack_from(
                "<IIQQQQQQ", table, i * phentsize)
            if kind == 4:
                f.seek(offset)
                return f.read(filesz)
    raise AssertionError("no PT_NOTE")


def kdumpfile_read(path: Path, pfns: list[int]) -> dict[str, Any]:
    """libkdumpfile's answer for these pfns: ``pages`` {pfn: hash}, ``missing``
    {pfn: exception name}."""
    proc = subprocess.run([require_kdumpfile(), str(KDUMPFILE_ORACLE), str(path),
                           *map(str, pfns)], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout)
    return {"pages": dict(map(tuple, result["pages"])),
            "missing": dict(map(tuple, result["missing"]))}


def kdumpfile_registers(path: Path) -> dict[str, int]:
    """cpu.0's registers as libkdumpfile reads them from the notes."""
    script = ("import json, sys, kdumpfile\n"
              "k = kdumpfile.kdumpfile(sys.argv[1])\n"
              "regs = k.attr['cpu.0.reg']\n"
              "print(json.dumps({r: int(regs[r]) for r in regs}))\n")
    proc = subprocess.run([require_kdumpfile(), "-c", script, str(path)], capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout)


def merged(pfns: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for pfn in sorted(pfns):
        if out and out[-1][1] + 1 == pfn:
            out[-1][1] = pfn
        else:
            out.append([pfn, pfn])
    return out


def dump(source: Any, dst: Path, **kwargs: Any) -> Any:
    options = kwargs.pop("options", None) or DumpOptions(codec="zlib", dump_level=31)
    selection = select_pages(source, options.dump_level)
    try:
        return write_dump(source, str(dst), options, selection, **kwargs)
    finally:
        selection.close()


# -- an ELF source with bad sectors ---------------------------------------------------


@pytest.fixture(scope="module")
def lossy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """6.1-sysrq at -c -d 31, clean and with EIO under six pages: one alone,
    three in a row, two on either side of one bad byte range."""
    src = real_vmcore("6.1-sysrq")
    work = tmp_path_factory.mktemp("lossy")
    clean = work / "clean"
    with open_dump(src) as source:
        dump(source, clean)
    p1, p2, p3 = lone_pages(src, read_kdump(clean).kept_with_content, 3)
    lost = [p1, p2, p2 + 1, p2 + 2, p3, p3 + 1]
    bad = [(file_offset(src, p1) + 100, file_offset(src, p1) + 101),
           (file_offset(src, p2) + 4000, file_offset(src, p2 + 2) + 10),
           (file_offset(src, p3) + PAGE - 1, file_offset(src, p3) + PAGE + 1)]
    out = work / "lossy"
    source = failing(src, bad)
    try:
        result = dump(source, out)
    finally:
        source.close()
    return {"src": src, "clean": clean, "out": out, "lost": lost, "bad": bad,
            "result": result, "work": work}


def test_lost_pages_counted_and_listed(lossy: dict[str, Any]) -> None:
    result, lost = lossy["result"], lossy["lost"]
    assert result.details["unreadable"] == len(lost)
    assert result.details["unreadable_ranges"] == merged(lost)
    assert "read error at offset" in result.details["unreadable_error"]
    assert slimdump_metadata(lossy["out"]) == [
        {"format": 1, "unreadable_pages": {"count": len(lost), "ranges": merged(lost)}}]


def test_libkdumpfile_reports_lost_pages_missing(lossy: dict[str, Any]) -> None:
    """libkdumpfile: the lost pages are excluded (NoDataException), every other
    page of the clean dump is there, byte for byte."""
    clean, out = libkdumpfile_view(lossy["clean"]), libkdumpfile_view(lossy["out"])
    assert not out["missing"]
    lost = set(lossy["lost"])
    assert lost <= set(clean["pages"])
    assert out["pages"] == {p: h for p, h in clean["pages"].items() if p not in lost}
    asked = kdumpfile_read(lossy["out"], sorted(lost))
    assert asked["missing"] == {p: "NoDataException" for p in lost}
    # the notes moved after the page data: libkdumpfile finds them there
    assert kdumpfile_registers(lossy["out"]) == kdumpfile_registers(lossy["clean"])


def test_drgn_faults_on_lost_pages(lossy: dict[str, Any]) -> None:
    prog = drgn.Program()
    prog.set_core_dump(str(lossy["out"]))
    for pfn in lossy["lost"]:
        with pytest.raises(drgn.FaultError, match="Excluded page"):
            prog.read(pfn * PAGE, PAGE, True)
    for pfn in (lossy["lost"][0] - 1, lossy["lost"][0] + 1, lossy["lost"][-1] + 1):
        assert prog.read(pfn * PAGE, PAGE, True) == held_page(lossy["src"], pfn)


def test_makedumpfile_reads_the_lossy_dump(lossy: dict[str, Any]) -> None:
    """makedumpfile 1.7.2 finds the log (VMCOREINFO in the first note copy)
    and re-filters the file: the lost pages stay out."""
    work = lossy["work"]
    a, b = work / "a.txt", work / "b.txt"
    run(tool("makedumpfile"), "--dump-dmesg", lossy["out"], a)
    run(tool("makedumpfile"), "--dump-dmesg", lossy["src"], b)
    assert a.read_bytes() == b.read_bytes()
    again = work / "refiltered"
    run(tool("makedumpfile"), "--message-level", "0", "-c", "-d", "31", lossy["out"], again)
    asked = kdumpfile_read(again, lossy["lost"])
    assert asked["missing"] == {p: "NoDataException" for p in lossy["lost"]}


def test_new_note_area_is_the_old_plus_metadata(lossy: dict[str, Any]) -> None:
    """The sub header points at a new note area after the page data: the
    source's notes byte for byte, then the metadata; the first copy stays
    where offset_vmcoreinfo points."""
    area, offset, size = note_area(lossy["out"])
    first, first_at, _ = note_area(lossy["clean"])
    source_notes = elf_note_segment(lossy["src"])
    assert first == source_notes and area.startswith(source_notes)
    assert offset + size == lossy["out"].stat().st_size == lossy["result"].size
    with lossy["out"].open("rb") as f:
        f.seek(first_at)
        assert f.read(len(first)) == first


def test_flattened_lossy_dump_reassembles_to_the_same_file(lossy: dict[str, Any]) -> None:
    """-F: the bitmap bytes cleared and the new notes are records of the
    stream; makedumpfile -R rebuilds the file written directly."""
    flat = lossy["work"] / "lossy.flat"
    source = failing(lossy["src"], lossy["bad"])
    try:
        result = dump(source, flat, options=DumpOptions(format="flat", codec="zlib",
                                                        dump_level=31))
    finally:
        source.close()
    assert result.details["unreadable"] == len(lossy["lost"])
    rebuilt = lossy["work"] / "rebuilt"
    with flat.open("rb") as f:
        subprocess.run([tool("makedumpfile"), "-R", str(rebuilt)], stdin=f, check=True,
                       capture_output=True)
    assert rebuilt.read_bytes() == lossy["out"].read_bytes()


def test_one_thread_writes_the_same_file(lossy: dict[str, Any]) -> None:
    out = lossy["work"] / "one-thread"
    source = failing(lossy["src"], lossy["bad"])
    try:
        dump(source, out, options=DumpOptions(codec="zlib", dump_level=31, threads=1))
    finally:
        source.close()
    assert out.read_bytes() == lossy["out"].read_bytes()


def test_callers_metadata_note_is_replaced_not_doubled(lossy: dict[str, Any]) -> None:
    meta = {"format": 1, "reason": "PANIC_MCE", "excluded_pages": [{"pfn": 5}]}
    out = lossy["work"] / "with-meta"
    source = failing(lossy["src"], lossy["bad"])
    try:
        dump(source, out, extra_notes=[metadata_note(meta)], metadata=meta)
    finally:
        source.close()
    lost = lossy["lost"]
    assert slimdump_metadata(out) == [
        {**meta, "unreadable_pages": {"count": len(lost), "ranges": merged(lost)}}]


def test_refiltering_keeps_the_sources_list(lossy: dict[str, Any]) -> None:
    """A lossy dump re-filtered, one more page failing: the metadata lists
    the pages lost before and the new one (the old ones are still missing)."""
    view = read_kdump(lossy["out"])
    pfns = view.dumped_pfns
    compressed = np.flatnonzero(view.desc_size < PAGE)      # its own data: not a zero page
    i = int(compressed[len(compressed) // 2])
    offset = int(view.desc_offset[i])
    source = failing(lossy["out"], [(offset, offset + 1)])
    out = lossy["work"] / "again"
    try:
        result = dump(source, out)
    finally:
        source.close()
    lost = [*lossy["lost"], int(pfns[i])]
    assert result.details["unreadable"] == 1
    assert slimdump_metadata(out) == [
        {"format": 1, "unreadable_pages": {"count": len(lost), "ranges": merged(lost)}}]
    asked = kdumpfile_read(out, lost)
    assert asked["missing"] == {p: "NoDataException" for p in lost}


def test_elf_output_and_split_refuse_in_one_line(lossy: dict[str, Any]) -> None:
    """-E lays its segments out before reading, --split parts share their
    bitmaps: a read error is a SourceReadError naming the offset, no file
    is left (capture falls back)."""
    work = lossy["work"] / "refused"
    work.mkdir()
    cases = [(DumpOptions(format="elf", dump_level=31), work / "elf"),
             (DumpOptions(codec="zlib", dump_level=31,
                          split=(str(work / "p1"), str(work / "p2"))), work / "p1")]
    for options, dst in cases:
        source = failing(lossy["src"], lossy["bad"])
        try:
            with pytest.raises(SourceReadError) as err:
                dump(source, dst, options=options)
        finally:
            source.close()
        text = str(err.value)
        assert "\n" not in text and text.startswith(f"{lossy['src']}: read error at offset 0x")
        assert os.listdir(work) == []


def test_header_read_error_is_one_line(lossy: dict[str, Any]) -> None:
    """EIO in the program headers: opening fails, one line, the offset named."""
    raw = FailingRaw.open(lossy["src"])
    raw.bad = [(64, 65)]
    with pytest.raises(DumpError) as err:
        ElfCore(raw)
    raw.close()
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"{lossy['src']}: read error at offset 0x40")


# -- a kdump-compressed source cut short ----------------------------------------------


def cut_short(clean: Path, dst: Path, keep: int) -> Any:
    """``clean`` as makedumpfile leaves a dump it could not finish: the
    descriptors from the ``keep``-th dumped page on zeroed, the file ending
    after the last page data still described, status | INCOMPLETE.
    Returns the independent reader's view of ``clean``."""
    view = read_kdump(clean)
    data = bytearray(clean.read_bytes())
    sub_hdr_size, bitmap_blocks = struct.unpack_from("<iI", data, 432)
    desc_at = (1 + sub_hdr_size + bitmap_blocks) * PAGE
    ndesc = len(view.desc_offset)
    data[desc_at + 24 * keep:desc_at + 24 * ndesc] = bytes(24 * (ndesc - keep))
    end = int(max(view.desc_offset[:keep] + view.desc_size[:keep].astype(np.int64)))
    struct.pack_into("<I", data, STATUS_AT, view.status | INCOMPLETE)
    dst.write_bytes(bytes(data[:end]))
    return view


@pytest.mark.parametrize("level", [0, 31])
def test_refiltering_an_incomplete_dump_loses_its_missing_pages(tmp_path: Path,
                                                                 level: int) -> None:
    """The pages an incomplete source lost are lost in the re-filtered dump
    too (excluded, counted), not zero pages; the others are byte-equal."""
    src = real_vmcore("6.1-sysrq")
    clean, cut = tmp_path / "clean", tmp_path / "cut"
    with open_dump(src) as source:
        dump(source, clean)
    keep = len(read_kdump(clean).desc_offset) // 2
    view = cut_short(clean, cut, keep)
    assert read_kdump(cut).status & INCOMPLETE
    dumped = view.dumped_pfns
    theirs = libkdumpfile_view(cut)
    assert set(theirs["pages"]) == set(dumped[:keep].tolist())     # libkdumpfile agrees
    assert {p for p, _ in theirs["missing"]} == set(dumped[keep:].tolist())
    out = tmp_path / "refiltered"
    with open_dump(cut) as source:
        result = dump(source, out, options=DumpOptions(codec="zlib", dump_level=level))
    ours = libkdumpfile_view(out)
    assert not ours["missing"]
    assert all(theirs["pages"][p] == h for p, h in ours["pages"].items())
    gone = kdumpfile_read(out, dumped[keep:keep + 2000].tolist())
    assert not gone["pages"] and set(gone["missing"].values()) == {"NoDataException"}
    lost = result.details["unreadable"]
    assert len(ours["pages"]) == result.pages
    if level == 0:          # every page the source holds is selected: exactly
        assert set(ours["pages"]) == set(theirs["pages"])
        assert lost == len(dumped) - keep
        assert result.details["unreadable_ranges"] == merged(dumped[keep:].tolist())
    (meta,) = slimdump_metadata(out)
    assert meta["unreadable_pages"]["count"] == lost


def test_truncated_kdump_source_pages_past_the_end_are_lost(tmp_path: Path) -> None:
    """Cut inside the page data, without the flag: the pages whose data lie
    past the end (by the descriptors, read with struct) are lost."""
    src = real_vmcore("6.1-sysrq")
    clean, cut = tmp_path / "clean", tmp_path / "cut"
    with open_dump(src) as source:
        dump(source, clean)
    view = read_kdump(clean)
    size = clean.stat().st_size // 2
    shutil.copyfile(clean, cut)
    os.truncate(cut, size)
    past = view.dumped_pfns[view.desc_offset + view.desc_size.astype(np.int64) > size]
    out = tmp_path / "refiltered"
    with open_dump(cut) as source:
        result = dump(source, out, options=DumpOptions(codec="zlib", dump_level=0))
    assert result.details["unreadable"] == len(past)
    assert result.details["unreadable_ranges"] == merged(past.tolist())
    ours = libkdumpfile_view(out)
    clean_view = libkdumpfile_view(clean)
    assert set(ours["pages"]) == set(clean_view["pages"]) - set(past.tolist())
    assert all(clean_view["pages"][p] == h for p, h in ours["pages"].items())


# -- the disk fills up --------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path):
    """An 8 MiB tmpfs (root only)."""
    if os.geteuid() != 0:
        require("mounting a tmpfs needs root")
    where = tmp_path / "small"
    where.mkdir()
    res = run("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", where, check=False)
    if res.returncode != 0:
        require(f"cannot mount a tmpfs: {res.stderr.strip()}")
    try:
        yield where
    finally:
        run("umount", where, check=False)


def test_disk_full_without_keep_leaves_nothing(small_disk: Path) -> None:
    with open_dump(real_vmcore("6.1-sysrq")) as source, \
            pytest.raises(OutputError) as err:
        dump(source, small_disk / "dump", options=DumpOptions(codec="zlib", dump_level=0))
    assert err.value.errno == errno.ENOSPC
    assert os.listdir(small_disk) == []


def test_disk_full_keeps_an_incomplete_dump(small_disk: Path, tmp_path: Path) -> None:
    """keep_incomplete: the pages written stay, the header says incomplete
    (makedumpfile's flag), readers take the rest as lost, not zeros."""
    src = real_vmcore("6.1-sysrq")
    with open_dump(src) as source:
        result = dump(source, small_disk / "dump", keep_incomplete=True,
                      options=DumpOptions(codec="zlib", dump_level=0))
    assert result.details["incomplete"] is True
    assert os.listdir(small_disk) == ["dump"]
    # read a copy: libkdumpfile maps the file, and a full tmpfs cannot back
    # a page of its holes (SIGBUS)
    copy = tmp_path / "copy"
    shutil.copyfile(small_disk / "dump", copy)
    view = read_kdump(copy)
    assert view.status & INCOMPLETE
    written = int(np.count_nonzero(view.desc_offset))
    assert written == result.details["pages_written"] == result.pages > 0
    assert not view.desc_offset[written:].any()        # the rest: "page lost"
    pfns = view.dumped_pfns
    some = sorted({*pfns[:written:max(written // 50, 1)].tolist(), int(pfns[written - 1])})
    ours, theirs = kdumpfile_read(copy, some), kdumpfile_read(src, some)
    assert ours["pages"] == theirs["pages"] and len(ours["pages"]) == len(some)
    after = pfns[written:written + 50].tolist()
    asked = kdumpfile_read(copy, after)
    assert not asked["pages"] and len(asked["missing"]) == len(after)
    prog = drgn.Program()
    prog.set_core_dump(str(copy))
    with pytest.raises(drgn.FaultError):
        prog.read(int(pfns[written]) * PAGE, PAGE, True)
    metas = slimdump_metadata(copy)
    if metas:           # the notes fit after the data
        assert metas[0]["incomplete"]["pages_written"] == written


# -- the byte copy ------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "kind"), [(errno.EIO, SourceReadError),
                                            (errno.ENOSPC, OutputError)])
def test_byte_copy_errors_name_their_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          code: int, kind: type[DumpError]) -> None:
    """The complete copy cannot leave a page out: the kernel's copy failing
    under the source (EIO) is a SourceReadError naming the offset, failing
    for room (ENOSPC) an OutputError with its errno; no file is left."""
    from slimdump.writers import copy as copy_module
    from slimdump.writers.elfcopy import write_full_copy

    real = os.copy_file_range
    src = real_vmcore("6.1-sysrq")
    fail_at = 0              # the first call: before any fallback to sendfile

    def copy_file_range(src_fd: int, dst_fd: int, count: int, offset_src: int | None = None,
                        offset_dst: int | None = None) -> int:
        if offset_src is not None and offset_src <= fail_at < offset_src + count:
            raise OSError(code, os.strerror(code))
        return real(src_fd, dst_fd, count, offset_src, offset_dst)

    monkeypatch.setattr(copy_module.os, "copy_file_range", copy_file_range)
    dst = tmp_path / "copy"
    with open_dump(src) as source, pytest.raises(kind) as err:
        write_full_copy(source, str(dst))
    text = str(err.value)
    assert "\n" not in text and os.listdir(tmp_path) == []
    if kind is SourceReadError:
        assert text.startswith(f"{src}: copy failed at offset 0x")
    else:
        assert err.value.errno == errno.ENOSPC and text.startswith(f"{dst}: write failed")
