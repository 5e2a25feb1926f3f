"""``slimdump inspect``: why the machine died, from any dump slimdump reads.

:func:`collect` gathers the facts as one JSON-ready dict (the stable
``--json`` output); :func:`render` turns that dict into text for a person.
For a slimdump the text starts with the protocol's headline and
``Nocoredump Reason: CODE`` lines, exactly as the 2011 crash tool printed.
"""

from __future__ import annotations

from typing import Any

from slimdump.elf import Note
from slimdump.errors import DumpError
from slimdump.kernel.log import read_kernel_log, records_from_text
from slimdump.kernel.vmcoreinfo import VmcoreInfo
from slimdump.notes import (
    NT_PRSTATUS,
    NT_SLIMDUMP_LOG,
    NT_SLIMDUMP_META,
    SLIMDUMP_NAME,
    VMCOREINFO_NAME,
    NoCoreDump,
    decode_metadata,
    decode_prstatus,
    decode_text,
    find_nocoredump,
    is_slimdump_note,
    type_name,
)
from slimdump.sources import DumpSource
from slimdump.triage.classify import classify
from slimdump.triage.panic_cpu import panicking_cpu
from slimdump.triage.reasons import headline, reason_line

SCHEMA_VERSION = 1
_RAW_PREVIEW = 64


def _cpus(source: DumpSource) -> list[dict[str, Any]]:
    hdr = source.header
    cpus = []
    for note in source.notes:
        if note.name != "CORE" or note.type != NT_PRSTATUS:
            continue
        entry: dict[str, Any] = {"cpu": len(cpus)}
        try:
            status = decode_prstatus(note.desc, hdr.e_machine, hdr.elf64, hdr.endian)
        except ValueError as exc:
            entry["error"] = str(exc)
        else:
            entry.update(pid=status.pid, pc_name=status.pc_name, pc=status.pc,
                         sp_name=status.sp_name, sp=status.sp, registers=status.registers)
        cpus.append(entry)
    return cpus


def _note_entry(note: Note) -> dict[str, Any]:
    entry: dict[str, Any] = {"owner": note.name, "type": note.type, "type_name": type_name(note),
                             "size": len(note.desc), "offset": note.offset}
    if find_nocoredump([note]):
        entry["text"] = NoCoreDump.from_note(note).message
    elif not ((note.name == "CORE" and note.type == NT_PRSTATUS)
              or (note.name == VMCOREINFO_NAME and note.type == 0)
              or note.name == SLIMDUMP_NAME):
        entry["desc_hex"] = note.desc.hex()
    return entry


def physical_bytes(ranges: list[dict[str, int]]) -> int:
    """Bytes of physical memory covered, counting overlaps once (x86_64's
    kernel-image segment duplicates part of a RAM segment)."""
    total, reach = 0, 0
    for start, end in sorted((r["phys_start"], r["phys_start"] + r["size"]) for r in ranges):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def _metadata_ranges(meta: dict[str, Any] | None) -> list[dict[str, int]]:
    """The memory map a slimdump's metadata recorded, ignoring malformed entries."""
    ranges = (meta or {}).get("memory")
    keys = ("phys_start", "virt_start", "size")
    return [{k: r[k] for k in keys} for r in ranges if isinstance(r, dict)
            and all(isinstance(r.get(k), int) for k in keys)] if isinstance(ranges, list) else []


def dump_kind(source: DumpSource, reason: NoCoreDump | None, meta: dict[str, Any] | None) -> str:
    if not source.segments and (reason or meta):
        return "slimdump"
    if source.format != "elf":
        level = getattr(source, "dump_level", None)
        codec = getattr(source, "compression", None)
        details = ", ".join(x for x in (codec and str(codec),
                                        f"dump level {level}" if level is not None else None)
                            if x)
        kind = {"kdump": "kdump-compressed dump", "flattened": "flattened kdump stream"}.get(
            source.format, source.format)
        return f"{kind} ({details})" if details else kind
    if reason:
        return "vmcore with NT_NOCOREDUMP note"
    return "vmcore"


def _split_facts(source: DumpSource) -> dict[str, Any] | None:
    """A --split set's parts, or what a lone part holds (None otherwise)."""
    facts, text = getattr(source, "split_facts", None), getattr(source, "split_text", None)
    if not callable(facts) or not callable(text) or facts() is None:
        return None
    return {**facts(), "text": text()}


