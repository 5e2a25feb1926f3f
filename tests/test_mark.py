"""``slimdump mark`` on synthetic cores: the note lands in the note segment,
every segment's data stays readable where the program headers say, checked
with eu-readelf and readelf."""

from __future__ import annotations

from pathlib import Path

from tests import synthcore as sc
from tests.conftest import slimdump
from tests.oracles import eu_readelf_notes, readelf_loads


def segment_bytes(path: Path) -> list[bytes]:
    data = path.read_bytes()
    return [data[ld.offset:ld.offset + ld.filesz] for ld in readelf_loads(path)]


def check_marked(src: Path, dst: Path) -> None:
    notes = eu_readelf_notes(dst)
    assert [n.owner for n in notes] == [n.owner for n in eu_readelf_notes(src)] + ["PANIC_MCE"]
    assert notes[-1].type == "<unknown>: 21"
    assert notes[-1].size == len(b"Fatal local machine check\0")
    assert segment_bytes(dst) == segment_bytes(src)
    assert [(ld.paddr, ld.vaddr, ld.filesz) for ld in readelf_loads(dst)] == [
        (ld.paddr, ld.vaddr, ld.filesz) for ld in readelf_loads(src)]
    assert dst.stat().st_mode & 0o777 == 0o600


def test_mark_fits_in_padding(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(sc.sample_x86_64_core())
    dst = tmp_path / "dst"
    res = slimdump("mark", src, dst, "--reason", "PANIC_MCE",
                   "--message", "Fatal local machine check")
    assert res.returncode == 0, res.stderr
    check_marked(src, dst)
    assert [ld.offset for ld in readelf_loads(dst)] == [ld.offset for ld in readelf_loads(src)]
    assert dst.stat().st_size == src.stat().st_size


def test_mark_moves_data_when_padding_is_full(tmp_path: Path) -> None:
    # Fill the note page so that only 8 bytes of padding are left.
    used = len(sc.note_bytes(sc.Note(b"CORE", 1, bytes(336)))) * 2 + len(
        sc.note_bytes(sc.Note(b"VMCOREINFO", 0, sc.vmcoreinfo(sc.SAMPLE_VMCOREINFO))))
    filler = sc.Note(b"FILLER", 7, bytes(4096 - used - 8 - 12 - 8))
    notes = [sc.Note(b"CORE", 1, sc.prstatus_x86_64(cpu, sc.sample_regs_x86_64(cpu)))
             for cpu in range(2)]
    notes += [sc.Note(b"VMCOREINFO", 0, sc.vmcoreinfo(sc.SAMPLE_VMCOREINFO)), filler]
    loads = [sc.Load(0x100000, 0xFF11000000100000, sc.tagged_bytes(b"RAM:", 0x100000, 8192))]
    src = tmp_path / "src"
    src.write_bytes(sc.build_core(notes, loads))
    dst = tmp_path / "dst"
    res = slimdump("mark", src, dst, "--reason", "PANIC_MCE",
                   "--message", "Fatal local machine check")
    assert res.returncode == 0, res.stderr
    check_marked(src, dst)
    assert [ld.offset for ld in readelf_loads(dst)] == [
        ld.offset + 4096 for ld in readelf_loads(src)]


def test_mark_refuses_a_second_note_and_bad_codes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(sc.sample_x86_64_core(nocoredump=("PANIC_MCE", "x")))
    res = slimdump("mark", src, tmp_path / "dst", "--reason", "PANIC_NMI")
    assert res.returncode == 1
    assert "already carries an NT_NOCOREDUMP note (PANIC_MCE)" in res.stderr
    res = slimdump("mark", src, tmp_path / "dst2", "--reason", "HAS SPACE")
    assert res.returncode == 1 and "invalid reason code" in res.stderr
    assert not (tmp_path / "dst").exists() and not (tmp_path / "dst2").exists()
