"""Why did the kernel panic?  Hardware (which kind) or software, from its log.

The protocol (nocoredump-note.md, "Detection on stock kernels") decides from
the panic line alone, the last ``Kernel panic - not syncing: <msg>`` record:
a corrected machine check logged an hour before a NULL dereference must not
turn that crash into a hardware crash.  The hardware-error records printed
just before the panic (within ``WINDOW_NS`` and after any earlier panic or
Oops) are then attached as the evidence of the same event.

Messages, from Linux's own sources:

* PANIC_MCE: the fixed strings arch/x86/kernel/cpu/mce/core.c passes to
  ``mce_panic()`` across versions (``Fatal local machine check``, ``Fatal
  machine check on current CPU``, the rendezvous timeouts...), and any message
  naming a machine check.  A message that is one of severity.c's grading
  texts (``Processor context corrupt``...) counts only when a machine-check
  record precedes it, since alone it proves nothing.
* PANIC_GHES: ``Fatal hardware error!`` (drivers/acpi/apei/ghes.c, newer
  kernels with the ``GHES: `` prefix).
* PANIC_NMI: ``NMI: Not continuing`` and ``NMI IOCK error: Not continuing``
  (arch/x86/kernel/nmi.c).  The hard-lockup watchdog's panic is software.
"""

from __future__ import annotations

import re

from slimdump.record import field, record
from slimdump.triage.loglines import log_lines

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up)
if TYPE_CHECKING:
    from typing import Any

PANIC_PREFIX = "Kernel panic - not syncing: "
_END_PREFIX = "---[ end Kernel panic"
_END_MARKER = re.compile(r"^---\[ end Kernel panic - not syncing: (.*?)(?: \]---)?\s*$")
# An Oops header: "Oops: 0002 [#1] SMP", "general protection fault: 0000 [#1]", ...
_OOPS = re.compile(r"^(?:Oops\b|[\w ,()-]{1,60}: [0-9a-f]{4} \[#\d{1,4}\])")
_CPU_LINE = re.compile(r"^CPU: (\d{1,6}) (?:UID: \d{1,10} )?PID: (-?\d{1,10})\b")
_PANIC_CPU_LOOKAHEAD = 8          # lines after the panic line to look for "CPU: N PID: M"

# Records printed this long before the panic line still belong to its event.
WINDOW_NS = 10 * 1_000_000_000

# mce_panic() messages, lower case (3.x-6.x; 2.6.3x wrote "Fatal Machine check").
MCE_PANICS = frozenset(m.lower() for m in (
    "Fatal machine check",
    "Fatal local machine check",
    "Local fatal machine check!",
    "Fatal machine check on current CPU",
    "Fatal machine check from unknown source",
    "Machine check from unknown source",
    "Machine check",
    "Timeout synchronizing machine check over CPUs",
    "Timeout: Not all CPUs entered broadcast exception handler",
    "Timeout: Subject CPUs unable to finish machine check processing",
    "Timeout: Monarch CPU unable to finish machine check processing",
    "Timeout: Monarch CPU did not finish machine check processing",
    "Panicing machine check CPU died",
    "Failed kernel mode recovery",
    "Too many consecutive machine checks while accessing user data",
    "Consecutive machine checks to different user pages",
))
_MCE_WORDS = re.compile(r"\bmachine[ -]check", re.IGNORECASE)

# severity.c grading messages of panic/action-required/uncorrected rank
# (and AMD's wording); count only with a machine-check record before them.
MCE_SEVERITY_MESSAGES = frozenset(m.lower() for m in (
    "Processor context corrupt",
    "MCIP not set in MCA handler",
    "Neither restart nor error IP",
    "In kernel and no restart IP",
    "Illegal combination (UCNA with AR=1)",
    "Action required with lost events",
    "Action required: data load in error recoverable area of kernel",
    "Action required: data load error in a user process",
    "Action required: instruction fetch error in a user process",
    "Data load in unrecoverable area of kernel",
    "Instruction fetch error in kernel",
    "Action required: unknown MCACOD",
    "Overflowed uncorrected",
    "Uncorrected",
    "Uncorrected error",
    "CPU context corrupt",
))

_GHES_PANIC = re.compile(r"^(?:GHES: )?Fatal hardware error\b", re.IGNORECASE)
_NMI_PANIC = re.compile(r"^(?:NMI: Not continuing|NMI IOCK error: Not continuing"
                        r"|NMI: PCI system error \(SERR\))", re.IGNORECASE)
_NMI_LINE = re.compile(
    r"^(?P<text>(?:Uhhuh\. NMI received for unknown reason"
    r"|NMI: IOCK error \(debug interrupt\?\) for reason"
    r"|NMI: PCI system error \(SERR\) for reason)"
    r" (?P<reason>[0-9a-fA-F]{1,4}) on CPU (?P<cpu>\d{1,6})\.?)")
_NMI_KINDS = (("Uhhuh", "unknown"), ("NMI: IOCK", "io-check"), ("NMI: PCI", "pci-serr"))

HARDWARE = "hardware"
SOFTWARE = "software"
NO_PANIC = "no-panic"


@record(frozen=True)
class Classification:
    """The verdict on one log; see the module docstring for the rules."""

    reason: str | None
    panic_message: str | None
    panic_index: int | None
    category: str
    hardware_errors: list[dict[str, Any]] = field(default_factory=list)
    panic_cpu: int | None = None
    evidence: list[str] = field(default_factory=list)

    def to_metadata(self) -> dict[str, Any]:
        """JSON-ready, every field by name."""
        return {"reason": self.reason, "panic_message": self.panic_message,
                "panic_index": self.panic_index, "category": self.category,
                "panic_cpu": self.panic_cpu,
                "hardware_errors": [dict(e) for e in self.hardware_errors],
                "evidence": list(self.evidence)}


