"""``slimdump dmesg`` on real vmcores, byte for byte against the reference tools.

For every real fixture (Debian 6.1 and 6.12 kernels crashed in QEMU, all
with the 5.10+ lockless printk ring buffer) the log slimdump extracts must
equal Debian 12's makedumpfile 1.7.2 ``--dump-dmesg`` file and kexec-tools'
``vmcore-dmesg`` output exactly, must be read from a small fraction of the
vmcore (the ring buffer's pages, not the memory around it), and must hold
the panic message the fixture was crashed with.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from slimdump.kernel.log import extract_dmesg
from slimdump.kernel.memory import KernelMemory
from slimdump.kernel.printk import read_log
from slimdump.kernel.vmcoreinfo import VmcoreInfo
from slimdump.sources import open_dump
from tests.conftest import REAL, real_vmcore, slimdump, tool
from tests.lab import vmcorelab

pytestmark = pytest.mark.vmcore


def _stdout(*cmd: str | Path) -> bytes:
    """A command's stdout as bytes (no newline translation, no decoding)."""
    res = subprocess.run([str(c) for c in cmd], capture_output=True, check=False)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    return res.stdout


@pytest.mark.parametrize("name", REAL)
def test_matches_makedumpfile(name: str, tmp_path: Path) -> None:
    vmcore = real_vmcore(name)
    reference = tmp_path / "makedumpfile.txt"
    res = subprocess.run([tool("makedumpfile"), "--dump-dmesg", str(vmcore), str(reference)],
                         capture_output=True, check=False)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    ours = tmp_path / "slimdump.txt"
    res_ours = slimdump("dmesg", vmcore, ours)
    assert res_ours.returncode == 0, res_ours.stderr
    assert ours.read_bytes() == reference.read_bytes()


@pytest.mark.parametrize("name", REAL)
def test_matches_vmcore_dmesg(name: str) -> None:
    vmcore = real_vmcore(name)
    reference = _stdout(tool("vmcore-dmesg"), vmcore)
    ours = _stdout(sys.executable, "-m", "slimdump", "dmesg", "--format", "vmcore-dmesg", vmcore)
    assert ours == reference


@pytest.mark.parametrize("name", REAL)
def test_reads_only_the_log(name: str, record_property: pytest.RecordProperty) -> None:
    """The descriptor array, info array and data ring are read in bulk:
    well under 1% of the vmcore (about 590 KB of 650 MB on these kernels)."""
    vmcore = real_vmcore(name)
    size = vmcore.stat().st_size
    with open_dump(vmcore) as source:
        text = extract_dmesg(source)
        read = source.bytes_read
    assert text
    record_property("bytes_read", read)
    print(f"{name}: read {read} of {size} bytes ({100 * read / size:.3f}%)")
    assert read < size / 100


@pytest.mark.parametrize("name", REAL)
def test_log_holds_the_panic(name: str) -> None:
    vmcore = real_vmcore(name)
    expected = vmcorelab.metadata(name)["panic_contains"]
    with open_dump(vmcore) as source:
        info = VmcoreInfo.from_notes(source.notes)
        assert info is not None
        log = read_log(KernelMemory(source, info))
    assert log.format == "lockless" and log.problems == []
    lines = log.lines()
    assert lines[0][1].startswith("Linux version ")
    assert any(expected in text for _, text in lines), expected
