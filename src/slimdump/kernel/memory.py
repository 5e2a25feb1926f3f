"""Virtual memory of the crashed kernel, read through VMCOREINFO alone.

:class:`KernelMemory` turns kernel virtual addresses into physical ones with
the architecture's rules (:mod:`.x86_64`, :mod:`.arm64`) and reads them from
the dump source, counting every byte.  No vmlinux, no debug info: the
translation is decided from VMCOREINFO keys and the dump's own data.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from slimdump.elf import EM_AARCH64, EM_X86_64
from slimdump.kernel.vmcoreinfo import KernelViewError, VmcoreInfo
from slimdump.sources.base import DumpSource

__all__ = ["KernelMemory", "KernelViewError"]


TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up)
if TYPE_CHECKING:
    from typing import Protocol

    class Translator(Protocol):
        """Architecture rules: virtual to physical, one address at a time."""

        def vtop(self, vaddr: int) -> int: ...


class KernelMemory:
    """Reads of the crashed kernel's virtual memory."""

    def __init__(self, source: DumpSource, info: VmcoreInfo) -> None:
        self.source = source
        self.info = info
        self.endian = source.header.endian
        # every read is cut at page boundaries: PAGESIZE validated first
        self.page_size = info.valid_page_size(source.path, source.header.e_machine) or 4096
        self.page_shift = self.page_size.bit_length() - 1
        machine = source.header.e_machine
        if machine == EM_X86_64:
            from slimdump.kernel.x86_64 import X86_64

            self.arch: Translator = X86_64(self, info, source.segments)
        elif machine == EM_AARCH64:
            from slimdump.kernel.arm64 import Arm64

            self.arch = Arm64(self, info)
        else:
            raise KernelViewError(source.path, f"reading kernel memory of "
                                               f"{source.header.machine_name} dumps is not "
                                               f"supported yet (x86_64 and arm64 are)")
        # architectures that know their mappings' sizes say so with vtop_extent()
        self._arch_extent: Callable[[int], tuple[int, int]] | None = getattr(
            self.arch, "vtop_extent", None)

    @property
    def path(self) -> str:
        return self.source.path

    def read_phys(self, paddr: int, size: int) -> bytes:
        return self.source.read_phys(paddr, size)

    def vtop(self, vaddr: int) -> int:
        return self.arch.vtop(vaddr)

    def vtop_extent(self, vaddr: int) -> tuple[int, int]:
        """(physical address of ``vaddr``, bytes ``n`` > 0 such that every
        address in ``[vaddr, vaddr + n)`` translates to the same offset from
        it): the rest of the mapping holding ``vaddr`` where the architecture
        knows it (x86_64: a 2 MiB / 1 GiB page is one extent, so bulk reads
        translate once per mapping), otherwise the rest of its page.
        NotInDump (or KernelViewError) where ``vaddr`` cannot be translated,
        exactly as :meth:`vtop`."""
        if self._arch_extent is not None:
            return self._arch_extent(vaddr)
        return self.arch.vtop(vaddr), self.page_size - vaddr % self.page_size

    def read(self, vaddr: int, size: int) -> bytes:
        """``size`` bytes at kernel virtual address ``vaddr``, page by page
        (virtually contiguous memory need not be physically contiguous)."""
        out = bytearray()
        while size > 0:
            chunk = min(size, self.page_size - (vaddr % self.page_size))
            out += self.read_phys(self.vtop(vaddr), chunk)
            vaddr += chunk
            size -= chunk
        return bytes(out)

    def _unpack(self, fmt: str, vaddr: int) -> int:
        return struct.unpack(self.endian + fmt, self.read(vaddr, struct.calcsize(fmt)))[0]

    def u8(self, vaddr: int) -> int:
        return self._unpack("B", vaddr)

    def u16(self, vaddr: int) -> int:
        return self._unpack("H", vaddr)

    def u32(self, vaddr: int) -> int:
        return self._unpack("I", vaddr)

    def u64(self, vaddr: int) -> int:
        return self._unpack("Q", vaddr)

    def pointer(self, vaddr: int) -> int:
        return self.u64(vaddr) if self.source.header.elf64 else self.u32(vaddr)

    @property
    def pointer_size(self) -> int:
        return 8 if self.source.header.elf64 else 4

    def require_symbol(self, name: str) -> int:
        value = self.info.symbol(name)
        if value is None:
            raise KernelViewError(self.path, f"VMCOREINFO has no SYMBOL({name})")
        return value