def _log_records(source: DumpSource, note_text: str | None,
                 read_memory: bool) -> tuple[dict[str, Any], list[tuple[int, str]]]:
    """The log from a slimdump's log note, else from the dump's memory."""
    if note_text is not None:
        return {"source": "slimdump log note", "text": note_text}, records_from_text(note_text)
    if not read_memory or not source.segments:
        return {"source": None, "text": None}, []
    try:
        log = read_kernel_log(source)
    except DumpError as exc:
        return {"source": None, "text": None, "error": exc.problem}, []
    return {"source": "memory", "text": log.text}, log.records


def _triage(records: list[tuple[int, str]], meta: dict[str, Any] | None) -> dict[str, Any]:
    if records:
        verdict = classify(records)
        return {"source": "kernel log", **verdict.to_metadata()}
    errors = (meta or {}).get("hardware_errors")
    return {"source": "slimdump metadata" if meta else None,
            "hardware_errors": errors if isinstance(errors, list) else []}


def collect(source: DumpSource, *, read_log: bool = True, tail: int = 50) -> dict[str, Any]:
    """Every fact ``inspect`` shows, as one JSON-ready object.  The log is
    read from memory only when the dump has no log note and ``read_log``."""
    hdr = source.header
    note = find_nocoredump(source.notes)
    reason = NoCoreDump.from_note(note) if note else None
    meta = log = None
    for n in source.notes:
        if meta is None and is_slimdump_note(n, NT_SLIMDUMP_META):
            try:
                meta = decode_metadata(n)
            except ValueError:
                meta = {"error": "metadata note is not valid JSON"}
        if log is None and is_slimdump_note(n, NT_SLIMDUMP_LOG):
            log = decode_text(n)
    info = VmcoreInfo.from_notes(source.notes)
    cpus = _cpus(source)
    log_facts, records = _log_records(source, log, read_log)
    text = log_facts.pop("text")
    lines = text.rstrip("\n").splitlines() if text else []
    log_facts.update(lines=len(lines), tail=lines[-tail:])
    triage = _triage(records, meta)
    panic = panicking_cpu(cpus, hdr.e_machine)
    if triage.get("panic_cpu") is not None:
        panic = {"cpu": triage["panic_cpu"], "basis": "the kernel log"}
    if source.segments:
        memory = {"source": "program headers" if source.format == "elf" else "the page bitmap",
                  "segments": [{"phys_start": s.phys_start, "virt_start": s.virt_start,
                                "size": s.mem_size, "file_offset": s.file_offset,
                                "file_size": s.file_size} for s in source.segments]}
    else:
        memory = {"source": "slimdump metadata" if meta else "none",
                  "segments": _metadata_ranges(meta)}
    memory["total_bytes"] = physical_bytes(memory["segments"])
    facts = info.facts() if info else None
    return {
        "schema": SCHEMA_VERSION,
        "file": {"path": source.path, "size": source.size, "format": source.format,
                 "kind": dump_kind(source, reason, meta), "class": hdr.class_name,
                 "byte_order": hdr.byte_order, "machine": hdr.machine_name,
                 "e_machine": hdr.e_machine, "truncated": source.truncated,
                 "expected_size": source.data_end, "split": _split_facts(source)},
        "nocoredump": ({"reason": reason.reason, "message": reason.message,
                        "headline": headline(reason.reason),
                        "reason_line": reason_line(reason.reason)} if reason else None),
        "kernel": {"release": info.osrelease if info else None,
                   "crashtime": facts["crashtime"] if facts else None,
                   "crash_time_utc": facts["crash_time_utc"] if facts else None},
        "cpus": cpus,
        "panicking_cpu": panic,
        "triage": triage,
        "notes": [_note_entry(n) for n in source.notes],
        "memory": memory,
        "vmcoreinfo": {"facts": facts, "entries": info.entries} if info else None,
        "slimdump": meta,
        "log": log_facts,
    }


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _hex(value: int | None) -> str:
    return "-" if value is None else f"{value:#018x}"


