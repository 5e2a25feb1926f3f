"""arm64 virtual-to-physical translation from VMCOREINFO (linear map and
kernel image).

* Kernel image: ``va - kimage_voffset`` (NUMBER(kimage_voffset)).
* Linear map: ``va - PAGE_OFFSET + PHYS_OFFSET`` (NUMBER(PHYS_OFFSET)).
  Where the linear map sits depends on the layout, told by the data, not
  the release: since the 5.4 "flipped" layout it is the lower half of the
  kernel VA range, starting at ``-(1 << VA_BITS)``, with the kernel image
  in the upper half; before, it was the upper half starting at
  ``-(1 << (VA_BITS - 1))`` with the image below.  So the image's own
  address (SYMBOL(_stext)) says which layout this kernel has.

vmalloc and vmemmap addresses would need a swapper_pg_dir walk, which is not
implemented yet: they raise a clear error.
"""

from __future__ import annotations

from slimdump.errors import NotInDump

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up)
if TYPE_CHECKING:
    from slimdump.kernel.memory import KernelMemory
    from slimdump.kernel.vmcoreinfo import VmcoreInfo

MASK64 = (1 << 64) - 1
# How far past _stext (rounded down to 2 MiB) the image shortcut applies;
# real kernel images are a few tens of MiB, modules and vmalloc lie outside.
IMAGE_SPAN = 256 << 20
#: the virtual address widths arm64 kernels are built with (arch/arm64/Kconfig,
#: ARM64_VA_BITS: 36, 39, 42, 47, 48 or 52)
MIN_VA_BITS, MAX_VA_BITS = 36, 52


class Arm64:
    """Translation rules for one arm64 kernel."""

    def __init__(self, mem: KernelMemory, info: VmcoreInfo) -> None:
        from slimdump.kernel.memory import KernelViewError

        self.mem = mem
        values = {k: info.number(k) for k in ("kimage_voffset", "PHYS_OFFSET")}
        va_bits = info.bounded("NUMBER(VA_BITS)", MIN_VA_BITS, MAX_VA_BITS, mem.path,
                               "arm64's ARM64_VA_BITS choices")
        missing = [k for k, v in (("VA_BITS", va_bits), *values.items()) if v is None]
        if missing:
            raise KernelViewError(mem.path, "VMCOREINFO lacks " + ", ".join(
                f"NUMBER({k})" for k in missing))
        assert va_bits is not None
        # any 64-bit value works: the arithmetic is modulo 2^64
        self.kimage_voffset = values["kimage_voffset"] or 0
        self.phys_offset = values["PHYS_OFFSET"] or 0
        upper_half = (-(1 << (va_bits - 1))) & MASK64
        stext = info.symbol("_stext") or info.symbol("_text")
        self.flipped = stext is None or stext >= upper_half
        if self.flipped:
            self.linear_start = (-(1 << va_bits)) & MASK64
            # 52-bit kernels keep the image above the 48-bit half
            self.linear_end = (-(1 << (min(va_bits, 48) - 1))) & MASK64
        else:
            self.linear_start, self.linear_end = upper_half, MASK64 + 1
        self.image_start = stext & ~((1 << 21) - 1) if stext is not None else None

    def vtop(self, vaddr: int) -> int:
        if self.linear_start <= vaddr < self.linear_end:
            return (vaddr - self.linear_start + self.phys_offset) & MASK64
        if self.image_start is not None and 0 <= vaddr - self.image_start < IMAGE_SPAN:
            return (vaddr - self.kimage_voffset) & MASK64
        raise NotInDump(self.mem.path, f"arm64 address {vaddr:#x} is outside the linear map "
                                       "and the kernel image (page-table walks are not "
                                       "implemented for arm64 yet)")
