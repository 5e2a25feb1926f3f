"""Typed access to the VMCOREINFO note.

VMCOREINFO is ``KEY=VALUE`` text the kernel writes at boot (and CRASHTIME at
panic).  Keys come in forms: ``SYMBOL(x)`` (hex without 0x), ``SIZE(x)``,
``OFFSET(s.m)``, ``LENGTH(x)`` and ``NUMBER(x)`` (decimal, possibly negative,
or ``0x`` hex for the few entries the kernel prints so), plus plain keys
(OSRELEASE, PAGESIZE, KERNELOFFSET, CRASHTIME, BUILD-ID...).  As in
makedumpfile, the first line with a key wins and numbers are parsed as
decimal first, hex second.  Kernel features are decided by which keys exist,
never by the release string.
"""

from __future__ import annotations

import re

from slimdump.elf import EM_AARCH64, EM_X86_64, Note
from slimdump.errors import DumpError
from slimdump.record import field, record

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up)
if TYPE_CHECKING:
    import datetime

_KEY = re.compile(r"^(SYMBOL|SIZE|OFFSET|LENGTH|NUMBER)\((.+)\)$")

#: Linux page sizes: 4 KiB (the smallest any architecture has) up to 256 KiB
#: (hexagon's CONFIG_PAGE_SIZE_256KB, the largest in arch/*/Kconfig; arm64 has
#: 4, 16 and 64 KiB); 1 MiB leaves room above the largest
MIN_PAGE_SIZE, MAX_PAGE_SIZE = 1 << 12, 1 << 20
#: the page sizes of the architectures whose memory slimdump reads: x86_64
#: has 4 KiB pages only, arm64 4, 16 or 64 KiB (arch/arm64/Kconfig)
ARCH_PAGE_SIZES = {EM_X86_64: (1 << 12,), EM_AARCH64: (1 << 12, 1 << 14, 1 << 16)}


class KernelViewError(DumpError):
    """The crashed kernel cannot be seen as asked: missing VMCOREINFO keys,
    a VMCOREINFO number no kernel has, an address no page table maps, an
    architecture not supported."""


def shown(raw: str) -> str:
    """A VMCOREINFO value as an error message quotes it: stripped, and cut
    short (a corrupt note can hold a value of any length)."""
    raw = raw.strip()
    return raw if len(raw) <= 24 else f"{raw[:20]}...({len(raw)} characters)"


def parse_int(text: str) -> int:
    """Decimal first (signed), then hex with or without 0x; ValueError if
    neither, or if the value does not fit the kernel's 64 bits (the kernel
    writes every VMCOREINFO number from a long or an unsigned long: a longer
    one is corruption, and would make huge integers downstream)."""
    text = text.strip()
    if len(text) > 24:          # "-9223372036854775808", "0xffffffffffffffff"
        raise ValueError(f"{text[:20]}... is longer than any 64-bit number")
    try:
        value = int(text, 10)
    except ValueError:
        value = int(text, 16)
    if not -(1 << 63) <= value < 1 << 64:
        raise ValueError(f"{text} does not fit in 64 bits")
    return value


