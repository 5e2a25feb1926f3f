"""Parsers for what the independent readers print (eu-readelf, readelf).

Tests compare slimdump's view of a file with these, never with slimdump's
own earlier output.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import require_kdumpfile, run, tool

_FIELD = re.compile(r"([A-Za-z_][\w.]*):\s+(-?0x[0-9a-fA-F]+|-?\d+)\b")
_NOTE_ROW = re.compile(r"^  (\S+)\s+(\d+)\s+(.+)$")


@dataclass
class EuNote:
    owner: str
    size: int
    type: str
    fields: dict[str, int] = field(default_factory=dict)
    text: list[str] = field(default_factory=list)


def eu_readelf_notes(path: Path) -> list[EuNote]:
    """``eu-readelf -n``: every note with its decoded fields (registers for
    PRSTATUS, as integers) and any text lines it printed (VMCOREINFO)."""
    out = run(tool("eu-readelf"), "-n", path).stdout
    notes: list[EuNote] = []
    for line in out.splitlines():
        row = _NOTE_ROW.match(line)
        if row and not line.startswith("   "):
            notes.append(EuNote(row.group(1), int(row.group(2)), row.group(3).strip()))
        elif notes and line.startswith("    "):
            for key, value in _FIELD.findall(line):
                notes[-1].fields.setdefault(key, int(value, 0))
            notes[-1].text.append(line.strip())
    return notes


@dataclass
class ReadelfNote:
    owner: str
    size: int
    description: str


def readelf_notes(path: Path) -> list[ReadelfNote]:
    """``readelf -n`` (binutils): owner, size and description of each note."""
    out = run(tool("readelf"), "-nW", path).stdout
    notes = []
    for line in out.splitlines():
        m = re.match(r"^  (\S+)\s+(0x[0-9a-f]+)\s+(.+)$", line)
        if m:
            description = m.group(3).split("\t")[0].strip()   # -W appends the data
            notes.append(ReadelfNote(m.group(1), int(m.group(2), 16), description))
    return notes


@dataclass
class Load:
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int


def readelf_loads(path: Path) -> list[Load]:
    """``readelf -lW``: the PT_LOAD program headers."""
    out = run(tool("readelf"), "-lW", path).stdout
    loads = []
    for line in out.splitlines():
        parts = line.split()
        if parts[:1] == ["LOAD"]:
            loads.append(Load(*(int(x, 16) for x in parts[1:6])))
    return loads


def readelf_segment_types(path: Path) -> list[str]:
    out = run(tool("readelf"), "-lW", path).stdout
    types = []
    in_table = False
    for line in out.splitlines():
        if line.strip().startswith("Type"):
            in_table = True
            continue
        if in_table:
            if not line.strip():
                break
            types.append(line.split()[0])
    return types


def partial_tail_pfns(path: Path, page: int = 4096) -> list[int]:
    """Pfns makedumpfile 1.7.2 leaves out of its 1st bitmap although the
    vmcore holds bytes of them, by readelf's PT_LOADs: makedumpfile sets
    pfns floor(start/P) .. floor(end/P) - 1 per PT_LOAD, so a page where a
    PT_LOAD ends mid-page (x86's first RAM range, 0x1000-0x9fbff) is
    dropped unless another PT_LOAD sets it; slimdump keeps every page that
    holds a byte of the dump (README, "Oracles and what they disagree about")."""
    loads = readelf_loads(path)
    tails = {(ld.paddr + ld.memsz) // page for ld in loads if (ld.paddr + ld.memsz) % page}
    return sorted(p for p in tails
                  if not any(o.paddr // page <= p < (o.paddr + o.memsz) // page for o in loads))


def held_page(path: Path, pfn: int, page: int = 4096) -> bytes:
    """Page ``pfn`` as the ELF vmcore holds it, read through readelf's
    program headers: bytes a PT_LOAD stores in the file (the first in
    header order), zeros for the rest of the page."""
    base, out, have = pfn * page, bytearray(page), [False] * page
    with open(path, "rb") as f:
        for ld in readelf_loads(path):
            lo, hi = max(base, ld.paddr), min(base + page, ld.paddr + ld.filesz)
            if lo >= hi:
                continue
            f.seek(ld.offset + lo - ld.paddr)
            data = f.read(hi - lo)
            for i, byte in enumerate(data):
                if not have[lo - base + i]:
                    out[lo - base + i], have[lo - base + i] = byte, True
    return bytes(out)


KDUMPFILE_ORACLE = Path(__file__).with_name("kdumpfile_oracle.py")


def libkdumpfile_view(path: str | Path, *, memsz: bool = False) -> dict[str, object]:
    """libkdumpfile's view of ``path`` (tests/kdumpfile_oracle.py run by
    Debian's /usr/bin/python3): ``{"format", "pages": {pfn: hash},
    "missing": [[pfn, exception]]}``, or ``{"error": ...}`` when it cannot
    open the file or crashes."""
    args = [require_kdumpfile(), str(KDUMPFILE_ORACLE), *(["--memsz"] if memsz else []),
            str(path)]
    proc = subprocess.run(args, capture_output=True, text=True)
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {"error": f"oracle crashed (exit {proc.returncode}): {proc.stderr[-300:]}"}
    if "pages" in result:
        result["pages"] = {pfn: h for pfn, h in result["pages"]}
    return result
