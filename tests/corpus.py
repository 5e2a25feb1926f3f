"""The conformance corpus: one small file per dump format slimdump reads or
writes (and a few it must refuse), built into a directory.

Sources, none of them slimdump:

* synthetic ELF cores from :mod:`tests.synthcore` (ELF64/ELF32, both byte
  orders, no PT_LOAD, overlapping and partial segments, memsz > filesz);
* kdump-compressed files from :mod:`tests.kdumpbuild` (header versions 1-6,
  every codec and a mix of them per page, excluded and lost pages, 32-bit
  layouts, big-endian, DISKDUMP, eraseinfo, --split parts, flattened);
* makedumpfile 1.7.2's own outputs of one real vmcore (-c, -l, -p, -z, -d 0,
  -E, -F, -E -F, --split), cached beside the fixture in the lab cache;
* empty, truncated and foreign (LKCD, sadump, Xen xc_core) files.

Each :class:`Entry` says what a correct reader finds in the file: the page
hashes the builder recorded, or the file libkdumpfile should read for them
(``truth_path``; for a flattened file, its rearranged twin).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests import kdumpbuild as kb
from tests import synthcore as sc

REAL_FIXTURE = "6.1-sysrq"
PAGE = 4096


def page_hash(page: bytes) -> str:
    """The hash tests/kdumpfile_oracle.py prints for a page."""
    return hashlib.blake2b(page, digest_size=16).hexdigest()


@dataclass
class Entry:
    """One corpus file (or the parts of a split dump)."""

    name: str
    paths: list[str]
    kind: str                        # elf, kdump, flat, split, bad, foreign
    refuse: str | None = None        # every command must refuse; the message names this
    truth: dict[int, str] | None = None   # pfn -> page hash, from the builder
    truth_path: str | None = None    # else: what libkdumpfile reads for the truth
    oracle_input: bool = True        # libkdumpfile 0.5.1 reads the input right
    has_log: bool = False
    real: bool = False
    split_of: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.paths[0]


# -- synthetic ELF cores ------------------------------------------------------------


def _ram(tag: bytes, paddr: int, pages: int, zero_every: int = 5) -> bytes:
    """Tagged pages with every ``zero_every``-th page zero (for -d 1)."""
    out = bytearray(sc.tagged_bytes(tag, paddr, pages * PAGE))
    for i in range(0, pages, zero_every):
        out[i * PAGE:(i + 1) * PAGE] = bytes(PAGE)
    return bytes(out)


def _notes64(endian: str = "<") -> list[sc.Note]:
    return [sc.Note(b"CORE", sc.NT_PRSTATUS,
                    sc.prstatus_x86_64(cpu, sc.sample_regs_x86_64(cpu), endian=endian))
            for cpu in range(2)] + [sc.Note(b"VMCOREINFO", 0, sc.vmcoreinfo(sc.SAMPLE_VMCOREINFO))]


def _notes32(endian: str = "<") -> list[sc.Note]:
    info = dict(sc.SAMPLE_VMCOREINFO, **{"SYMBOL(_stext)": "c1000000"})
    info.pop("NUMBER(pgtable_l5_enabled)")
    return [sc.Note(b"CORE", sc.NT_PRSTATUS, sc.prstatus_i386(0, {"eip": 0xC1001234},
                                                              endian=endian)),
            sc.Note(b"VMCOREINFO", 0, sc.vmcoreinfo(info))]


def elf_cores() -> dict[str, bytes]:
    """name -> ELF core bytes."""
    ram = _ram(b"RAM:", 0x100000, 24)
    text = ram[:2 * PAGE]
    cores = {
        "elf64-le": sc.sample_x86_64_core(ram=ram),
        "elf64-le-packed": sc.build_core(_notes64(), [
            sc.Load(0x100000, 0xFF11000000100000, ram)], page_align=False),
        # VMCOREINFO only: libkdumpfile checks NT_PRSTATUS sizes per machine
        "elf64-be": sc.build_core(_notes64(">")[2:], [
            sc.Load(0x100000, 0xC000000000100000, ram)], endian=">", machine=sc.EM_PPC64),
        "elf32-le": sc.build_core(_notes32(), [
            sc.Load(0x100000, 0xC0100000, ram)], elf64=False, machine=sc.EM_386),
        "elf32-be": sc.build_core(_notes32(">"), [
            sc.Load(0x100000, 0xC0100000, ram)], elf64=False, endian=">", machine=20),
        "elf-no-load": sc.build_core(_notes64(), []),
        "elf-no-notes": sc.build_core([], [sc.Load(0x100000, 0xFF11000000100000, ram)]),
        # the kernel-image segment duplicates RAM, as on every x86_64 vmcore
        "elf-overlap": sc.build_core(_notes64(), [
            sc.Load(0x100000, 0xFFFFFFFF81000000, text),
            sc.Load(0x100000, 0xFF11000000100000, ram)]),
        # segments that start and end inside a page, and a zero-filled tail
        "elf-partial": sc.build_core(_notes64(), [
            sc.Load(0x1000, 0xFF11000000001000, ram[:0x3C00]),
            sc.Load(0x100400, 0xFF11000000100400, ram[0x400:0x400 + 10 * PAGE + 0x800],
                    memsz=14 * PAGE)]),
        "elf-many-segments": sc.build_core(_notes64(), [
            sc.Load(0x100000 + i * 0x10000, 0xFF11000000100000 + i * 0x10000,
                    ram[i * PAGE:(i + 2) * PAGE]) for i in range(8)]),
    }
    # headers only: a valid ELF core with no program headers at all
    hdr = bytearray(sc.build_core([], [])[:64])
    hdr[56:58] = b"\0\0"                                 # e_phnum 0
    cores["elf-header-only"] = bytes(hdr)
    return cores


# -- synthetic kdump files ------------------------------------------------------------


def _kdump_pages() -> dict[int, bytes]:
    pages = {pfn: sc.tagged_bytes(b"KD%02x" % (pfn & 0xFF), pfn * PAGE, PAGE)
             for pfn in range(0x100, 0x140) if pfn % 9}
    for pfn in (0x104, 0x106, 0x121):
        pages[pfn] = bytes(PAGE)                         # zero pages: the shared descriptor
    pages[0x130] = random.Random(9).randbytes(PAGE)      # incompressible: stored raw
    return pages


def _kdump_notes(endian: str = "<", bits: int = 64) -> list[tuple[bytes, int, bytes]]:
    if bits == 64:
        core = sc.prstatus_x86_64(0, sc.sample_regs_x86_64(0), endian=endian)
    else:
        core = sc.prstatus_i386(0, {"eip": 0xC1001234}, endian=endian)
    return [(b"CORE", 1, core), (b"VMCOREINFO", 0, sc.vmcoreinfo(sc.SAMPLE_VMCOREINFO))]


def kdump_specs() -> dict[str, kb.KdumpSpec]:
    pages, excluded = _kdump_pages(), {p for p in range(0x100, 0x140) if p % 9 == 0}
    excluded |= set(range(0x140, 0x150))

    def spec(**kw: object) -> kb.KdumpSpec:
        base: dict[str, object] = dict(pages=dict(pages), max_mapnr=0x180, excluded=set(excluded),
                                       notes=_kdump_notes())
        base.update(kw)
        return kb.KdumpSpec(**base)  # type: ignore[arg-type]

    specs = {f"kdump-v{v}": spec(version=v) for v in range(1, 7)}
    specs.update({f"kdump-{c}": spec(codec=c) for c in ("none", "zlib", "lzo", "snappy", "zstd")})
    specs["kdump-mixed-codecs"] = spec(codec=["zlib", "lzo", "snappy", "zstd", "none"])
    specs["kdump-d0"] = spec(dump_level=0, excluded=set())
    specs["kdump-incomplete"] = spec(lost={0x131, 0x133, 0x13F})
    specs["kdump-eraseinfo"] = spec(eraseinfo=b"erase modules.name size 8\n")
    specs["kdump-i386"] = spec(layout="32pack", machine=b"i686",
                               notes=_kdump_notes(bits=32))
    specs["kdump-arm32"] = spec(layout="32pad", machine=b"armv7l", notes=_kdump_notes(bits=32))
    # VMCOREINFO only: an x86 NT_PRSTATUS in a ppc dump crashes libkdumpfile 0.5.1
    specs["kdump-ppc64-be"] = spec(endian=">", machine=b"ppc64", notes=_kdump_notes(">")[1:])
    specs["kdump-ppc32-be"] = spec(endian=">", layout="32pad", machine=b"ppc",
                                   notes=_kdump_notes(">", 32)[1:])
    specs["diskdump"] = spec(signature=kb.DISKDUMP_SIGNATURE, version=1, notes=[])
    specs["kdump-no-pages"] = spec(pages={}, excluded=set(range(0x100, 0x110)))
    specs["kdump-no-notes"] = spec(notes=[])
    return specs


# -- files slimdump must refuse ---------------------------------------------------------


def xen_elf_xc_core() -> bytes:
    """The skeleton of Xen's ELF-format xc_core (Xen's
    docs/misc/dump-core-format.txt): an ELF64 ET_CORE with no program
    headers and the sections .note.Xen, .xen_prstatus, .xen_shared_info,
    .xen_pages and .xen_p2m (empty here: only the layout is refused)."""
    names = [b"", b".shstrtab", b".note.Xen", b".xen_prstatus", b".xen_shared_info",
             b".xen_pages", b".xen_p2m"]
    strtab = b"\0".join(names) + b"\0"
    offsets = [strtab.index(n + b"\0") if n else 0 for n in names]
    shoff = 64 + len(strtab) + (-len(strtab) % 8)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64,
                                 len(names), 1)
    sections = b""
    for i, off in enumerate(offsets):
        if i == 0:
            sections += bytes(64)
        elif i == 1:       # SHT_STRTAB
            sections += struct.pack("<IIQQQQIIQQ", off, 3, 0, 0, 64, len(strtab), 0, 0, 1, 0)
        else:              # SHT_PROGBITS / SHT_NOTE, no data
            sections += struct.pack("<IIQQQQIIQQ", off, 7 if i == 2 else 1, 0, 0, shoff, 0,
                                    0, 0, 8, 0)
    return header + strtab.ljust(shoff - 64, b"\0") + sections


def refused_files(good_kdump: bytes, good_elf: bytes) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, a word the refusal must contain)."""
    lkcd = (0xA8190173618F23ED).to_bytes(8, "little") + (9).to_bytes(4, "little")
    return {
        "empty": (b"", "empty"),
        "lkcd-le": (lkcd.ljust(8192, b"\0"), "LKCD"),
        "lkcd-be": ((0xA8190173618F23ED).to_bytes(8, "big").ljust(8192, b"\0"), "LKCD"),
        "sadump": ((b"sadump\0\0" + bytes(4)).ljust(8192, b"\0"), "sadump"),
        "xen-xc-core": ((0xF00FEBED).to_bytes(4, "little").ljust(8192, b"\0"), "Xen"),
        "xen-elf-xc-core": (xen_elf_xc_core(), "Xen"),
        "garbage": (b"\x13\x37" * 4096, "unknown"),
        "kdump-trunc-header": (good_kdump[:300], ""),
        "kdump-trunc-bitmap": (good_kdump[:PAGE * 3 + 100], ""),
        "elf-trunc-phdrs": (good_elf[:64 + 20], ""),
        "flat-trunc-header": (kb.FLAT_SIGNATURE + bytes(4), ""),
    }