@record
class VmcoreInfo:
    """The parsed VMCOREINFO text.  ``entries`` keeps every key in first-seen
    order with its raw value; typed getters return None for missing keys."""

    text: str
    entries: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: bytes | str) -> VmcoreInfo:
        text = data.decode("ascii", "replace") if isinstance(data, bytes) else data
        text = text.split("\0", 1)[0]
        entries: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key and key not in entries:
                entries[key] = value
        return cls(text, entries)

    @classmethod
    def from_notes(cls, notes: list[Note]) -> VmcoreInfo | None:
        """The first VMCOREINFO note's content, or None when there is none."""
        for note in notes:
            if note.name == "VMCOREINFO" and note.type == 0:
                return cls.parse(note.desc)
        return None

    def get(self, key: str) -> str | None:
        return self.entries.get(key)

    def _int(self, key: str, base16: bool = False) -> int | None:
        raw = self.entries.get(key)
        if raw is None:
            return None
        try:
            return int(raw.strip(), 16) if base16 else parse_int(raw)
        except ValueError:
            return None

    def bounded(self, key: str, low: int, high: int, path: str | None,
                why: str = "") -> int | None:
        """The number at ``key`` (None when absent), validated as it is
        read: KernelViewError, one line naming the key and the value, when
        it is not a number or lies outside [low, high] (``why`` says where
        the bounds come from)."""
        raw = self.entries.get(key)
        if raw is None:
            return None
        try:
            value = parse_int(raw)
        except ValueError:
            raise KernelViewError(path, f"VMCOREINFO {key}={shown(raw)} is not a "
                                        "64-bit number") from None
        if not low <= value <= high:
            raise KernelViewError(path, f"VMCOREINFO {key}={shown(raw)} is out of range "
                                        f"({low}..{high}{': ' + why if why else ''})")
        return value

    def valid_page_size(self, path: str | None, machine: int | None = None) -> int | None:
        """PAGESIZE (None when absent), validated: one of ARCH_PAGE_SIZES
        for a ``machine`` (ELF e_machine) listed there, else a power of two
        from MIN_PAGE_SIZE to MAX_PAGE_SIZE; KernelViewError otherwise."""
        size = self.bounded("PAGESIZE", MIN_PAGE_SIZE, MAX_PAGE_SIZE, path,
                            "a power of two, as every kernel's page size")
        if size is not None and size & (size - 1):
            raise KernelViewError(path, f"VMCOREINFO PAGESIZE={size} is not a power of two")
        sizes = ARCH_PAGE_SIZES.get(machine or 0)
        if size is not None and sizes and size not in sizes:
            raise KernelViewError(path, f"VMCOREINFO PAGESIZE={size} is not a page size of "
                                        f"the dump's architecture "
                                        f"({', '.join(map(str, sizes))})")
        return size

    def symbol(self, name: str) -> int | None:
        return self._int(f"SYMBOL({name})", base16=True)

    def number(self, name: str) -> int | None:
        return self._int(f"NUMBER({name})")

    def size(self, name: str) -> int | None:
        return self._int(f"SIZE({name})")

    def offset(self, member: str) -> int | None:
        return self._int(f"OFFSET({member})")

    def length(self, name: str) -> int | None:
        return self._int(f"LENGTH({name})")

    @property
    def osrelease(self) -> str | None:
        return self.entries.get("OSRELEASE")

    @property
    def build_id(self) -> str | None:
        return self.entries.get("BUILD-ID")

    @property
    def page_size(self) -> int | None:
        return self._int("PAGESIZE")

    @property
    def kerneloffset(self) -> int | None:
        return self._int("KERNELOFFSET", base16=True)

    @property
    def crashtime(self) -> int | None:
        """CRASHTIME: seconds since the epoch, a time_t (the kdump header
        stores it as a signed 64-bit number); None when absent or not one."""
        seconds = self._int("CRASHTIME")
        return seconds if seconds is not None and 0 <= seconds < 1 << 63 else None

    @property
    def crash_datetime(self) -> datetime.datetime | None:
        """CRASHTIME as an aware UTC datetime, None when absent or absurd."""
        import datetime as dt  # for inspect; capture does without it (2 ms)

        seconds = self.crashtime
        if seconds is None:
            return None
        try:
            return dt.datetime.fromtimestamp(seconds, dt.UTC)
        except (OverflowError, OSError, ValueError):
            return None

    @property
    def pgtable_levels(self) -> int | None:
        """4 or 5 on x86_64 (from NUMBER(pgtable_l5_enabled)), else None."""
        l5 = self.number("pgtable_l5_enabled")
        return None if l5 is None else (5 if l5 else 4)

    @property
    def printk_format(self) -> str | None:
        """Which log buffer the kernel has, told by the symbols it exports."""
        if self.symbol("prb") is not None:
            return "lockless ring buffer (5.10+)"
        if self.size("printk_log") is not None:
            return "struct printk_log records (3.5-5.9)"
        if self.symbol("log_buf") is not None:
            return "plain log_buf"
        return None

    def facts(self) -> dict[str, object]:
        """The main facts an analyst wants first, as plain values."""
        crash = self.crash_datetime
        phys_base = self.number("phys_base")
        return {
            "osrelease": self.osrelease,
            "build_id": self.build_id,
            "page_size": self.page_size,
            "crashtime": self.crashtime,
            "crash_time_utc": crash.strftime("%Y-%m-%dT%H:%M:%SZ") if crash else None,
            "kerneloffset": self.kerneloffset,
            "phys_base": phys_base,
            "pgtable_levels": self.pgtable_levels,
            "stext": self.symbol("_stext"),
            "mem_section": self.symbol("mem_section"),
            "section_size_bits": self.number("SECTION_SIZE_BITS"),
            "max_physmem_bits": self.number("MAX_PHYSMEM_BITS"),
            "sizeof_page": self.size("page"),
            "printk": self.printk_format,
            "keys": len(self.entries),
        }

    def forms(self) -> dict[str, dict[str, str]]:
        """Entries grouped by form (SYMBOL, SIZE, ...; 'plain' for the rest)."""
        grouped: dict[str, dict[str, str]] = {}
        for key, value in self.entries.items():
            m = _KEY.match(key)
            form, name = (m.group(1), m.group(2)) if m else ("plain", key)
            grouped.setdefault(form, {})[name] = value
        return grouped
