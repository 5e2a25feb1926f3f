"""Bad input gets one line on stderr naming the file, exit status 1, no
traceback and no output file: hand-made cases, then hypothesis mutating
the headers and notes of real vmcores."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slimdump import cli
from tests import synthcore as sc
from tests.conftest import real_vmcore, slimdump, tool
from tests.mdfbitmap import read_kdump
from tests.oracles import (
    eu_readelf_notes,
    libkdumpfile_view,
    readelf_loads,
    readelf_segment_types,
)


def run_cli(*args: str) -> tuple[int, str]:
    """Run the CLI in-process (fast enough for hypothesis); any exception
    other than a clean exit fails the test."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(list(args))
    return code, err.getvalue()


def assert_clean_failure(code: int, stderr: str, path: Path | str) -> None:
    assert code == 1
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"slimdump: {path}: "), stderr
    assert "Traceback" not in stderr


def check_every_command(path: Path, outdir: Path) -> None:
    """inspect, capture and capture --full on ``path``: each either works or
    fails cleanly, and a failure leaves nothing in ``outdir``."""
    for args in (["inspect", str(path)], ["inspect", "--json", str(path)]):
        code, err = run_cli(*args)
        if code:
            assert_clean_failure(code, err, path)
    for extra in ([], ["--full"]):
        out = outdir / f"out{len(extra)}"
        code, err = run_cli("capture", "--no-progress", *extra, str(path), str(out))
        triage = Path(f"{out}.triage")
        if code:
            assert err.count("\n") == 1 and "Traceback" not in err, err
            assert str(path) in err or str(out) in err, err
            assert not out.exists()
        else:
            assert out.exists()
            assert run_cli("inspect", str(out))[0] == 0
            out.unlink()
        # the triage slimdump, written before a big dump, is whole or absent
        if triage.exists():
            assert run_cli("inspect", str(triage))[0] == 0
            triage.unlink()
    assert list(outdir.iterdir()) == [], "temporary files left behind"


def elf_with(**changes: int) -> bytes:
    """The synthetic sample core with ELF header fields overwritten."""
    data = bytearray(sc.sample_x86_64_core(nocoredump=("PANIC_MCE", "x")))
    offsets = {"e_type": (16, "H"), "e_phoff": (32, "Q"), "e_phentsize": (54, "H"),
               "e_phnum": (56, "H"), "e_shoff": (40, "Q")}
    for field, value in changes.items():
        at, fmt = offsets[field]
        struct.pack_into("<" + fmt, data, at, value)
    return bytes(data)


