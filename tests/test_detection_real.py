"""Hardware-error detection on stock kernels, end to end on real vmcores:
capture reads the crashed kernel's log, classifies the panic, and applies
the policy; eu-readelf reads the result, the QEMU injection is the truth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slimdump.capture import decide
from slimdump.elf import ElfHeader, ProgramHeader, parse_notes
from slimdump.notes import NT_SLIMDUMP_LOG, NT_SLIMDUMP_META
from slimdump.sources import open_dump
from tests.conftest import real_vmcore, require_module, run, slimdump, tool
from tests.lab import vmcorelab
from tests.oracles import eu_readelf_notes


def slim_notes(path: Path) -> dict[tuple[str, int], bytes]:
    data = path.read_bytes()
    hdr = ElfHeader.parse(data)
    ph = ProgramHeader.parse(data, hdr.e_phoff, hdr)
    notes = parse_notes(data[ph.p_offset:ph.p_offset + ph.p_filesz], hdr.endian)
    return {(n.name, n.type): n.desc for n in notes}


def makedumpfile_dmesg(vmcore: Path, tmp_path: Path) -> bytes:
    tmp_path.mkdir(exist_ok=True)
    out = tmp_path / "mdf.dmesg"
    run(tool("makedumpfile"), "--dump-dmesg", vmcore, out)
    return out.read_bytes()


@pytest.mark.parametrize("name", ["6.1-mce", "6.12-mce"])
def test_machine_check_becomes_slimdump(name: str, tmp_path: Path) -> None:
    vmcore = real_vmcore(name)
    injected = vmcorelab.metadata(name)["mce"]
    slim = tmp_path / "slim"
    res = slimdump("capture", vmcore, slim)
    assert res.returncode == 0, res.stderr
    assert slim.stat().st_size < 256 * 1024
    (reason,) = [n for n in eu_readelf_notes(slim) if n.type == "<unknown>: 21"]
    assert reason.owner == "PANIC_MCE"

    notes = slim_notes(slim)
    panic = vmcorelab.metadata(name)["panic_contains"]
    assert notes[("PANIC_MCE", 21)] == panic.encode() + b"\0"
    meta = json.loads(notes[("SLIMDUMP", NT_SLIMDUMP_META)].rstrip(b"\0"))
    assert meta["reason"] == "PANIC_MCE" and meta["detected_by"] == "kernel-log"
    (err,) = meta["hardware_errors"]
    assert err["cpu"] == injected["cpu"] and err["bank"] == injected["bank"]
    assert int(err["status"], 16) == int(injected["status"], 16)
    assert int(err["addr"], 16) == int(injected["addr"], 16)
    # the slim action is headers and notes: detection read the log, the
    # slimdump does not carry it; the dmesg action does, and it is the log
    # makedumpfile reads from the same vmcore
    assert ("SLIMDUMP", NT_SLIMDUMP_LOG) not in notes
    policy = tmp_path / "dmesg.toml"
    policy.write_text('[actions]\nPANIC_MCE = "dmesg"\n')
    with_log = tmp_path / "with-log"
    res = slimdump("capture", "--policy", policy, vmcore, with_log)
    assert res.returncode == 0, res.stderr
    assert "slimdump with the kernel log" in res.stderr
    dmesg_notes = slim_notes(with_log)
    log = dmesg_notes.pop(("SLIMDUMP", NT_SLIMDUMP_LOG)).rstrip(b"\0")
    assert log == makedumpfile_dmesg(vmcore, tmp_path)
    assert dmesg_notes.keys() == notes.keys()

    text = slimdump("inspect", slim).stdout
    assert text.startswith("System crashed due to a hardware memory error. No coredump "
                           f"available.\nNocoredump Reason: PANIC_MCE\n{panic}\n")
    assert f"MCi_STATUS {injected['status']} [VAL UC EN ADDRV PCC]" in text


def test_nmi_becomes_slimdump(tmp_path: Path) -> None:
    slim = tmp_path / "slim"
    res = slimdump("capture", real_vmcore("6.1-nmi"), slim)
    assert res.returncode == 0, res.stderr
    meta = json.loads(slim_notes(slim)[("SLIMDUMP", NT_SLIMDUMP_META)].rstrip(b"\0"))
    assert meta["reason"] == "PANIC_NMI" and meta["detected_by"] == "kernel-log"
    assert ("PANIC_NMI", 21) in slim_notes(slim)


@pytest.mark.parametrize("name", ["6.1-sysrq", "6.12-sysrq", "6.1-oom"])
def test_software_crash_keeps_the_dump(name: str, tmp_path: Path) -> None:
    """The normal dump: kdump-compressed at -d 31, whose log makedumpfile
    reads as it reads the source's."""
    vmcore = real_vmcore(name)
    out = tmp_path / "vmcore"
    res = slimdump("capture", vmcore, out)
    assert res.returncode == 0, res.stderr
    assert "software crash" in res.stderr
    assert out.read_bytes()[:8] == b"KDUMP   "
    assert makedumpfile_dmesg(out, tmp_path / "o") == makedumpfile_dmesg(vmcore, tmp_path / "s")


