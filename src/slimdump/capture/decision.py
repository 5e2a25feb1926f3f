"""The decision: what capture writes for a dump source, and why.

In order:

1. the kernel left an NT_NOCOREDUMP note: its reason counts, and nothing of
   the crashed kernel's memory is read unless the policy or the user asks
   for the log;
2. no note (stock kernels): read the crashed kernel's log buffer (only its
   pages), classify the panic (:mod:`slimdump.triage.classify`), and take
   the reason from a hardware-error panic;
3. the policy maps the reason to an action (:mod:`slimdump.policy`);
   ``--full`` overrides it.  If the log cannot be read, or anything in
   detection fails, the decision says so and is the normal dump: a dump is
   never lost because detection failed (:func:`decide_safely`).
"""

from __future__ import annotations

import os
import time

from slimdump import __version__
from slimdump.errors import DumpError, describe
from slimdump.kernel.log import KernelLogText, read_kernel_log
from slimdump.notes import (
    NT_SLIMDUMP_META,
    NoCoreDump,
    decode_metadata,
    find_nocoredump,
    is_slimdump_note,
)
from slimdump.policy import DMESG, FULL, NORMAL, SLIM, Policy
from slimdump.record import field, record
from slimdump.sources import DumpSource
from slimdump.triage.classify import Classification, classify

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up)
if TYPE_CHECKING:
    from typing import Any

KERNEL_NOTE, KERNEL_LOG = "kernel-note", "kernel-log"


@record
class Decision:
    """What capture will write and why."""

    action: str                                   # a policy action
    reason: NoCoreDump | None                     # the reason note (read or made)
    detected_by: str | None                       # KERNEL_NOTE, KERNEL_LOG or None
    why: str                                      # one line for the user
    classification: Classification | None = None  # when the log was classified
    log: KernelLogText | None = None              # when the log was read
    warnings: list[str] = field(default_factory=list)
    #: --full: the complete dump whatever the reason, a machine check's page
    #: included (the log may still be read, for the triage slimdump)
    forced_full: bool = False

    @property
    def writes_slimdump(self) -> bool:
        return self.action in (SLIM, DMESG)


def try_log(source: DumpSource, decision_warnings: list[str]) -> KernelLogText | None:
    try:
        return read_kernel_log(source)
    except Exception as exc:        # detection must never cost the dump
        problem = exc.problem if isinstance(exc, DumpError) else describe(exc)
        decision_warnings.append(f"cannot read the kernel log: {problem}")
        return None


def decide(source: DumpSource, policy: Policy | None = None, *, full: bool = False,
           want_log: bool = False) -> Decision:
    """Choose the output for ``source``: reason, action, and the log when it
    was needed (detection, the ``dmesg`` action, or ``want_log``)."""
    decision = _decide(source, policy, full=full, want_log=want_log)
    decision.forced_full = full
    return decision


def _decide(source: DumpSource, policy: Policy | None = None, *, full: bool = False,
            want_log: bool = False) -> Decision:
    policy = policy or Policy()
    note = find_nocoredump(source.notes)
    warnings: list[str] = []
    if note is not None:
        reason = NoCoreDump.from_note(note)
        action = FULL if full else policy.action_for(reason.reason)
        log = try_log(source, warnings) if (action == DMESG or want_log) else None
        why = f"the kernel left an NT_NOCOREDUMP note ({reason.reason})"
        return Decision(action, reason, KERNEL_NOTE, why, None, log, warnings)

    if full and not want_log:
        return Decision(FULL, None, None, "complete dump requested (--full)", None, None,
                        warnings)
    log = try_log(source, warnings)
    if log is None:
        action = FULL if full else NORMAL
        return Decision(action, None, None, "no NT_NOCOREDUMP note and no readable kernel "
                        "log: saving the normal dump", None, None, warnings)
    verdict = classify(log.records)
    if verdict.reason is None:
        panic = verdict.panic_message or "no panic line in the log"
        action = FULL if full else policy.action_for(None)
        return Decision(action, None, None, f"software crash ({panic})", verdict, log, warnings)
    reason = NoCoreDump(verdict.reason, verdict.panic_message or "")
    action = FULL if full else policy.action_for(reason.reason)
    why = f"the kernel log shows a hardware crash: {verdict.panic_message}"
    return Decision(action, reason, KERNEL_LOG, why, verdict, log, warnings)


def previous_metadata(source: DumpSource) -> dict[str, Any] | None:
    """The SLIMDUMP metadata of a source that is itself a slimdump."""
    for note in source.notes:
        if is_slimdump_note(note, NT_SLIMDUMP_META):
            try:
                return decode_metadata(note)
            except ValueError:
                return None
    return None


def slim_metadata(source: DumpSource, decision: Decision, *,
                  stamp: bool = True) -> dict[str, Any]:
    """The SLIMDUMP metadata object (nocoredump-note.md, "slimdump's own
    notes").  ``reason`` is null for a software crash (a normal dump that
    records partial pages); ``stamp=False`` leaves out ``captured_at``, so
    that two captures of one source are one file."""
    memory = [seg.as_metadata() for seg in source.segments]
    previous = previous_metadata(source)
    if not memory and previous:
        memory = previous.get("memory", [])
    verdict = decision.classification
    meta: dict[str, Any] = {
        "format": 1,
        "reason": decision.reason.reason if decision.reason else None,
        "detected_by": decision.detected_by,
        "tool": {"name": "slimdump", "version": __version__},
        "captured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": {"path": os.path.abspath(source.path), "size": source.size,
                   "format": source.format},
        "memory": memory,
        "hardware_errors": verdict.hardware_errors if verdict else [],
    }
    if not stamp:
        del meta["captured_at"]
    if verdict is not None:
        meta["panic"] = {"message": verdict.panic_message, "cpu": verdict.panic_cpu}
    return meta


def machine_check_pfns(decision: Decision, page_size: int = 4096) -> list[int]:
    """Page frames of the fatal machine checks' ADDR, found by detection
    (none when --full asked for every byte)."""
    verdict = None if decision.forced_full else decision.classification
    pfns = []
    for err in verdict.hardware_errors if verdict else []:
        page = err.get("page") if isinstance(err, dict) else None
        if isinstance(page, str):
            try:
                pfns.append(int(page, 16) // page_size)
            except ValueError:
                continue
    return sorted(set(pfns))



def decide_safely(source: DumpSource, policy: Policy | None = None, *, full: bool = False,
                  want_log: bool = False) -> Decision:
    """:func:`decide`, except that any failure in detection (a malformed
    note, a log that breaks the classifier) becomes a warning and the
    normal dump (``full``: the complete one)."""
    try:
        return decide(source, policy, full=full, want_log=want_log)
    except Exception as exc:        # never lose a dump: the normal one is always possible
        problem = exc.problem if isinstance(exc, DumpError) else describe(exc)
        return Decision(FULL if full else NORMAL, None, None,
                        "cannot tell why the machine crashed: saving the normal dump", None,
                        None, [f"detection failed ({problem})"])
