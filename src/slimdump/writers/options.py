"""What the normal dump looks like: makedumpfile's output choices.

Kept apart from the writers themselves so that choosing them (the command
line, capture's decision) imports nothing heavy: a slim capture in a small
capture kernel never loads the writers, their threads or their codecs.
"""

from __future__ import annotations

from slimdump.errors import DumpError
from slimdump.record import record

KDUMP, ELF, FLAT = "kdump", "elf", "flat"


@record(frozen=True)
class DumpOptions:
    """makedumpfile's output choices: -c/-l/-p/-z, -E, -F, -d, --split."""

    format: str = KDUMP          # KDUMP, ELF or FLAT
    codec: str = "none"          # none, zlib, lzo, snappy, zstd
    dump_level: int = 31
    threads: int | None = None   # --num-threads; None: one per CPU
    split: tuple[str, ...] = ()  # --split: the parts' file names (kdump format only)
    splitblock: int = 1 << 30    # --splitblock-size, in bytes


def output_path(dst: str | None) -> str:
    """``dst`` as a file name; None or "-" (standard output) is only for -F."""
    if dst in (None, "-"):
        raise DumpError(None, "only a flattened dump (-F) can go to standard output")
    return dst
