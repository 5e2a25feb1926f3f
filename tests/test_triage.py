"""Triage of the crashed kernel's log: machine-check and GHES parsing, the
IA32_MCi_STATUS decode, and the panic classification.

Real inputs first: the logs of the cached real vmcores as Debian's own
``makedumpfile --dump-dmesg`` reads them (an independent reader), checked
against what the lab injected through QEMU.  Then synthetic logs for what
the lab cannot crash (old kernels, firmware-first errors, corrected errors,
hard lockups), and random text that must never make a parser raise.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slimdump.triage.classify import classify
from slimdump.triage.ghes import parse_ghes
from slimdump.triage.mce import McaStatus, decode_error_code, is_memory_error, parse_machine_checks
from tests.conftest import real_vmcore, run, tool
from tests.lab import vmcorelab

SEC = 1_000_000_000
_PREFIX = re.compile(r"^\[\s*(\d+)\.(\d{6})\] ")


def records_from_dmesg(text: str) -> list[tuple[int, str]]:
    """makedumpfile's ``[%5d.%06d] text`` lines back into records; a
    continuation line is indented by exactly the prefix width (any further
    spaces are the message's own) and is folded back with '\\n'."""
    records: list[tuple[int, str]] = []
    width = 0
    for line in text.splitlines():
        m = _PREFIX.match(line)
        if m:
            records.append((int(m.group(1)) * SEC + int(m.group(2)) * 1000, line[m.end():]))
            width = m.end()
        elif records and width and line.startswith(" " * width):
            ts, body = records[-1]
            records[-1] = (ts, body + "\n" + line[width:])
    return records


def real_records(name: str, tmp_path: Path) -> list[tuple[int, str]]:
    vmcore = real_vmcore(name)
    out = tmp_path / f"{name}.dmesg"
    run(tool("makedumpfile"), "--dump-dmesg", vmcore, out)
    return records_from_dmesg(out.read_text(encoding="utf-8", errors="replace"))


# Linux's X86_VENDOR_* numbers (arch/x86/include/asm/processor.h), which the
# MCE "PROCESSOR vendor:cpuid" line prints
X86_VENDORS = {"Intel": 0, "AMD": 2, "Centaur": 5, "Hygon": 9, "Zhaoxin": 10}
_BOOT_CPU = re.compile(r"^smpboot: CPU0: .*\(family: (0x[0-9a-f]+), model: (0x[0-9a-f]+), "
                       r"stepping: (0x[0-9a-f]+)\)$")


def boot_cpu_signature(records: list[tuple[int, str]]) -> str:
    """``vendor:cpuid`` of the guest's CPU as the MCE PROCESSOR line should
    print it, rebuilt from another line of the same log: the boot CPU's
    "smpboot: CPU0: <vendor> <model name> (family: F, model: M, stepping: S)".
    CPUID(1).EAX holds the family as base + extended when the base is 0xf,
    and the model's high nibble in the extended model when the family is 6
    or more (Intel SDM vol. 2A, CPUID).  Whatever CPU the host's QEMU
    emulates, the expected value follows it."""
    (line,) = [text for _ts, text in records if _BOOT_CPU.match(text)]
    family, model, stepping = (int(x, 16) for x in _BOOT_CPU.match(line).groups())
    (vendor,) = {code for name, code in X86_VENDORS.items() if re.search(rf"\b{name}\b", line)}
    base_family, ext_family = (0xF, family - 0xF) if family >= 0xF else (family, 0)
    ext_model = model >> 4 if family >= 6 else 0
    eax = stepping | (model & 0xF) << 4 | base_family << 8 | ext_model << 16 | ext_family << 20
    return f"{vendor}:{eax:x}"


def log(*lines: tuple[float, str]) -> list[tuple[int, str]]:
    """Records from ``(seconds, text)`` pairs."""
    return [(round(t * SEC), text) for t, text in lines]


# --------------------------------------------------------------------------
# Real vmcores


@pytest.mark.vmcore
@pytest.mark.parametrize("name", ["6.1-mce", "6.12-mce"])
def test_real_machine_check(name: str, tmp_path: Path) -> None:
    records = real_records(name, tmp_path)
    injected = vmcorelab.metadata(name)["mce"]

    verdict = classify(records)
    assert verdict.reason == "PANIC_MCE" and verdict.category == "hardware"
    assert verdict.panic_message == vmcorelab.metadata(name)["panic_contains"]
    assert records[verdict.panic_index][1].startswith("Kernel panic - not syncing: ")
    # these kernels print no "CPU: N PID: M" after an MCE panic: the CPU
    # comes from the machine-check record
    assert verdict.panic_cpu == injected["cpu"]

    (err,) = verdict.hardware_errors
    assert err["cpu"] == injected["cpu"] and err["bank"] == injected["bank"]
    assert int(err["status"], 16) == int(injected["status"], 16) == 0xB600000000000134
    assert int(err["mcgstatus"], 16) == int(injected["mcg_status"], 16)
    assert err["flags"] == ["VAL", "UC", "EN", "ADDRV", "PCC"]
    assert int(err["addr"], 16) == int(injected["addr"], 16)
    assert err["page"] == "0x1234000"
    # MISC was injected (0x86) but MISCV is clear: the kernel neither read
    # nor printed it, and the metadata must not claim one
    assert "misc" not in err and not any("MISC" in line for line in err["text"])
    # 0x0134 is 0000 0001 RRRR TTLL: cache hierarchy, data read, data, L0
    # (Linux's MCACOD_DATA "data load"), which Linux counts as a memory error
    assert err["error_code"] == {"code": "0x0134", "class": "cache hierarchy",
                                 "request": "data read", "type": "data", "level": "L0"}
    assert err["memory_error"] is True
    assert err["processor"] == boot_cpu_signature(records)
    assert err["socket"] == 0 and err["apic"] == 0
    assert err["extra"] == ["Machine check: Processor Context Corrupt"]
    json.dumps(verdict.to_metadata())

    (mc,) = parse_machine_checks(records)
    assert mc.status.uncorrected and mc.rip is None and mc.misc is None
    assert parse_ghes(records) == []


@pytest.mark.vmcore
def test_real_nmi(tmp_path: Path) -> None:
    records = real_records("6.1-nmi", tmp_path)
    verdict = classify(records)
    assert verdict.reason == "PANIC_NMI"
    assert verdict.panic_message == vmcorelab.metadata("6.1-nmi")["panic_contains"]
    # The reason byte is the guest's port 0x61 (NMI status and control), whose
    # bit 4 is the refresh toggle: it differs from run to run (0x21, 0x31), so
    # the expected line comes from this fixture's log as makedumpfile prints it.
    (uhhuh,) = [text for _ts, text in records
                if re.fullmatch(r"Uhhuh\. NMI received for unknown reason [0-9a-f]{2} on CPU 0\.",
                                text)]
    reason_byte = uhhuh.split("reason ")[1].split()[0]
    assert verdict.hardware_errors == [{
        "kind": "nmi", "type": "unknown", "reason": f"0x{reason_byte}", "cpu": 0,
        "text": [uhhuh]}]
    assert verdict.panic_cpu == 0
    assert verdict.evidence == [uhhuh, "Kernel panic - not syncing: NMI: Not continuing"]
    assert parse_machine_checks(records) == []


@pytest.mark.vmcore
@pytest.mark.parametrize("name", ["6.1-sysrq", "6.12-sysrq", "6.1-oom"])
def test_real_software_crash(name: str, tmp_path: Path) -> None:
    records = real_records(name, tmp_path)
    verdict = classify(records)
    assert verdict.reason is None and verdict.category == "software"
    assert vmcorelab.metadata(name)["panic_contains"] in (verdict.panic_message or "")
    assert verdict.hardware_errors == []
    assert verdict.panic_cpu is not None
    cpu_line = records[verdict.panic_index + 1][1]
    assert cpu_line.startswith(f"CPU: {verdict.panic_cpu} ")


@pytest.mark.vmcore
def test_real_log_continuation_lines_fold(tmp_path: Path) -> None:
    """The OOM log has multi-line records (Mem-Info): folded back into one
    record each, the message's own leading space kept."""
    records = real_records("6.1-oom", tmp_path)
    multi = [text for _ts, text in records if "\n" in text]
    assert any(text.startswith("active_anon:") and "\n active_file:" in text for text in multi)
    assert classify(records).panic_index == next(
        i for i, (_ts, text) in enumerate(records) if text.startswith("Kernel panic"))


# --------------------------------------------------------------------------
# The 2011 proposal's screen log (Linux 3.1: no "mce: " prefix, OVER set)

PROPOSAL_2011 = """\
[ 4934.748416] [Hardware Error]: CPU 0: Machine Check Exception: 6 Bank 2: f580000000000000
[ 4934.749079] [Hardware Error]: RIP 73:<000000001eadbabe>
[ 4934.749079] [Hardware Error]: TSC ef029a23417 ADDR 1234
[ 4934.749079] [Hardware Error]: PROCESSOR 0:663 TIME 1317149322 SOCKET 0 APIC 0
[ 4934.749079] [Hardware Error]: Run the above through 'mcelog --ascii'
[ 4934.749079] [Hardware Error]: Machine check: Overflowed uncorrected
[ 4934.749079] Kernel panic - not syncing: Fatal machine check on current CPU
[ 4934.749079] Pid: 1379, comm: mce-inject Tainted: G M 3.1.0-rc4.slimdump+ #34
[ 4934.749079] Call Trace:
[ 4934.749079] [<ffffffff81084922>] panic+0xbc/0x1cf
[ 4934.749079] [<ffffffff8104c43b>] mce_panic+0x187/0x1a4
"""


def test_proposal_2011_log() -> None:
    records = records_from_dmesg(PROPOSAL_2011)
    verdict = classify(records)
    assert verdict.reason == "PANIC_MCE"
    assert verdict.panic_message == "Fatal machine check on current CPU"
    assert verdict.panic_cpu == 0          # 3.1 printed "Pid:", not "CPU: N PID:"
    (err,) = verdict.hardware_errors
    assert err["status"] == "0xf580000000000000"
    assert err["flags"] == ["VAL", "OVER", "UC", "EN", "ADDRV", "S", "AR"]
    assert err["mcgstatus"] == "0x6"
    assert err["rip"] == "73:<000000001eadbabe>"
    assert err["addr"] == "0x1234" and err["page"] == "0x1000"
    assert err["error_code"] == {"code": "0x0000", "class": "no error"}
    assert err["processor"] == "0:663" and err["time"] == 1317149322
    assert "microcode" not in err
    assert err["extra"] == ["Run the above through 'mcelog --ascii'",
                            "Machine check: Overflowed uncorrected"]
    assert len(err["text"]) == 6


def test_proposal_2011_log_matches_the_reference() -> None:
    """The embedded log is the reference's, the mail's line wrapping undone.
    tests/data/slimdump-proposal-2011.txt is a verbatim copy of the
    project's reference/slimdump-proposal-2011.txt (the 2011 LKML mail,
    sha256 651f329f...c25e), so that a clean clone has it."""
    path = Path(__file__).resolve().parent / "data/slimdump-proposal-2011.txt"
    unwrapped: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("[ 4934."):
            unwrapped.append(line)
        elif unwrapped and line and not line.startswith(("[", "#", ".")):
            unwrapped[-1] += " " + line
    assert set(PROPOSAL_2011.splitlines()) <= set(unwrapped)


# --------------------------------------------------------------------------
# Synthetic logs

GHES_FATAL = [
    "{2}[Hardware Error]: Hardware error from APEI Generic Hardware Error Source: 1",
    "{2}[Hardware Error]: event severity: fatal",
    "{2}[Hardware Error]:  Error 0, type: fatal",
    "{2}[Hardware Error]:  fru_text: Card03, ChnA, DIMM0",
    "{2}[Hardware Error]:   section_type: memory error",
    "{2}[Hardware Error]:   error_status: 0x0000000000000400",
    "{2}[Hardware Error]:   physical_address: 0x0000000012345000",
    "{2}[Hardware Error]:   node: 0 card: 1 module: 2 rank: 0 bank: 3 device: 4 row: 5",
    "{2}[Hardware Error]:   error_type: 2, single-bit ECC",
]
GHES_CORRECTED = [
    "{1}[Hardware Error]: Hardware error from APEI Generic Hardware Error Source: 0",
    "{1}[Hardware Error]: It has been corrected by h/w and requires no further action",
    "{1}[Hardware Error]: event severity: corrected",
    "{1}[Hardware Error]:  Error 0, type: corrected",
    "{1}[Hardware Error]:   section_type: memory error",
    "{1}[Hardware Error]:   physical_address: 0x00000000abcde040",
    "{1}[Hardware Error]:   node:1 card:0 module:0 rank:1 bank_group:2 bank_address:1",
]


def test_ghes_fatal_memory_error() -> None:
    records = log((100, "Booted"), *[(100.5, line) for line in GHES_CORRECTED],
                  (3000, "something unrelated"), *[(3000.1, line) for line in GHES_FATAL],
                  (3000.1, "Kernel panic - not syncing: Fatal hardware error!"))
    old, new = parse_ghes(records)
    assert (old.seq, old.source, old.severity, old.fatal) == (1, 0, "corrected", False)
    assert old.sections[0]["fields"]["bank_group"] == "2"
    assert (new.seq, new.source, new.severity, new.fatal) == (2, 1, "fatal", True)
    (section,) = new.sections
    assert section["type"] == "memory error" and section["severity"] == "fatal"
    assert section["physical_address"] == 0x12345000
    assert section["fields"]["fru_text"] == "Card03, ChnA, DIMM0"
    assert section["fields"]["error_type"] == "2, single-bit ECC"
    assert {k: section["fields"][k] for k in ("node", "card", "module", "rank", "bank")} == \
        {"node": "0", "card": "1", "module": "2", "rank": "0", "bank": "3"}

    verdict = classify(records)
    assert verdict.reason == "PANIC_GHES" and verdict.panic_message == "Fatal hardware error!"
    (err,) = verdict.hardware_errors            # the corrected one is another event
    assert err["kind"] == "ghes" and err["severity"] == "fatal"
    assert err["sections"][0]["physical_address"] == "0x12345000"
    assert err["sections"][0]["page"] == "0x12345000"
    assert err["text"] == GHES_FATAL
    assert "bank" not in err                    # the report tells MCEs by a top-level bank
    json.dumps(verdict.to_metadata())


def test_ghes_panic_with_prefix() -> None:
    records = log(*[(5, line) for line in GHES_FATAL],
                  (5, "Kernel panic - not syncing: GHES: Fatal hardware error"))
    verdict = classify(records)
    assert verdict.reason == "PANIC_GHES" and len(verdict.hardware_errors) == 1


MCE_CORRECTED = [
    "mce: [Hardware Error]: Machine check events logged",
    "mce: [Hardware Error]: CPU 1: Machine Check: 0 Bank 7: 9c00000000010091",
    "mce: [Hardware Error]: TSC 0 ADDR 5f6a7b040 MISC 140000086 ",
    "mce: [Hardware Error]: PROCESSOR 0:50654 TIME 1700000000 SOCKET 0 APIC 2 microcode 2006e05",
]


def test_corrected_machine_check_then_software_panic() -> None:
    records = log((1, "Linux version 6.1.0"), *[(100, line) for line in MCE_CORRECTED],
                  (3999, "traps: init[1] general protection fault ip:7f sp:7ff error:0"),
                  (4000, "Kernel panic - not syncing: Attempted to kill init! "
                         "exitcode=0x0000000b"),
                  (4000, "CPU: 3 PID: 1 Comm: init Not tainted 6.1.0 #1"))
    (mc,) = parse_machine_checks(records)
    assert (mc.cpu, mc.bank, mc.mcgstatus, mc.uncorrected) == (1, 7, 0, False)
    meta = mc.to_metadata()
    assert meta["flags"] == ["VAL", "EN", "MISCV", "ADDRV"]
    assert meta["addr"] == "0x5f6a7b040" and meta["page"] == "0x5f6a7b000"
    assert meta["misc"] == "0x140000086"
    assert meta["error_code"] == {"code": "0x0091", "class": "memory controller",
                                  "transaction": "memory read error", "channel": 1}
    assert meta["model_code"] == "0x0001"

    verdict = classify(records)
    assert verdict.reason is None and verdict.category == "software"
    assert verdict.panic_message == "Attempted to kill init! exitcode=0x0000000b"
    assert verdict.hardware_errors == [] and verdict.panic_cpu == 3
    assert verdict.evidence == [records[verdict.panic_index][1]]


def _fatal_mce(cpu: int, status: str, t: float, *, final: bool = True) -> list[tuple[float, str]]:
    lines = [
        (t, f"mce: [Hardware Error]: CPU {cpu}: Machine Check Exception: 5 Bank 4: {status}"),
        (t, "mce: [Hardware Error]: RIP !INEXACT! 10:<ffffffff8105d8c2> {intel_idle+0x52/0x90}"),
        (t, "mce: [Hardware Error]: TSC 3d2a7e4c1d ADDR 2ab4c5000 MISC 86"),
        (t, f"mce: [Hardware Error]: PROCESSOR 0:50654 TIME 1700000000 SOCKET 0 APIC {cpu:x} "
            "microcode 2006e05"),
        (t, "mce: [Hardware Error]: Run the above through 'mcelog --ascii'"),
    ]
    if final:
        lines.append((t, "mce: [Hardware Error]: Machine check: Processor context corrupt"))
    return lines


def test_only_the_panics_machine_checks_are_reported() -> None:
    records = log(*_fatal_mce(1, "be00000000800090", 100),
                  (101, "mce: Recovered, kernel continues"),
                  *_fatal_mce(0, "be000000000100a1", 4000, final=False),
                  *_fatal_mce(2, "be00000000800134", 4000.2),
                  (4000.2, "Kernel panic - not syncing: Fatal machine check"))
    assert len(parse_machine_checks(records)) == 3
    verdict = classify(records)
    assert verdict.reason == "PANIC_MCE"
    assert [(e["cpu"], e["status"]) for e in verdict.hardware_errors] == \
        [(0, "0xbe000000000100a1"), (2, "0xbe00000000800134")]
    assert verdict.panic_cpu == 2              # mce_panic() prints the final record last
    first = verdict.hardware_errors[0]
    assert first["rip"] == "!INEXACT! 10:<ffffffff8105d8c2> {intel_idle+0x52/0x90}"
    assert first["misc"] == "0x86"            # MISCV set and printed
    assert first["error_code"]["transaction"] == "memory write error"
    assert first["flags"] == ["VAL", "UC", "EN", "MISCV", "ADDRV", "PCC"]


def test_machine_checks_before_an_earlier_oops_are_not_this_panics() -> None:
    records = log(*_fatal_mce(1, "be00000000800090", 10),
                  (11, "BUG: kernel NULL pointer dereference, address: 0000000000000008"),
                  (11, "Oops: 0002 [#1] PREEMPT SMP NOPTI"),
                  (12, "Kernel panic - not syncing: Fatal machine check"))
    verdict = classify(records)
    assert verdict.reason == "PANIC_MCE" and verdict.hardware_errors == []


@pytest.mark.parametrize("message", [
    "Fatal local machine check", "Local fatal machine check!",
    "Fatal machine check on current CPU", "Fatal Machine check",
    "Fatal machine check from unknown source", "Machine check from unknown source",
    "Timeout synchronizing machine check over CPUs",
    "Timeout: Not all CPUs entered broadcast exception handler",
    "Timeout: Monarch CPU unable to finish machine check processing",
    "Failed kernel mode recovery",
    "Too many consecutive machine checks while accessing user data",
])
def test_mce_panic_messages(message: str) -> None:
    verdict = classify(log((1, f"Kernel panic - not syncing: {message}")))
    assert verdict.reason == "PANIC_MCE" and verdict.panic_message == message


@pytest.mark.parametrize("message", ["Processor context corrupt", "Uncorrected",
                                     "Action required: data load in error recoverable "
                                     "area of kernel"])
def test_severity_message_needs_a_machine_check(message: str) -> None:
    alone = classify(log((1, f"Kernel panic - not syncing: {message}")))
    assert alone.reason is None and alone.category == "software"
    with_mce = classify(log(*_fatal_mce(0, "bd80000000100134", 1),
                            (1, f"Kernel panic - not syncing: {message}")))
    assert with_mce.reason == "PANIC_MCE" and len(with_mce.hardware_errors) == 1


@pytest.mark.parametrize(("line", "panic", "kind", "reason", "cpu"), [
    ("NMI: IOCK error (debug interrupt?) for reason 71 on CPU 3.",
     "NMI IOCK error: Not continuing", "io-check", "0x71", 3),
    ("NMI: PCI system error (SERR) for reason a1 on CPU 0.",
     "NMI: Not continuing", "pci-serr", "0xa1", 0),
    ("Uhhuh. NMI received for unknown reason 3d on CPU 1.",
     "NMI: Not continuing", "unknown", "0x3d", 1),
])
def test_nmi_panics(line: str, panic: str, kind: str, reason: str, cpu: int) -> None:
    verdict = classify(log((1, line), (1, f"Kernel panic - not syncing: {panic}")))
    assert verdict.reason == "PANIC_NMI" and verdict.panic_cpu == cpu
    assert verdict.hardware_errors == [{"kind": "nmi", "type": kind, "reason": reason,
                                        "cpu": cpu, "text": [line]}]


def test_nmi_panic_without_a_reason_line() -> None:
    verdict = classify(log((1, "Kernel panic - not syncing: NMI: Not continuing")))
    assert verdict.reason == "PANIC_NMI" and verdict.hardware_errors == []


def test_hard_lockup_is_software() -> None:
    records = log((50, "watchdog: Watchdog detected hard LOCKUP on cpu 2"),
                  (50, "Modules linked in: ext4"),
                  (50, "Kernel panic - not syncing: Hard LOCKUP"),
                  (50, "CPU: 2 UID: 0 PID: 0 Comm: swapper/2 Not tainted 6.12.0 #1"))
    verdict = classify(records)
    assert verdict.reason is None and verdict.category == "software"
    assert verdict.panic_cpu == 2 and verdict.hardware_errors == []


def test_no_panic() -> None:
    verdict = classify(log(*[(1, line) for line in MCE_CORRECTED]))
    assert (verdict.reason, verdict.category, verdict.panic_message, verdict.panic_index) == \
        (None, "no-panic", None, None)
    assert verdict.hardware_errors == [] and verdict.evidence == []
    assert classify([]).category == "no-panic"


def test_last_panic_line_decides() -> None:
    records = log(*_fatal_mce(0, "be00000000800090", 1),
                  (1, "Kernel panic - not syncing: Fatal machine check"),
                  (2, "Kernel panic - not syncing: Attempted to kill the idle task!"))
    verdict = classify(records)
    assert verdict.reason is None and verdict.panic_index == 7


def test_end_marker_stands_in_for_a_lost_panic_line() -> None:
    verdict = classify(log((1, "---[ end Kernel panic - not syncing: Fatal machine check ]---")))
    assert verdict.reason == "PANIC_MCE" and verdict.panic_message == "Fatal machine check"


def test_split_pr_cont_and_multiline_records() -> None:
    """A pr_cont() fragment that became a record of its own still belongs to
    the machine check; a 2.6-era record printed as one multi-line message
    parses too."""
    records = log((5, "mce: [Hardware Error]: CPU 2: Machine Check Exception: 5 Bank 1: "
                      "b200000000000150"),
                  (5, "mce: [Hardware Error]: TSC 1234 "),
                  (5, "ADDR 7f000 "),
                  (5, "mce: [Hardware Error]: PROCESSOR 0:306a9 TIME 1 SOCKET 0 APIC 4"),
                  (9, "CPU 1: Machine Check Exception: 0000000000000005\nBank 4: "
                      "b200000000070f0f\nTSC 10 ADDR 10000"))
    first, second = parse_machine_checks(records)
    assert first.addr == 0x7F000 and first.apic == 4
    assert first.status.error_code() == {"code": "0x0150", "class": "cache hierarchy",
                                         "request": "instruction fetch",
                                         "type": "instruction", "level": "L0"}
    assert (second.cpu, second.bank, second.mcgstatus, second.addr) == (1, 4, 5, 0x10000)
    assert second.record_index == 4


# --------------------------------------------------------------------------
# IA32_MCi_STATUS and the MCA error code (Intel SDM vol. 3B, 16.9)


def test_status_flags_and_codes() -> None:
    s = McaStatus(0xB600000000000134)
    assert s.flags() == ["VAL", "UC", "EN", "ADDRV", "PCC"]
    assert (s.mca_code, s.model_code, s.uncorrected) == (0x0134, 0, True)
    assert McaStatus(0xFF80000000000000).flags() == \
        ["VAL", "OVER", "UC", "EN", "MISCV", "ADDRV", "PCC", "S", "AR"]
    assert McaStatus(0).flags() == [] and not McaStatus(0).bit("VAL")
    assert McaStatus(0x8C00004000010091).model_code == 0x0001


@pytest.mark.parametrize(("code", "expected"), [
    # simple error codes
    (0x0000, {"class": "no error"}),
    (0x0001, {"class": "unclassified"}),
    (0x0002, {"class": "microcode ROM parity error"}),
    (0x0003, {"class": "external error"}),
    (0x0004, {"class": "FRC error"}),
    (0x0005, {"class": "internal parity error"}),
    (0x0006, {"class": "SMM handler code access violation"}),
    (0x0400, {"class": "internal timer error"}),
    (0x0E0B, {"class": "I/O error"}),            # not bus/interconnect, though it fits
    (0x0405, {"class": "internal unclassified"}),
    (0x07FF, {"class": "internal unclassified"}),
    # 0000 0000 1MMM CCCC
    (0x00A1, {"class": "memory controller", "transaction": "memory write error",
              "channel": 1}),
    (0x0091, {"class": "memory controller", "transaction": "memory read error",
              "channel": 1}),
    (0x10A1, {"class": "memory controller", "transaction": "memory write error",
              "channel": 1}),                     # F (filter) bit ignored
    (0x00C0, {"class": "memory controller", "transaction": "memory scrubbing error",
              "channel": 0}),                     # Linux's MCACOD_SCRUB
    (0x00BF, {"class": "memory controller", "transaction": "address/command error",
              "channel": "not specified"}),
    (0x008F, {"class": "memory controller", "transaction": "generic undefined request",
              "channel": "not specified"}),
    (0x00F2, {"class": "memory controller", "transaction": "reserved", "channel": 2}),
    # 0000 0001 RRRR TTLL
    (0x0136, {"class": "cache hierarchy", "request": "data read", "type": "data",
              "level": "L2"}),
    (0x0150, {"class": "cache hierarchy", "request": "instruction fetch",
              "type": "instruction", "level": "L0"}),   # Linux's MCACOD_INSTR
    (0x017A, {"class": "cache hierarchy", "request": "eviction", "type": "generic",
              "level": "L2"}),                           # Linux's MCACOD_L3WB
    (0x0183, {"class": "cache hierarchy", "request": "snoop", "type": "instruction",
              "level": "generic"}),
    (0x019C, {"class": "cache hierarchy", "request": "reserved", "type": "reserved",
              "level": "L0"}),
    # 0000 0000 0000 11LL and 0000 0000 0001 TTLL
    (0x000E, {"class": "generic cache hierarchy", "level": "L2"}),
    (0x000F, {"class": "generic cache hierarchy", "level": "generic"}),
    (0x0015, {"class": "TLB", "type": "data", "level": "L1"}),
    (0x001B, {"class": "TLB", "type": "generic", "level": "generic"}),
    # 0000 1PPT RRRR IILL
    (0x0E0F, {"class": "bus/interconnect", "participation": "generic", "timeout": False,
              "request": "generic error", "memory_io": "other transaction",
              "level": "generic"}),
    (0x0B31, {"class": "bus/interconnect",
              "participation": "local processor responded to request", "timeout": True,
              "request": "data read", "memory_io": "memory access", "level": "L1"}),
    (0x1809, {"class": "bus/interconnect",
              "participation": "local processor originated request", "timeout": False,
              "request": "generic error", "memory_io": "I/O", "level": "L1"}),
    # 0000 0010 1MMM CCCC, and what no table covers
    (0x0291, {"class": "extended memory", "transaction": "memory read error", "channel": 1}),
    (0x0040, {"class": "unknown"}),
])
def test_error_codes(code: int, expected: dict[str, object]) -> None:
    assert decode_error_code(code) == {"code": f"0x{code:04x}", **expected}


def test_every_error_code_decodes() -> None:
    memory = {"memory controller", "cache hierarchy", "generic cache hierarchy"}
    for code in range(0x10000):
        decoded = decode_error_code(code)
        assert decoded["class"], hex(code)
        # agrees with Linux's mce_is_memory_error() for Intel
        assert (decoded["class"] in memory) == is_memory_error(code), hex(code)


# --------------------------------------------------------------------------
# Garbage never raises

_FRAGMENTS = [
    "mce: [Hardware Error]: ", "[Hardware Error]: ", "{1}[Hardware Error]: ",
    "{99999999999}[Hardware Error]: ", "Kernel panic - not syncing: ", "CPU 0: Machine Check",
    "CPU 3: Machine Check Exception: 5 Bank 2: ", "Bank 1: ", "TSC ", "ADDR ", "MISC ",
    "PROCESSOR 2:", " TIME ", " SOCKET ", " APIC ", " microcode ", "RIP 10:<", "> {",
    "Hardware error from APEI Generic Hardware Error Source: ", "event severity: ",
    " Error 0, type: ", "section_type: ", "physical_address: 0x", "node: 1 card: ",
    "Uhhuh. NMI received for unknown reason ", " on CPU ", "NMI: Not continuing",
    "Fatal machine check", "Fatal hardware error!", "CPU: 1 PID: ", "Oops: 0000 [#1]",
    "---[ end Kernel panic - not syncing: ", "ffffffffffffffffffffffff", "b600000000000134",
    "12", "-1", " ", "\n", ":", "\x00", "\udcff", "é",
]
_line = st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=8)),
                 max_size=8).map("".join)
_records = st.lists(st.tuples(st.integers(min_value=-(2**63), max_value=2**64), _line),
                    max_size=30)


@settings(max_examples=300, deadline=None)
@given(_records)
def test_garbage_never_raises(records: list[tuple[int, str]]) -> None:
    for mc in parse_machine_checks(records):
        json.dumps(mc.to_metadata())
    for g in parse_ghes(records):
        json.dumps(g.to_metadata())
    verdict = classify(records)
    assert verdict.category in {"hardware", "software", "no-panic"}
    assert (verdict.reason is None) == (verdict.category != "hardware")
    json.dumps(verdict.to_metadata())


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(), st.text()), max_size=20))
def test_random_text_never_raises(records: list[tuple[int, str]]) -> None:
    parse_machine_checks(records)
    parse_ghes(records)
    classify(records)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_any_status_decodes(value: int) -> None:
    status = McaStatus(value)
    assert set(status.flags()) <= {"VAL", "OVER", "UC", "EN", "MISCV", "ADDRV", "PCC", "S",
                                   "AR"}
    assert status.error_code()["code"] == f"0x{value & 0xFFFF:04x}"
