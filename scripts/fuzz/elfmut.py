"""Mutations of an ELF vmcore's headers, notes and VMCOREINFO text, and of
the VMCOREINFO text a kdump-compressed file carries."""

from __future__ import annotations

import re
import struct
from typing import Any

from fuzz.catalog import EHDR_FIELDS, PHDR_FIELDS
from fuzz.values import Plan, decimal_text, hex_text

HOT_KEYS = re.compile(r"prb|printk|page|PAGE|mem_section|PG_|SECTION|PHYSMEM|phys_base|"
                      r"KERNELOFFSET|pgtable|_stext|init_top_pgt|swapper|MAPCOUNT|"
                      r"free_area|DTOR|uts|CRASHTIME|atomic_long|latched|vmemmap|"
                      r"page_offset|VA_BITS|kimage|node_data|zone|vmalloc")


def elf_header(plan: Plan, cat: dict[str, Any]) -> None:
    rng = plan.rng
    if rng.random() < 0.2:
        plan.flip(0, 64, "ehdr")
        return
    name, at, fmt = rng.choice(EHDR_FIELDS)
    plan.field(at, fmt, name)


def elf_phdr(plan: Plan, cat: dict[str, Any]) -> None:
    rng = plan.rng
    i = rng.randrange(cat["phnum"])
    ph = cat["phdrs"][i]
    if rng.random() < 0.15:
        plan.flip(ph["at"], cat["phentsize"], f"phdr[{i}]")
        return
    name, at, fmt = rng.choices(PHDR_FIELDS, weights=[1, 0.3, 3, 1, 3, 3, 3, 0.3])[0]
    value = None
    if rng.random() < 0.3 and name in ("p_paddr", "p_offset", "p_filesz", "p_memsz"):
        # make segments overlap, leave gaps or point at each other's data
        other = rng.choice(cat["phdrs"])
        value = other[name] + rng.choice([0, 1, -1, 4096, -4096, other["p_filesz"]])
    plan.field(ph["at"] + at, fmt, f"phdr[{i}].{name}", value)


def elf_note(plan: Plan, cat: dict[str, Any]) -> None:
    rng = plan.rng
    i = rng.randrange(len(cat["notes"]))
    note = cat["notes"][i]
    what = rng.choices(["namesz", "descsz", "type", "name", "desc"], weights=[2, 3, 2, 1, 2])[0]
    if what in ("namesz", "descsz", "type"):
        at = note["at"] + ("namesz", "descsz", "type").index(what) * 4
        plan.field(at, "I", f"note[{i}].{what}")
    elif what == "name":
        plan.flip(note["at"] + 12, max(note["namesz"], 1), f"note[{i}].name")
    else:
        plan.flip(note["desc_at"], max(note["descsz"], 1), f"note[{i}].desc")


def elf_truncate(plan: Plan, cat: dict[str, Any]) -> None:
    rng = plan.rng
    size = plan.reader.size
    loads = [p for p in cat["phdrs"] if p["p_type"] == 1]
    ph = rng.choice(loads)
    cut = rng.choice([
        rng.randrange(0, cat["note_segment"]["room_end"]),
        ph["p_offset"] + rng.randrange(max(ph["p_filesz"], 1)),
        ph["p_offset"] + ph["p_filesz"] - rng.randrange(1, 8192),
        size - rng.randrange(1, 1 << 20), size - 1])
    plan.truncate(max(0, min(cut, size - 1)), "truncate")


# -- VMCOREINFO -----------------------------------------------------------------------

def mutate_vmcoreinfo(plan: Plan, text: str) -> str:
    """VMCOREINFO text with a few hostile edits."""
    rng = plan.rng
    lines = text.split("\n")
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        keyed = [i for i, line in enumerate(lines) if "=" in line]
        hot = [i for i in keyed if HOT_KEYS.search(lines[i].split("=", 1)[0])]
        if not keyed:
            break
        i = rng.choice(hot if hot and rng.random() < 0.6 else keyed)
        key, _, value = lines[i].partition("=")
        how = rng.choices(["value", "delete", "duplicate", "swap", "cut", "garbage",
                           "noequals"], weights=[8, 2, 2, 1, 0.5, 0.5, 0.5])[0]
        if how == "value":
            lines[i] = f"{key}={_value(rng, key, value)}"
        elif how == "delete":
            lines[i] = ""
        elif how == "duplicate":
            # the first line with a key wins: the new value goes before or after
            new = f"{key}={_value(rng, key, value)}"
            lines.insert(i + rng.choice([0, 1]), new)
        elif how == "swap":
            j = rng.choice(keyed)
            lines[i] = f"{key}={lines[j].partition('=')[2]}"
        elif how == "cut":
            lines = lines[:i]
        elif how == "garbage":
            lines[i] = lines[i][:rng.randrange(len(lines[i]) + 1)] + rng.choice(
                ["\0", "\xff\xfe", "\r", "==", "\x7f" * 3, "\xc3\xa9"]) + lines[i][len(key):]
        else:
            lines[i] = key + value
        plan.notes.append(f"vmcoreinfo {how} {key}: {lines[i][:60] if i < len(lines) else ''}")
    return "\n".join(lines)


