"""Both ends of the 2011 chain: the kernel's own NT_NOCOREDUMP note, and slimdump on it.

The ``6.1p-*`` fixtures crash Debian's linux-source 6.1 with the series in
kernel/patches/6.1 (built by tests/lab/kbuild.py), in QEMU, exactly as the
stock fixtures are crashed.  The kernel end is judged by the independent
readers only: eu-readelf lists the note (owner, type, size, place after the
panicking CPU's NT_PRSTATUS), binutils readelf prints its bytes, and the text
it must hold is the panic line makedumpfile --dump-dmesg finds in the same
vmcore.  Then slimdump's end: capture on the saved vmcore, and capture inside
the patched capture kernel on the real /proc/vmcore.

What each fixture must show follows from its spec and the protocol
(kernel/README.md): a machine
check leaves PANIC_MCE, an unknown NMI PANIC_NMI, a sysrq crash nothing, and
``nocoredump=off`` nothing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import real_vmcore, require_lab, run, slimdump, tool, vmcore_facts
from tests.lab import vmcorelab
from tests.oracles import eu_readelf_notes

NT_NOCOREDUMP = "<unknown>: 21"  # how eu-readelf names type 21 under any owner
SLIMDUMP_META = 0x534C0001  # the SLIMDUMP metadata note's type
SLIM_LIMIT = 64 * 1024
#: x86_64 crash_notes buffer: NT_PRSTATUS (12 + 8 "CORE" + 336) and the empty
#: terminator (12) = 368, plus the series' room for one NT_NOCOREDUMP note
#: (12 + 16 name + 128 desc)
PATCHED_CRASH_NOTES_SIZE = 12 + 8 + 336 + 12 + 12 + 16 + 128

#: the hardware reason each crash mode stands for (the protocol's reason codes)
HARDWARE_REASON = {"mce": "PANIC_MCE", "nmi": "PANIC_NMI"}


def spec(name: str) -> vmcorelab.FixtureSpec:
    return vmcorelab.FIXTURES[name]


def hardware_reason(name: str) -> str | None:
    return HARDWARE_REASON.get(spec(name).mode)


def kernel_writes_note(name: str) -> bool:
    return hardware_reason(name) is not None and "nocoredump=off" not in spec(name).append.split()


# -- independent readings -------------------------------------------------------------


def panic_message(vmcore: Path, tmp_path: Path) -> str:
    """The text after the last "Kernel panic - not syncing: " in the crashed
    kernel's log, as makedumpfile --dump-dmesg reads it."""
    out = tmp_path / "mdf.dmesg"
    run(tool("makedumpfile"), "--dump-dmesg", vmcore, out)
    lines = re.findall(r"Kernel panic - not syncing: (.*)", out.read_text(errors="replace"))
    assert lines, f"no panic line in makedumpfile's log of {vmcore}"
    return lines[-1].rstrip()


def readelf_note_data(path: Path, owner: str) -> list[bytes]:
    """binutils ``readelf -nW``: the description bytes of each note of ``owner``."""
    out = run(tool("readelf"), "-nW", path).stdout
    row = re.compile(rf"^  {re.escape(owner)}\s+0x[0-9a-f]+\s.*description data:"
                     r"((?: [0-9a-f]{2})*)")
    found = []
    for line in out.splitlines():
        m = row.match(line)
        if m:
            found.append(bytes.fromhex(m[1]))
    return found


def slimdump_metadata(path: Path) -> dict:
    """The SLIMDUMP metadata note's JSON, from readelf's bytes (not slimdump's parser)."""
    out = run(tool("readelf"), "-nW", path).stdout
    metas = [bytes.fromhex(m[1]) for m in re.finditer(
        r"^  SLIMDUMP\s+0x[0-9a-f]+\s.*\(0x" + f"{SLIMDUMP_META:08x}" +
        r"\).*description data:((?: [0-9a-f]{2})*)", out, re.M)]
    assert len(metas) == 1, f"{path}: {len(metas)} SLIMDUMP metadata notes"
    return json.loads(metas[0].rstrip(b"\0"))


def headers_and_notes(readelf_hl: str) -> int:
    """Bytes of the ELF header, the program headers and every PT_NOTE, from
    the text of ``readelf -hlW``: all a slimdump needs to read."""
    def field(label: str) -> int:
        m = re.search(rf"^\s*{label}:\s+(\d+)", readelf_hl, re.M)
        assert m, f"readelf -hlW printed no {label!r}"
        return int(m[1])

    phdrs_end = field("Start of program headers") + (
        field("Number of program headers") * field("Size of program headers"))
    notes = [int(m[1], 16) for m in re.finditer(
        r"^\s+NOTE\s+0x[0-9a-f]+\s+0x[0-9a-f]+\s+0x[0-9a-f]+\s+0x([0-9a-f]+)", readelf_hl, re.M)]
    assert notes, "no PT_NOTE"
    return max(field("Size of this header"), phdrs_end) + sum(notes)


def bytes_read(stderr: str) -> int:
    """What capture says it read: exact under 1 MiB, to 0.1 MiB above."""
    m = re.search(r"; read (\d+) bytes of |; read (\d+\.\d) MiB of ", stderr)
    assert m, f"capture printed no byte count: {stderr}"
    return int(m[1]) if m[1] else int(float(m[2]) * (1 << 20))


def assert_read_only_headers_and_notes(read: int, readelf_hl: str) -> None:
    """Every byte of the headers and notes, and nothing past a second look
    at the ELF header (the format sniff): not one PT_LOAD byte."""
    need = headers_and_notes(readelf_hl)
    ehdr = 64
    assert need <= read <= need + ehdr, (read, need)


