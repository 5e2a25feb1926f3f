"""Where the bytes worth mutating are, per input file.

ELF vmcores: the ELF header, program headers, note headers, the VMCOREINFO
text, the printk ring buffer's metadata and text ring, and struct pages of
chosen kinds (free block heads, compound heads and tails, slab, LRU...).
The kernel structures are LOCATED with slimdump's own library (VMCOREINFO,
page tables, sparsemem): file offsets only, the harness reads and writes the
file itself.  kdump-compressed and flattened inputs are parsed here with
plain :mod:`struct` (makedumpfile's layouts, kdump-formats.md sections 2-3).

A catalog is JSON, cached per input (keyed by size and mtime).
"""

from __future__ import annotations

import json
import os
import random
import struct
from bisect import bisect_right
from pathlib import Path
from typing import Any

VERSION = 4
SAMPLES = 256          # struct pages kept per kind


def cached(path: Path, kind: str, cache_dir: Path) -> dict[str, Any]:
    """The catalog of ``path`` (``kind`` elf, kdump or flat), built once."""
    st = path.stat()
    key = f"{VERSION}:{st.st_size}:{st.st_mtime_ns}"
    cache = cache_dir / f"{path.name}.catalog.json"
    if cache.exists():
        data = json.loads(cache.read_text())
        if data.get("key") == key:
            return data
    builder = {"elf": elf_catalog, "kdump": kdump_catalog, "flat": flat_catalog}[kind]
    data = builder(path)
    data.update(key=key, kind=kind, path=str(path), size=st.st_size)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(cache)
    return data


# -- ELF --------------------------------------------------------------------------------

EHDR_FIELDS = [("e_ident_class", 4, "B"), ("e_ident_data", 5, "B"), ("e_ident_version", 6, "B"),
               ("e_ident_osabi", 7, "B"), ("e_type", 16, "H"), ("e_machine", 18, "H"),
               ("e_version", 20, "I"), ("e_entry", 24, "Q"), ("e_phoff", 32, "Q"),
               ("e_shoff", 40, "Q"), ("e_flags", 48, "I"), ("e_ehsize", 52, "H"),
               ("e_phentsize", 54, "H"), ("e_phnum", 56, "H"), ("e_shentsize", 58, "H"),
               ("e_shnum", 60, "H"), ("e_shstrndx", 62, "H")]
PHDR_FIELDS = [("p_type", 0, "I"), ("p_flags", 4, "I"), ("p_offset", 8, "Q"),
               ("p_vaddr", 16, "Q"), ("p_paddr", 24, "Q"), ("p_filesz", 32, "Q"),
               ("p_memsz", 40, "Q"), ("p_align", 48, "Q")]
PT_LOAD, PT_NOTE = 1, 4


