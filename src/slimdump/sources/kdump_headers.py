"""The kdump-compressed headers, byte for byte (reference section 2).

``disk_dump_header`` and ``kdump_sub_header`` in the crashed machine's byte
order and C layout (:class:`KdumpAbi`), ``struct new_utsname``, the page
descriptor table (:class:`PageDescriptors`), and how a file's layout is told
from its first block.  Plain :mod:`struct` and :mod:`array` code, shared by
the reader (:mod:`slimdump.sources.kdump`) and the writers.
"""

from __future__ import annotations

import struct
import sys
from array import array

from slimdump.elf import EM_386, ElfHeader
from slimdump.errors import DumpError
from slimdump.record import record

KDUMP_SIGNATURE = b"KDUMP   "
DISKDUMP_SIGNATURE = b"DISKDUMP"
HEADER_VERSION = 6
UTSNAME_FIELD = 65
UTSNAME_SIZE = 6 * UTSNAME_FIELD
PAGE_DESC_SIZE = 24          # struct page_desc: offset, size, flags, page_flags
# dump_level bit 1: zero pages share one zero block written first (its one
# meaning in the file; the kernel layer's dump levels use the same bit)
DL_EXCLUDE_ZERO = 1

# utsname.machine -> (e_machine, 64-bit).  Byte order comes from the file.
MACHINES: dict[str, tuple[int, bool]] = {
    "x86_64": (62, True), "i386": (3, False), "i486": (3, False), "i586": (3, False),
    "i686": (3, False), "aarch64": (183, True), "aarch64_be": (183, True),
    "arm64": (183, True), "ppc64": (21, True), "ppc64le": (21, True), "ppc": (20, False),
    "s390x": (22, True), "s390": (22, False), "riscv64": (243, True),
    "riscv32": (243, False), "loongarch64": (258, True), "mips64": (8, True),
    "mips": (8, False), "sparc64": (43, True), "ia64": (50, True), "alpha": (0x9026, True),
}


def machine_info(machine: str) -> tuple[int, bool] | None:
    """``(e_machine, is_64bit)`` for a utsname machine string, or None."""
    if machine in MACHINES:
        return MACHINES[machine]
    if machine.startswith("arm"):          # armv7l, armv6l, armv8l...
        return 40, False
    if machine.startswith("mips64"):
        return 8, True
    if machine.startswith("mips"):
        return 8, False
    return None


@record(frozen=True)
class KdumpAbi:
    """The C layout of the two headers for one word size and byte order.

    ``kind`` is "64" (every 64-bit ABI), "32pack" (i386: 64-bit members on
    4-byte boundaries) or "32pad" (ARM and other 32-bit ABIs: 64-bit members
    aligned to 8).  Formats are for :mod:`struct` with explicit padding.
    """

    kind: str
    endian: str

    @property
    def elf64(self) -> bool:
        return self.kind == "64"

    @property
    def header_format(self) -> str:
        # signature, header_version, utsname, pad, timestamp {tv_sec, tv_usec},
        # status, block_size, sub_hdr_size, bitmap_blocks, max_mapnr,
        # total_ram_blocks, device_blocks, written_blocks, current_cpu, nr_cpus
        if self.elf64:
            return self.endian + "8si390s6xqqIiiIIIIIIi"
        return self.endian + "8si390s2xiiIiiIIIIIIi"

    @property
    def sub_header_format(self) -> str:
        # phys_base, dump_level, split, start_pfn, end_pfn, offset_vmcoreinfo,
        # size_vmcoreinfo, offset_note, size_note, offset_eraseinfo,
        # size_eraseinfo, start_pfn_64, end_pfn_64, max_mapnr_64
        if self.kind == "64":
            return self.endian + "QiiQQqQqQqQQQQ"
        if self.kind == "32pack":
            return self.endian + "IiiIIqIqIqIQQQ"
        return self.endian + "IiiII4xqI4xqI4xqI4xQQQ"

    @property
    def header_size(self) -> int:
        return struct.calcsize(self.header_format)

    @property
    def sub_header_size(self) -> int:
        return struct.calcsize(self.sub_header_format)

    @property
    def word_mask(self) -> int:
        return (1 << 64) - 1 if self.elf64 else (1 << 32) - 1

    @classmethod
    def for_elf(cls, header: ElfHeader) -> KdumpAbi:
        """The layout makedumpfile built for the machine of an ELF vmcore."""
        if header.elf64:
            return cls("64", header.endian)
        return cls("32pack" if header.e_machine == EM_386 else "32pad", header.endian)


@record(frozen=True)
class Utsname:
    """``struct new_utsname``: six NUL-padded char[65] fields, as bytes."""

    sysname: bytes = b"Linux"
    nodename: bytes = b"(none)"
    release: bytes = b""
    version: bytes = b""
    machine: bytes = b""
    domainname: bytes = b"(none)"

    def pack(self) -> bytes:
        fields = (self.sysname, self.nodename, self.release, self.version, self.machine,
                  self.domainname)
        return b"".join(f[:UTSNAME_FIELD - 1].ljust(UTSNAME_FIELD, b"\0") for f in fields)

    @classmethod
    def unpack(cls, data: bytes) -> Utsname:
        if len(data) < UTSNAME_SIZE:
            raise ValueError(f"utsname needs {UTSNAME_SIZE} bytes, got {len(data)}")
        return cls(*(data[i * UTSNAME_FIELD:(i + 1) * UTSNAME_FIELD].split(b"\0", 1)[0]
                     for i in range(6)))

    def text(self, field: str) -> str:
        return getattr(self, field).decode("ascii", "replace")


