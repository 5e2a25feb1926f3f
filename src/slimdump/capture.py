"""Capture: from a dump source to the file that should be kept.

The decision, in order:

1. the kernel left an NT_NOCOREDUMP note: its reason counts, and nothing of
   the crashed kernel's memory is read unless the policy or the user asks
   for the log;
2. no note (stock kernels): read the crashed kernel's log buffer (only its
   pages), classify the panic (:mod:`slimdump.triage.classify`), and write
   the NT_NOCOREDUMP note ourselves for a hardware reason;
3. the policy maps the reason to an action (:mod:`slimdump.policy`);
   ``--full`` overrides it.  If the log cannot be read, capture says so and
   saves the normal dump: a dump is never lost because detection failed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from slimdump import __version__
from slimdump.errors import DumpError
from slimdump.kernel.log import KernelLogText, read_kernel_log
from slimdump.notes import (
    NT_SLIMDUMP_LOG,
    NT_SLIMDUMP_META,
    NoCoreDump,
    decode_metadata,
    find_nocoredump,
    is_slimdump_note,
    log_note,
    metadata_note,
)
from slimdump.policy import DMESG, FULL, NORMAL, SLIM, Policy
from slimdump.progress import human_size
from slimdump.record import field, record, replace
from slimdump.sources import DumpSource, ElfCore, open_dump
from slimdump.triage.classify import Classification, classify
from slimdump.writers.atomic import AtomicOutput
from slimdump.writers.elfcopy import write_full_copy
from slimdump.writers.options import ELF, FLAT, DumpOptions, output_path
from slimdump.writers.slim import slimdump_bytes

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

    @property
    def writes_slimdump(self) -> bool:
        return self.action in (SLIM, DMESG)


@record
class CaptureResult:
    decision: Decision
    dst: str
    size: int
    source_bytes_read: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def _try_log(source: DumpSource, decision_warnings: list[str]) -> KernelLogText | None:
    try:
        return read_kernel_log(source)
    except DumpError as exc:
        decision_warnings.append(f"cannot read the kernel log: {exc.problem}")
        return None


def decide(source: DumpSource, policy: Policy | None = None, *, full: bool = False,
           want_log: bool = False) -> Decision:
    """Choose the output for ``source``: reason, action, and the log when it
    was needed (detection, the ``dmesg`` action, or ``want_log``)."""
    policy = policy or Policy()
    note = find_nocoredump(source.notes)
    warnings: list[str] = []
    if note is not None:
        reason = NoCoreDump.from_note(note)
        action = FULL if full else policy.action_for(reason.reason)
        log = _try_log(source, warnings) if (action == DMESG or want_log) else None
        why = f"the kernel left an NT_NOCOREDUMP note ({reason.reason})"
        return Decision(action, reason, KERNEL_NOTE, why, None, log, warnings)

    if full and not want_log:
        return Decision(FULL, None, None, "complete dump requested (--full)", None, None,
                        warnings)
    log = _try_log(source, warnings)
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


def write_slimdump(source: DumpSource, decision: Decision, dst: str | None, *,
                   overwrite: bool = False, flat: bool = False) -> int:
    """Write the slimdump for ``decision`` (``flat``: as a flattened stream,
    see :func:`write_small_output`); return the slimdump's size in bytes."""
    assert decision.reason is not None
    log = decision.log if decision.action == DMESG else None
    kept = [note for note in source.notes
            if find_nocoredump([note]) is None and not is_slimdump_note(note, NT_SLIMDUMP_META)
            and not (log is not None and is_slimdump_note(note, NT_SLIMDUMP_LOG))]
    # The reason note that counts goes after the source's own notes; any
    # further reason notes the source had are dropped (the first one counts).
    # ``slim``: headers and notes only, even when detection read the log;
    # ``dmesg``: the log too (a slimdump's own log note is replaced by it).
    notes = [*kept, decision.reason.to_note(), metadata_note(slim_metadata(source, decision))]
    if log is not None:
        notes.append(log_note(log.text))
    data = slimdump_bytes(source.header, notes)
    write_small_output(data, dst, flat=flat, overwrite=overwrite)
    return len(data)


def write_small_output(data: bytes, dst: str | None, *, flat: bool = False,
                       overwrite: bool = False) -> None:
    """A whole file that fits in memory (a slimdump) to ``dst``.  ``flat``:
    as a flattened stream (-F), so that what a service pipes from standard
    output (kdump-tools: ``makedumpfile -F ... | compress > dump``) turns
    back into the file with ``slimdump reassemble`` or ``makedumpfile -R``;
    ``dst`` None or "-" is standard output then."""
    if not flat:
        with AtomicOutput(output_path(dst), overwrite=overwrite) as out:
            out.write(data, 0)
            out.commit()
        return
    from slimdump.writers.flat import flat_output

    with flat_output(dst, overwrite=overwrite) as stream:
        stream.write(data, 0)