def elf_catalog(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        ehdr = f.read(64)
        if ehdr[:4] != b"\x7fELF" or ehdr[4] != 2 or ehdr[5] != 1:
            raise SystemExit(f"fuzz: {path}: only little-endian ELF64 fixtures are supported")
        phoff, = struct.unpack_from("<Q", ehdr, 32)
        phentsize, phnum = struct.unpack_from("<HH", ehdr, 54)
        f.seek(phoff)
        raw = f.read(phentsize * phnum)
    phdrs = []
    for i in range(phnum):
        vals = struct.unpack_from("<IIQQQQQQ", raw, i * phentsize)
        names = [n for n, _o, _f in PHDR_FIELDS]
        phdrs.append(dict(zip(names, vals, strict=True), at=phoff + i * phentsize))
    out: dict[str, Any] = {"phoff": phoff, "phnum": phnum, "phentsize": phentsize,
                           "phdrs": phdrs}
    note_ph = next(i for i, p in enumerate(phdrs) if p["p_type"] == PT_NOTE)
    note = phdrs[note_ph]
    later = [p["p_offset"] for p in phdrs if p["p_offset"] > note["p_offset"]]
    out["note_segment"] = {"phdr": note_ph, "offset": note["p_offset"],
                           "filesz": note["p_filesz"],
                           "room_end": min(later) if later else path.stat().st_size}

    from slimdump.sources import open_dump

    with open_dump(str(path)) as source:
        notes = []
        for n in source.notes:
            namesz = len(n.raw_name)
            notes.append({"at": n.offset, "namesz": namesz, "descsz": len(n.desc),
                          "type": n.type, "name": n.name,
                          "desc_at": n.offset + 12 + (-(-namesz // 4) * 4)})
        out["notes"] = notes
        vmci = next((i for i, n in enumerate(source.notes)
                     if n.name == "VMCOREINFO" and n.type == 0), None)
        out["vmcoreinfo"] = None if vmci is None else {
            "note": vmci, "text": source.notes[vmci].desc.decode("latin-1")}
        (out["printk"], out["struct_pages"], out["kernel"],
         out["page_tables"]) = _kernel_view(source, path)
    return out


def _kernel_view(source: Any, path: Path) -> tuple[Any, Any, Any, Any]:
    """The printk ring buffer and the struct pages, as file offsets (None
    with the reason when slimdump cannot locate them)."""
    from slimdump.errors import DumpError
    from slimdump.kernel.memory import KernelMemory
    from slimdump.kernel.vmcoreinfo import VmcoreInfo

    info = VmcoreInfo.from_notes(source.notes)
    if info is None:
        return None, None, None, None
    mem = KernelMemory(source, info)
    view = Mapper(mem, source)
    try:
        printk: Any = _printk(mem, info, view)
    except (DumpError, TypeError, ValueError) as exc:
        printk = {"missing": str(exc)}
    try:
        pages: Any = _struct_pages(mem, info, view, path)
    except (DumpError, TypeError, ValueError) as exc:
        pages = {"missing": str(exc)}
    kernel = {}
    for name, size in (("mem_section", 64), ("init_uts_ns", 512), ("swapper_pg_dir", 4096),
                       ("init_top_pgt", 4096), ("node_data", 64), ("node_online_map", 64)):
        sym = info.symbol(name)
        if sym is not None:
            kernel[name] = view.region(sym, size)
    # page table entries on the way to mem_section and to struct pages (the
    # kernel image and so the printk buffers translate without page tables)
    targets = [info.symbol("mem_section") or 0]
    for _first, _end, region in (pages.get("runs", []) if isinstance(pages, dict) else []):
        targets += [region["vaddr"], region["vaddr"] + region["size"] // 2]
    return printk, pages, kernel, _page_tables(mem, source, [t for t in targets if t])


def _page_tables(mem: Any, source: Any, targets: list[int]) -> list[dict[str, Any]]:
    """x86_64 page table entries (file offset, level, value) that translate
    ``targets``, each once."""
    arch = mem.arch
    top, levels, mask = (getattr(arch, a, None) for a in ("top_table", "levels", "entry_mask"))
    if top is None or levels not in (4, 5):
        return []
    shifts = (48, 39, 30, 21, 12)[5 - levels:]
    emap = source.extent_map
    seen: dict[int, dict[str, Any]] = {}
    for vaddr in targets:
        table = top
        for depth, shift in enumerate(shifts):
            paddr = table + ((vaddr >> shift) & 511) * 8
            ext = emap.at(paddr)
            if ext is None or not ext.in_file:
                break
            at = ext.file_offset + paddr - ext.phys_start
            with open(source.path, "rb") as f:
                f.seek(at)
                entry = int.from_bytes(f.read(8), "little")
            level = levels - depth
            seen.setdefault(at, {"at": at, "level": level, "entry": entry, "table": table})
            if not entry & 1 or shift == 12 or (level in (2, 3) and entry & 0x80):
                break
            table = entry & mask
    return sorted(seen.values(), key=lambda e: e["at"])


class Mapper:
    """Kernel virtual ranges -> pieces of the ELF file."""

    def __init__(self, mem: Any, source: Any) -> None:
        self.mem, self.source = mem, source
        self.psize = mem.page_size

    def region(self, vaddr: int, size: int) -> dict[str, Any]:
        """{vaddr, size, chunks: [[rel, file offset, length], ...]} for the
        bytes the file holds (untranslatable or unstored bytes left out)."""
        from slimdump.errors import DumpError

        chunks: list[list[int]] = []
        emap = self.source.extent_map
        pos = 0
        while pos < size:
            try:
                paddr, n = self.mem.vtop_extent(vaddr + pos)
            except DumpError:
                pos += min(self.psize - (vaddr + pos) % self.psize, size - pos)
                continue
            n = min(n, size - pos)
            while n > 0:
                ext = emap.at(paddr)
                if ext is None:
                    step = min(n, self.psize - paddr % self.psize)
                else:
                    step = min(n, ext.phys_end - paddr)
                    if ext.in_file:
                        at = ext.file_offset + paddr - ext.phys_start
                        if chunks and chunks[-1][0] + chunks[-1][2] == pos \
                                and chunks[-1][1] + chunks[-1][2] == at:
                            chunks[-1][2] += step
                        else:
                            chunks.append([pos, at, step])
                pos += step
                paddr += step
                n -= step
        return {"vaddr": vaddr, "size": size, "chunks": chunks}


def file_at(region: dict[str, Any], rel: int) -> tuple[int, int] | None:
    """(file offset of byte ``rel`` of a region, bytes contiguous from it)."""
    chunks = region["chunks"]
    i = bisect_right([c[0] for c in chunks], rel) - 1
    if i < 0 or rel >= chunks[i][0] + chunks[i][2]:
        return None
    c = chunks[i]
    return c[1] + rel - c[0], c[0] + c[2] - rel


def _printk(mem: Any, info: Any, view: Mapper) -> dict[str, Any]:
    if info.symbol("prb") is None:
        return {"missing": "no SYMBOL(prb) (not a lockless ring buffer)"}
    off, size = info.offset, info.size
    counter = off("atomic_long_t.counter") or 0
    dr, tr = off("printk_ringbuffer.desc_ring"), off("printk_ringbuffer.text_data_ring")
    ring_fields = {
        "count_bits": (dr + off("prb_desc_ring.count_bits"), 4),
        "descs": (dr + off("prb_desc_ring.descs"), 8),
        "infos": (dr + off("prb_desc_ring.infos"), 8),
        "head_id": (dr + off("prb_desc_ring.head_id") + counter, 8),
        "tail_id": (dr + off("prb_desc_ring.tail_id") + counter, 8),
        "size_bits": (tr + off("prb_data_ring.size_bits"), 4),
        "data": (tr + off("prb_data_ring.data"), 8),
    }
    for name in ("head_lpos", "tail_lpos"):
        if (o := off(f"prb_data_ring.{name}")) is not None:
            ring_fields[name] = (tr + o + counter, 8)
    rb = mem.pointer(info.symbol("prb"))
    raw = mem.read(rb, size("printk_ringbuffer"))

    def get(name: str) -> int:
        o, w = ring_fields[name]
        return int.from_bytes(raw[o:o + w], "little")

    count = 1 << get("count_bits")
    mask = (1 << 62) - 1
    desc_size, info_size = size("prb_desc"), size("printk_info")
    o_lpos = off("prb_desc.text_blk_lpos")
    o_len = off("printk_info.text_len")
    desc_fields = {"state_var": (off("prb_desc.state_var") + counter, 8),
                   "begin": (o_lpos + off("prb_data_blk_lpos.begin"), 8),
                   "next": (o_lpos + off("prb_data_blk_lpos.next"), 8)}
    info_fields = {"seq": (off("printk_info.seq"), 8), "ts_nsec": (off("printk_info.ts_nsec"), 8),
                   "text_len": (o_len, 2), "facility": (o_len + 2, 1),
                   "flags_level": (o_len + 3, 1)}
    if (o := off("printk_info.caller_id")) is not None:
        info_fields["caller_id"] = (o, 4)
    return {
        "prb_pointer": view.region(info.symbol("prb"), 8),
        "ring": dict(view.region(rb, size("printk_ringbuffer")), fields=ring_fields),
        "descs": dict(view.region(get("descs"), count * desc_size), fields=desc_fields,
                      stride=desc_size),
        "infos": dict(view.region(get("infos"), count * info_size), fields=info_fields,
                      stride=info_size),
        "text": view.region(get("data"), 1 << get("size_bits")),
        "count": count, "head_id": get("head_id") & mask, "tail_id": get("tail_id") & mask,
    }


def _struct_pages(mem: Any, info: Any, view: Mapper, path: Path) -> dict[str, Any]:
    from slimdump.kernel.physmem import max_mapnr, present_intervals
    from slimdump.kernel.sparsemem import mem_map_ranges

    segs = mem.source.segments
    psize = mem.page_size
    size = info.size("page")
    model, ranges = mem_map_ranges(mem, max_mapnr(segs, psize))
    present = present_intervals(segs, psize)
    runs = []                  # [first pfn, end pfn, region of their struct pages]
    for a, b, base in ranges:
        for pa, pb in present:
            lo, hi = max(a, pa), min(b, pb)
            if lo < hi:
                vaddr = (base + lo * size) & ((1 << 64) - 1)
                runs.append([lo, hi, view.region(vaddr, (hi - lo) * size)])
    fields = {}
    for name in ("flags", "mapping", "_mapcount", "private", "compound_head", "lru",
                 "_refcount", "compound_dtor", "compound_order"):
        if (o := info.offset(f"page.{name}")) is not None:
            fields[name] = o
    numbers = {k[7:-1]: info.number(k[7:-1]) for k in info.entries
               if k.startswith("NUMBER(") and (k.startswith("NUMBER(PG_")
                                               or "MAPCOUNT" in k or "DTOR" in k)}
    return {"model": model, "size": size, "fields": fields, "numbers": numbers,
            "runs": runs, "kinds": _kinds(path, runs, size, fields, numbers)}


def _kinds(path: Path, runs: list[Any], size: int, fields: dict[str, int],
           numbers: dict[str, int | None]) -> dict[str, list[int]]:
    """Pfns by what their struct page says (a deterministic sample of each
    kind): where the page classifier's rules fire."""
    # page types: 6.1 compares all of _mapcount, 6.12 its top byte (page_type)
    types = []
    for name, value in numbers.items():
        if name.endswith("_MAPCOUNT_VALUE") and value is not None:
            value &= 0xFFFFFFFF
            short = name[5:-15].lower()
            types.append((short, 0xFF000000 if value & 0xFFFFFF == 0 else 0xFFFFFFFF, value))
    head = numbers.get("PG_head_mask") or 0
    slab = 1 << (numbers.get("PG_slab") or 63)
    lru = 1 << (numbers.get("PG_lru") or 63)
    o_map = fields.get("_mapcount", 48)
    o_priv = fields.get("private", 40)
    o_ch = fields.get("compound_head", 8)
    o_mapping = fields.get("mapping", 24)
    kinds: dict[str, list[int]] = {}
    seen: dict[str, int] = {}
    rng = random.Random(0)
    with path.open("rb") as f:
        for first, _end, region in runs:
            for rel, at, length in region["chunks"]:
                f.seek(at)
                data = f.read(length)
                skip = -rel % size
                for k in range(skip, length - size + 1, size):
                    pfn = first + (rel + k) // size
                    flags, = struct.unpack_from("<Q", data, k)
                    mapcount, = struct.unpack_from("<I", data, k + o_map)
                    private, = struct.unpack_from("<Q", data, k + o_priv)
                    chead, = struct.unpack_from("<Q", data, k + o_ch)
                    mapping, = struct.unpack_from("<Q", data, k + o_mapping)
                    if chead & 1:
                        kind = "tail"
                    elif flags & head:
                        kind = "head"
                    elif ptype := next((t for t, m, v in types if mapcount & m == v), None):
                        kind = ptype
                        if ptype == "buddy":
                            kind += f"-order{private}" if private < 12 else "-big"
                    elif flags & slab:
                        kind = "slab"
                    elif flags & lru:
                        kind = "lru-anon" if mapping & 1 else "lru-file"
                    elif private:
                        kind = "private"
                    else:
                        kind = "other"
                    n = seen[kind] = seen.get(kind, 0) + 1
                    bucket = kinds.setdefault(kind, [])
                    if len(bucket) < SAMPLES:
                        bucket.append(pfn)
                    elif (j := rng.randrange(n)) < SAMPLES:
                        bucket[j] = pfn
    return {k: sorted(v) for k, v in kinds.items()}


def struct_page_at(pages: dict[str, Any], pfn: int) -> int | None:
    """File offset of pfn's struct page, when stored whole in the file."""
    for first, end, region in pages["runs"]:
        if first <= pfn < end:
            hit = file_at(region, (pfn - first) * pages["size"])
            if hit and hit[1] >= pages["size"]:
                return hit[0]
    return None


# -- kdump-compressed and flattened ------------------------------------------------------

KDUMP_HEADER = [("signature", 0, "8s"), ("header_version", 8, "i"), ("utsname_release", 142, "8s"),
                ("utsname_machine", 272, "8s"), ("tv_sec", 408, "q"), ("tv_usec", 416, "q"),
                ("status", 424, "I"), ("block_size", 428, "i"), ("sub_hdr_size", 432, "i"),
                ("bitmap_blocks", 436, "I"), ("max_mapnr", 440, "I"),
                ("total_ram_blocks", 444, "I"), ("current_cpu", 456, "i"), ("nr_cpus", 460, "i")]
KDUMP_SUB = [("phys_base", 0, "Q"), ("dump_level", 8, "i"), ("split", 12, "i"),
             ("start_pfn", 16, "Q"), ("end_pfn", 24, "Q"), ("offset_vmcoreinfo", 32, "q"),
             ("size_vmcoreinfo", 40, "Q"), ("offset_note", 48, "q"), ("size_note", 56, "Q"),
             ("offset_eraseinfo", 64, "q"), ("size_eraseinfo", 72, "Q"),
             ("start_pfn_64", 80, "Q"), ("end_pfn_64", 88, "Q"), ("max_mapnr_64", 96, "Q")]


def kdump_catalog(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        head = f.read(4096)
        bs, sub_blocks, bitmap_blocks = struct.unpack_from("<iiI", head, 428)
        f.seek(bs)
        sub = f.read(104)
        offset_note, size_note = struct.unpack_from("<qQ", sub, 48)
        bm1 = (1 + sub_blocks) * bs
        half = bitmap_blocks // 2 * bs
        f.seek(bm1 + half)
        bitmap2 = f.read(half)
    ndesc = sum(bin(b).count("1") for b in bitmap2)
    descs = (1 + sub_blocks + bitmap_blocks) * bs
    return {"block_size": bs, "sub_header_at": bs, "notes": [offset_note, size_note],
            "bitmap1": [bm1, half], "bitmap2": [bm1 + half, half],
            "descs": [descs, ndesc], "data_at": descs + 24 * ndesc}


def flat_catalog(path: Path) -> dict[str, Any]:
    records = []
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        at = 4096
        while at + 16 <= size:
            f.seek(at)
            offset, length = struct.unpack(">qq", f.read(16))
            records.append([at, offset, length])
            if offset < 0 or length <= 0:
                break
            at += 16 + length
    return {"records": records}
