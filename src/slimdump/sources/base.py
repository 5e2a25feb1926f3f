"""The interface every dump source offers."""

from __future__ import annotations

from slimdump.elf import ElfHeader, Note
from slimdump.record import record


@record(frozen=True)
class Segment:
    """One range of the crashed machine's memory held by the dump.

    ``mem_size`` bytes start at ``phys_start`` (``virt_start`` in the
    kernel's address space); the first ``file_size`` of them are stored at
    ``file_offset``, the rest read as zeros (ELF p_filesz < p_memsz).
    """

    phys_start: int
    virt_start: int
    mem_size: int
    file_offset: int
    file_size: int

    @property
    def phys_end(self) -> int:
        return self.phys_start + self.mem_size

    def as_metadata(self) -> dict[str, int]:
        return {"phys_start": self.phys_start, "virt_start": self.virt_start,
                "size": self.mem_size}


class DumpSource:
    """A crash dump: the ELF identity of the crashed machine, its notes, the
    memory ranges it holds and counted physical reads.  Subclasses fill the
    attributes and implement :meth:`read_phys`."""

    path: str
    format: str                 # "elf", later "kdump", "flattened"
    header: ElfHeader           # class, byte order, machine of the crashed kernel
    notes: list[Note]
    segments: list[Segment]
    size: int                   # bytes in the file
    #: read_phys_into may be called from two threads at once (a source whose
    #: reads keep no state besides the counts says so)
    parallel_reads: bool = False

    @property
    def bytes_read(self) -> int:
        raise NotImplementedError

    @property
    def data_end(self) -> int:
        """The file size the format's headers promise."""
        raise NotImplementedError

    @property
    def truncated(self) -> bool:
        return self.size < self.data_end

    def read_phys(self, paddr: int, size: int) -> bytes:
        raise NotImplementedError

    def read_phys_into(self, paddr: int, buf: memoryview) -> None:
        """Fill ``buf`` (a writable byte view) with the physical memory at
        ``paddr``: what :meth:`read_phys` of ``len(buf)`` bytes returns, with
        the same errors and the same count in :attr:`bytes_read`.  Bulk
        readers (the struct page walk) use it to read straight into their
        arrays; sources that can (ELF cores) override it to skip the
        intermediate copy.  On an error ``buf`` may be partly written."""
        buf[:] = self.read_phys(paddr, len(buf))

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> DumpSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
