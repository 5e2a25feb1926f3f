"""Never lose a dump: the triage slimdump first, leftovers of earlier runs,
and a full disk for real (a small tmpfs: the kernel's own ENOSPC).

What each test holds capture to, with readers that are not slimdump's:
eu-readelf for the triage slimdump's notes, the crashed kernel's serial
console (the fixture's console log, captured by the lab) for its log,
libkdumpfile and makedumpfile 1.7.2 for the dumps, the kdump header's
bytes as kdump-formats.md §2.2/2.3 lay them out for dump level and status.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import real_vmcore, require, run, slimdump, tool
from tests.oracles import eu_readelf_notes, libkdumpfile_view, partial_tail_pfns

SLIMDUMP_META, SLIMDUMP_LOG = "<unknown>: 1397489665", "<unknown>: 1397489666"
DUMP_DH_COMPRESSED_INCOMPLETE = 0x8


def kdump_header(path: Path) -> dict[str, int]:
    """status, block_size (disk_dump_header, x86_64 offsets 424 and 428) and
    the sub-header's dump_level (block_size + 8): kdump-formats.md §2.2-2.3."""
    with path.open("rb") as f:
        head = f.read(432)
        assert head[:8] == b"KDUMP   ", head[:8]
        status, block_size = struct.unpack_from("<Ii", head, 424)
        f.seek(block_size + 8)
        (dump_level,) = struct.unpack("<i", f.read(4))
    return {"status": status, "block_size": block_size, "dump_level": dump_level}


def panic_line(name: str) -> str:
    """The panic line as the crashed kernel printed it on its serial console."""
    console = Path(f"{real_vmcore(name)}.console.log").read_text(errors="replace")
    lines = [line for line in console.splitlines() if "Kernel panic - not syncing:" in line]
    assert lines, "no panic line on the fixture's console"
    return lines[0].split("Kernel panic - not syncing:", 1)[1].strip()


def check_triage(path: Path, name: str) -> None:
    """A triage slimdump: an ELF core of notes (eu-readelf), with VMCOREINFO,
    SLIMDUMP metadata and log notes; the log holds the console's panic line;
    slimdump inspect reads it."""
    assert path.stat().st_mode & 0o777 == 0o600
    notes = eu_readelf_notes(path)
    owners = [(n.owner, n.type) for n in notes]
    assert ("VMCOREINFO", "<unknown>: 0") in owners, owners
    assert ("SLIMDUMP", SLIMDUMP_META) in owners and ("SLIMDUMP", SLIMDUMP_LOG) in owners, owners
    assert panic_line(name).encode() in path.read_bytes()
    assert slimdump("inspect", path).returncode == 0


