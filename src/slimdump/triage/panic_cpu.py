"""Which CPU panicked, told from the saved registers alone.

NT_PRSTATUS notes come in CPU order, not crashing-CPU first, and VMCOREINFO
does not name the crashing CPU.  Two signs in the registers can:

* on x86_64, a stack pointer inside the CPU entry area
  (0xfffffe0000000000-0xfffffe7fffffffff, both paging modes) means the CPU
  was on an exception stack (NMI, machine check, double fault) when it saved
  its state.  CPUs stopped by the panicking CPU's NMI save the state they
  were interrupted in, not the NMI stack, so a CPU found there is the one
  that panicked from inside the handler;
* a CPU running a task (pid != 0) when every other CPU was idle.

When neither sign is unique the answer is None: the kernel log names the
CPU for sure.
"""

from __future__ import annotations

from slimdump.elf import EM_X86_64

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up)
if TYPE_CHECKING:
    from typing import Any

X86_64_CPU_ENTRY_AREA = (0xFFFFFE0000000000, 0xFFFFFE8000000000)


def panicking_cpu(cpus: list[dict[str, Any]], machine: int) -> dict[str, Any] | None:
    """``cpus`` as inspect collects them (``cpu``, ``pid``, ``sp``); returns
    ``{"cpu": n, "basis": why}`` or None."""
    usable = [c for c in cpus if "pid" in c]
    if len(usable) == 1:
        return {"cpu": usable[0]["cpu"], "basis": "the only CPU that saved registers"}
    if machine == EM_X86_64:
        low, high = X86_64_CPU_ENTRY_AREA
        on_ist = [c for c in usable if c["sp"] is not None and low <= c["sp"] < high]
        if len(on_ist) == 1:
            return {"cpu": on_ist[0]["cpu"],
                    "basis": "the only CPU on an exception stack (NMI or machine check)"}
    busy = [c for c in usable if c["pid"] != 0]
    if len(busy) == 1:
        return {"cpu": busy[0]["cpu"], "basis": "the only CPU not in the idle task (pid 0)"}
    return None