@pytest.mark.parametrize("name", ["6.1-mce", "6.12-mce", "6.1-nmi", "6.1-sysrq"])
def test_detection_reads_only_the_log_buffer(name: str) -> None:
    vmcore = real_vmcore(name)
    with open_dump(vmcore) as source:
        decision = decide(source)
        assert decision.log is not None
        read = source.bytes_read
    print(f"{name}: detection read {read} bytes of {vmcore.stat().st_size}")
    assert read < vmcore.stat().st_size // 1000        # under 0.1 %


def test_policy_full_for_machine_checks(tmp_path: Path) -> None:
    """``full`` for a machine check: every page but the one at the machine
    check's ADDR, which is recorded in the SLIMDUMP metadata note."""
    drgn = require_module("drgn")
    policy = tmp_path / "policy.toml"
    policy.write_text('[actions]\nPANIC_MCE = "full"\n')
    vmcore = real_vmcore("6.1-mce")
    addr = int(vmcorelab.metadata("6.1-mce")["mce"]["addr"], 16)
    out = tmp_path / "vmcore"
    res = slimdump("capture", "--policy", policy, vmcore, out)
    assert res.returncode == 0, res.stderr
    ours, theirs = drgn.Program(), drgn.Program()
    ours.set_core_dump(str(out))
    theirs.set_core_dump(str(vmcore))
    with pytest.raises(drgn.FaultError):
        ours.read(addr, 4096, True)
    for other in (addr - 4096, addr + 4096, 0x100000, 0x2000000):
        assert ours.read(other, 4096, True) == theirs.read(other, 4096, True)
    with open_dump(out) as dump:
        assert dump.dump_level == 0
        (meta,) = [n for n in dump.notes if n.name == "SLIMDUMP" and n.type == NT_SLIMDUMP_META]
    excluded = json.loads(meta.desc.rstrip(b"\0"))["excluded_pages"]
    assert excluded == [{"pfn": addr // 4096, "why": "machine check ADDR"}]


def test_policy_dmesg_with_kernel_note_and_dump_dmesg(tmp_path: Path) -> None:
    vmcore = real_vmcore("6.12-mce")
    marked = tmp_path / "marked"
    assert slimdump("mark", vmcore, marked, "--reason", "PANIC_MCE").returncode == 0
    policy = tmp_path / "policy.toml"
    policy.write_text('[actions]\nPANIC_MCE = "dmesg"\n')
    slim = tmp_path / "slim"
    res = slimdump("capture", "--policy", policy, "--dump-dmesg", marked, slim)
    assert res.returncode == 0, res.stderr
    expected = makedumpfile_dmesg(vmcore, tmp_path)
    assert slim_notes(slim)[("SLIMDUMP", NT_SLIMDUMP_LOG)].rstrip(b"\0") == expected
    assert Path(str(slim) + ".dmesg.txt").read_bytes() == expected


def test_unreadable_log_falls_back_to_the_dump(tmp_path: Path) -> None:
    """A machine-check vmcore whose VMCOREINFO hides the log buffer: capture
    says so and saves the complete dump rather than nothing."""
    vmcore = real_vmcore("6.1-mce")
    broken = tmp_path / "broken"
    run("cp", "--sparse=always", vmcore, broken)
    with broken.open("r+b") as f:
        at = f.read(64 * 1024).find(b"SYMBOL(prb)=")
        assert at > 0
        f.seek(at)
        f.write(b"SYMBOL(prX)")
    out = tmp_path / "out"
    res = slimdump("capture", broken, out)
    assert res.returncode == 0, res.stderr
    assert "warning: cannot read the kernel log" in res.stderr
    assert "software crash" not in res.stderr
    assert out.read_bytes()[:8] == b"KDUMP   "
