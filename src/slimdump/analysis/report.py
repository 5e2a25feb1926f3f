"""``slimdump inspect``: why the machine died, from any dump slimdump reads.

:func:`collect` gathers the facts as one JSON-ready dict (the stable
``--json`` output); :func:`render` turns that dict into text for a person.
For a slimdump the text starts with the protocol's headline and
``Nocoredump Reason: CODE`` lines, exactly as the 2011 crash tool printed.
"""

from __future__ import annotations

from typing import Any

from slimdump.elf import Note
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
    find_nocoredump,
    is_slimdump_note,
    type_name,
)
from slimdump.sources import DumpSource
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
    if reason:
        return "vmcore with NT_NOCOREDUMP note"
    return "vmcore"


def collect(source: DumpSource) -> dict[str, Any]:
    """Every fact ``inspect`` shows, as one JSON-ready object."""
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
            log = n.desc.split(b"\0", 1)[0].decode("utf-8", "replace")
    info = VmcoreInfo.from_notes(source.notes)
    cpus = _cpus(source)
    if source.segments:
        memory = {"source": "program headers",
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
                 "expected_size": source.data_end},
        "nocoredump": ({"reason": reason.reason, "message": reason.message,
                        "headline": headline(reason.reason),
                        "reason_line": reason_line(reason.reason)} if reason else None),
        "kernel": {"release": info.osrelease if info else None,
                   "crashtime": facts["crashtime"] if facts else None,
                   "crash_time_utc": facts["crash_time_utc"] if facts else None},
        "cpus": cpus,
        "panicking_cpu": panicking_cpu(cpus, hdr.e_machine),
        "notes": [_note_entry(n) for n in source.notes],
        "memory": memory,
        "vmcoreinfo": {"facts": facts, "entries": info.entries} if info else None,
        "slimdump": meta,
        "log": log,
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
    reason = facts["nocoredump"]
    if reason:
        add(reason["headline"])
        add(reason["reason_line"])
        if reason["message"]:
            add(reason["message"])
        add("")
    f = facts["file"]
    add(f"File:         {f['path']}")
    add(f"Dump:         {f['kind']}, {f['class']} {f['machine']} {f['byte_order']}, "
        f"{_size(f['size'])}")
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
        add(f"Captured:     {meta.get('captured_at')} by {tool.get('name')} "
            f"{tool.get('version')} from {src.get('path')} ({src.get('format')}"
            f"{', ' + _size(size) if isinstance(size, int) else ''}); reason from "
            f"{meta.get('detected_by')}")
    add("")
    _render_cpus(facts, add)
    _render_notes(facts, add)
    _render_vmcoreinfo(facts, add, all_vmcoreinfo)
    if facts["log"]:
        lines = facts["log"].rstrip("\n").splitlines()
        add(f"Kernel log (last {min(len(lines), 20)} of {len(lines)} lines):")
        out.extend("  " + line for line in lines[-20:])
    return "\n".join(out).rstrip("\n") + "\n"


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
    for c in cpus:
        if "error" in c:
            add(f"  {c['cpu']:>3}  {c['error']}")
            continue
        mark = "  <- likely panicking CPU" if panic and panic["cpu"] == c["cpu"] else ""
        add(f"  {c['cpu']:>3}  {c['pid']:>7}  {_hex(c['pc']):<18}  {_hex(c['sp'])}{mark}")
    if panic:
        add(f"  (panicking CPU guessed: {panic['basis']})")
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
