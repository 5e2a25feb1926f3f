"""slimdump where it runs: inside a real kdump capture kernel, on /proc/vmcore.

tests/lab/vmcorelab.py crashes Debian's 6.1 kernel in QEMU; its capture
kernel chroots into the host's / (9p, read-only, under a tmpfs overlay) and
runs ``python -m slimdump`` against the real /proc/vmcore, writing to a
writable 9p share of a host directory.  The results are then checked on the
host with the independent readers (readelf, eu-readelf, makedumpfile, drgn).

About 20-30 s a test under TCG on two cores.  Skipped when the lab's host
tools are missing (or SLIMDUMP_LAB_NO_BUILD=1), unless SLIMDUMP_REQUIRE_VMCORES=1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from slimdump.elf import ElfHeader, ProgramHeader, parse_notes
from tests.conftest import require_lab, require_module, run, tool
from tests.lab import vmcorelab
from tests.oracles import eu_readelf_notes, readelf_segment_types

SLIMDUMP_META = 0x534C0001  # the SLIMDUMP metadata note's type


def collect(mode: str, command: list[str], outdir: Path) -> vmcorelab.CollectorResult:
    require_lab("cannot run a capture kernel")
    result = vmcorelab.run_collector("6.1", mode, command, outdir, timeout_s=300,
                                     log=lambda m: print(m, flush=True))
    stderr = result.stderr.read_text(errors="replace")
    assert result.returncode == 0, (f"exit {result.returncode} in the capture kernel: "
                                    f"{stderr} (console: {result.console_log})")
    return result


def slimdump_metadata(path: Path) -> dict:
    data = path.read_bytes()
    hdr = ElfHeader.parse(data)
    (ph,) = [ProgramHeader.parse(data, hdr.e_phoff + i * hdr.phdr_size, hdr)
             for i in range(hdr.e_phnum)]
    notes = parse_notes(data[ph.p_offset:ph.p_offset + ph.p_filesz], hdr.endian)
    (meta,) = [n.desc for n in notes if n.name == "SLIMDUMP" and n.type == SLIMDUMP_META]
    return json.loads(meta.rstrip(b"\0"))


def test_slim_capture_of_mce_in_capture_kernel(tmp_path: Path) -> None:
    result = collect("mce", ["python", "-m", "slimdump", "capture", "{vmcore}", "{out}/dump"],
                     tmp_path)
    dump = tmp_path / "dump"
    assert dump.read_bytes()[:4] == b"\x7fELF"
    assert dump.stat().st_size < 1 << 20
    assert readelf_segment_types(dump) == ["NOTE"]

    notes = eu_readelf_notes(dump)
    assert [n.type for n in notes if n.owner == "PANIC_MCE"] == ["<unknown>: 21"]

    meta = slimdump_metadata(dump)
    assert meta["reason"] == "PANIC_MCE"
    assert meta["detected_by"] == "kernel-log"
    assert meta["source"]["path"] == "/proc/vmcore"
    assert meta["source"]["size"] == result.vmcore_bytes
    (err,) = meta["hardware_errors"]
    assert err["bank"] == vmcorelab.MCE_BANK
    assert int(err["status"], 16) == vmcorelab.MCE_STATUS
    assert int(err["addr"], 16) == vmcorelab.MCE_ADDR


# /proc/vmcore read through a mapping and with pread(), the same bytes:
# prints how many windows were mapped, then whether the reads agreed
MAPPED_READ = """
from slimdump.sources import open_dump
with open_dump("/proc/vmcore") as s:
    start = max(s.extents, key=lambda e: e.phys_end - e.phys_start).file_offset
    view = memoryview(bytearray(8 << 20))
    s.raw.read_into(start, view)
    print(s.raw.mapped.maps if s.raw.mapped else 0, bytes(view) == s.raw.read_at(start, len(view)))
"""


def test_filtered_capture_and_dmesg_of_sysrq_in_capture_kernel(tmp_path: Path) -> None:
    """The default (mmap() windows of /proc/vmcore) and --non-mmap write the
    same file; the mapping is really used there and reads what read() does."""
    script = ("python -m slimdump capture -l {vmcore} {out}/dump && "
              "python -m slimdump capture --non-mmap -l {vmcore} {out}/dump-non-mmap && "
              f"python -c '{MAPPED_READ}' > {{out}}/mapped && "
              "python -m slimdump dmesg {vmcore} {out}/dmesg.txt")
    collect("sysrq", ["sh", "-c", script], tmp_path)
    dump, dmesg = tmp_path / "dump", tmp_path / "dmesg.txt"
    assert dump.read_bytes()[:8] == b"KDUMP   "
    assert dump.read_bytes() == (tmp_path / "dump-non-mmap").read_bytes()
    maps, equal = (tmp_path / "mapped").read_text().split()
    assert int(maps) >= 2 and equal == "True"

    drgn = require_module("drgn")
    prog = drgn.Program()
    prog.set_core_dump(os.fspath(dump))
    assert len(prog.read(0x100000, 4096, True)) == 4096

    theirs = tmp_path / "makedumpfile-dmesg.txt"
    res = run(tool("makedumpfile"), "--dump-dmesg", dump, theirs, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    text = dmesg.read_text()
    assert "sysrq triggered crash" in text
    assert theirs.read_text() == text


def test_full_copy_in_capture_kernel_is_sparse(tmp_path: Path) -> None:
    """/proc/vmcore cannot report holes and refuses copy_file_range: the
    complete copy is read and written, zero blocks skipped, so it lands
    sparse; drgn reads it."""
    drgn = require_module("drgn")
    result = collect("sysrq", ["python", "-m", "slimdump", "capture", "--full", "{vmcore}",
                               "{out}/dump"], tmp_path)
    dump = tmp_path / "dump"
    assert dump.stat().st_size == result.vmcore_bytes
    assert dump.stat().st_blocks * 512 < result.vmcore_bytes // 2
    assert "read/write" in result.stderr.read_text()
    prog = drgn.Program()
    prog.set_core_dump(str(dump))
    assert len(prog.read(0x100000, 4096, True)) == 4096
