"""Page hashes of a dump file as libkdumpfile reads it: the conformance oracle.

Run by Debian's ``/usr/bin/python3`` (python3-libkdumpfile 0.5.1 lives only
there), never imported by the tests, and it imports nothing from slimdump or
the tests: its answer is libkdumpfile's alone.

    /usr/bin/python3 tests/kdumpfile_oracle.py [--memsz] FILE [PFN ...]

prints one JSON object: ``format`` (libkdumpfile's file.format), ``max_pfn``,
``pages`` ([pfn, blake2b-128 hex] for every page libkdumpfile reads) and
``missing`` ([pfn, exception name] for pages it could not read, e.g.
NoDataException for an excluded page).  The pages asked for: the PFNs given;
else for a kdump file every pfn its ``file.pagemap`` marks; for an ELF file
every pfn a PT_LOAD's file data touches (with ``--memsz``: its p_memsz),
because 0.5.1's ELF pagemap stops early on large cores.  If libkdumpfile cannot
open the file: ``error`` and exit status 3.
"""

import hashlib
import json
import struct
import sys


def elf_pfns(path, page_size, memsz):
    """Pfns of the PT_LOADs, from the program headers (plain struct)."""
    with open(path, "rb") as f:
        ident = f.read(64)
        elf64, endian = ident[4] == 2, "<" if ident[5] == 1 else ">"
        if elf64:
            phoff, = struct.unpack_from(endian + "Q", ident, 32)
            phentsize, phnum = struct.unpack_from(endian + "HH", ident, 54)
        else:
            phoff, = struct.unpack_from(endian + "I", ident, 28)
            phentsize, phnum = struct.unpack_from(endian + "HH", ident, 42)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    pfns = set()
    for i in range(phnum):
        at = i * phentsize
        if elf64:
            p_type, _, _, _, paddr, filesz, msz, _ = struct.unpack_from(endian + "IIQQQQQQ",
                                                                        table, at)
        else:
            p_type, _, _, paddr, filesz, msz, _, _ = struct.unpack_from(endian + "8I", table, at)
        size = msz if memsz else filesz
        if p_type != 1 or size == 0 or paddr == (1 << (64 if elf64 else 32)) - 1:
            continue
        pfns.update(range(paddr // page_size, (paddr + size + page_size - 1) // page_size))
    return sorted(pfns)


def main(argv):
    import kdumpfile

    memsz = "--memsz" in argv
    args = [a for a in argv[1:] if a != "--memsz"]
    path, wanted = args[0], [int(a, 0) for a in args[1:]]
    try:
        dump = kdumpfile.kdumpfile(path)
        page_size = dump.attr["arch.page_size"]
        max_pfn = dump.attr["max_pfn"]
        fmt = dump.attr["file.format"]
    except Exception as exc:  # libkdumpfile's exceptions, OSError
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 3
    if not wanted and fmt == "elf":
        wanted = elf_pfns(path, page_size, memsz)
    elif not wanted:
        try:
            bits = dump.attr["file.pagemap"].get_bits(0, max_pfn - 1) if max_pfn else b""
        except Exception as exc:
            print(json.dumps({"error": f"file.pagemap: {type(exc).__name__}: {exc}"}))
            return 3
        wanted = [i * 8 + b for i, byte in enumerate(bits) if byte
                  for b in range(8) if byte >> b & 1]
    pages, missing = [], []
    for pfn in wanted:
        try:
            data = dump.read(kdumpfile.KDUMP_MACHPHYSADDR, pfn * page_size, page_size)
        except Exception as exc:
            missing.append([pfn, type(exc).__name__])
            continue
        pages.append([pfn, hashlib.blake2b(bytes(data), digest_size=16).hexdigest()])
    print(json.dumps({"format": fmt, "max_pfn": max_pfn, "page_size": page_size,
                      "pages": pages, "missing": missing}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