def truncated_readable(good_kdump: bytes, good_elf: bytes) -> dict[str, bytes]:
    """Files cut inside their data: opening may work, reading must not crash."""
    return {"kdump-trunc-data": good_kdump[:len(good_kdump) - 3000],
            "elf-trunc-data": good_elf[:len(good_elf) - 5000],
            "flat-trunc-records": kb.flatten(good_kdump, chunk=8192)[:-9000]}


# -- makedumpfile's own outputs of a real vmcore ------------------------------------------


MDF_OUTPUTS: dict[str, list[str]] = {
    "mdf-c-d31": ["-c", "-d", "31"],
    "mdf-l-d31": ["-l", "-d", "31"],
    "mdf-p-d31": ["-p", "-d", "31"],
    "mdf-z-d31": ["-z", "-d", "31"],
    "mdf-c-d0": ["-c", "-d", "0"],
    "mdf-l-d1": ["-l", "-d", "1"],
    "mdf-E-d31": ["-E", "-d", "31"],
    "mdf-F-c-d31": ["-F", "-c", "-d", "31"],
    "mdf-EF-d31": ["-E", "-F", "-d", "31"],
}


def makedumpfile_outputs(vmcore: Path, cache: Path, mdf: str) -> list[Entry]:
    """makedumpfile 1.7.2's (``mdf``, the program's path) outputs of
    ``vmcore``, made once and kept in ``cache`` (keyed by the vmcore's size
    and mtime)."""
    st = vmcore.stat()
    cache = cache / f"{vmcore.stem}-{st.st_size}-{int(st.st_mtime)}"
    cache.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, opts in MDF_OUTPUTS.items():
        out = cache / name
        flat = "-F" in opts
        if not out.exists():
            tmp = cache / f".{name}.tmp"
            tmp.unlink(missing_ok=True)
            if flat:
                with open(tmp, "wb") as stdout:
                    subprocess.run([mdf, *opts, str(vmcore)], stdout=stdout,
                                   stderr=subprocess.DEVNULL, check=True)
            else:
                subprocess.run([mdf, *opts, str(vmcore), str(tmp)], capture_output=True,
                               check=True)
            tmp.rename(out)
        truth = out
        if flat:
            truth = cache / f"{name}.rearranged"
            if not truth.exists():
                with open(out, "rb") as stdin:
                    subprocess.run([mdf, "-R", str(truth) + ".tmp"], stdin=stdin,
                                   capture_output=True, check=True)
                os.rename(str(truth) + ".tmp", truth)
        kind = "flat" if flat else ("elf" if "-E" in opts else "kdump")
        entries.append(Entry(name, [str(out)], kind, truth_path=str(truth), has_log=True,
                             real=True))
    parts = [cache / f"mdf-split-{i}" for i in range(2)]
    if not all(p.exists() for p in parts):
        tmps = [p.with_name(f".{p.name}.tmp") for p in parts]
        for t in tmps:
            t.unlink(missing_ok=True)
        subprocess.run([mdf, "--split", "-l", "-d", "31", str(vmcore), *map(str, tmps)],
                       capture_output=True, check=True)
        for t, p in zip(tmps, parts, strict=True):
            t.rename(p)
    for p in parts:
        entries.append(Entry(p.name, [str(p)], "split", truth_path=str(p), has_log=True,
                             real=True))
    entries.append(Entry("mdf-split", [str(p) for p in parts], "split", has_log=True,
                         real=True, truth_path=str(cache / "mdf-l-d31")))
    return entries