def _value(rng: Any, key: str, value: str) -> str:
    try:
        orig = int(value, 16) if key.startswith("SYMBOL(") else int(value, 0)
    except ValueError:
        orig = 0
    if key.startswith("SYMBOL(") or key in ("KERNELOFFSET",):
        return hex_text(rng, orig)
    if key in ("OSRELEASE", "BUILD-ID"):
        return rng.choice(["", "x" * 5000, value[:3], "6.1.0\n", value + "\xff"])
    return decimal_text(rng, orig)


def parse_notes(blob: bytes) -> list[tuple[bytes, int, bytes]]:
    """(name with its NUL, type, desc) of each note record in ``blob``."""
    out = []
    at = 0
    while at + 12 <= len(blob):
        namesz, descsz, ntype = struct.unpack_from("<III", blob, at)
        name_at = at + 12
        desc_at = name_at + (-(-namesz // 4) * 4)
        end = desc_at + (-(-descsz // 4) * 4)
        if end > len(blob):
            break
        out.append((blob[name_at:name_at + namesz], ntype, blob[desc_at:desc_at + descsz]))
        at = end
    return out


def build_notes(notes: list[tuple[bytes, int, bytes]]) -> bytes:
    out = bytearray()
    for name, ntype, desc in notes:
        out += struct.pack("<III", len(name), len(desc), ntype)
        out += name + bytes(-len(name) % 4) + desc + bytes(-len(desc) % 4)
    return bytes(out)


def new_note_area(plan: Plan, offset: int, size: int) -> tuple[bytes, int, int] | None:
    """The note area at [offset, offset + size) with its VMCOREINFO text
    mutated: (bytes, offset of the VMCOREINFO desc in them, its size)."""
    notes = parse_notes(plan.reader.pread(offset, size))
    idx = next((i for i, (n, t, _d) in enumerate(notes)
                if n.rstrip(b"\0") == b"VMCOREINFO" and t == 0), None)
    if idx is None:
        return None
    name, ntype, desc = notes[idx]
    text = mutate_vmcoreinfo(plan, desc.decode("latin-1")).encode("latin-1")
    if len(text) < len(desc) and plan.rng.random() < 0.5:
        text += bytes(len(desc) - len(text))          # keep the size, pad with NULs
    notes[idx] = (name, ntype, text)
    blob = build_notes(notes)
    desc_at = len(build_notes(notes[:idx])) + 12 + len(name) + (-len(name) % 4)
    return blob, desc_at, len(text)


def elf_vmcoreinfo(plan: Plan, cat: dict[str, Any]) -> None:
    seg = cat["note_segment"]
    built = new_note_area(plan, seg["offset"], seg["filesz"])
    if built is None:
        return
    blob = built[0]
    ph = cat["phdrs"][seg["phdr"]]
    if seg["offset"] + len(blob) <= seg["room_end"]:
        at = seg["offset"]
    else:                           # no room: the note segment moves to the end of the file
        at = -(-plan.reader.size // 4096) * 4096
        plan.write(ph["at"] + 8, struct.pack("<Q", at), f"PT_NOTE moved to {at:#x}")
    plan.write(at, blob, f"notes rewritten ({len(blob)} bytes)")
    plan.write(ph["at"] + 32, struct.pack("<Q", len(blob)), "PT_NOTE p_filesz")
    plan.write(ph["at"] + 40, struct.pack("<Q", len(blob)), "PT_NOTE p_memsz")


def kdump_vmcoreinfo(plan: Plan, cat: dict[str, Any]) -> None:
    off, size = cat["notes"]
    built = new_note_area(plan, off, size)
    if built is None:
        return
    blob, desc_at, desc_size = built
    sub = cat["sub_header_at"]
    if len(blob) <= size or plan.rng.random() < 0.3:
        at = off                     # in place (a larger area runs over the bitmaps)
    else:
        at = -(-plan.reader.size // 4096) * 4096
    plan.write(at, blob, f"notes rewritten at {at:#x} ({len(blob)} bytes)")
    plan.write(sub + 32, struct.pack("<qQqQ", at + desc_at, desc_size, at, len(blob)),
               "sub header: offset/size of vmcoreinfo and notes")
