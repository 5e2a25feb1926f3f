"""The NT_NOCOREDUMP protocol end to end on real vmcores.

A real machine-check vmcore is marked as a 2011-patched kernel would have
left it, then captured; eu-readelf and readelf read the slimdump, and a copy
of the marked vmcore cut off right after its notes gives the same notes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slimdump.elf import ElfHeader, ProgramHeader, parse_notes
from tests.conftest import slimdump
from tests.oracles import (
    eu_readelf_notes,
    readelf_loads,
    readelf_notes,
    readelf_segment_types,
)

MESSAGE = "Fatal local machine check"
HEADLINE = "System crashed due to a hardware memory error. No coredump available."


@pytest.fixture
def marked(mce_vmcore: Path, tmp_path: Path) -> Path:
    out = tmp_path / "marked.vmcore"
    res = slimdump("mark", mce_vmcore, out, "--reason", "PANIC_MCE", "--message", MESSAGE)
    assert res.returncode == 0, res.stderr
    return out


def cpu_count(vmcore: Path) -> int:
    return sum(1 for n in eu_readelf_notes(vmcore) if n.type == "PRSTATUS")


def test_slim_capture_of_marked_mce(marked: Path, mce_vmcore: Path, tmp_path: Path) -> None:
    slim = tmp_path / "slim"
    res = slimdump("capture", marked, slim)
    assert res.returncode == 0, res.stderr
    assert slim.stat().st_size < 16 * 1024
    assert slim.stat().st_mode & 0o777 == 0o600
    assert readelf_segment_types(slim) == ["NOTE"]

    eu = eu_readelf_notes(slim)
    ncpus = cpu_count(mce_vmcore)
    assert ncpus >= 1
    assert [n.type for n in eu].count("PRSTATUS") == ncpus
    assert sum(1 for n in eu if n.owner == "VMCOREINFO") == 1
    reason = [n for n in eu if n.owner == "PANIC_MCE"]
    assert len(reason) == 1 and reason[0].type == "<unknown>: 21"

    binutils = readelf_notes(slim)
    assert [n.description for n in binutils].count("NT_PRSTATUS (prstatus structure)") == ncpus
    assert any(n.owner == "VMCOREINFO" for n in binutils)
    assert [n.description for n in binutils if n.owner == "PANIC_MCE"] == [
        "Unknown note type: (0x00000015)"]

    text = slimdump("inspect", slim)
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[:3] == [HEADLINE, "Nocoredump Reason: PANIC_MCE", MESSAGE]


def read_slim_notes(path: Path) -> list[tuple[str, int, bytes]]:
    """Notes of a slimdump through the raw ELF structures."""
    data = path.read_bytes()
    hdr = ElfHeader.parse(data)
    (ph,) = [ProgramHeader.parse(data, hdr.e_phoff + i * hdr.phdr_size, hdr)
             for i in range(hdr.e_phnum)]
    notes = parse_notes(data[ph.p_offset:ph.p_offset + ph.p_filesz], hdr.endian)
    return [(n.name, n.type, n.desc) for n in notes]


def test_truncated_after_notes_gives_same_slimdump(marked: Path, tmp_path: Path) -> None:
    """Proof that capture reads no PT_LOAD data: the file without it works."""
    first_load = min(ld.offset for ld in readelf_loads(marked))
    cut = tmp_path / "cut.vmcore"
    with marked.open("rb") as src:
        cut.write_bytes(src.read(first_load))
    full_slim, cut_slim = tmp_path / "a.slim", tmp_path / "b.slim"
    assert slimdump("capture", marked, full_slim).returncode == 0
    res = slimdump("capture", cut, cut_slim)
    assert res.returncode == 0, res.stderr

    a, b = read_slim_notes(full_slim), read_slim_notes(cut_slim)
    assert [n[:2] for n in a] == [n[:2] for n in b]
    assert a[:-1] == b[:-1]                      # every note but the metadata: identical
    meta_a, meta_b = (json.loads(n[-1][2].rstrip(b"\0")) for n in (a, b))
    for meta in (meta_a, meta_b):
        meta.pop("captured_at")
        meta["source"].pop("path")
        meta["source"].pop("size")
    assert meta_a == meta_b
    assert meta_a["reason"] == "PANIC_MCE" and meta_a["detected_by"] == "kernel-note"
    assert meta_a["memory"] == [{"phys_start": ld.paddr, "virt_start": ld.vaddr,
                                 "size": ld.memsz} for ld in readelf_loads(marked)]


def test_slim_capture_reads_only_headers_and_notes(marked: Path) -> None:
    from slimdump.capture import decide, write_slimdump
    from slimdump.sources import open_dump

    first_load = min(ld.offset for ld in readelf_loads(marked))
    with open_dump(marked) as source:
        decision = decide(source)
        write_slimdump(source, decision, str(marked) + ".slim")
        assert source.bytes_read <= first_load
        assert source.bytes_read < 16 * 1024
