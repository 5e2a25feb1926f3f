"""The complete dump: a byte-exact copy of an ELF vmcore.

This is the "option to collect the complete vmcore" of the 2011 proposal:
``cmp`` finds the copy identical to its source.  The kernel does the copying
(see :mod:`slimdump.writers.copy`) and holes stay holes.
"""

from __future__ import annotations

from slimdump.errors import DumpError
from slimdump.progress import Progress
from slimdump.record import record
from slimdump.sources.elfcore import ElfCore
from slimdump.writers.atomic import AtomicOutput
from slimdump.writers.copy import RangeCopier


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
        copier = RangeCopier(source.raw.fd, out.fd, source.path, dst, bar.update)
        copier.copy(0, 0, source.size)
        out.set_size(source.size)
        out.commit()
    bar.finish()
    return CopyStats(source.size, copier.copied, copier.method)
