"""The crashed kernel's log as text, from any dump source (placeholder until
kernel/printk.py lands)."""

from __future__ import annotations

from slimdump.errors import DumpError
from slimdump.kernel.memory import KernelMemory
from slimdump.kernel.printk import read_log, render_makedumpfile, render_vmcore_dmesg
from slimdump.kernel.vmcoreinfo import VmcoreInfo
from slimdump.sources.base import DumpSource


def extract_dmesg(source: DumpSource, fmt: str = "makedumpfile") -> bytes:
    """The log rendered as ``makedumpfile --dump-dmesg`` or ``vmcore-dmesg``."""
    info = VmcoreInfo.from_notes(source.notes)
    if info is None:
        raise DumpError(source.path, "no VMCOREINFO note: cannot find the log buffer")
    log = read_log(KernelMemory(source, info))
    if fmt == "vmcore-dmesg":
        return render_vmcore_dmesg(log)
    return render_makedumpfile(log, machine=source.header.e_machine)
