"""Mutations of the crashed kernel's memory inside an ELF vmcore: the printk
ring buffer (descriptor ring, info array, text ring, the prb pointer), struct
pages the page classifier reads, and a few other structures slimdump walks
(mem_section, the top page table, init_uts_ns)."""

from __future__ import annotations

from typing import Any

from fuzz.catalog import file_at, struct_page_at
from fuzz.values import Plan

TRIAGE_LINES = [
    "Kernel panic - not syncing: Fatal machine check",
    "Kernel panic - not syncing: Fatal hardware error!",
    "Kernel panic - not syncing: NMI: Not continuing",
    "Kernel panic - not syncing: " + "x" * 900,
    "---[ end Kernel panic - not syncing: Fatal machine check ]---",
    "mce: [Hardware Error]: CPU 4294967295: Machine Check Exception: ffffffffffffffff Bank "
    "9999: ffffffffffffffff",
    "mce: [Hardware Error]: RIP !INEXACT! ffff:<ffffffffffffffff> {" + "a" * 300,
    "mce: [Hardware Error]: TSC ffffffffffffffff ADDR ffffffffffffffff MISC 0 SYND 0 IPID 0",
    "mce: [Hardware Error]: PROCESSOR 999:ffffffff TIME 99999999999999999999 SOCKET 999999 "
    "APIC ffffffff microcode ffffffff",
    "mce: [Hardware Error]: Machine check: Processor context corrupt",
    "[Hardware Error]: Bank 9999: ffffffffffffffff",
    "{4294967295}[Hardware Error]: Hardware error from APEI Generic Hardware Error Source: "
    "-2147483648",
    "{1}[Hardware Error]: event severity: fatal",
    "{1}[Hardware Error]:  Error 999999, type: fatal",
    "{1}[Hardware Error]:   section_type: memory error",
    "{1}[Hardware Error]:   physical_address: 0xffffffffffffffff",
    "{1}[Hardware Error]:   node:99999 card:99999 module:99999 rank:-1 bank:" + "9" * 400,
    "NMI: PCI system error (SERR) for reason ff on CPU 4294967295.",
    "Uhhuh. NMI received for unknown reason 2d on CPU 999999.",
    "NMI watchdog: Watchdog detected hard LOCKUP on cpu 99999999",
    "CPU: 999999 UID: 4294967295 PID: -2147483648 Comm: \xff\xfe Not tainted",
    "Oops: 0000 [#9999] PREEMPT SMP NOPTI",
    "BUG: unable to handle page fault for address: ffffffffffffffff",
]


def _region_field(plan: Plan, region: dict[str, Any], rel: int, width: int, why: str,
                  value: int | None = None) -> None:
    hit = file_at(region, rel)
    if hit is None or hit[1] < width:
        plan.notes.append(f"{why}: not in the file")
        return
    fmt = {1: "B", 2: "H", 4: "I", 8: "Q"}[width]
    plan.field(hit[0], fmt, why, value)


def printk(plan: Plan, cat: dict[str, Any]) -> None:
    rng = plan.rng
    pk = cat.get("printk") or {}
    if "ring" not in pk:
        plan.notes.append(f"printk: {pk.get('missing', 'not located')}")
        return
    count = pk["count"]
    live = [(pk["tail_id"] + k) % count for k in range((pk["head_id"] - pk["tail_id"]) % count + 1)]
    what = rng.choices(["ring", "pointer", "desc", "info", "text", "line", "bytes"],
                       weights=[3, 0.5, 4, 3, 1, 3, 1])[0]
    if what == "ring":
        name, (o, w) = rng.choice(sorted(pk["ring"]["fields"].items()))
        _region_field(plan, pk["ring"], o, w, f"prb.{name}")
    elif what == "pointer":
        value = pk["ring"]["vaddr"] + rng.choice([0, 8, -8, 4096, 1 << 30, -pk["ring"]["vaddr"]])
        _region_field(plan, pk["prb_pointer"], 0, 8, "prb pointer", value)
    elif what in ("desc", "info"):
        arr = pk["descs" if what == "desc" else "infos"]
        slot = rng.choice(live) if live and rng.random() < 0.8 else rng.randrange(count)
        for _ in range(rng.choice([1, 1, 2, 8, 64])):          # one record or a run of them
            name, (o, w) = rng.choice(sorted(arr["fields"].items()))
            _region_field(plan, arr, slot * arr["stride"] + o, w, f"{what}[{slot}].{name}")
            slot = (slot + 1) % count
    elif what == "bytes":
        arr = pk[rng.choice(["descs", "infos", "ring"])]
        rel = rng.randrange(arr["size"])
        hit = file_at(arr, rel)
        if hit:
            plan.flip(hit[0], min(hit[1], 64), "printk bytes")
    else:
        _log_line(plan, pk, live, what)