@record(frozen=True)
class DiskDumpHeader:
    """The decoded disk_dump_header."""

    signature: bytes
    header_version: int
    utsname: Utsname
    tv_sec: int
    tv_usec: int
    status: int
    block_size: int
    sub_hdr_size: int
    bitmap_blocks: int
    max_mapnr: int
    total_ram_blocks: int
    device_blocks: int
    written_blocks: int
    current_cpu: int
    nr_cpus: int

    def pack(self, abi: KdumpAbi) -> bytes:
        return struct.pack(abi.header_format, self.signature, self.header_version,
                           self.utsname.pack(), self.tv_sec, self.tv_usec, self.status,
                           self.block_size, self.sub_hdr_size, self.bitmap_blocks,
                           self.max_mapnr, self.total_ram_blocks, self.device_blocks,
                           self.written_blocks, self.current_cpu, self.nr_cpus)

    @classmethod
    def unpack(cls, data: bytes, abi: KdumpAbi) -> DiskDumpHeader:
        sig, version, uts, *rest = struct.unpack_from(abi.header_format, data)
        return cls(sig, version, Utsname.unpack(uts), *rest)


@record(frozen=True)
class KdumpSubHeader:
    """The decoded kdump_sub_header (fields of later versions read as 0)."""

    phys_base: int = 0
    dump_level: int = 0
    split: int = 0
    start_pfn: int = 0
    end_pfn: int = 0
    offset_vmcoreinfo: int = 0
    size_vmcoreinfo: int = 0
    offset_note: int = 0
    size_note: int = 0
    offset_eraseinfo: int = 0
    size_eraseinfo: int = 0
    start_pfn_64: int = 0
    end_pfn_64: int = 0
    max_mapnr_64: int = 0

    def pack(self, abi: KdumpAbi) -> bytes:
        mask = abi.word_mask
        return struct.pack(abi.sub_header_format, self.phys_base & mask, self.dump_level,
                           self.split, self.start_pfn & mask, self.end_pfn & mask,
                           self.offset_vmcoreinfo, self.size_vmcoreinfo, self.offset_note,
                           self.size_note, self.offset_eraseinfo, self.size_eraseinfo,
                           self.start_pfn_64, self.end_pfn_64, self.max_mapnr_64)

    @classmethod
    def unpack(cls, data: bytes, abi: KdumpAbi, header_version: int) -> KdumpSubHeader:
        """Decode, keeping only the fields ``header_version`` defines."""
        values = list(struct.unpack_from(abi.sub_header_format, data))
        # the first field index each version adds: v1 dump_level, v2 split..end_pfn,
        # v3 vmcoreinfo, v4 notes, v5 eraseinfo, v6 the 64-bit pfns
        known = {0: 1, 1: 2, 2: 5, 3: 7, 4: 9, 5: 11}.get(min(header_version, 6), 14)
        values[known:] = [0] * (14 - known)
        return cls(*values)


class PageDescriptors:
    """``struct page_desc`` entries as read from a descriptor table: their
    ``offsets`` (signed, array "q"), stored ``sizes`` and compression
    ``flags`` (array "I"), one per page, in native integers.

    The arrays are cut from the bytes in C (array slices, a byte swap when
    the dump's byte order is not this machine's): tens of thousands of
    descriptors cost microseconds, not a Python loop each."""

    __slots__ = ("_words", "endian", "flags", "offsets", "sizes")

    def __init__(self, data: bytes, endian: str) -> None:
        if len(data) % PAGE_DESC_SIZE:
            raise ValueError(f"{len(data)} bytes are no whole number of page descriptors")
        self.endian = endian
        words, halves = array("q", data), array("I", data)   # 3 and 6 per descriptor
        if self._swapped:
            words.byteswap()
            halves.byteswap()
        self._words = words
        self.offsets = words[0::3]
        self.sizes = halves[2::6]
        self.flags = halves[3::6]

    @property
    def _swapped(self) -> bool:
        return (self.endian == ">") != (sys.byteorder == "big")

    def __len__(self) -> int:
        return len(self.offsets)

    def pack(self) -> bytes:
        """The descriptors as the table holds them, with the offsets now in
        :attr:`offsets` (what joining --split parts changes) and the other
        fields as read."""
        words = array("q", self._words)
        words[0::3] = self.offsets
        if self._swapped:
            words.byteswap()
        return words.tobytes()


def detect_abi(path: str, block0: bytes) -> tuple[KdumpAbi, str | None]:
    """The header layout of a kdump file: byte order from header_version,
    word size from utsname.machine (or from which layout gives a sane block
    size when the machine is unknown)."""
    little, big = struct.unpack_from("<i", block0, 8)[0], struct.unpack_from(">i", block0, 8)[0]
    if 0 <= little <= 64:
        endian = "<"
    elif 0 <= big <= 64:
        endian = ">"
    else:
        raise DumpError(path, f"kdump header version {little} is not one makedumpfile writes "
                              f"(1 to {HEADER_VERSION})")
    machine = block0[12 + 4 * UTSNAME_FIELD:12 + 5 * UTSNAME_FIELD].split(b"\0", 1)[0]
    name = machine.decode("ascii", "replace")
    info = machine_info(name)
    if info is not None:
        e_machine, is64 = info
        kind = "64" if is64 else ("32pack" if e_machine == EM_386 else "32pad")
        return KdumpAbi(kind, endian), name
    # unknown machine: the layout whose block_size is a power of two
    for kind, at in (("64", 428), ("32pad", 416)):
        block_size = struct.unpack_from(endian + "i", block0, at)[0]
        if 1024 <= block_size <= 1 << 20 and block_size & (block_size - 1) == 0:
            return KdumpAbi(kind, endian), None
    raise DumpError(path, f"kdump header of unknown machine {name!r} has no sane block size")