# -- the kernel end ------------------------------------------------------------------


@pytest.mark.parametrize("name", vmcorelab.PATCHED_FIXTURES)
def test_kernel_note_in_vmcore(name: str, tmp_path: Path) -> None:
    vmcore = real_vmcore(name)
    facts = vmcore_facts(name)
    assert facts["patched"] and facts["kexec"] == f"kexec {spec(name).kexec}"
    assert facts["crash_notes_size"] == PATCHED_CRASH_NOTES_SIZE

    message = panic_message(vmcore, tmp_path)
    assert facts["panic_contains"] in message

    notes = eu_readelf_notes(vmcore)
    ours = [i for i, n in enumerate(notes) if n.type == NT_NOCOREDUMP]
    if not kernel_writes_note(name):
        assert ours == [], [notes[i].owner for i in ours]
        return
    assert len(ours) == 1, [notes[i].owner for i in ours]
    note = notes[ours[0]]
    assert note.owner == hardware_reason(name)
    assert note.size == len(message.encode()) + 1  # n_descsz counts the NUL
    before = notes[ours[0] - 1]  # the panicking CPU's registers come first
    assert (before.owner, before.type) == ("CORE", "PRSTATUS")
    assert readelf_note_data(vmcore, note.owner) == [message.encode() + b"\0"]


# -- slimdump on the saved vmcore ---------------------------------------------------


@pytest.mark.parametrize("name", vmcorelab.PATCHED_FIXTURES)
def test_capture_of_saved_vmcore(name: str, tmp_path: Path) -> None:
    vmcore = real_vmcore(name)
    out = tmp_path / "dump"
    res = slimdump("capture", vmcore, out)
    assert res.returncode == 0, res.stderr
    readelf_hl = run(tool("readelf"), "-hlW", vmcore).stdout
    reason = hardware_reason(name)

    if reason is None:  # a software crash: the normal filtered dump
        assert out.read_bytes()[:8] == b"KDUMP   "
        log = tmp_path / "dump.dmesg"
        run(tool("makedumpfile"), "--dump-dmesg", out, log)
        assert vmcore_facts(name)["panic_contains"] in log.read_text(errors="replace")
        return

    meta = slimdump_metadata(out)
    assert meta["reason"] == reason
    slim_notes = [n for n in eu_readelf_notes(out) if n.type == NT_NOCOREDUMP]
    assert [n.owner for n in slim_notes] == [reason]
    if kernel_writes_note(name):
        assert meta["detected_by"] == "kernel-note"
        assert out.stat().st_size < SLIM_LIMIT
        assert_read_only_headers_and_notes(bytes_read(res.stderr), readelf_hl)
        assert readelf_note_data(out, reason) == readelf_note_data(vmcore, reason)
    else:  # nocoredump=off: found in the crashed kernel's log instead
        assert meta["detected_by"] == "kernel-log"
        assert out.stat().st_size < 1 << 20
        assert bytes_read(res.stderr) > headers_and_notes(readelf_hl) + 4096
        message = panic_message(vmcore, tmp_path)
        assert readelf_note_data(out, reason) == [message.encode() + b"\0"]


# -- slimdump where it runs: inside the patched capture kernel ----------------------


@pytest.mark.parametrize(("mode", "kexec"), [("mce", "-p"), ("mce", "-s -p"), ("nmi", "-p")])
def test_slim_capture_in_patched_capture_kernel(mode: str, kexec: str, tmp_path: Path) -> None:
    """The patched kernel crashed by a machine check (capture kernel loaded
    by kexec_load or kexec_file_load) or an unknown NMI; in the capture
    kernel, readelf and eu-readelf look at the real /proc/vmcore and
    slimdump captures it."""
    reason = HARDWARE_REASON[mode]
    require_lab("cannot run a capture kernel")
    script = ("readelf -hlW {vmcore} > {out}/readelf-hl.txt && "
              "eu-readelf -n {vmcore} > {out}/eu-readelf-n.txt && "
              "python -m slimdump capture {vmcore} {out}/dump")
    result = vmcorelab.run_collector("6.1", mode, ["sh", "-c", script], tmp_path,
                                     timeout_s=300, patched=True, kexec=kexec,
                                     log=lambda m: print(m, flush=True))
    stderr = result.stderr.read_text(errors="replace")
    assert result.returncode == 0, f"exit {result.returncode}: {stderr} ({result.console_log})"

    live_notes = re.findall(r"^  (\S+)\s+(\d+)\s+(.+?)\s*$",
                            (tmp_path / "eu-readelf-n.txt").read_text(), re.M)
    ours = [(owner, int(size)) for owner, size, kind in live_notes if kind == NT_NOCOREDUMP]
    assert [owner for owner, _ in ours] == [reason]

    dump = tmp_path / "dump"
    assert dump.stat().st_size < SLIM_LIMIT
    meta = slimdump_metadata(dump)
    assert meta["detected_by"] == "kernel-note"
    assert meta["reason"] == reason
    assert meta["source"]["path"] == "/proc/vmcore"
    assert meta["source"]["size"] == result.vmcore_bytes
    assert_read_only_headers_and_notes(bytes_read(stderr),
                                       (tmp_path / "readelf-hl.txt").read_text())
    (desc,) = readelf_note_data(dump, reason)
    assert len(desc) == ours[0][1]
    assert vmcorelab.MODES[mode].panic_contains.encode() in desc
