"""The facts about the crashed kernel that a kdump-compressed header records,
read from the kernel: its ``struct new_utsname`` (``init_uts_ns.name``), the
crash time and ``phys_base``.

makedumpfile copies ``init_uts_ns.name`` into ``disk_dump_header.utsname``
(crash checks ``machine`` and prints ``release``), VMCOREINFO's CRASHTIME
into the timestamp, and phys_base into the sub header.  The writers take
these as values (:class:`~slimdump.writers.kdump.KdumpMeta`); reading them
needs the kernel's symbols and memory, which is this layer's business.
"""

from __future__ import annotations

from slimdump.elf import EM_386, EM_AARCH64, EM_X86_64
from slimdump.errors import DumpError
from slimdump.kernel.memory import KernelMemory
from slimdump.kernel.vmcoreinfo import VmcoreInfo
from slimdump.kernel.x86_64 import find_phys_base
from slimdump.sources.base import DumpSource
from slimdump.sources.kdump_headers import UTSNAME_SIZE, Utsname


def _info(source: DumpSource, info: VmcoreInfo | None) -> VmcoreInfo | None:
    return info if info is not None else VmcoreInfo.from_notes(source.notes)


def fallback_utsname(source: DumpSource, info: VmcoreInfo | None = None) -> Utsname:
    """What can be said without the kernel's memory: VMCOREINFO's OSRELEASE
    and the machine of the ELF header (i686 for EM_386, as a 32-bit x86
    kernel names itself)."""
    info = _info(source, info)
    release = (info.osrelease if info else None) or ""
    machine = {EM_386: "i686"}.get(source.header.e_machine, source.header.machine_name)
    return Utsname(release=release.encode(), machine=machine.encode())


def read_utsname(source: DumpSource, info: VmcoreInfo | None = None) -> Utsname:
    """The crashed kernel's utsname: the source's own (a kdump-compressed
    file has one), else ``init_uts_ns.name`` in its memory (SYMBOL and
    OFFSET(uts_namespace.name) from VMCOREINFO), else
    :func:`fallback_utsname` when memory cannot say."""
    existing = getattr(source, "utsname", None)
    if isinstance(existing, Utsname):
        return existing
    info = _info(source, info)
    if info is None:
        return fallback_utsname(source, info)
    base = info.symbol("init_uts_ns")
    offset = info.offset("uts_namespace.name")
    if base is None or offset is None:
        return fallback_utsname(source, info)
    try:
        data = KernelMemory(source, info).read(base + offset, UTSNAME_SIZE)
    except DumpError:
        return fallback_utsname(source, info)
    uts = Utsname.unpack(data)
    return uts if uts.release else fallback_utsname(source, info)


def crash_time(source: DumpSource, info: VmcoreInfo | None = None) -> int:
    """Seconds since the epoch when the kernel crashed: VMCOREINFO's
    CRASHTIME, else the source's own timestamp (a kdump-compressed file's),
    else 0."""
    info = _info(source, info)
    return (info.crashtime if info else None) or getattr(source, "crashtime", 0) or 0


def kdump_phys_base(source: DumpSource, info: VmcoreInfo | None = None) -> int:
    """makedumpfile's phys_base for the sub header: the source's own (a
    kdump-compressed file's), x86_64 NUMBER(phys_base) or the kernel-image
    segment, arm64 NUMBER(PHYS_OFFSET), otherwise 0.  May be negative."""
    own = getattr(source, "phys_base", None)
    if isinstance(own, int):
        return own
    info = _info(source, info)
    machine = source.header.e_machine
    if machine == EM_X86_64:
        return find_phys_base(info, source.segments) or 0
    if machine == EM_AARCH64 and info is not None:
        return info.number("PHYS_OFFSET") or 0
    return 0
