"""``capture --full`` (and capture without a note): a byte-exact, sparse
copy that drgn opens and reads like the source."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from tests.conftest import real_vmcore, require_module, slimdump
from tests.oracles import readelf_loads

drgn = require_module("drgn")


def drgn_reads_like_file(vmcore: Path) -> None:
    """drgn's physical reads equal the bytes readelf's program headers point
    at, at the start, middle and end of every RAM segment."""
    prog = drgn.Program()
    prog.set_core_dump(str(vmcore))
    data = vmcore.open("rb")
    with data:
        for load in readelf_loads(vmcore):
            for at in (0, load.filesz // 2 & ~0xFFF, load.filesz - 64):
                data.seek(load.offset + at)
                assert prog.read(load.paddr + at, 64, True) == data.read(64)


@pytest.mark.parametrize("name", ["6.1-sysrq", "6.12-mce"])   # whatever the reason
def test_full_copy_is_identical(name: str, tmp_path: Path) -> None:
    src = real_vmcore(name)
    dst = tmp_path / "vmcore"
    res = slimdump("capture", "--full", src, dst)
    assert res.returncode == 0, res.stderr
    assert filecmp.cmp(src, dst, shallow=False)
    assert dst.stat().st_mode & 0o777 == 0o600
    # holes stay holes: no more blocks on disk than the source, give or take
    assert dst.stat().st_blocks <= src.stat().st_blocks * 1.05 + 2048
    drgn_reads_like_file(dst)


def test_marked_vmcore_reads_like_source(mce_vmcore: Path, tmp_path: Path) -> None:
    marked = tmp_path / "marked"
    res = slimdump("mark", mce_vmcore, marked, "--reason", "PANIC_MCE", "--message", "x")
    assert res.returncode == 0, res.stderr
    drgn_reads_like_file(marked)
    prog_src, prog_marked = drgn.Program(), drgn.Program()
    prog_src.set_core_dump(str(mce_vmcore))
    prog_marked.set_core_dump(str(marked))
    for load in readelf_loads(mce_vmcore):
        assert prog_src.read(load.paddr, 4096, True) == prog_marked.read(load.paddr, 4096, True)


def test_full_copy_refuses_existing_output(tmp_path: Path) -> None:
    src = real_vmcore("6.1-sysrq")
    dst = tmp_path / "vmcore"
    dst.write_bytes(b"precious")
    res = slimdump("capture", "--full", src, dst)
    assert res.returncode == 1
    assert res.stderr.strip() == f"slimdump: {dst}: already exists (use -f to overwrite)"
    assert dst.read_bytes() == b"precious"
