"""What a capture did, for the user: one line each, without a prefix."""

from __future__ import annotations

from collections.abc import Sequence

from slimdump.capture.decision import KERNEL_NOTE
from slimdump.capture.run import CaptureResult
from slimdump.policy import DMESG
from slimdump.progress import human_size
from slimdump.writers.options import ELF, FLAT


def summary_lines(result: CaptureResult, policy_source: str, src: str | Sequence[str]) -> list[str]:
    """What a capture did, for the user: warnings, the decision, what was
    written where, what was read (one line each, without a prefix)."""
    d = result.decision
    lines = [f"warning: {warning}" for warning in d.warnings]
    reason = f" -> {d.reason.reason}" if d.reason and d.detected_by != KERNEL_NOTE else ""
    lines.append(f"{d.why}{reason}; action {d.action} ({policy_source})")
    if "triage" in result.extra:
        lines.append(f"wrote the triage slimdump (reason, log, metadata) to "
                     f"{result.extra['triage']} ({human_size(result.extra['triage_size'])})")
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