# -- the whole corpus ------------------------------------------------------------------


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def build_synthetic(outdir: Path) -> list[Entry]:
    outdir.mkdir(parents=True, exist_ok=True)
    entries: list[Entry] = []
    cores = elf_cores()
    for name, data in cores.items():
        path = _write(outdir / f"{name}.elf", data)
        entries.append(Entry(name, [path], "elf", truth_path=path))
    images: dict[str, kb.KdumpImage] = {}
    for name, spec in kdump_specs().items():
        img = images[name] = kb.build_kdump(spec)
        path = _write(outdir / f"{name}.kdump", img.data)
        truth = {pfn: page_hash(page) for pfn, page in img.pages.items()}
        # libkdumpfile 0.5.1 reads every 32-bit sub header in the i386 layout
        oracle = not (spec.layout == "32pad" and spec.version >= 6)
        entries.append(Entry(name, [path], "kdump", truth=truth, oracle_input=oracle))
    # split parts of the v6 zlib file, one by one and together
    spec = kdump_specs()["kdump-zlib"]
    parts = kb.build_split(spec, [0, 0x118, 0x12C, spec.max_mapnr])
    paths = []
    for i, part in enumerate(parts):
        path = _write(outdir / f"kdump-split-{i}.kdump", part.data)
        paths.append(path)
        entries.append(Entry(f"kdump-split-{i}", [path], "split",
                             truth={p: page_hash(b) for p, b in part.pages.items()}))
    whole = {p: page_hash(b) for p, b in images["kdump-zlib"].pages.items()}
    entries.append(Entry("kdump-split", paths, "split", truth=whole))
    # flattened: a kdump file, a big-endian one, an ELF core, an empty stream
    for name in ("kdump-zlib", "kdump-ppc64-be", "kdump-incomplete"):
        img = images[name]
        path = _write(outdir / f"flat-{name}.flat", kb.flatten(img.data, chunk=8192))
        entries.append(Entry(f"flat-{name}", [path], "flat",
                             truth={p: page_hash(b) for p, b in img.pages.items()}))
    twin = outdir / "elf64-le.elf"
    path = _write(outdir / "flat-elf64-le.flat", kb.flatten(cores["elf64-le"], chunk=8192))
    entries.append(Entry("flat-elf64-le", [path], "flat", truth_path=str(twin)))
    path = _write(outdir / "flat-empty.flat", kb.flatten(b""))
    entries.append(Entry("flat-empty", [path], "flat", truth={}))
    for name, data in truncated_readable(images["kdump-zlib"].data, cores["elf64-le"]).items():
        path = _write(outdir / name, data)
        entries.append(Entry(name, [path], "bad"))
    for name, (data, word) in refused_files(images["kdump-zlib"].data,
                                            cores["elf64-le"]).items():
        path = _write(outdir / name, data)
        kind = "foreign" if word in ("LKCD", "sadump", "Xen") else "bad"
        entries.append(Entry(name, [path], kind, refuse=word))
    return entries


def build_corpus(outdir: Path, *, real_vmcore: Path | None = None,
                 cache: Path | None = None) -> list[Entry]:
    """Every corpus entry, synthetic files written under ``outdir``."""
    entries = build_synthetic(outdir / "synthetic")
    if real_vmcore is not None:
        entries.insert(0, Entry("real-" + real_vmcore.stem, [str(real_vmcore)], "elf",
                                truth_path=str(real_vmcore), has_log=True, real=True))
        mdf = shutil.which("makedumpfile")
        if mdf is None:
            raise FileNotFoundError("makedumpfile is not installed")
        entries[1:1] = makedumpfile_outputs(real_vmcore, cache or outdir / "mdf", mdf)
    return entries


def main(argv: list[str]) -> int:
    """python -m tests.corpus DIR [VMCORE]: build the corpus, print its manifest."""
    vmcore = Path(argv[2]) if len(argv) > 2 else None
    entries = build_corpus(Path(argv[1]), real_vmcore=vmcore)
    json.dump([asdict(e) | {"truth": None} for e in entries], sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