def render(facts: dict[str, Any], *, all_vmcoreinfo: bool = False) -> str:
    """The text ``inspect`` prints."""
    out: list[str] = []
    add = out.append
    _render_reason(facts, add)
    triage = facts["triage"]
    f = facts["file"]
    add(f"File:         {f['path']}")
    add(f"Dump:         {f['kind']}, {f['class']} {f['machine']} {f['byte_order']}, "
        f"{_size(f['size'])}")
    if f.get("split"):
        add(f"Split:        {f['split']['text']}")
    if f["truncated"]:
        add(f"              TRUNCATED: the headers promise {f['expected_size']} bytes; "
            "memory past the end is missing")
    kernel = facts["kernel"]
    add(f"Kernel:       {kernel['release'] or 'unknown (no VMCOREINFO)'}")
    if kernel["crash_time_utc"]:
        add(f"Crash time:   {kernel['crash_time_utc'].replace('T', ' ').rstrip('Z')} UTC "
            f"(CRASHTIME {kernel['crashtime']})")
    mem = facts["memory"]
    add(f"Memory:       {_size(mem['total_bytes'])} of physical memory in "
        f"{len(mem['segments'])} segments (from {mem['source']})")
    meta = facts["slimdump"]
    if meta and isinstance(meta.get("source"), dict):
        src, tool = meta["source"], meta.get("tool")
        tool = tool if isinstance(tool, dict) else {}
        size = src.get("size")
        when = f"{meta['captured_at']} " if meta.get("captured_at") else ""
        why = (f"; reason from {meta.get('detected_by')}" if meta.get("reason")
               else "; no hardware reason")
        add(f"Captured:     {when}by {tool.get('name')} "
            f"{tool.get('version')} from {src.get('path')} ({src.get('format')}"
            f"{', ' + _size(size) if isinstance(size, int) else ''}){why}")
    if meta and isinstance(meta.get("partial_pages"), list) and meta["partial_pages"]:
        pfns = [p.get("pfn") for p in meta["partial_pages"] if isinstance(p, dict)]
        add(f"Partial:      {len(pfns)} page(s) the source held only in part (the rest "
            f"reads as zeros): pfn {', '.join(hex(p) for p in pfns[:8] if isinstance(p, int))}"
            f"{' ...' if len(pfns) > 8 else ''}")
    if triage.get("panic_message") is not None:
        cpu = triage.get("panic_cpu")
        add(f"Panic:        Kernel panic - not syncing: {triage['panic_message']}"
            + (f" (CPU {cpu})" if cpu is not None else ""))
    if triage.get("category"):
        add(f"Cause:        {triage['category']}"
            + (f" ({triage['reason']}, from the kernel log)" if triage.get("reason") else ""))
    add("")
    _render_hardware_errors(triage.get("hardware_errors") or [], add)
    _render_cpus(facts, add)
    _render_notes(facts, add)
    _render_vmcoreinfo(facts, add, all_vmcoreinfo)
    log = facts["log"]
    if log.get("error"):
        add(f"Kernel log: not readable ({log['error']})")
    elif log["tail"]:
        shown = log["tail"][-20:]
        add(f"Kernel log (last {len(shown)} of {log['lines']} lines, from {log['source']}):")
        out.extend("  " + line for line in shown)
    return "\n".join(out).rstrip("\n") + "\n"


def render_verdict(facts: dict[str, Any]) -> str:
    """What a debugger says on opening a slimdump (the drgn plugin): the
    headline and reason lines ``inspect`` starts with, then the decoded
    hardware errors, so that both tools word a crash the same way."""
    out: list[str] = []
    _render_reason(facts, out.append)
    _render_hardware_errors(facts["triage"].get("hardware_errors") or [], out.append)
    return "\n".join(out).rstrip("\n") + "\n" if out else ""


def _render_reason(facts: dict[str, Any], add: Any) -> None:
    """The protocol's headline, ``Nocoredump Reason: CODE`` and the kernel's
    words; without a note, the hardware crash the kernel log shows."""
    reason, triage = facts["nocoredump"], facts["triage"]
    if reason:
        add(reason["headline"])
        add(reason["reason_line"])
        if reason["message"]:
            add(reason["message"])
        add("")
    elif triage.get("reason"):
        add(f"Hardware crash found in the kernel log: {triage['reason']} "
            f"({headline(triage['reason']).split('. No coredump')[0]}.)")
        add("")


def _hex_or_dash(value: Any) -> str:
    return str(value) if value not in (None, "") else "-"


