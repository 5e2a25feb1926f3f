"""Dump files behind one interface: notes, memory map, physical reads:
ELF cores (/proc/vmcore), kdump-compressed files and flattened streams.

:func:`open_dump` tells the format by its first bytes and returns a
:class:`~slimdump.sources.base.DumpSource`.  Sources know file formats, not
kernels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from slimdump.errors import DumpError
from slimdump.sources.base import DumpSource, Segment
from slimdump.sources.elfcore import NOT_READ, ElfCore
from slimdump.sources.rawfile import RawFile

__all__ = ["DumpSource", "ElfCore", "Segment", "open_dump"]

_KDUMP_SIGNATURES = (b"KDUMP   ", b"DISKDUMP")
_FLAT_SIGNATURE = b"makedumpfile\0\0\0\0"
# Dump formats slimdump does not read, named in the refusal: (first bytes, name)
_FOREIGN_SIGNATURES = (
    ((0xA8190173618F23ED).to_bytes(8, "little"), "an LKCD dump"),
    ((0xA8190173618F23ED).to_bytes(8, "big"), "an LKCD dump"),
    ((0xA8190173618F23CD).to_bytes(8, "little"), "an LKCD live dump"),
    ((0xA8190173618F23CD).to_bytes(8, "big"), "an LKCD live dump"),
    (b"sadump\0\0", "a sadump dump"),
    ((0xF00FEBED).to_bytes(4, "little"), "a Xen xc_core dump"),
    ((0xF00FEBEE).to_bytes(4, "little"), "a Xen xc_core (HVM) dump"),
)


def open_dump(path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
              salvage: bool = False, use_mmap: bool = True) -> DumpSource:
    """Open a dump file of any supported format; DumpError if it is none.

    Several paths are the parts of a ``makedumpfile --split`` set, in any
    order: one :class:`~slimdump.sources.split.SplitSource` over them (a
    single path in a list is opened as that file).  ``salvage``: an ELF
    core whose notes are damaged opens with the notes before the damage
    (capture: the memory is worth saving; :class:`ElfCore`).  ``use_mmap``:
    bulk reads copy from mmap() windows where the file allows it
    (makedumpfile's default; False: pread() only, its ``--non-mmap``)."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        paths = list(path)
        if len(paths) != 1:
            from slimdump.sources.split import open_split

            return open_split(paths, use_mmap=use_mmap)
        path = paths[0]
    raw = RawFile.open(path, use_mmap=use_mmap)
    try:
        magic = raw.read_at(0, 16, what="file signature", allow_short=True)
        if magic[:4] == b"\x7fELF":
            return ElfCore(raw, salvage=salvage)
        # the makedumpfile formats' modules are imported only when met
        if magic[:8] in _KDUMP_SIGNATURES:
            from slimdump.sources.kdump import KdumpFile

            return KdumpFile(raw)
        if magic.startswith(_FLAT_SIGNATURE):
            from slimdump.sources.flat import open_flattened

            return open_flattened(raw)
        if not magic:
            raise DumpError(path, "file is empty")
        for signature, name in _FOREIGN_SIGNATURES:
            if magic.startswith(signature):
                raise DumpError(path, f"{name}: {NOT_READ}")
        raise DumpError(path, f"not a crash dump: unknown format (first bytes {magic[:8].hex()})")
    except BaseException:
        raw.close()
        raise