def capture(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    res = slimdump("capture", "--no-progress", *args)
    assert "Traceback" not in res.stderr, res.stderr
    return res


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# -- the triage slimdump ----------------------------------------------------------------

def test_triage_written_beside_the_dump(tmp_path: Path) -> None:
    src = real_vmcore("6.1-sysrq")
    res = capture("-c", "-d", "31", src, tmp_path / "dump")
    assert res.returncode == 0, res.stderr
    assert listing(tmp_path) == ["dump", "dump.triage"]
    check_triage(tmp_path / "dump.triage", "6.1-sysrq")
    assert f"wrote the triage slimdump (reason, log, metadata) to {tmp_path}/dump.triage" \
        in res.stderr
    assert kdump_header(tmp_path / "dump")["dump_level"] == 31
    # its log is the crashed kernel's, as makedumpfile 1.7.2 prints it from the vmcore
    run(tool("makedumpfile"), "--dump-dmesg", src, tmp_path / "mdf.txt")
    log = slimdump("dmesg", tmp_path / "dump.triage")
    assert log.returncode == 0, log.stderr
    assert log.stdout == (tmp_path / "mdf.txt").read_text()


def test_triage_name_for_a_service_temporary_name(tmp_path: Path) -> None:
    """kdump-tools writes dump-incomplete and renames it: the triage is dump.triage."""
    res = capture("-c", real_vmcore("6.1-sysrq"), tmp_path / "dump-incomplete")
    assert res.returncode == 0, res.stderr
    assert listing(tmp_path) == ["dump-incomplete", "dump.triage"]


def test_no_triage_and_triage_file(tmp_path: Path) -> None:
    src = real_vmcore("6.1-sysrq")
    assert capture("--no-triage", "-c", src, tmp_path / "a").returncode == 0
    assert listing(tmp_path) == ["a"]
    # -F to standard output: none unless --triage FILE says where
    with (tmp_path / "stream").open("wb") as out:
        res = subprocess.run([sys.executable, "-m", "slimdump", "capture", "-F", "--no-progress",
                              "--triage", str(tmp_path / "t.slim"), str(src)],
                             stdout=out, stderr=subprocess.PIPE, text=True)
    assert res.returncode == 0, res.stderr
    check_triage(tmp_path / "t.slim", "6.1-sysrq")


def test_no_triage_for_a_slimdump(tmp_path: Path) -> None:
    """A machine check is saved as a slimdump: nothing bigger to protect."""
    res = capture(real_vmcore("6.1-mce"), tmp_path / "slim")
    assert res.returncode == 0, res.stderr
    assert listing(tmp_path) == ["slim"]


def test_leftovers_of_an_earlier_attempt_are_replaced(tmp_path: Path) -> None:
    """DST.dmesg.txt and DST.triage from an attempt that died: replaced, not
    a reason to stop; a stale .part nobody holds is removed, one that a live
    process holds locked is left alone."""
    for name in ("dump.dmesg.txt", "dump.triage"):
        (tmp_path / name).write_text("left over\n")
    stale, held = tmp_path / ".dump.0badc0de.part", tmp_path / ".dump.12345678.part"
    stale.write_bytes(b"x" * 4096)
    held.write_bytes(b"y")
    with held.open("rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)     # as a capture that is still writing holds it
        res = capture("-c", "--dump-dmesg", real_vmcore("6.1-sysrq"), tmp_path / "dump")
    assert res.returncode == 0, res.stderr
    assert "removed 1 temporary file(s) a killed run left: .dump.0badc0de.part" in res.stderr
    assert listing(tmp_path) == [".dump.12345678.part", "dump", "dump.dmesg.txt",
                                 "dump.triage"]
    vmcore_dmesg = run(tool("vmcore-dmesg"), real_vmcore("6.1-sysrq")).stdout
    assert panic_line("6.1-sysrq") in vmcore_dmesg
    assert panic_line("6.1-sysrq") in (tmp_path / "dump.dmesg.txt").read_text()
    check_triage(tmp_path / "dump.triage", "6.1-sysrq")


def test_existing_dump_refused_before_anything_is_written(tmp_path: Path) -> None:
    (tmp_path / "dump").write_text("mine\n")
    res = capture("-c", real_vmcore("6.1-sysrq"), tmp_path / "dump")
    assert res.returncode == 1
    assert res.stderr.strip() == f"slimdump: {tmp_path}/dump: already exists (use -f to overwrite)"
    assert listing(tmp_path) == ["dump"]


# -- a full disk, for real ---------------------------------------------------------------

@contextlib.contextmanager
def small_disk(tmp_path: Path, mib: int) -> Iterator[Path]:
    """A tmpfs of ``mib`` MiB: writes past it fail with the kernel's ENOSPC."""
    if os.geteuid() != 0:
        require("a small tmpfs for ENOSPC needs root")
    where = tmp_path / f"disk{mib}"
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if proc.returncode:
        require(f"cannot mount a tmpfs: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_enospc_keeps_the_smallest_dump(tmp_path: Path) -> None:
    """-c -d 0 of 6.1-sysrq (about 60 MiB) on a 30 MiB disk: the partial file
    is removed, the smallest dump (-d 31, about 16 MiB) saved, exit 0, and
    its pages are makedumpfile's -d 31 pages."""
    src = real_vmcore("6.1-sysrq")
    with small_disk(tmp_path, 30) as disk:
        res = capture("-c", "-d", "0", src, disk / "dump")
        assert res.returncode == 0, res.stderr
        assert "No space left on device: the partial dump was removed; writing the " \
               "smallest dump instead (kdump-compressed" in res.stderr, res.stderr
        assert listing(disk) == ["dump", "dump.triage"]
        check_triage(disk / "dump.triage", "6.1-sysrq")
        header = kdump_header(disk / "dump")
        assert header["dump_level"] == 31 and not header["status"] & 0x8
        ours = libkdumpfile_view(disk / "dump")
    reference = tmp_path / "mdf.d31"
    run(tool("makedumpfile"), "-c", "-d", "31", src, reference)
    theirs = libkdumpfile_view(reference)
    assert "error" not in ours and "error" not in theirs
    # makedumpfile 1.7.2 drops the page where a PT_LOAD ends mid-page (oracles.py)
    for pfn in partial_tail_pfns(src):
        ours["pages"].pop(pfn, None)
    assert ours["pages"] == theirs["pages"]


def test_enospc_even_for_the_smallest_dump(tmp_path: Path) -> None:
    """An 8 MiB disk holds no whole -d 31 dump: DST holds it cut short, its
    header marked incomplete (status 0x8), exit 2; the pages it holds are
    the source's (libkdumpfile), the rest missing, not zeros."""
    src = real_vmcore("6.1-sysrq")
    with small_disk(tmp_path, 8) as disk:
        res = capture("-c", "-d", "0", src, disk / "dump")
        assert res.returncode == 2, res.stderr
        assert "no room even for the smallest dump" in res.stderr
        assert listing(disk) == ["dump", "dump.triage"]
        check_triage(disk / "dump.triage", "6.1-sysrq")
        assert kdump_header(disk / "dump")["status"] & DUMP_DH_COMPRESSED_INCOMPLETE
        # read from a copy, as a user copies a dump off a full disk: the
        # descriptors never written are a hole (zeros: "page lost"), and
        # libkdumpfile mmaps the file; on a full tmpfs a read fault on a
        # hole needs a page the tmpfs cannot give, and the reader dies of
        # SIGBUS (seen with a 6.1-sysrq fixture that left 188 KiB free)
        shutil.copyfile(disk / "dump", tmp_path / "dump")
    cut = libkdumpfile_view(tmp_path / "dump")
    assert "error" not in cut, cut
    full = libkdumpfile_view(src)
    assert cut["pages"], "nothing readable in the incomplete dump"
    assert all(full["pages"][pfn] == h for pfn, h in cut["pages"].items())
    zero = "4ae71336e44bf9bf79d2752e234818a5"   # blake2b-128 of a zero page
    assert sum(h == zero for h in cut["pages"].values()) <= sum(
        full["pages"][pfn] == zero for pfn in cut["pages"])


def test_write_error_leaves_nothing_under_the_final_name(tmp_path: Path) -> None:
    """EIO from the disk while the dump is written (a Python-level seam; the
    real dm-error fault is tests/test_real_faults.py): exit 1, one line
    naming DST and the error, no temporary file, the triage intact."""
    seam = tmp_path / "seam.py"
    seam.write_text(f"""
import errno, os, runpy, sys
from slimdump.writers import atomic
real = atomic.AtomicOutput.write
def failing(self, data, offset=None):
    if self.dst == {str(tmp_path / 'dump')!r} and (offset or 0) > 4 << 20:
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    return real(self, data, offset)
def wrap(self, data, offset=None):
    try:
        return failing(self, data, offset)
    except OSError as exc:
        raise atomic.OutputError(self.dst, f"write failed: {{exc.strerror}}", exc.errno)
atomic.AtomicOutput.write = wrap
sys.argv = ["slimdump"] + sys.argv[1:]
runpy.run_module("slimdump", run_name="__main__")
""")
    res = run(sys.executable, seam, "capture", "-c", "-d", "0", "--no-progress",
              real_vmcore("6.1-sysrq"), tmp_path / "dump", check=False)
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip().splitlines()[-1] == \
        f"slimdump: {tmp_path}/dump: write failed: Input/output error"
    assert listing(tmp_path) == ["dump.triage", "seam.py"]
    check_triage(tmp_path / "dump.triage", "6.1-sysrq")
