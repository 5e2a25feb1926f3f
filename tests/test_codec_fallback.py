"""snappy (-p) and zstd (-z) without cramjam, as on Debian (which packages
no cramjam): Debian's python3-snappy and python3-zstandard do the work.

The code under test runs in Debian's /usr/bin/python3 with cramjam made
unimportable.  Oracles: cramjam, the other implementation, decompresses
every page the fallback compressed (and the fallback every page cramjam
compressed); drgn (libkdumpfile) reads every page of the -p and -z dumps the
fallback wrote from a real vmcore and sees the source's bytes (and no bytes
for the excluded pages); our reader, with cramjam, reads them too.
makedumpfile 1.7.2 (Debian 12) is built without snappy and zstd, so it
cannot read these dumps.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slimdump.sources import open_dump
from slimdump.sources.kdump import KdumpFile
from tests.conftest import real_vmcore, require, require_module
from tests.oracles import held_page

cramjam = require_module("cramjam")
drgn = require_module("drgn")

PYTHON = "/usr/bin/python3"
SRC_DIR = Path(__file__).resolve().parents[1] / "src"
PAGE = 4096
SOURCE = "6.1-sysrq"
FLAG = {"snappy": 0x4, "zstd": 0x20}
DEBIAN_MODULE = {"snappy": "snappy", "zstd": "zstandard"}
# what Debian's Python runs first: the tree's slimdump, and no cramjam even
# where someone installed one
PRELUDE = (f"import sys; sys.modules['cramjam'] = None; sys.path.insert(0, {str(SRC_DIR)!r}); ")


def _check_debian_python() -> None:
    done = subprocess.run([PYTHON, "-c", "import snappy, zstandard"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        require(f"{PYTHON} with python3-snappy and python3-zstandard")


_check_debian_python()


def debian(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([PYTHON, "-c", PRELUDE + code, *args], capture_output=True,
                          text=True, check=False, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr
    return done


# length-prefixed blobs, the test's and Debian's Python's way of passing pages
SERIAL = """
import struct
def pack(blobs):
    return b"".join(struct.pack("<I", len(b)) + b for b in blobs)
def unpack(data):
    out, at = [], 0
    while at < len(data):
        (size,) = struct.unpack_from("<I", data, at)
        out.append(data[at + 4:at + 4 + size])
        at += 4 + size
    return out
"""
_serial: dict[str, Callable[..., Any]] = {}
exec(SERIAL, _serial)
pack, unpack = _serial["pack"], _serial["unpack"]


def test_pages_cross_decompress(tmp_path: Path) -> None:
    """Real pages of a vmcore and edge cases: the fallback's blocks and
    frames decompress with cramjam, cramjam's with the fallback."""
    prog = drgn.Program()
    prog.set_core_dump(str(real_vmcore(SOURCE)))
    rng = np.random.default_rng(11)
    pages = [bytes(PAGE), rng.bytes(PAGE), b"slimdump " * 455 + b"x",
             bytes(PAGE // 2) + rng.bytes(PAGE // 2)]
    for pfn in range(0x1000, 0x40000, 0x3F1):        # kernel text, data, page cache...
        try:
            pages.append(prog.read(pfn * PAGE, PAGE, True))
        except drgn.FaultError:
            continue
    assert len(pages) > 100
    (tmp_path / "pages").write_bytes(pack(pages))
    for codec in ("snappy", "zstd"):
        ours = [bytes(cramjam.snappy.compress_raw(p)) if codec == "snappy"
                else bytes(cramjam.zstd.compress(p, level=1)) for p in pages]
        (tmp_path / "cramjam").write_bytes(pack(ours))
        done = debian(SERIAL + f"""
from pathlib import Path
from slimdump import codecs
codec = codecs.CODECS[{codec!r}]
print(codecs.implementation(codec).__name__)
d = Path({str(tmp_path)!r})
pages = unpack((d / "pages").read_bytes())
compress = codecs.compressor(codec)
(d / "fallback").write_bytes(pack([compress(p) for p in pages]))
theirs = unpack((d / "cramjam").read_bytes())
assert [codecs.decompress(codec.flag, b, {PAGE}) for b in theirs] == pages
print("ok")
""")
        assert done.stdout.split() == [DEBIAN_MODULE[codec], "ok"]
        fallback = unpack((tmp_path / "fallback").read_bytes())
        assert len(fallback) == len(pages)
        for page, blob in zip(pages, fallback, strict=True):
            if codec == "snappy":
                assert bytes(cramjam.snappy.decompress_raw(blob)) == page
            else:
                assert bytes(cramjam.zstd.decompress(blob)) == page




@pytest.mark.parametrize("codec", ["snappy", "zstd"])
def test_dump_written_with_fallback(codec: str, tmp_path: Path) -> None:
    """``capture -p/-z -d 31`` of a real vmcore by Debian's Python without
    cramjam: every dumped page reads as the source's through drgn and through
    our reader; excluded pages are absent for drgn."""
    src = real_vmcore(SOURCE)
    dst = tmp_path / f"vmcore.{codec}"
    letter = {"snappy": "-p", "zstd": "-z"}[codec]
    done = debian("from slimdump.cli import main; sys.exit(main(sys.argv[1:]))",
                  "capture", letter, "-d", "31", "--no-progress", str(src), str(dst))
    assert f"kdump-compressed dump ({codec}" in done.stderr, done.stderr
    src_prog, dst_prog = drgn.Program(), drgn.Program()
    src_prog.set_core_dump(str(src))
    dst_prog.set_core_dump(str(dst))
    with open_dump(dst) as dump:
        assert isinstance(dump, KdumpFile)
        assert dump.compression == codec
        flags = set(dump.descriptors(0, dump.num_dumpable).flags)
        pages = 0
        for start, count in dump.bitmap2.runs():
            for at in range(start, start + count, 1024):
                n = min(1024, start + count - at)
                expected = source_pages(src_prog, src, at, n)
                assert dst_prog.read(at * PAGE, n * PAGE, True) == expected, hex(at)
                assert b"".join(dump.pages(at, n)) == expected, hex(at)
                pages += n
        assert pages == dump.num_dumpable > 1000
        assert FLAG[codec] in flags                  # pages really stored compressed
        max_pfn = dump.max_mapnr
        excluded = [pfn for pfn in range(0, max_pfn, 257) if not dump.is_dumped(pfn)]
    assert excluded
    for pfn in excluded:
        with pytest.raises(drgn.FaultError):
            dst_prog.read(pfn * PAGE, PAGE, True)


def source_pages(prog: drgn.Program, path: Path, pfn: int, count: int) -> bytes:
    """The source's pages, through drgn; a page the vmcore holds only in part
    (a PT_LOAD ending mid-page) as its held bytes and zeros."""
    try:
        return prog.read(pfn * PAGE, count * PAGE, True)
    except drgn.FaultError:
        out = []
        for p in range(pfn, pfn + count):
            try:
                out.append(prog.read(p * PAGE, PAGE, True))
            except drgn.FaultError:
                out.append(held_page(path, p, PAGE))
        return b"".join(out)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
