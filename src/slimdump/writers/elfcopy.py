"""The complete dump: a byte-exact copy of an ELF vmcore.

This is the "option to collect the complete vmcore" of the 2011 proposal:
``cmp`` finds the copy identical to its source.  The kernel does the copying
(see :mod:`slimdump.writers.copy`) and holes stay holes.  A flattened -E
stream has no file to hand the kernel: the ELF file it describes is copied
through the stream's reads, all-zero blocks left as holes.
"""

from __future__ import annotations

from collections.abc import Callable

from slimdump.errors import DumpError
from slimdump.progress import Progress
from slimdump.record import record
from slimdump.sources.elfcore import ElfCore
from slimdump.writers.atomic import AtomicOutput
from slimdump.writers.copy import CHUNK, ZERO_BLOCK, RangeCopier, is_zero_block


@record(frozen=True)
class CopyStats:
    size: int          # bytes in the output file
    copied: int        # data bytes moved (holes excluded)
    method: str        # the kernel path that did the work


def write_full_copy(source: ElfCore, dst: str, *, overwrite: bool = False,
                    progress: bool | None = None) -> CopyStats:
    """Copy the whole ELF file ``source`` to ``dst`` atomically."""
    if source.truncated:
        raise DumpError(source.path, f"truncated: its headers promise {source.data_end} bytes "
                                     f"but the file has {source.size}; a complete copy is "
                                     f"impossible")
    bar = Progress(source.size, "Copying data", enabled=progress)
    with AtomicOutput(dst, overwrite=overwrite) as out:
        fd = getattr(source.raw, "fd", None)
        if isinstance(fd, int):
            copier = RangeCopier(fd, out.fd, source.path, dst, bar.update)
            copier.copy(0, 0, source.size)
            copied, method = copier.copied, copier.method
        else:
            copied, method = _copy_by_reads(source, out, bar.update), "read/write"
        out.set_size(source.size)
        out.commit()
    bar.finish()
    return CopyStats(source.size, copied, method)


def _copy_by_reads(source: ElfCore, out: AtomicOutput, progress: Callable[[int], None]) -> int:
    """The file ``source.raw`` presents, through its counted ``read_at``
    (a flattened stream); returns the data bytes written."""
    copied = 0
    for at in range(0, source.size, CHUNK):
        data = source.raw.read_at(at, min(CHUNK, source.size - at), what="dump data")
        view = memoryview(data)
        for lo in range(0, len(data), ZERO_BLOCK):
            block = view[lo:lo + ZERO_BLOCK]
            if not is_zero_block(block):
                out.write(block, at + lo)
                copied += len(block)
        progress(at + len(data))
    return copied
