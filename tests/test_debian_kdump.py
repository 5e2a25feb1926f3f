"""The real chain: a whole Debian 12 system whose own kdump-tools saves the
dump by running slimdump (issue 11, acceptance).

tests/lab/debianlab.py builds a Debian 12 image from Debian's packages
(mmdebstrap, cached), installs slimdump's .deb and runs ``slimdump setup
kdump-tools`` in it as an administrator would, boots it under QEMU with
Debian's own ``crashkernel=`` default, crashes it, lets the capture kernel
run kdump-tools' unchanged save path and reads /var/crash back with debugfs.
The lab's oracle ran the real makedumpfile on the same /proc/vmcore in the
capture kernel first (its dmesg, and for sysrq its ``-l -d 31`` dump).

Both crashes run in CI: about 1.5 minutes for the machine check and 2.5 for
sysrq on two cores once the image is cached (a minute or two to build it);
each result is cached by the image's recipe, the .deb's bytes and the run's
shape, so a second test run with the same tree boots nothing.
Expected values come from the run (kernel release, what was injected) and
from the independent readers (makedumpfile -R, readelf, drgn), never from
slimdump's own output or a literal about Debian's current kernel.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import require, require_lab, require_module, run, slimdump, tool
from tests.lab import debianlab
from tests.mdfbitmap import read_kdump
from tests.oracles import readelf_notes

PAGE = 4096
DUMP_DH_COMPRESSED_ZLIB = 1  # page_desc flags (kdump-formats.md section 2)


def debian_run(crash: str, collector: str = "slimdump") -> dict[str, Any]:
    """The run's result.json (cached by image, .deb and spec), built on first use."""
    require_lab("cannot boot the Debian image")
    for name in ("mmdebstrap", "mkfs.ext4", "debugfs", "e2fsck"):
        tool(name)
    if os.environ.get("SLIMDUMP_LAB_NO_BUILD") == "1":
        require("the Debian image run (SLIMDUMP_LAB_NO_BUILD=1)")
    deb = None
    if collector == "slimdump":
        try:
            deb = debianlab.slimdump_deb(log=print)
        except debianlab.LabError as exc:
            require(f"slimdump's .deb: {exc}")
    spec = debianlab.RunSpec(collector, crash)
    try:
        return debianlab.ensure_run(spec, deb=deb, log=print)
    except debianlab.LabError as exc:
        pytest.fail(f"debianlab {collector}/{crash}: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def mce() -> dict[str, Any]:
    return debian_run("mce")


@pytest.fixture(scope="module")
def sysrq() -> dict[str, Any]:
    return debian_run("sysrq")


def stamp_file(result: dict[str, Any], prefix: str) -> Path:
    """/var/crash/STAMP/<prefix>.STAMP as read back from the disk image."""
    files = [f for f in result["stamp_files"] if Path(f["path"]).name.startswith(prefix + ".")
             and not f["path"].endswith(".triage")]
    assert len(files) == 1, result["stamp_files"]
    return Path(result["outdir"]) / files[0]["path"].removeprefix("/var/")


def oracle_file(result: dict[str, Any], name: str) -> Path:
    return Path(result["outdir"]) / "slimdumplab" / name


def unflatten(flat: Path, out: Path) -> Path:
    """The real makedumpfile -R: the flattened stream back to a file."""
    with flat.open("rb") as f:
        res = subprocess.run([tool("makedumpfile"), "-R", os.fspath(out)], stdin=f,
                             capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    return out


def common_checks(result: dict[str, Any], *, triage: bool) -> None:
    """kdump-tools' own save path ran slimdump and said it saved the vmcore;
    ``triage``: a dump bigger than a slimdump, so slimdump wrote the triage
    slimdump first, beside it (dump.triage in the stamp directory)."""
    assert result["saved_vmcore"], result["console_log"]
    assert result["deb"] and "makedumpfile" in result["deb"]["diversion"]
    assert result["oracle_rc"] is not None and set(result["oracle_rc"].split()) == {"0"}
    names = sorted(Path(f["path"]).name if f["path"].endswith(".triage")
                   else Path(f["path"]).name.split(".")[0] for f in result["stamp_files"])
    # no vmcore.STAMP: no 'cp' fallback
    assert names == ["dmesg", "dump", *(["dump.triage"] if triage else [])], \
        result["stamp_files"]
    # dmesg.STAMP: what the real makedumpfile wrote for the same /proc/vmcore
    ours = stamp_file(result, "dmesg").read_bytes()
    assert ours == oracle_file(result, "oracle-dmesg.txt").read_bytes()
    assert result["kernel_release"].encode() in ours


def test_machine_check_saves_a_slimdump(mce: dict[str, Any], tmp_path: Path) -> None:
    common_checks(mce, triage=False)
    dump = stamp_file(mce, "dump")
    # kdump-tools ran makedumpfile -F: a flattened stream, of kilobytes
    assert dump.read_bytes()[:12] == b"makedumpfile"
    assert dump.stat().st_size < 1 << 20, dump.stat().st_size
    # the real makedumpfile -R and slimdump reassemble make the same ELF of it
    theirs = unflatten(dump, tmp_path / "mdf.elf")
    ours = tmp_path / "slimdump.elf"
    res = slimdump("reassemble", "--input", dump, ours)
    assert res.returncode == 0, res.stderr
    assert ours.read_bytes() == theirs.read_bytes()
    assert theirs.read_bytes()[:4] == b"\x7fELF"
    owners = {n.owner for n in readelf_notes(theirs)}
    assert {"CORE", "VMCOREINFO", "PANIC_MCE"} <= owners, owners
    # what slimdump says of it: the machine check as injected on the QEMU monitor
    res = slimdump("inspect", "--json", dump)
    assert res.returncode == 0, res.stderr
    facts = json.loads(res.stdout)
    assert facts["nocoredump"]["reason"] == "PANIC_MCE"
    # the run's own record of the monitor command: mce CPU BANK STATUS MCG_STATUS ADDR MISC
    _, cpu, bank, status, _mcg, addr, _misc = mce["mce"].split()
    (err,) = facts["slimdump"]["hardware_errors"]
    assert (err["cpu"], err["bank"]) == (int(cpu), int(bank))
    assert int(err["addr"], 16) == int(addr, 16)
    assert int(err["status"], 16) == int(status, 16)
    assert facts["slimdump"]["source"]["path"] == "/proc/vmcore"
    assert facts["kernel"]["release"] == mce["kernel_release"]


def test_sysrq_saves_the_filtered_dump(sysrq: dict[str, Any], tmp_path: Path) -> None:
    common_checks(sysrq, triage=True)
    dump = stamp_file(sysrq, "dump")
    # the triage slimdump, fsynced before the dump: notes and the log, whose
    # panic line is the one the real makedumpfile's dmesg.STAMP shows
    triage = dump.with_name("dump.triage")
    owners = {n.owner for n in readelf_notes(triage)}
    assert {"CORE", "VMCOREINFO", "SLIMDUMP"} <= owners, owners
    panic = [line for line in oracle_file(sysrq, "oracle-dmesg.txt").read_text(
        errors="replace").splitlines() if "Kernel panic - not syncing:" in line]
    assert panic and panic[-1].split("] ", 1)[-1].encode() in triage.read_bytes()
    assert dump.read_bytes()[:12] == b"makedumpfile"
    kdump = unflatten(dump, tmp_path / "dump.kdump")
    ours = read_kdump(kdump)
    oracle_path = oracle_file(sysrq, "oracle.kdump")
    oracle = read_kdump(oracle_path)
    assert ours.dump_level == oracle.dump_level == 31
    # -c: zlib pages (a page zlib cannot shrink is stored raw, flags 0)
    flags = set(np.unique(ours.desc_flags).tolist())
    assert DUMP_DH_COMPRESSED_ZLIB in flags and flags <= {0, DUMP_DH_COMPRESSED_ZLIB}
    # the same pages kept with content as the real makedumpfile -d 31
    assert np.array_equal(ours.kept_with_content, oracle.kept_with_content)
    # slimdump may also keep pages where a PT_LOAD ends mid-page (README,
    # "Oracles"): a handful, zero-filled, never one makedumpfile kept
    assert not (oracle.bitmap2 & ~ours.bitmap2).any()
    extra = np.flatnonzero(ours.bitmap2 & ~oracle.bitmap2)
    assert len(extra) <= 8, extra
    # drgn reads every kept page of both files the same
    drgn = require_module("drgn")
    a, b = drgn.Program(), drgn.Program()
    a.set_core_dump(os.fspath(kdump))
    b.set_core_dump(os.fspath(oracle_path))
    for pfn in np.flatnonzero(ours.kept_with_content):
        addr = int(pfn) * PAGE
        assert a.read(addr, PAGE, True) == b.read(addr, PAGE, True), hex(int(pfn))
    for pfn in extra:
        assert a.read(int(pfn) * PAGE, PAGE, True) == bytes(PAGE)
    # and makedumpfile reads the kernel log out of the reassembled file
    log = tmp_path / "dmesg.txt"
    run(tool("makedumpfile"), "--dump-dmesg", kdump, log)
    assert log.read_bytes() == oracle_file(sysrq, "oracle-dmesg.txt").read_bytes()
