"""Working copies: one per lane and input, mutated in place and restored
from the pristine input after each run (only the touched ranges are
copied back; a journal written before the first byte changes lets a later
run repair a copy a killed harness left mutated)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from fuzz.values import Op


class Pristine:
    """Read-only view of an input (what plans read)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size

    def pread(self, offset: int, size: int) -> bytes:
        if offset < 0 or size <= 0:
            return b""
        return os.pread(self.fd, size, offset)


class WorkCopy:
    def __init__(self, pristine: Pristine, path: Path) -> None:
        self.pristine, self.path = pristine, path
        self.journal = path.with_name(path.name + ".journal")
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.journal.exists():
            self._restore(json.loads(self.journal.read_text()))
        if not path.exists() or path.stat().st_size != pristine.size or not _same(
                pristine.path, path):
            tmp = path.with_name(path.name + ".copying")
            # sparse like the fixtures (a 650 MB vmcore is 110-180 MB on disk)
            subprocess.run(["cp", "--sparse=always", "--reflink=auto", str(pristine.path),
                            str(tmp)], check=True)
            tmp.replace(path)

    def apply(self, ops: list[Op]) -> None:
        ranges = []
        for op in ops:
            if op[0] == "write":
                ranges.append([op[1], len(op[2])])
            else:
                ranges.append([op[1], self.pristine.size - op[1]])
        self.journal.write_text(json.dumps({"ranges": ranges}))
        fd = os.open(self.path, os.O_RDWR)
        try:
            for op in ops:
                if op[0] == "write":
                    os.pwrite(fd, op[2], op[1])
                else:
                    os.ftruncate(fd, op[1])
        finally:
            os.close(fd)

    def restore(self) -> None:
        if self.journal.exists():
            self._restore(json.loads(self.journal.read_text()))

    def _restore(self, journal: dict) -> None:
        src = self.pristine
        fd = os.open(self.path, os.O_RDWR)
        try:
            for off, length in journal["ranges"]:
                end = min(off + length, src.size)
                pos = off
                while pos < end:
                    n = min(end - pos, 1 << 24)
                    os.pwrite(fd, src.pread(pos, n), pos)
                    pos += n
            os.ftruncate(fd, src.size)
            for off, length in journal["ranges"]:          # check what was put back
                n = min(off + length, src.size) - off
                if 0 < n <= 1 << 20 and os.pread(fd, n, off) != src.pread(off, n):
                    raise RuntimeError(f"fuzz: {self.path}: restore failed at {off:#x}")
        finally:
            os.close(fd)
        self.journal.unlink()


def _same(a: Path, b: Path) -> bool:
    """Byte-for-byte equal (a working copy left by an earlier run)."""
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            x, y = fa.read(1 << 24), fb.read(1 << 24)
            if x != y:
                return False
            if not x:
                return True
