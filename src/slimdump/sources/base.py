"""The interface every dump source offers."""

from __future__ import annotations

from dataclasses import dataclass

from slimdump.elf import ElfHeader, Note


@dataclass(frozen=True)
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

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> DumpSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
