"""Reading the source through mmap() windows (issue 14).

slimdump copies page data and struct pages out of mmap() windows of the
source, as makedumpfile does by default, and reads with pread() under
``--non-mmap``.  The two modes must write the same bytes, and a fault under
a mapping (SIGBUS: here the saved vmcore is cut short while a window of it
is mapped) must cost the pages it hits, not the process.  Outcomes are read
back by makedumpfile 1.7.2 (the pages a -d 30 dump keeps), readelf (where
a page lies in the file), the independent kdump parser tests/mdfbitmap.py,
libkdumpfile and the source itself.
"""

from __future__ import annotations

import filecmp
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slimdump.filtered import select_pages, write_dump
from slimdump.sources import open_dump
from slimdump.sources.mapping import WINDOW
from slimdump.writers.options import DumpOptions
from tests.conftest import real_vmcore, run, slimdump, tool
from tests.mdfbitmap import read_kdump
from tests.oracles import held_page, readelf_loads
from tests.test_read_errors import kdumpfile_read, merged, slimdump_metadata

PAGE = 4096


@pytest.mark.parametrize("opts", [["-l", "-d", "31"], ["-c", "-d", "0"], ["-E", "-d", "31"],
                                  ["-F", "-z", "-d", "1"]])
def test_both_read_modes_write_the_same_file(tmp_path: Path, opts: list[str]) -> None:
    src = real_vmcore("6.1-sysrq")
    outs = []
    for mode in ([], ["--non-mmap"]):
        out = tmp_path / f"out{len(outs)}"
        slimdump("capture", "--no-progress", "--no-triage", *mode, *opts, src, out)
        outs.append(out)
    assert filecmp.cmp(*outs, shallow=False)


def test_makedumpfile_command_line_non_mmap(tmp_path: Path) -> None:
    """``makedumpfile --non-mmap`` (kdump-tools' MAKEDUMP_ARGS may carry it)
    takes effect, without the note of a knob that does not, and writes the
    same file."""
    src = real_vmcore("6.1-sysrq")
    ours = Path(sys.executable).with_name("slimdump-makedumpfile")
    outs = []
    for mode in ([], ["--non-mmap"]):
        out = tmp_path / f"out{len(outs)}"
        done = run(ours, *mode, "--message-level", "7", "-l", "-d", "31", src, out)
        assert "no effect" not in done.stderr, done.stderr
        outs.append(out)
    assert filecmp.cmp(*outs, shallow=False)


def test_default_reads_through_windows_and_non_mmap_does_not(tmp_path: Path) -> None:
    """The same pages come through the mapping by default, through
    pread() with ``use_mmap=False``, and the two counts agree."""
    src = real_vmcore("6.1-sysrq")
    counts = []
    for use_mmap in (True, False):
        with open_dump(src, use_mmap=use_mmap) as source:
            selection = select_pages(source, 31)
            try:
                write_dump(source, str(tmp_path / f"d{use_mmap}"),
                           DumpOptions(codec="lzo", dump_level=31), selection)
            finally:
                selection.close()
            mapped = source.raw.mapped
            if use_mmap:
                assert mapped is not None and mapped.maps >= 1
            else:
                assert mapped is None
            counts.append(source.bytes_read)
    assert counts[0] == counts[1]


# the capture, with the source cut short at CUT the first time a window of
# the file holding CUT is in use once page data are being written
CUT_WHILE_MAPPED = """
import os, sys
from slimdump import cli
from slimdump.sources import mapping, rawfile
from slimdump.writers import kdump

cut, path = int(sys.argv[1]), sys.argv[2]
state = {"armed": False, "cut": False, "sigbus": 0}
window, write, copy = (mapping.MappedWindows._window, kdump.KdumpWriter.write,
                       rawfile.RawFile._copy_mapped)

def armed_write(self, *args, **kwargs):
    state["armed"] = True
    return write(self, *args, **kwargs)

def cutting_window(self, offset):
    got = window(self, offset)
    if state["armed"] and not state["cut"] and got and got[0] <= cut < got[0] + len(got[1]):
        os.truncate(path, cut)
        state["cut"] = True
    return got

def counted_copy(self, buf, offset):
    try:
        return copy(self, buf, offset)
    except OSError as exc:
        state["sigbus"] += "SIGBUS" in str(exc)
        raise

mapping.MappedWindows._window = cutting_window
kdump.KdumpWriter.write = armed_write
rawfile.RawFile._copy_mapped = counted_copy
status = cli.main(sys.argv[3:])
print(f"cut={state['cut']} sigbus={state['sigbus']}", file=sys.stderr)
sys.exit(status)
"""


