"""``slimdump inspect``: its JSON agrees with eu-readelf on every real
vmcore, and the text leads with the protocol's lines."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests import synthcore as sc
from tests.conftest import run, slimdump, tool, vmcore_facts
from tests.lab import vmcorelab
from tests.oracles import eu_readelf_notes

# eu-readelf's names for the x86_64 user_regs_struct fields that differ
EU_NAMES = {"eflags": "rflags", "fs_base": "fs.base", "gs_base": "gs.base"}


def inspect_json(path: Path, *args: str) -> dict:
    res = slimdump("inspect", "--json", *args, path)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_json_agrees_with_eu_readelf(any_vmcore: Path) -> None:
    facts = inspect_json(any_vmcore)
    eu = eu_readelf_notes(any_vmcore)

    prstatus = [n for n in eu if n.type == "PRSTATUS"]
    assert len(facts["cpus"]) == len(prstatus) >= 1
    for cpu, note in zip(facts["cpus"], prstatus, strict=True):
        assert cpu["pid"] == note.fields["pid"]
        assert len(cpu["registers"]) == 27
        for name, value in cpu["registers"].items():
            assert value == note.fields[EU_NAMES.get(name, name)] % 2**64, name
        assert cpu["pc"] == note.fields["rip"] and cpu["sp"] == note.fields["rsp"]

    (vmcoreinfo,) = [n for n in eu if n.owner == "VMCOREINFO"]
    lines = [line for line in vmcoreinfo.text if "=" in line]
    expected: dict[str, str] = {}
    for line in lines:
        key, _, value = line.partition("=")
        expected.setdefault(key, value)
    assert facts["vmcoreinfo"]["entries"] == expected
    v = facts["vmcoreinfo"]["facts"]
    assert v["osrelease"] == expected["OSRELEASE"] == facts["kernel"]["release"]
    assert v["crashtime"] == int(expected["CRASHTIME"])
    assert v["page_size"] == int(expected["PAGESIZE"])
    assert v["kerneloffset"] == int(expected["KERNELOFFSET"], 16)
    assert v["phys_base"] == int(expected["NUMBER(phys_base)"])
    assert v["stext"] == int(expected["SYMBOL(_stext)"], 16)

    assert [(n["owner"], n["size"]) for n in facts["notes"]] == [(n.owner, n.size) for n in eu]
    assert facts["nocoredump"] is None
    assert facts["file"]["kind"] == "vmcore" and not facts["file"]["truncated"]


def test_text_for_a_vmcore(any_vmcore: Path) -> None:
    res = slimdump("inspect", any_vmcore)
    assert res.returncode == 0, res.stderr
    meta = vmcorelab.metadata(any_vmcore.name.removesuffix(".vmcore"))
    reason = {"mce": "PANIC_MCE", "nmi": "PANIC_NMI"}.get(meta["mode"])
    lines = res.stdout.splitlines()
    if reason:       # no "No coredump available" headline: this is the full dump
        assert lines[0].startswith(f"Hardware crash found in the kernel log: {reason} (")
    else:
        assert lines[0].startswith("File:")
    assert f"Kernel:       {meta['kernel_release']}" in lines
    panic = [line for line in lines if line.startswith("Panic:")]
    assert len(panic) == 1 and meta["panic_contains"] in panic[0]


@pytest.mark.parametrize(("reason", "headline"), [
    ("PANIC_MCE", "System crashed due to a hardware memory error. No coredump available."),
    ("PANIC_GHES", "System crashed due to a fatal hardware error reported by firmware. "
                   "No coredump available."),
    ("PANIC_NMI", "System crashed due to an unrecoverable NMI, likely hardware. "
                  "No coredump available."),
    ("VENDOR_X", "System crashed due to a hardware error (VENDOR_X). No coredump available."),
])
def test_headlines(tmp_path: Path, reason: str, headline: str) -> None:
    src = tmp_path / "core"
    src.write_bytes(sc.sample_x86_64_core(nocoredump=(reason, "the kernel's words")))
    slim = tmp_path / "slim"
    assert slimdump("capture", src, slim).returncode == 0
    for path in (src, slim):
        out = slimdump("inspect", path).stdout.splitlines()
        assert out[:3] == [headline, f"Nocoredump Reason: {reason}", "the kernel's words"]


def test_empty_message_prints_two_lines(tmp_path: Path) -> None:
    src = tmp_path / "core"
    src.write_bytes(sc.build_core([sc.Note(b"PANIC_MCE", 21, b"")], []))
    out = slimdump("inspect", src).stdout.splitlines()
    assert out[1] == "Nocoredump Reason: PANIC_MCE"
    assert out[2] == ""


def log_panicking_cpu(vmcore: Path, tmp_path: Path) -> int:
    """The CPU the crashed kernel's own log names, read by makedumpfile."""
    log = tmp_path / "dmesg.txt"
    run(tool("makedumpfile"), "--dump-dmesg", vmcore, log)
    lines = log.read_text(errors="replace").splitlines()
    panic = max(i for i, line in enumerate(lines) if "Kernel panic - not syncing" in line)
    for line in lines[panic:]:
        m = re.search(r"\] CPU: (\d+) (?:UID: \d+ )?PID: ", line)
        if m:
            return int(m.group(1))
    for line in reversed(lines[:panic]):
        m = re.search(r"\[Hardware Error\]: CPU (\d+): Machine Check Exception", line)
        if m:
            return int(m.group(1))
    raise AssertionError("the log names no panicking CPU")


def test_panicking_cpu_matches_the_log(any_vmcore: Path, tmp_path: Path) -> None:
    """From the log slimdump reads; from the registers alone (--no-log) when
    they can tell: a CPU on an exception stack (the fixtures that panicked
    in a machine-check or NMI handler) or the only CPU running a task (pid
    in its PRSTATUS note, as eu-readelf reads it).  A sysrq crash while
    another CPU ran a kworker leaves the registers silent (seen on a 6.12
    fixture: pids 1 and 18), and then the answer must be None, not a guess."""
    expected = log_panicking_cpu(any_vmcore, tmp_path)
    assert inspect_json(any_vmcore)["panicking_cpu"] == {"cpu": expected,
                                                         "basis": "the kernel log"}
    from_registers = inspect_json(any_vmcore, "--no-log")["panicking_cpu"]
    busy = [n for n in eu_readelf_notes(any_vmcore)
            if n.type == "PRSTATUS" and n.fields.get("pid")]
    mode = vmcore_facts(any_vmcore.name.removesuffix(".vmcore"))["mode"]
    if len(busy) == 1 or mode in ("mce", "nmi"):
        assert from_registers is not None
    if from_registers is not None:
        assert from_registers["cpu"] == expected
        assert from_registers["basis"] != "the kernel log"
