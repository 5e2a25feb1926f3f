"""Hostile values and the edit list a mutant is made of."""

from __future__ import annotations

import random
import struct
from typing import Any, Protocol

#: one edit of a working copy: ("write", offset, bytes) or ("truncate", size)
Op = tuple[Any, ...]


class Reader(Protocol):
    """Read-only view of the pristine input (plans never read a working copy)."""

    size: int

    def pread(self, offset: int, size: int) -> bytes: ...


class Plan:
    """The edits of one mutant, and what they mean (for the report)."""

    def __init__(self, rng: random.Random, reader: Reader) -> None:
        self.rng, self.reader = rng, reader
        self.ops: list[Op] = []
        self.notes: list[str] = []

    def write(self, offset: int, data: bytes, why: str | None) -> None:
        """Overwrite bytes; ``why`` None: a repeat of the last edit, not noted."""
        self.ops.append(("write", offset, bytes(data)))
        if why is not None:
            self.notes.append(why)

    def field(self, offset: int, fmt: str, why: str | None, value: int | None = None,
              page: int = 4096) -> None:
        """Overwrite the integer field ``fmt`` at ``offset`` with a hostile value."""
        size = struct.calcsize("<" + fmt)
        orig = int.from_bytes(self.reader.pread(offset, size), "little")
        if value is None:
            value = number(self.rng, orig, size, page=page, file_size=self.reader.size)
        value &= (1 << 8 * size) - 1
        self.write(offset, value.to_bytes(size, "little"),
                   None if why is None else f"{why} {orig:#x}->{value:#x}")

    def flip(self, offset: int, size: int, why: str) -> None:
        """A few random bytes, bits or byte runs of [offset, offset + size)."""
        rng = self.rng
        at = offset + rng.randrange(max(size, 1))
        how = rng.choice(["bit", "byte", "run", "ff", "zero"])
        n = 1 if how in ("bit", "byte") else rng.choice([2, 4, 8, 16, 64])
        orig = self.reader.pread(at, n)
        if not orig:
            return
        if how == "bit":
            data = bytes([orig[0] ^ (1 << rng.randrange(8))])
        elif how == "byte":
            data = bytes([rng.randrange(256)])
        elif how == "run":
            data = rng.randbytes(len(orig))
        else:
            data = (b"\xff" if how == "ff" else b"\0") * len(orig)
        self.write(at, data, f"{why} {how}@{at:#x}+{len(data)}")

    def truncate(self, size: int, why: str) -> None:
        self.ops.append(("truncate", size))
        self.notes.append(f"{why} at {size:#x}")


def number(rng: random.Random, orig: int, width: int, *, page: int = 4096,
           file_size: int = 0) -> int:
    """A value a parser should survive, for a field of ``width`` bytes
    holding ``orig``: edges of the width, off-by-ones, powers of two and
    their neighbours, offsets at and past the end of the file."""
    bits = 8 * width
    top = (1 << bits) - 1
    k = rng.randrange(bits)
    choices = [0, 1, top, 1 << (bits - 1), (1 << (bits - 1)) - 1, orig + 1, orig - 1,
               orig * 2, orig // 2, -orig, orig ^ (1 << k), 1 << k, (1 << k) - 1,
               (1 << k) + 1, orig + page, orig - page, orig + rng.randrange(1, 64),
               rng.getrandbits(bits), 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x100000000]
    if file_size:
        choices += [file_size, file_size - 1, file_size + 1, file_size - rng.randrange(1, 4096),
                    file_size * 2]
    return rng.choice(choices) & top


def decimal_text(rng: random.Random, orig: int) -> str:
    """A hostile decimal VMCOREINFO value."""
    k = rng.randrange(1, 70)
    return rng.choice([
        "0", "-1", str(-orig), str(orig + 1), str(orig - 1), str(orig * 4096),
        str(1 << 64), str((1 << 63) - 1), str(-(1 << 63)), str((1 << 64) - 1),
        "9" * 5000, "-" + "9" * 5000, str((1 << k) - 1), str((1 << k) + 1), str(1 << k),
        "", " ", "0x" + "f" * 16, "1e9", "abc", str(orig) + "x", "+" + str(orig),
        "\xd9\xa3", "1_000", str(orig) + " 1"])


def hex_text(rng: random.Random, orig: int) -> str:
    """A hostile SYMBOL() value (hex without 0x)."""
    k = rng.randrange(1, 70)
    return rng.choice([
        "0", f"{orig + 1:x}", f"{orig - 1:x}", f"{orig ^ (1 << rng.randrange(64)):x}",
        "ffffffffffffffff", "10000000000000000", "-1", "f" * 5000, f"{(1 << k) - 1:x}",
        f"{rng.getrandbits(64):x}", f"{orig & ~0xFFF:x}", f"{orig + 0x1000:x}", "", "zz",
        f"0x{orig:x}", f"{orig:X}", "ffff888000000000", "ffffffff80000000"])