def machine_check_pfns(decision: Decision, page_size: int = 4096) -> list[int]:
    """Page frames of the fatal machine checks' ADDR, found by detection."""
    verdict = decision.classification
    pfns = []
    for err in verdict.hardware_errors if verdict else []:
        page = err.get("page") if isinstance(err, dict) else None
        if isinstance(page, str):
            try:
                pfns.append(int(page, 16) // page_size)
            except ValueError:
                continue
    return sorted(set(pfns))


def write_normal_or_full(source: DumpSource, decision: Decision, dst: str | None,
                         options: DumpOptions, *, overwrite: bool,
                         progress: bool | None,
                         work_dir: str | None = None) -> tuple[int, dict[str, Any]]:
    """The dump for the ``normal`` and ``full`` actions.

    ``full``: the complete vmcore, a byte-exact copy of an ELF source; for a
    hardware crash whose machine check named a page, every page but that
    one, at dump level 0, in the chosen format, the page recorded in a
    SLIMDUMP metadata note.  ``normal``: the pages of ``options.dump_level``
    in the chosen format.
    """
    poisoned = machine_check_pfns(decision) if decision.reason else []
    byte_copy = (isinstance(source, ElfCore) and not poisoned and options.format != FLAT
                 and not options.split)
    if not any(seg.usable for seg in source.segments):
        # every format still gets a valid file: the notes are the dump
        decision.warnings.append("the dump holds no memory (no PT_LOAD with a physical "
                                 "address); writing its notes only")
    if decision.action == FULL and byte_copy:
        stats = write_full_copy(source, output_path(dst), overwrite=overwrite, progress=progress)
        return stats.size, {"copy_method": stats.method, "data_bytes": stats.copied}
    from slimdump.filtered import select_pages, write_dump

    # re-filtering a saved dump: its dump level still holds (as makedumpfile ORs it)
    level = (0 if decision.action == FULL else options.dump_level) | (
        getattr(source, "dump_level", 0) or 0)
    chosen = replace(options, dump_level=level)
    # large bitmaps go to a temporary file on the dump's file system (or
    # makedumpfile's --work-dir), not to a capture kernel's RAM-backed /tmp
    directory = work_dir or (None if dst in (None, "-")
                             else os.path.dirname(os.path.abspath(dst)))
    selection = select_pages(source, level, poisoned, directory=directory)
    extra_notes = []
    # a page the source holds only in part is whole in a kdump-compressed
    # file: the metadata says which of its bytes are memory (an ELF file's
    # program headers say it themselves)
    partial = _partial_pages(source, selection) if chosen.format != ELF else []
    if (poisoned and decision.reason is not None) or partial:
        meta = slim_metadata(source, decision, stamp=bool(poisoned))
        if poisoned:
            meta["excluded_pages"] = [{"pfn": pfn, "why": "machine check ADDR"}
                                      for pfn in poisoned]
        if partial:
            meta["partial_pages"] = partial
        extra_notes.append(metadata_note(meta))
    try:
        result = write_dump(source, dst, chosen, selection, extra_notes=extra_notes,
                            overwrite=overwrite, progress=progress)
    finally:
        selection.close()
    decision.warnings.extend(selection.warnings)
    details = {"pages": result.pages, "dump_level": level, "format": chosen.format,
               "codec": chosen.codec, "excluded": selection.counts, **result.details}
    if poisoned:
        details["excluded_pages"] = poisoned
    return result.size, details


def _partial_pages(source: DumpSource, selection: Any) -> list[dict[str, Any]]:
    """The kept pages an ELF source holds only in part.  A saved
    kdump-compressed dump's pages are whole; its own metadata note, which
    travels with its notes, already says which ones were partial."""
    return selection.kept_partial() if isinstance(source, ElfCore) else []


def dmesg_path(dst: str) -> str:
    """Where ``--dump-dmesg`` puts the log: beside the dump."""
    return dst + ".dmesg.txt"


def capture(src: str | Sequence[str], dst: str | None, *, full: bool = False,
            overwrite: bool = False, progress: bool | None = None,
            policy: Policy | None = None, dump_dmesg: bool = False,
            options: DumpOptions | None = None,
            work_dir: str | None = None) -> CaptureResult:
    """Capture ``src`` (a file, or the parts of a --split set) into ``dst``
    and say what was done.  ``dst`` None or "-" means standard output
    (flattened format only).  With ``options.split`` the normal dump goes to
    those files (``dst`` is the first); a slimdump, one file, goes to ``dst``.
    ``work_dir``: where large page bitmaps go (default: beside ``dst``).

    A lone part of a --split set is refused: a dump written from it would
    miss the other parts' pages (the writer reads absent pages as zeros)."""
    options = options or DumpOptions()
    start = time.monotonic()
    with open_dump(src) as source:
        lone_part = getattr(source, "split", False) and not getattr(source, "holds_all", True)
        if lone_part:
            raise DumpError(source.path, f"is {source.split_text()}")  # type: ignore[attr-defined]
        decision = decide(source, policy, full=full, want_log=dump_dmesg)
        if options.split and decision.writes_slimdump:
            decision.warnings.append(f"a slimdump is one file: written to {dst}; "
                                     f"{', '.join(options.split[1:])} not created")
        extra: dict[str, Any] = {}
        if dump_dmesg and decision.log is not None:
            path = dmesg_path(output_path(dst))
            with AtomicOutput(path, overwrite=overwrite) as out:
                out.write(decision.log.data, 0)
                out.commit()
            extra["dmesg"] = path
        if decision.writes_slimdump:
            size = write_slimdump(source, decision, dst, overwrite=overwrite,
                                  flat=options.format == FLAT)
            extra["format"] = options.format if options.format == FLAT else "elf"
        else:
            size, details = write_normal_or_full(source, decision, dst, options,
                                                 overwrite=overwrite, progress=progress,
                                                 work_dir=work_dir)
            extra.update(details)
        return CaptureResult(decision, dst, size, source.bytes_read,
                             time.monotonic() - start, extra)


def summary_lines(result: CaptureResult, policy_source: str, src: str | Sequence[str]) -> list[str]:
    """What a capture did, for the user: warnings, the decision, what was
    written where, what was read (one line each, without a prefix)."""
    d = result.decision
    lines = [f"warning: {warning}" for warning in d.warnings]
    reason = f" -> {d.reason.reason}" if d.reason and d.detected_by != KERNEL_NOTE else ""
    lines.append(f"{d.why}{reason}; action {d.action} ({policy_source})")
    extra = result.extra
    if d.writes_slimdump:
        what = "slimdump" + (" with the kernel log" if d.action == DMESG and d.log is not None
                             else "")
        if extra.get("format") == FLAT:
            what += " as a flattened stream"
    elif "copy_method" in extra:
        what = "complete dump (byte-exact copy)"
    else:
        kind = {"kdump": "kdump-compressed", "flat": "flattened", "elf": "ELF"}[extra["format"]]
        codec = f"{extra['codec']}, " if extra["format"] != ELF else ""
        counts = dict(extra.get("excluded", {}))
        unreadable = counts.pop("unreadable", 0)       # kept: not excluded
        zero = extra.get("zero_excluded", 0)
        # ELF leaves a zero page out; kdump-compressed keeps its place in the
        # 2nd bitmap, pointing at the one zero page stored
        if extra["format"] == ELF:
            counts["zero"] = zero
        pages = (f"{extra['pages']} pages" if extra["format"] == ELF or not zero else
                 f"{extra['pages'] - zero} pages and {zero} zero pages stored as one")
        excluded = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
        what = (f"{kind} dump ({codec}-d {extra['dump_level']}, {pages}"
                + (f"; excluded {excluded}" if excluded else "")
                + (f"; kept {unreadable} whose struct page could not be read"
                   if unreadable else "") + ")")
        if extra.get("excluded_pages"):
            pages = ", ".join(hex(p * 4096) for p in extra["excluded_pages"])
            what += f" without the machine-check page(s) {pages}"
    copied = (f", copied {human_size(extra['data_bytes'])} with {extra['copy_method']}"
              if "copy_method" in extra else "")
    where = result.dst if result.dst not in (None, "-") else "standard output"
    if extra.get("parts"):
        where = f"{len(extra['parts'])} --split parts (" + ", ".join(
            f"{p['path']} pfns {p['pfn_start']:#x}-{p['pfn_end']:#x}" for p in extra["parts"]) + ")"
    src_text = src if isinstance(src, str) else " ".join(src)
    lines.append(f"wrote {what} to {where} ({human_size(result.size)}) in {result.seconds:.2f} s; "
                 f"read {human_size(result.source_bytes_read)} of {src_text}{copied}")
    if "dmesg" in extra:
        lines.append(f"wrote the kernel log to {extra['dmesg']}")
    return lines