def _render_hardware_errors(errors: list[Any], add: Any) -> None:
    """Machine checks decoded by name, GHES records and NMI reasons."""
    if not errors:
        return
    add(f"Hardware errors ({len(errors)}):")
    for err in errors:
        if not isinstance(err, dict):
            continue
        if "bank" in err:
            flags = " ".join(err.get("flags") or [])
            add(f"  Machine check on CPU {err.get('cpu')}, bank {err.get('bank')}: "
                f"MCi_STATUS {err.get('status')} [{flags}]")
            code = err.get("error_code")
            if isinstance(code, dict):
                fields = ", ".join(f"{k} {v}" for k, v in code.items()
                                   if k not in ("class", "code"))
                memory = "; a memory error" if err.get("memory_error") else ""
                add(f"    MCA error code {code.get('code', '')}: {code.get('class')}"
                    + (f" ({fields})" if fields else "") + memory)
            add(f"    ADDR {_hex_or_dash(err.get('addr'))} (physical page "
                f"{_hex_or_dash(err.get('page'))})  MISC {_hex_or_dash(err.get('misc'))}")
            add(f"    TSC {_hex_or_dash(err.get('tsc'))}  PROCESSOR "
                f"{_hex_or_dash(err.get('processor'))}  SOCKET {_hex_or_dash(err.get('socket'))}"
                f"  APIC {_hex_or_dash(err.get('apic'))}  TIME {_hex_or_dash(err.get('time'))}")
            for line in err.get("extra") or []:
                add(f"    {line}")
        else:
            for line in err.get("text") or [str(err)]:
                add(f"  {line}")
    add("")


def _render_cpus(facts: dict[str, Any], add: Any) -> None:
    cpus = facts["cpus"]
    if not cpus:
        add("CPUs: no NT_PRSTATUS notes")
        add("")
        return
    pc_name = next((c["pc_name"] for c in cpus if c.get("pc_name")), "pc") or "pc"
    sp_name = next((c["sp_name"] for c in cpus if c.get("sp_name")), "sp") or "sp"
    panic = facts["panicking_cpu"]
    add(f"CPUs ({len(cpus)} NT_PRSTATUS notes, in CPU order):")
    add(f"  {'CPU':>3}  {'PID':>7}  {pc_name.upper():<18}  {sp_name.upper()}")
    sure = bool(panic and panic["basis"] == "the kernel log")
    for c in cpus:
        if "error" in c:
            add(f"  {c['cpu']:>3}  {c['error']}")
            continue
        sure = panic and panic["basis"] == "the kernel log"
        mark = ("  <- " + ("panicking CPU" if sure else "likely panicking CPU")
                if panic and panic["cpu"] == c["cpu"] else "")
        add(f"  {c['cpu']:>3}  {c['pid']:>7}  {_hex(c['pc']):<18}  {_hex(c['sp'])}{mark}")
    if panic:
        add(f"  (panicking CPU {'named by' if sure else 'guessed from'}: {panic['basis']})")
    add("")


def _render_notes(facts: dict[str, Any], add: Any) -> None:
    notes = facts["notes"]
    add(f"Notes ({len(notes)}):")
    add(f"  {'Owner':<16} {'Data size':>9}  Type")
    for n in notes:
        add(f"  {n['owner']:<16} {n['size']:>9}  {n['type_name']}")
        if "text" in n:
            add(f"  {'':<16} {'':>9}  {n['text']!r}")
        if "desc_hex" in n:
            preview = n["desc_hex"][:_RAW_PREVIEW * 2]
            more = " ..." if len(n["desc_hex"]) > len(preview) else ""
            add(f"  {'':<16} {'':>9}  raw: {preview}{more}")
    add("")


def _render_vmcoreinfo(facts: dict[str, Any], add: Any, show_all: bool) -> None:
    vmci = facts["vmcoreinfo"]
    if not vmci:
        add("VMCOREINFO: none")
        add("")
        return
    v = vmci["facts"]
    add(f"VMCOREINFO ({v['keys']} keys):")
    rows = [("OSRELEASE", v["osrelease"]), ("BUILD-ID", v["build_id"]),
            ("PAGESIZE", v["page_size"]),
            ("KERNELOFFSET", None if v["kerneloffset"] is None else hex(v["kerneloffset"])),
            ("phys_base", None if v["phys_base"] is None
             else f"{v['phys_base']} ({v['phys_base'] & (2**64 - 1):#x})"),
            ("page tables", None if v["pgtable_levels"] is None
             else f"{v['pgtable_levels']}-level"),
            ("_stext", None if v["stext"] is None else hex(v["stext"])),
            ("mem_section", None if v["mem_section"] is None else hex(v["mem_section"])),
            ("SECTION_SIZE_BITS", v["section_size_bits"]),
            ("MAX_PHYSMEM_BITS", v["max_physmem_bits"]),
            ("SIZE(page)", v["sizeof_page"]), ("printk buffer", v["printk"])]
    for key, value in rows:
        if value is not None:
            add(f"  {key:<18} {value}")
    if show_all:
        add("  all entries:")
        for key, value in vmci["entries"].items():
            add(f"    {key}={value}")
    add("")