@record(frozen=True)
class _Panic:
    """A panic (or Oops) line: record index, timestamp, message, the line."""

    index: int
    ts_nsec: int
    message: str
    line: str


def _find_panic(records: list[tuple[int, str]]) -> tuple[_Panic | None, int]:
    """The last panic line, and the record index of the last panic, Oops
    or end-of-panic line before it (-1 when none): where its event starts.
    Only when no panic line survived does the ``---[ end Kernel panic``
    marker stand in for it."""
    marks: list[tuple[str, _Panic]] = []
    for index, ts, line in log_lines(records):
        text = line.strip()
        # the literal tests spare most lines the regular expressions, whose
        # matches need them: the log is read on every capture
        if text.startswith(PANIC_PREFIX):
            marks.append(("panic", _Panic(index, ts, text[len(PANIC_PREFIX):].strip(), text)))
        elif text.startswith(_END_PREFIX) and (m := _END_MARKER.match(text)):
            marks.append(("end", _Panic(index, ts, m.group(1).strip(), text)))
        elif (text.startswith("Oops") or "[#" in text) and _OOPS.match(text):
            marks.append(("oops", _Panic(index, ts, "", text)))
    chosen = ([p for kind, p in marks if kind == "panic"]
              or [p for kind, p in marks if kind == "end"])
    if not chosen:
        return None, -1
    panic = chosen[-1]
    earlier = [p.index for _kind, p in marks if p.index < panic.index]
    return panic, (earlier[-1] if earlier else -1)


def _in_event(index: int, ts: int, panic: _Panic, start: int) -> bool:
    """Printed before the panic line, after the previous panic or Oops, and
    at most WINDOW_NS earlier: part of the event that panicked."""
    return start < index < panic.index and panic.ts_nsec - ts <= WINDOW_NS


def _nmi_errors(records: list[tuple[int, str]], panic: _Panic,
                start: int) -> list[dict[str, Any]]:
    """The NMI reason lines of arch/x86/kernel/nmi.c in the panic's event,
    decoded: the reason is the system control port B value (hex)."""
    found = []
    for index, ts, line in log_lines(records):
        if not _in_event(index, ts, panic, start):
            continue
        m = _NMI_LINE.match(line.strip())
        if m:
            kind = next(k for prefix, k in _NMI_KINDS if m.group("text").startswith(prefix))
            found.append({"kind": "nmi", "type": kind, "reason": f"0x{int(m['reason'], 16):02x}",
                          "cpu": int(m["cpu"]), "text": [line.strip()]})
    return found


def _panic_cpu(records: list[tuple[int, str]], panic: _Panic) -> int | None:
    """From ``CPU: N PID: M`` just after the panic line (dump_stack())."""
    seen = 0
    for index, _ts, line in log_lines(records):
        if index <= panic.index:
            continue
        m = _CPU_LINE.match(line.strip())
        if m:
            return int(m.group(1))
        seen += 1
        if seen >= _PANIC_CPU_LOOKAHEAD:
            break
    return None


def _mce_message(message: str) -> str | None:
    """"panic" when this panic message is a machine-check panic whatever the
    log holds, "severity" when it is one only with a machine-check record
    before it, None when it is none; see the module docstring."""
    low = message.lower()
    if low in MCE_PANICS or _MCE_WORDS.search(message):
        return "panic"
    return "severity" if low.rstrip(".!") in MCE_SEVERITY_MESSAGES else None


def classify(records: list[tuple[int, str]]) -> Classification:
    """Classify the crash from the kernel log's records ``(ts_nsec, text)``."""
    panic, start = _find_panic(records)
    if panic is None:
        return Classification(None, None, None, NO_PANIC)
    message = panic.message
    mce_message = _mce_message(message)
    mces: list[Any] = []
    if mce_message:
        # the machine-check and GHES parsers (about 30 regular expressions)
        # are imported for their panics only: a software crash's capture
        # does not pay for them at start-up
        from slimdump.triage.mce import parse_machine_checks
        mces = [mc for mc in parse_machine_checks(records)
                if _in_event(mc.record_index, mc.ts_nsec, panic, start)]
    reason: str | None = None
    errors: list[dict[str, Any]] = []
    evidence: list[str] = []
    cpu = _panic_cpu(records, panic)
    if mce_message == "panic" or (mce_message == "severity" and mces):
        reason = "PANIC_MCE"
        errors = [mc.to_metadata() for mc in mces]
        evidence = [mc.text[0] for mc in mces]
        if cpu is None and mces:
            cpu = mces[-1].cpu           # mce_panic() prints the final record last
    elif _GHES_PANIC.match(message):
        reason = "PANIC_GHES"
        from slimdump.triage.ghes import parse_ghes
        ghes = [g for g in parse_ghes(records)
                if _in_event(g.record_index, g.ts_nsec, panic, start)]
        errors = [g.to_metadata() for g in ghes]
        evidence = [g.text[0] for g in ghes]
    elif _NMI_PANIC.match(message):
        reason = "PANIC_NMI"
        errors = _nmi_errors(records, panic, start)
        evidence = [e["text"][0] for e in errors]
        if cpu is None and errors:
            cpu = errors[-1]["cpu"]
    evidence.append(panic.line)
    return Classification(reason, message, panic.index, HARDWARE if reason else SOFTWARE,
                          errors, cpu, evidence)