def file_range(loads: list, pfn: int) -> tuple[int, int]:
    """[first, end) of the file bytes of page ``pfn``, in the first PT_LOAD
    in header order that holds it (the kernel image's PT_LOAD holds pages
    of RAM a second time: readers take the first)."""
    ld = next(ld for ld in loads if ld.paddr <= pfn * PAGE < ld.paddr + ld.filesz)
    at = ld.offset + pfn * PAGE - ld.paddr
    return at, at + min(PAGE, ld.paddr + ld.filesz - pfn * PAGE)


def test_source_cut_short_while_mapped_loses_its_pages_not_the_process(
        tmp_path: Path) -> None:
    """The saved vmcore is truncated in the middle of a kept page while the
    window holding that page is mapped: the copy from the mapping takes a
    SIGBUS, the pages past the cut are read again with pread(), fail and are
    left out; everything before the cut is in the dump, equal to the source."""
    real = real_vmcore("6.1-sysrq")
    src = tmp_path / "vmcore"
    shutil.copyfile(real, src)
    loads = readelf_loads(src)
    # the pages makedumpfile keeps at -d 30 (zero pages kept: each kept page
    # is read by the writer)
    mdf = tmp_path / "mdf"
    run(tool("makedumpfile"), "--message-level", "0", "-l", "-d", "30", src, mdf)
    kept = read_kdump(mdf).bitmap2
    pfns = np.flatnonzero(kept)
    # cut 100 bytes into a kept page, 80% of the way through the kept pages,
    # in the middle of a window (so that the window is mapped before the cut)
    victim = next(int(p) for p in pfns[int(len(pfns) * 0.8):]
                  if file_range(loads, int(p))[0] % WINDOW >= WINDOW // 2)
    cut = file_range(loads, victim)[0] + 100
    expect_lost = [int(p) for p in pfns if file_range(loads, int(p))[1] > cut]
    assert expect_lost[0] == victim

    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", CUT_WHILE_MAPPED, str(cut), str(src), "capture",
         "--no-progress", "--no-triage", "--num-threads", "1", "-l", "-d", "30", str(src),
         str(out)], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr
    assert os.path.getsize(src) == cut
    assert "cut=True" in proc.stderr and "sigbus=0" not in proc.stderr, proc.stderr
    assert f"{len(expect_lost)} page(s) could not be read" in proc.stderr, proc.stderr

    # the dump holds makedumpfile's pages but the lost ones (pages a PT_LOAD
    # holds only in part aside: makedumpfile drops a trailing one, slimdump
    # keeps it; README, "makedumpfile and slimdump")
    whole = np.zeros(len(kept), dtype=bool)
    for ld in loads:
        whole[-(-ld.paddr // PAGE):(ld.paddr + ld.filesz) // PAGE] = True
    dumped = read_kdump(out).bitmap2
    assert np.array_equal(np.flatnonzero(dumped & whole),
                          np.setdiff1d(np.flatnonzero(kept & whole), expect_lost))
    (meta,) = slimdump_metadata(out)
    assert meta["unreadable_pages"] == {"count": len(expect_lost),
                                        "ranges": merged(expect_lost)}
    # pages before the cut, near it and spread out, read back by libkdumpfile
    # equal to the untouched source; pages after it are missing there
    before = [int(p) for p in pfns if p < victim]
    sample = before[-8:] + before[::max(len(before) // 24, 1)] + expect_lost[:4]
    read = kdumpfile_read(out, sample)
    for pfn in sample[:-4]:
        assert read["pages"][pfn] == held_page_hash(real, pfn), pfn
    assert set(read["missing"]) == set(expect_lost[:4])


def held_page_hash(path: Path, pfn: int) -> str:
    """The hash tests/kdumpfile_oracle.py gives a page, of the page the
    vmcore holds."""
    return hashlib.blake2b(held_page(path, pfn), digest_size=16).hexdigest()
