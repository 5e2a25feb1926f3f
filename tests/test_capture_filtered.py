"""``slimdump capture`` for software crashes: the filtered dump, in every
format, read back by drgn, makedumpfile and crash; pfn for pfn the same
selection as makedumpfile 1.7.2; bounded memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import (
    real_vmcore,
    require_module,
    require_native,
    run,
    slimdump,
    tool,
    vmcore_facts,
)
from tests.mdfbitmap import read_kdump
from tests.oracles import partial_tail_pfns

drgn = require_module("drgn")
PAGE = 4096


def sample_pfns(bitmap: np.ndarray, count: int = 200) -> np.ndarray:
    pfns = np.flatnonzero(bitmap)
    return pfns[np.linspace(0, len(pfns) - 1, count).astype(int)]


def assert_pages_match(dump: Path, source: Path, kept: np.ndarray,
                       excluded: np.ndarray | None = None) -> None:
    """drgn reads the kept pages of ``dump`` equal to ``source``'s, and
    fails on the excluded ones."""
    a, b = drgn.Program(), drgn.Program()
    a.set_core_dump(str(dump))
    b.set_core_dump(str(source))
    for pfn in sample_pfns(kept):
        assert a.read(int(pfn) * PAGE, PAGE, True) == b.read(int(pfn) * PAGE, PAGE, True), pfn
    if excluded is not None and excluded.any():
        for pfn in sample_pfns(excluded, 20):
            with pytest.raises(drgn.FaultError):
                a.read(int(pfn) * PAGE, PAGE, True)


@pytest.fixture(scope="module")
def mdf_l31(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("mdf") / "l31"
    run(tool("makedumpfile"), "--message-level", "0", "-l", "-d", "31",
        real_vmcore("6.1-sysrq"), out)
    return read_kdump(out)


@pytest.mark.parametrize("letter", ["-c", "-l", "-p", "-z", None])
def test_kdump_compressed(letter: str | None, tmp_path: Path, mdf_l31) -> None:
    src = real_vmcore("6.1-sysrq")
    out = tmp_path / "dump"
    res = slimdump("capture", *([letter] if letter else []), src, out)
    assert res.returncode == 0, res.stderr
    assert out.read_bytes()[:8] == b"KDUMP   "
    ours = read_kdump(out)
    # the same pages as makedumpfile -d 31, zero pages included (kdump format),
    # and the pages where a PT_LOAD ends mid-page, which makedumpfile drops
    # (README, "Oracles"); here they are all zeros, so no content differs
    tails = np.zeros(len(ours.bitmap1), dtype=bool)
    tails[partial_tail_pfns(src)] = True
    assert tails.any() and not (mdf_l31.bitmap1 & tails).any()
    assert np.array_equal(ours.bitmap1, mdf_l31.bitmap1 | tails)
    assert np.array_equal(ours.bitmap2, mdf_l31.bitmap2 | tails)
    assert np.array_equal(ours.kept_with_content, mdf_l31.kept_with_content)
    assert_pages_match(out, src, ours.kept_with_content, ours.bitmap1 & ~ours.bitmap2)
    assert out.stat().st_mode & 0o777 == 0o600


def test_readers_of_our_kdump_file(tmp_path: Path) -> None:
    src = real_vmcore("6.1-sysrq")
    out = tmp_path / "dump"
    assert slimdump("capture", "-c", src, out).returncode == 0
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    run(tool("makedumpfile"), "--dump-dmesg", out, a)
    run(tool("makedumpfile"), "--dump-dmesg", src, b)
    assert a.read_bytes() == b.read_bytes()
    res = run(tool("crash"), "--osrelease", out)
    assert res.stdout.strip() == vmcore_facts("6.1-sysrq")["kernel_release"]
    # and slimdump reads its own output: dmesg and inspect
    ours = slimdump("dmesg", out)
    assert ours.stdout.encode() == b.read_bytes()
    assert slimdump("inspect", out).returncode == 0


def test_flattened_to_stdout_and_reassemble(tmp_path: Path) -> None:
    src = real_vmcore("6.1-sysrq")
    flat, direct = tmp_path / "flat", tmp_path / "direct"
    with flat.open("wb") as f:
        res = subprocess.run([sys.executable, "-m", "slimdump", "capture", "-F", "-l",
                              str(src)], stdout=f, stderr=subprocess.PIPE, text=False)
    assert res.returncode == 0, res.stderr
    assert flat.read_bytes()[:12] == b"makedumpfile"
    assert slimdump("capture", "-l", src, direct).returncode == 0
    rebuilt = tmp_path / "rebuilt"
    res = slimdump("reassemble", "--input", flat, rebuilt)
    assert res.returncode == 0, res.stderr
    assert rebuilt.read_bytes() == direct.read_bytes()
    # makedumpfile -R agrees
    mdf = tmp_path / "mdf"
    with flat.open("rb") as f:
        subprocess.run([tool("makedumpfile"), "-R", str(mdf)], stdin=f, check=True,
                       capture_output=True)
    assert mdf.read_bytes() == direct.read_bytes()


def test_elf_filtered(tmp_path: Path) -> None:
    src = real_vmcore("6.1-sysrq")
    out, mdf = tmp_path / "elf", tmp_path / "mdf"
    res = slimdump("capture", "-E", src, out)
    assert res.returncode == 0, res.stderr
    run(tool("makedumpfile"), "--message-level", "0", "-E", "-d", "31", src, mdf)
    assert out.read_bytes() == mdf.read_bytes()
    kdump = tmp_path / "k"
    assert slimdump("capture", src, kdump).returncode == 0
    assert_pages_match(out, src, read_kdump(kdump).kept_with_content)


def test_refilter_a_saved_dump(tmp_path: Path) -> None:
    """A kdump file saved at -d 1 re-filtered at -d 31 keeps what -d 31 keeps."""
    src = real_vmcore("6.1-sysrq")
    first, second, direct = tmp_path / "d1", tmp_path / "d31", tmp_path / "direct"
    assert slimdump("capture", "-l", "-d", "1", src, first).returncode == 0
    res = slimdump("capture", "-l", "-d", "31", first, second)
    assert res.returncode == 0, res.stderr
    assert slimdump("capture", "-l", "-d", "31", src, direct).returncode == 0
    assert np.array_equal(read_kdump(second).kept_with_content,
                          read_kdump(direct).kept_with_content)
    # and the other way: a -d 31 dump re-filtered at -d 1 (or taken --full)
    # keeps its level, as makedumpfile ORs the old dump level into the new
    for args in (["-d", "1"], ["--full"]):
        again = tmp_path / f"again{len(args[0])}"
        res = slimdump("capture", "-l", *args, direct, again)
        assert res.returncode == 0, res.stderr
        assert read_kdump(again).dump_level == 31
        assert np.array_equal(read_kdump(again).bitmap2, read_kdump(direct).bitmap2)


MEASURE = """
import resource, subprocess, sys
subprocess.run([sys.executable, "-m", "slimdump", *sys.argv[1:]], check=True,
               stderr=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


@pytest.mark.parametrize("args", [["-c", "-d", "0"], ["-l", "-d", "31"]])
def test_peak_memory_bounded(tmp_path: Path, args: list[str]) -> None:
    """The largest resident set of capture and its compressing workers,
    measured by a fresh parent that runs nothing else."""
    src = real_vmcore("6.1-sysrq")
    out = subprocess.run([sys.executable, "-c", MEASURE, "capture", *args, str(src),
                          str(tmp_path / "dump")], capture_output=True, text=True, check=True)
    peak_mib = int(out.stdout) / 1024
    print(f"peak RSS of capture {' '.join(args)}: {peak_mib:.1f} MiB")
    assert peak_mib < 128


def test_huge_sparse_memory_map(tmp_path: Path) -> None:
    """A memory map reaching 8 TiB (4 MiB at 1 MiB, 4 MiB at 8 TiB) means
    256 MiB bitmaps in every format: capture stays under 128 MiB resident,
    keeps the kdump file's bitmap holes sparse, re-filters and inspects the
    saved file under 128 MiB too, and drgn (libkdumpfile) reads both ends of
    memory from each output as from the source."""
    from tests.synthcore import (
        NT_PRSTATUS,
        Load,
        Note,
        build_core,
        prstatus_x86_64,
        sample_regs_x86_64,
        tagged_bytes,
        vmcoreinfo,
    )

    high = 8 << 40
    low_data, high_data = tagged_bytes(b"LOW_", 0x100000, 4 << 20), tagged_bytes(b"HIGH", high,
                                                                                4 << 20)
    # init_uts_ns in the kernel image (phys_base 0), so the kdump header gets a
    # full utsname: libkdumpfile ignores one without a version string
    uts = b"".join(f.ljust(65, b"\0") for f in (b"Linux", b"test", b"6.1.0-test",
                                                 b"#1 SMP synthetic", b"x86_64", b"(none)"))
    low_data = low_data[:0x2004] + uts + low_data[0x2004 + len(uts):]
    core = tmp_path / "vmcore"
    core.write_bytes(build_core(
        [Note(b"CORE", NT_PRSTATUS, prstatus_x86_64(1, sample_regs_x86_64(0))),
         Note(b"VMCOREINFO", 0, vmcoreinfo({"OSRELEASE": "6.1.0-test", "PAGESIZE": "4096",
                                            "SYMBOL(swapper_pg_dir)": "ffffffff82a0a000",
                                            "SYMBOL(_stext)": "ffffffff81000000",
                                            "NUMBER(phys_base)": "0", "KERNELOFFSET": "0",
                                            "SYMBOL(init_uts_ns)": "ffffffff80102000",
                                            "OFFSET(uts_namespace.name)": "4"}))],
        [Load(0x100000, 0xFFFF888000100000, low_data),
         Load(high, (0xFFFF888000000000 + high) & ((1 << 64) - 1), high_data)]))
    flat = tmp_path / "dump.flat"
    for args, out in ((["-l"], tmp_path / "dump.l"), (["-E"], tmp_path / "dump.elf"),
                      (["-F", "-c"], flat)):
        res = subprocess.run([sys.executable, "-c", MEASURE, "capture", *args, str(core),
                              str(out)], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        peak_mib = int(res.stdout) / 1024
        print(f"peak RSS of capture {' '.join(args)} over 8 TiB: {peak_mib:.1f} MiB")
        assert peak_mib < 128
    kdump = tmp_path / "dump.l"
    # the saved dump, re-filtered and inspected: its bitmaps are read, not loaded
    for args in (["capture", "-c", str(kdump), str(tmp_path / "again")],
                 ["inspect", str(kdump)]):
        res = subprocess.run([sys.executable, "-c", MEASURE, *args], capture_output=True,
                             text=True)
        assert res.returncode == 0, res.stderr
        assert int(res.stdout.split()[-1]) / 1024 < 128, args
    assert kdump.stat().st_size > 2 * (256 << 20)            # both bitmaps, in full size
    assert kdump.stat().st_blocks * 512 < 64 << 20            # but holes on disk
    assert slimdump("reassemble", "--input", flat, tmp_path / "dump.r").returncode == 0
    for dump in (kdump, tmp_path / "dump.elf", tmp_path / "dump.r", tmp_path / "again"):
        prog = drgn.Program()
        prog.set_core_dump(str(dump))
        for addr, data in ((0x100000, low_data), (high, high_data)):
            for offset in (0, 0x1000, len(data) - 0x1000):
                assert prog.read(addr + offset, 0x1000, True) == data[offset:offset + 0x1000]


def test_num_threads(tmp_path: Path) -> None:
    """makedumpfile's --num-threads: one thread or several, the same file;
    a count that is not a positive number is refused in one line."""
    src = real_vmcore("6.1-sysrq")
    one, many = tmp_path / "one", tmp_path / "many"
    assert slimdump("capture", "-c", "--num-threads", "1", src, one).returncode == 0
    assert slimdump("capture", "-c", "--num-threads", "3", src, many).returncode == 0
    assert one.read_bytes() == many.read_bytes()
    res = slimdump("capture", "-c", "--num-threads", "0", src, tmp_path / "zero")
    assert res.returncode != 0 and "thread count 0 is not in 1-256" in res.stderr
    assert not (tmp_path / "zero").exists()


LEAN_CAPTURE = """
import sys
from slimdump.cli import main
code = main(sys.argv[1:])
heavy = ("numpy", "dataclasses", "inspect", "concurrent.futures", "tempfile",
         "slimdump.triage.mce", "slimdump.triage.ghes")
print(" ".join(m for m in heavy if m in sys.modules) or "-")
sys.exit(code)
"""


@pytest.mark.parametrize("options", [["-l", "-d", "31"], ["-c", "-d", "0"], ["-E", "-d", "31"],
                                     ["-z", "-d", "31"]])
def test_capture_imports_stay_lean(tmp_path: Path, options: list[str], mdf_l31) -> None:
    """A capture starts as fast as makedumpfile only if it loads no more than
    it needs: no numpy (the pages are classified in C), no dataclasses or
    inspect (slimdump.record), no concurrent.futures (slimdump.threadpool),
    no tempfile, and for this software crash no machine-check or GHES parser
    (slimdump.triage.classify imports them for their panics).  The file is
    still makedumpfile's: the same pages as makedumpfile keeps (-d 31) or
    holds (-d 0) where the format has a 2nd bitmap."""
    from slimdump.kernel.dump_level import NATIVE

    require_native(NATIVE, "slimdump.kernel._pageclass")
    src = real_vmcore("6.1-sysrq")
    lean = tmp_path / "lean"
    res = subprocess.run([sys.executable, "-c", LEAN_CAPTURE, "capture", "--no-progress",
                          *options, str(src), str(lean)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["-"]
    if options[0] != "-E":
        ours = read_kdump(lean)
        tails = np.zeros(len(ours.bitmap2), dtype=bool)
        tails[partial_tail_pfns(src, PAGE)] = True
        theirs = mdf_l31.bitmap2 if options[-1] == "31" else mdf_l31.bitmap1
        assert np.array_equal(ours.bitmap2, theirs | tails)
