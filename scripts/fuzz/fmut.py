"""Mutations of kdump-compressed files (headers, sub header, bitmaps, page
descriptors, page data) and flattened streams (record headers, payload)."""

from __future__ import annotations

import struct
from typing import Any

from fuzz.catalog import KDUMP_HEADER, KDUMP_SUB
from fuzz.values import Plan


def _s64(value: int) -> bytes:
    """A big-endian i64 of ``value`` wrapped to 64 bits."""
    return struct.pack(">q", (value + (1 << 63)) % (1 << 64) - (1 << 63))


def _set(plan: Plan, at: int, fmt: str, why: str) -> None:
    if fmt.endswith("s"):
        plan.flip(at, struct.calcsize(fmt), why)
    else:
        plan.field(at, fmt, why)


def kdump_header(plan: Plan, cat: dict[str, Any]) -> None:
    name, at, fmt = plan.rng.choice(KDUMP_HEADER)
    _set(plan, at, fmt, f"header.{name}")


def kdump_subheader(plan: Plan, cat: dict[str, Any]) -> None:
    name, at, fmt = plan.rng.choice(KDUMP_SUB)
    _set(plan, cat["sub_header_at"] + at, fmt, f"sub.{name}")


def kdump_bitmap(plan: Plan, cat: dict[str, Any]) -> None:
    rng = plan.rng
    which = rng.choice(["bitmap1", "bitmap2"])
    at, size = cat[which]
    if rng.random() < 0.3:          # a whole run set or cleared
        n = rng.choice([8, 64, 512])
        off = at + rng.randrange(max(size - n, 1))
        plan.write(off, (b"\xff" if rng.random() < 0.5 else b"\0") * n, f"{which} run@{off:#x}")
    else:
        plan.flip(at, size, which)


def kdump_desc(plan: Plan, cat: dict[str, Any]) -> None:
    rng = plan.rng
    at, count = cat["descs"]
    k = rng.randrange(max(count, 1))
    for _ in range(rng.choice([1, 1, 1, 2, 16])):
        base = at + 24 * k
        name, off, fmt = rng.choice([("offset", 0, "Q"), ("size", 8, "I"), ("flags", 12, "I"),
                                     ("page_flags", 16, "Q")])
        value = None
        if name == "offset" and rng.random() < 0.4:
            value = rng.choice([0, cat["data_at"] - 1, at, plan.reader.size - 100,
                                plan.reader.size, -1])
        elif name == "size" and rng.random() < 0.4:
            value = rng.choice([0, 1, 4095, 4096, 4097, 65536, 1 << 31])
        elif name == "flags" and rng.random() < 0.5:
            value = rng.choice([0, 1, 2, 3, 4, 8, 0x20, 0x21, 0xFF, 0x80000000])
        plan.field(base + off, fmt, f"desc[{k}].{name}", value)
        k = (k + 1) % max(count, 1)


def kdump_data(plan: Plan, cat: dict[str, Any]) -> None:
    start = cat["data_at"]
    plan.flip(start, max(plan.reader.size - start, 1), "page data")


def kdump_truncate(plan: Plan, cat: dict[str, Any]) -> None:
    rng = plan.rng
    size = plan.reader.size
    marks = [cat["sub_header_at"], cat["bitmap1"][0], cat["bitmap2"][0], cat["descs"][0],
             cat["data_at"]]
    cut = rng.choice([rng.randrange(size), rng.choice(marks) + rng.randrange(-8, 9),
                      size - rng.randrange(1, 4096)])
    plan.truncate(max(0, min(cut, size - 1)), "truncate")


def flat_record(plan: Plan, cat: dict[str, Any]) -> None:
    rng = plan.rng
    recs = cat["records"]
    how = rng.choices(["offset", "size", "start", "end", "payload"], weights=[3, 3, 1, 1, 2])[0]
    if how == "start":
        name, off, size = rng.choice([("signature", 0, 16), ("type", 16, 8), ("version", 24, 8)])
        if size == 8:
            value = rng.choice([0, 2, -1, 1 << 63])
            plan.write(off, _s64(value), f"flat {name}={value}")
        else:
            plan.flip(off, size, "flat signature")
        return
    rec = recs[-1] if how == "end" else rng.choice(recs[:-1] or recs)
    at, offset, length = rec
    if how == "end":
        value = rng.choice([0, -2, 1, 1 << 40])
        plan.write(at + rng.choice([0, 8]), _s64(value), f"flat end marker={value}")
    elif how == "payload":
        plan.flip(at + 16, max(length, 1), f"flat payload of record@{at:#x}")
    else:
        orig = offset if how == "offset" else length
        value = rng.choice([0, -1, -2, orig + 1, orig - 1, 1 << 62, (1 << 63) - 1, -(1 << 63),
                            orig + 4096, plan.reader.size, orig * 2, 1 << 40, 16])
        plan.write(at + (0 if how == "offset" else 8), _s64(value),
                   f"flat record@{at:#x}.{how} {orig}->{value}")


def flat_truncate(plan: Plan, cat: dict[str, Any]) -> None:
    rng = plan.rng
    recs = cat["records"]
    size = plan.reader.size
    at = rng.choice(recs)[0]
    cut = rng.choice([at, at + 8, at + 16, at + 17, rng.randrange(size), 4095, 4096, size - 16,
                      size - 1])
    plan.truncate(max(0, min(cut, size - 1)), "truncate")