def _log_line(plan: Plan, pk: dict[str, Any], live: list[int], what: str) -> None:
    """Overwrite one record's text (and its text_len) with a line triage
    parses, or random bytes."""
    rng = plan.rng
    if not live:
        return
    slot = rng.choice(live[-64:] if rng.random() < 0.7 else live)
    descs, infos, text = pk["descs"], pk["infos"], pk["text"]
    o_begin = descs["fields"]["begin"][0]
    hit = file_at(descs, slot * descs["stride"] + o_begin)
    if hit is None:
        return
    begin = int.from_bytes(plan.reader.pread(hit[0], 8), "little") % text["size"] + 8
    if what == "line":
        line = rng.choice(TRIAGE_LINES).encode("utf-8", "surrogateescape")
        line = line.decode("utf-8").encode("latin-1", "replace") if rng.random() < 0.2 else line
    else:
        line = rng.randbytes(rng.choice([1, 16, 200, 1000]))
    where = file_at(text, begin)
    if where is None:
        return
    line = line[:max(1, min(len(line), where[1]))]
    plan.write(where[0], line, f"log[{slot}] text {line[:40]!r}")
    _region_field(plan, infos, slot * infos["stride"] + infos["fields"]["text_len"][0], 2,
                  f"info[{slot}].text_len", len(line))


def struct_page(plan: Plan, cat: dict[str, Any]) -> None:
    rng = plan.rng
    sp = cat.get("struct_pages") or {}
    if "kinds" not in sp:
        plan.notes.append(f"struct pages: {sp.get('missing', 'not located')}")
        return
    kind = rng.choice(sorted(sp["kinds"]))
    pfn = rng.choice(sp["kinds"][kind])
    size, fields, nums = sp["size"], sp["fields"], sp["numbers"]
    run = rng.choice([1, 1, 1, 1, 2, 16, 512, 4096])
    name = rng.choice([*sorted(fields), "first-tail", "whole"])
    value = _page_value(rng, name, nums, pfn)
    for p in range(pfn, pfn + run):
        at = struct_page_at(sp, p)
        if at is None:
            continue
        why = f"page[{p:#x}] ({kind}) {name}" if p == pfn else None
        if name == "whole":
            plan.write(at, rng.randbytes(size) if value is None else bytes(size), why)
        elif name == "first-tail":
            off = fields.get("compound_order", fields["flags"]) + size
            plan.write(at + off, bytes([rng.choice([0, 1, 9, 10, 11, 12, 18, 30, 63, 64, 255])]),
                       why)
        else:
            width = 4 if name in ("_mapcount", "_refcount") else 1 if name.startswith(
                "compound_") else 8
            plan.field(at + fields[name], {1: "B", 4: "I", 8: "Q"}[width], why, value)
    if run > 1:
        plan.notes.append(f"... {run} struct pages from pfn {pfn:#x}")


def _page_value(rng: Any, name: str, nums: dict[str, int | None], pfn: int) -> int | None:
    """A value for struct page field ``name`` that changes how a rule sees it
    (None: let :func:`number` pick)."""
    if rng.random() < 0.3:
        return None
    if name == "flags":
        bits = [v for k, v in nums.items() if k.startswith("PG_") and v is not None]
        mask = nums.get("PG_head_mask") or 0
        return rng.choice([0, (1 << 64) - 1, mask, *(1 << b for b in bits if 0 <= b < 64)])
    if name == "_mapcount":
        types = [v for k, v in nums.items() if "MAPCOUNT" in k and v is not None]
        return rng.choice([-1, 0, 1, *types, *(t + rng.randrange(1, 1 << 12) for t in types)])
    if name == "private":
        return rng.choice([0, 1, 9, 10, 11, 12, 18, 30, 63, 64, 1 << 32, (1 << 64) - 1])
    if name in ("compound_head", "lru"):
        return rng.choice([1, 0, (1 << 64) - 1, rng.getrandbits(64) | 1, 0xFFFFEA0000000001])
    if name == "mapping":
        return rng.choice([0, 1, 2, 3, rng.getrandbits(64)])
    return None


def kernel_data(plan: Plan, cat: dict[str, Any]) -> None:
    """Bytes of mem_section, the top-level page table, init_uts_ns..."""
    rng = plan.rng
    kernel = cat.get("kernel") or {}
    if not kernel:
        return
    name = rng.choice(sorted(kernel))
    region = kernel[name]
    rels = range(0, region["size"] - 7, 8)
    if name in ("swapper_pg_dir", "init_top_pgt"):
        # page table entries in use (those that map something)
        used = [r for r in rels if (hit := file_at(region, r))
                and plan.reader.pread(hit[0], 8) != bytes(8)]
        rels = used or rels
    rel = rng.choice(rels)
    if rng.random() < 0.5:
        _region_field(plan, region, rel, 8, f"{name}+{rel}")
    else:
        hit = file_at(region, rel)
        if hit:
            plan.flip(hit[0], min(hit[1], 8), name)


def page_table(plan: Plan, cat: dict[str, Any]) -> None:
    """An x86_64 page table entry on the way to mem_section or struct pages:
    not present, huge, pointing past memory, at its own table (a loop)..."""
    rng = plan.rng
    entries = cat.get("page_tables") or []
    if not entries:
        plan.notes.append("page tables: not located")
        return
    e = rng.choice(entries)
    entry, table = e["entry"], e["table"]
    value = rng.choice([0, entry ^ 1, entry | 0x80, entry & ~0x80, entry + 4096,
                        (entry & 0xFFF) | (1 << 51), (entry & 0xFFF) | table,
                        (entry & 0xFFF) | (table + 4096 * rng.randrange(1, 512)),
                        entry | (1 << 63), (1 << 64) - 1, rng.getrandbits(64) | 1])
    plan.field(e["at"], "Q", f"level-{e['level']} entry@{e['at']:#x}", value)