CASES = {
    "empty": (b"", "file is empty"),
    "text": (b"hello, world\n" * 10, "not a crash dump: unknown format"),
    "elf-magic-only": (b"\x7fELF", "truncated ELF header (4 bytes)"),
    "bad-class": (b"\x7fELF\x03\x01\x01" + bytes(57), "unknown ELF class 3"),
    "short-header": (sc.sample_x86_64_core()[:40], "truncated ELF header"),
    "executable": (elf_with(e_type=2), "ELF file is not a core dump (executable)"),
    "no-phdrs": (elf_with(e_phnum=0), "core file has no program headers"),
    "absurd-phnum": (elf_with(e_phnum=0xFFFE), "program header table (65534 entries"),
    "pn-xnum": (elf_with(e_phnum=0xFFFF), "PN_XNUM"),
    "phentsize": (elf_with(e_phentsize=12), "program header size 12 is wrong"),
    "phoff-past-end": (elf_with(e_phoff=1 << 62), "runs past the end of the file"),
    "kdump": (b"KDUMP   " + bytes(4088), "has no sane block size"),
    "flat": (b"makedumpfile\0\0\0\0" + bytes(100), "flattened"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_files(tmp_path: Path, case: str) -> None:
    data, problem = CASES[case]
    path = tmp_path / case
    path.write_bytes(data)
    outdir = tmp_path / "out"
    outdir.mkdir()
    for args in (["inspect", path], ["capture", path, outdir / "x"],
                 ["capture", "--full", path, outdir / "y"]):
        res = slimdump(*args)
        assert_clean_failure(res.returncode, res.stderr, path)
        assert problem in res.stderr
    assert list(outdir.iterdir()) == []


def test_missing_file_and_directory(tmp_path: Path) -> None:
    res = slimdump("inspect", tmp_path / "nope")
    assert_clean_failure(res.returncode, res.stderr, tmp_path / "nope")
    assert "No such file or directory" in res.stderr
    res = slimdump("capture", tmp_path, tmp_path / "x")
    assert_clean_failure(res.returncode, res.stderr, tmp_path)


def test_unwritable_destination(tmp_path: Path) -> None:
    src = tmp_path / "core"
    src.write_bytes(sc.sample_x86_64_core(nocoredump=("PANIC_MCE", "x")))
    dst = tmp_path / "no-such-dir" / "slim"
    res = slimdump("capture", src, dst)
    assert_clean_failure(res.returncode, res.stderr, dst)


def test_hostile_note_size(tmp_path: Path) -> None:
    """A note whose size runs past its segment: inspect refuses the file in
    one line; capture keeps the notes before it and saves the memory, which
    libkdumpfile reads as it reads the sound core's."""
    good = sc.sample_x86_64_core()
    data = bytearray(good)
    struct.pack_into("<I", data, 4096 + 4, 0xFFFFFFF0)   # first note's descsz
    path, sound = tmp_path / "hostile", tmp_path / "sound"
    path.write_bytes(data)
    sound.write_bytes(good)
    res = slimdump("inspect", path)
    assert_clean_failure(res.returncode, res.stderr, path)
    assert "past the end of its segment" in res.stderr
    res = slimdump("capture", "-d", "0", path, tmp_path / "out")
    assert res.returncode == 0, res.stderr
    assert ("past the end of its segment (0x1388): the notes before it kept, the rest "
            "ignored; the memory is saved") in res.stderr
    got, want = libkdumpfile_view(tmp_path / "out"), libkdumpfile_view(sound)
    assert "error" not in got and got["pages"] == want["pages"]


def test_first_note_damaged_keeps_no_note_of_it(tmp_path: Path) -> None:
    """The first note's size runs past its segment, so no note is sound:
    the dumps hold none of the damaged segment's bytes (elfutils reads the
    ELF dump's note segment without a complaint, and finds it empty: -E
    copies the vmcore's notes, none here), and slimdump reads its own
    output back."""
    data = bytearray(sc.sample_x86_64_core())
    struct.pack_into("<I", data, 4096 + 4, 0xFFFFFFF0)   # first note's descsz
    path = tmp_path / "hostile"
    path.write_bytes(data)
    for fmt in ("-E", "-c"):
        out = tmp_path / f"out{fmt}"
        res = slimdump("capture", "--no-triage", fmt, "-d", "0", path, out)
        assert res.returncode == 0, res.stderr
        assert slimdump("inspect", out).returncode == 0
    res = subprocess.run([tool("eu-readelf"), "-n", tmp_path / "out-E"],
                         capture_output=True, text=True)
    assert res.returncode == 0 and not res.stderr, res.stderr
    assert eu_readelf_notes(tmp_path / "out-E") == []


@pytest.mark.parametrize("cut_bytes", [100, 2 * 4096 + 100])
def test_truncated_inside_data_saves_the_rest(tmp_path: Path, cut_bytes: int) -> None:
    """A core cut inside its last page, or two pages and a bit before its
    end: the pages it holds are saved, the cut ones are missing in the dump
    (libkdumpfile says so), not zeros."""
    data = sc.sample_x86_64_core()
    whole, path = tmp_path / "whole", tmp_path / "cut"
    whole.write_bytes(data)
    path.write_bytes(data[:-cut_bytes])
    res = slimdump("capture", "-d", "0", path, tmp_path / "out")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    got, full = libkdumpfile_view(tmp_path / "out"), libkdumpfile_view(whole)
    assert "error" not in got and "error" not in full, (got, full)
    # the pages whose bytes the cut file no longer holds in full (readelf -l)
    (last,) = [ld for ld in readelf_loads(whole) if ld.offset + ld.filesz == len(data)]
    end = len(data) - cut_bytes                       # file offset where the cut is
    cut = set(range((last.paddr + end - last.offset) // 4096,
                    -(-(last.paddr + last.filesz) // 4096)))
    assert len(cut) == -(-cut_bytes // 4096)
    assert f"{len(cut)} page(s) could not be read from {path}" in res.stderr
    assert cut <= set(full["pages"]) and not cut & set(got["pages"])    # not in the pagemap
    assert got["pages"] == {pfn: h for pfn, h in full["pages"].items() if pfn not in cut}


def test_headers_claiming_a_terabyte_past_the_end(tmp_path: Path) -> None:
    """A real vmcore cut to its headers, one PT_LOAD grown to 1 TiB: none
    of the 2^28 pages it claims is in the file.  The complete dump asked
    for (the kernel's note says machine check; --full) is saved in seconds,
    not after trying 2^28 reads one by one, every page the program headers
    (readelf) place in memory counted lost, none written."""
    src = tmp_path / "headers"
    src.write_bytes(header_region("6.1-mce", tmp_path))
    data = bytearray(src.read_bytes())
    ram = max(readelf_loads(src), key=lambda ld: ld.memsz)
    index = readelf_loads(src).index(ram) + 1                  # the PT_NOTE is first
    struct.pack_into("<QQ", data, 64 + 56 * index + 32, 1 << 40, 1 << 40)
    src.write_bytes(data)
    loads = readelf_loads(src)
    big = next(ld for ld in loads if ld.memsz == 1 << 40)
    lo, hi = big.paddr // 4096, -(-(big.paddr + big.memsz) // 4096)
    small = {pfn for ld in loads if ld is not big
             for pfn in range(ld.paddr // 4096, -(-(ld.paddr + ld.memsz) // 4096))
             if not lo <= pfn < hi}
    out = tmp_path / "out"
    # page by page this takes an hour: 60 s is a failure, not a slow machine
    res = subprocess.run([sys.executable, "-m", "slimdump", "capture", "--full",
                          "--no-progress", src, out], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    lost = len(small) + hi - lo
    assert f"{lost} page(s) could not be read from {src}" in res.stderr
    res = slimdump("inspect", "--json", out)
    assert json.loads(res.stdout)["slimdump"]["unreadable_pages"]["count"] == lost


def test_memory_only_declared_where_the_kernel_has_none(tmp_path: Path) -> None:
    """A real vmcore whose highest PT_LOAD declares 128 TiB it does not hold
    (p_memsz raised, p_filesz kept: zeros by ELF's rule, 2^35 pages).  The
    crashed kernel has no memory section there, so it is no memory: the
    dump's map ends where makedumpfile 1.7.2 ends it on the same file (the
    kernel's last present section), the pages saved with data are those
    saved from the unchanged vmcore (by an independent reader), a warning gives the
    bytes left out (from readelf and makedumpfile), and it takes seconds,
    not a walk of 2^35 pages (found by scripts/fuzz.py, seed 13, case 6222)."""
    src = tmp_path / "declared"
    shutil.copyfile(real_vmcore("6.1-sysrq"), src)
    loads = readelf_loads(src)
    top = max(loads, key=lambda ld: ld.paddr + ld.memsz)
    index = [i for i, t in enumerate(readelf_segment_types(src)) if t == "LOAD"][
        loads.index(top)]
    memsz = 1 << 47
    with src.open("r+b") as f:
        f.seek(64 + 56 * index + 40)                                 # p_memsz
        f.write(struct.pack("<Q", memsz))
    assert readelf_loads(src)[loads.index(top)].memsz == memsz
    mdf = tmp_path / "mdf"
    subprocess.run([tool("makedumpfile"), "--message-level", "0", "-l", "-d", "31", src, mdf],
                   check=True, timeout=600)
    end = read_kdump(mdf).max_mapnr
    assert top.paddr + top.filesz <= end * 4096 < top.paddr + memsz
    out, base = tmp_path / "out", tmp_path / "base"
    # page by page this takes hours: 60 s is a failure, not a slow machine
    res = subprocess.run([sys.executable, "-m", "slimdump", "capture", "--no-progress", "-l",
                          "-d", "31", src, out], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert f"declare {top.paddr + memsz - end * 4096:,} bytes they do not hold" in res.stderr
    res = slimdump("capture", "--no-progress", "-l", "-d", "31", real_vmcore("6.1-sysrq"), base)
    assert res.returncode == 0, res.stderr
    got, want = read_kdump(out), read_kdump(base)
    assert got.max_mapnr == end >= want.max_mapnr
    # past the unchanged map only zero pages (declared memory reads as zeros)
    kept = got.kept_with_content
    assert (kept[:want.max_mapnr] == want.kept_with_content).all()
    assert not kept[want.max_mapnr:].any()


# -- property-based: mutate the headers and notes of real vmcores ---------------------

def header_region(name: str, marked_dir: Path) -> bytes:
    """Headers and notes of a real vmcore marked with a reason (so that the
    slimdump path runs too), cut before the first PT_LOAD's data."""
    src = real_vmcore(name)
    marked = marked_dir / f"{name}.marked"
    if not marked.exists():
        res = slimdump("mark", src, marked, "--reason", "PANIC_MCE", "--message", "m")
        assert res.returncode == 0, res.stderr
    first = min(ld.offset for ld in readelf_loads(marked))
    with marked.open("rb") as f:
        return f.read(first)


@pytest.fixture(scope="module", params=["6.1-mce", "6.12-mce"])
def real_headers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    return header_region(request.param, tmp_path_factory.mktemp("marked"))


@st.composite
def mutations(draw: st.DrawFn, size: int) -> list[tuple[int, bytes]]:
    """Overwrites concentrated where parsers look: the ELF header, program
    headers and note headers; also 32- and 64-bit extreme values."""
    hot = st.one_of(st.integers(0, 63), st.integers(64, 64 + 56 * 5),
                    st.integers(0x1000, 0x1000 + 64), st.integers(0, size - 1))
    value = st.one_of(st.binary(min_size=1, max_size=8),
                      st.sampled_from([b"\xff" * 4, b"\xff" * 8, b"\0" * 4, b"\0" * 8,
                                       b"\xf0\xff\xff\x7f", b"\x00\x10\x00\x00"]))
    return draw(st.lists(st.tuples(hot, value), min_size=1, max_size=6))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_real_headers(real_headers: bytes, data: st.DataObject) -> None:
    blob = bytearray(real_headers)
    for at, value in data.draw(mutations(len(blob))):
        blob[at:at + len(value)] = value
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(blob))))
    if cut is not None:
        del blob[cut:]
    work = Path(tempfile.mkdtemp(prefix="slimdump-fuzz-"))
    try:
        path = work / "vmcore"
        path.write_bytes(bytes(blob))
        outdir = work / "out"
        outdir.mkdir()
        check_every_command(path, outdir)
    finally:
        shutil.rmtree(work)
    assert not os.path.exists(work)


def test_memory_map_beyond_physical_address_space(tmp_path: Path) -> None:
    """A PT_LOAD above 2^52 (no machine has such addresses): no page bitmap
    of a petabyte is walked; that segment is left out with a warning, the
    memory below it saved in every format."""
    path = tmp_path / "vmcore"
    low = bytes(range(256)) * 16
    path.write_bytes(sc.build_core(
        [sc.Note(b"CORE", sc.NT_PRSTATUS, sc.prstatus_x86_64(1, sc.sample_regs_x86_64(0)))],
        [sc.Load(0x100000, 0xFFFF888000100000, low),
         sc.Load(1 << 53, 0xFFFF888000200000, bytes(4096))]))
    warning = (f"a PT_LOAD at physical {1 << 53:#x} (4096 bytes) lies beyond a 52-bit "
               "physical address space: left out of the dump")
    source_pages = libkdumpfile_view(path)["pages"]
    assert 0x100 in source_pages
    for options, name in (([], "x"), (["-E"], "x.elf"), (["-F"], "x.flat")):
        res = slimdump("capture", "-d", "0", *options, path, tmp_path / name)
        assert res.returncode == 0, res.stderr
        assert warning in res.stderr and "Traceback" not in res.stderr
    assert [ld.paddr for ld in readelf_loads(tmp_path / "x.elf")] == [0x100000]
    with (tmp_path / "x.flat").open("rb") as flat:
        subprocess.run([tool("makedumpfile"), "-R", str(tmp_path / "x.kdump")], stdin=flat,
                       check=True, capture_output=True)
    for name in ("x", "x.elf", "x.kdump"):
        assert libkdumpfile_view(tmp_path / name)["pages"] == {0x100: source_pages[0x100]}
