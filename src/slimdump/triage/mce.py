"""x86 machine checks as the crashed kernel printed them.

Linux prints every machine check it logs or panics on with ``__print_mce()``
(arch/x86/kernel/cpu/mce/core.c), a few ``[Hardware Error]: `` lines that
tools such as mcelog have parsed for fifteen years and that the kernel keeps
stable on purpose::

    mce: [Hardware Error]: CPU 0: Machine Check Exception: 4 Bank 2: b600000000000134
    mce: [Hardware Error]: RIP !INEXACT! 10:<ffffffff81234567> {foo+0x17/0x40}
    mce: [Hardware Error]: TSC 59fb46300 ADDR 1234000 MISC 86
    mce: [Hardware Error]: PROCESSOR 2:60fb1 TIME 1795669111 SOCKET 0 APIC 0 microcode 1000065
    mce: [Hardware Error]: Machine check: Processor Context Corrupt

This module turns those lines back into numbers and decodes IA32_MCi_STATUS
the way the Intel SDM (vol. 3B, "Machine-Check Architecture") and the AMD
APM define it, so that a slimdump can say which bank, which address and
what kind of error killed the machine without reading its memory.  It is
pure: text in, values out, and no input line can make it raise.
"""

from __future__ import annotations

import re

from slimdump.record import field, record
from slimdump.triage.loglines import log_lines

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up)
if TYPE_CHECKING:
    from typing import Any

# --------------------------------------------------------------------------
# IA32_MCi_STATUS

# Architectural status bits, in the order flags() names them.
STATUS_BITS: tuple[tuple[str, int], ...] = (
    ("VAL", 63),    # the register holds a valid error
    ("OVER", 62),   # an earlier error was lost (overflow)
    ("UC", 61),     # uncorrected
    ("EN", 60),     # error reporting was enabled for this error
    ("MISCV", 59),  # IA32_MCi_MISC is valid
    ("ADDRV", 58),  # IA32_MCi_ADDR is valid
    ("PCC", 57),    # processor context corrupt
    ("S", 56),      # signaled (software recoverable action)
    ("AR", 55),     # action required
)

_BIT_POSITIONS = dict(STATUS_BITS)

_SIMPLE_CODES = {
    0x0000: "no error",
    0x0001: "unclassified",
    0x0002: "microcode ROM parity error",
    0x0003: "external error",
    0x0004: "FRC error",
    0x0005: "internal parity error",
    0x0006: "SMM handler code access violation",
    0x0400: "internal timer error",
    0x0E0B: "I/O error",
}

_LEVELS = ("L0", "L1", "L2", "generic")
_TYPES = ("instruction", "data", "generic", "reserved")
_REQUESTS = ("generic error", "generic read", "generic write", "data read", "data write",
             "instruction fetch", "prefetch", "eviction", "snoop")
_TRANSACTIONS = ("generic undefined request", "memory read error", "memory write error",
                 "address/command error", "memory scrubbing error")
_PARTICIPATION = ("local processor originated request", "local processor responded to request",
                  "local processor observed error as third party", "generic")
_MEMORY_IO = ("memory access", "reserved", "I/O", "other transaction")
_FILTER_BIT = 0x1000        # "F": corrected-error filtering; ignored when matching


def _named(table: tuple[str, ...], value: int) -> str:
    """A field's name from its SDM table; values past the table are reserved."""
    return table[value] if value < len(table) else "reserved"


def _channel(value: int) -> str | int:
    """CCCC: the channel number, 1111 meaning the channel is not specified."""
    return "not specified" if value == 0xF else value


def decode_error_code(code: int) -> dict[str, Any]:
    """Classify a 16-bit MCA error code (IA32_MCi_STATUS[15:0]).

    Simple codes are matched exactly first (the I/O error 0x0E0B would
    otherwise read as a bus error), then the compound forms with the filter
    bit 12 masked off, most specific pattern first.  ``code`` is the hex
    string of the input, ``class`` the SDM's name, the rest the decoded
    sub-fields by name."""
    code &= 0xFFFF
    out: dict[str, Any] = {"code": f"0x{code:04x}"}
    if code in _SIMPLE_CODES:
        out["class"] = _SIMPLE_CODES[code]
        return out
    if code & 0xFC00 == 0x0400:                 # 0000 01xx xxxx xxxx
        out["class"] = "internal unclassified"
        return out
    c = code & ~_FILTER_BIT
    ll, tt, rrrr = c & 0x3, (c >> 2) & 0x3, (c >> 4) & 0xF
    if c & 0xEFFC == 0x000C:                    # 000F 0000 0000 11LL
        out.update({"class": "generic cache hierarchy", "level": _LEVELS[ll]})
    elif c & 0xEFF0 == 0x0010:                  # 000F 0000 0001 TTLL
        out.update({"class": "TLB", "type": _TYPES[tt], "level": _LEVELS[ll]})
    elif c & 0xEF80 == 0x0080:                  # 000F 0000 1MMM CCCC
        out.update({"class": "memory controller",
                    "transaction": _named(_TRANSACTIONS, (c >> 4) & 0x7),
                    "channel": _channel(c & 0xF)})
    elif c & 0xEF80 == 0x0280:                  # 000F 0010 1MMM CCCC (newer SDMs)
        out.update({"class": "extended memory",
                    "transaction": _named(_TRANSACTIONS, (c >> 4) & 0x7),
                    "channel": _channel(c & 0xF)})
    elif c & 0xEF00 == 0x0100:                  # 000F 0001 RRRR TTLL
        out.update({"class": "cache hierarchy", "request": _named(_REQUESTS, rrrr),
                    "type": _TYPES[tt], "level": _LEVELS[ll]})
    elif c & 0xE800 == 0x0800:                  # 000F 1PPT RRRR IILL
        out.update({"class": "bus/interconnect",
                    "participation": _PARTICIPATION[(c >> 9) & 0x3],
                    "timeout": bool(c & 0x100),
                    "request": _named(_REQUESTS, rrrr),
                    "memory_io": _MEMORY_IO[tt],
                    "level": _LEVELS[ll]})
    else:
        out["class"] = "unknown"
    return out


def is_memory_error(code: int) -> bool:
    """Linux's mce_is_memory_error() for Intel: memory controller, cache
    hierarchy or generic cache hierarchy codes (filter bit ignored)."""
    return (code & 0xEF80 == 0x0080 or code & 0xEF00 == 0x0100
            or code & 0xEFFC == 0x000C)


@record(frozen=True)
class McaStatus:
    """One IA32_MCi_STATUS value and what its architectural fields say."""

    value: int

    def bit(self, name: str) -> bool:
        """True when the named status bit (``"UC"``, ``"PCC"``...) is set."""
        pos = _BIT_POSITIONS.get(name)
        return pos is not None and bool(self.value >> pos & 1)

    def flags(self) -> list[str]:
        """Names of the set bits, VAL OVER UC EN MISCV ADDRV PCC S AR order."""
        return [name for name, pos in STATUS_BITS if self.value >> pos & 1]

    @property
    def mca_code(self) -> int:
        """The architectural MCA error code, bits 15:0."""
        return self.value & 0xFFFF

    @property
    def model_code(self) -> int:
        """The model-specific error code, bits 31:16."""
        return (self.value >> 16) & 0xFFFF

    @property
    def uncorrected(self) -> bool:
        """UC: the hardware did not correct the error."""
        return self.bit("UC")

    def error_code(self) -> dict[str, Any]:
        """The MCA error code decoded (see :func:`decode_error_code`)."""
        return decode_error_code(self.mca_code)


# --------------------------------------------------------------------------
# The kernel's lines

# ``mce: `` is the pr_fmt of newer kernels; 3.x printed the bare HW_ERR.
_HW_ERR = re.compile(r"^(?:mce: )?\[Hardware Error\]: ?")
_HEADER = re.compile(
    r"^CPU (\d{1,6}): Machine Check(?: Exception)?:?"
    r"(?:\s+([0-9a-fA-F]{1,16}))?(?:\s+Bank (\d{1,4}): ([0-9a-fA-F]{1,16}))?\s*$")
_BANK = re.compile(r"^Bank (\d{1,4}): ([0-9a-fA-F]{1,16})\s*$")
_RIP = re.compile(r"^RIP((?: !INEXACT!)? [0-9a-fA-F]{1,4}:<[0-9a-fA-F]{1,16}>.*?)\s*$")
_TSC = re.compile(r"^TSC ([0-9a-fA-F]{1,16})\b(.*)$")
_AUX = re.compile(r"\b(ADDR|MISC|SYND|SYND1|SYND2|IPID|PPIN) ([0-9a-fA-F]{1,16})\b")
_PROCESSOR = re.compile(r"^PROCESSOR (\d{1,3}:[0-9a-fA-F]{1,8})\b(.*)$")
_PROC_FIELDS = {
    "time": (re.compile(r"\bTIME (\d{1,20})\b"), 10),
    "socket": (re.compile(r"\bSOCKET (\d{1,6})\b"), 10),
    "apic": (re.compile(r"\bAPIC ([0-9a-fA-F]{1,8})\b"), 16),
    "microcode": (re.compile(r"\bmicrocode ([0-9a-fA-F]{1,8})\b"), 16),
}
# Fragments of the pr_cont()ed lines that end up as records of their own
# when another CPU's message got in between.
_FRAGMENT = re.compile(r"^(?:\{|(?:ADDR|MISC|SYND|SYND1|SYND2|IPID|PPIN) [0-9a-fA-F])")


def strip_hw_err(line: str) -> tuple[bool, str]:
    """``(had the HW_ERR prefix, the rest)`` of a machine-check line."""
    m = _HW_ERR.match(line)
    return (True, line[m.end():]) if m else (False, line)


@record
class MachineCheck:
    """One machine-check record as ``__print_mce()`` and ``mce_panic()``
    printed it.  Fields the log did not show are None."""

    cpu: int
    bank: int
    status: McaStatus
    mcgstatus: int | None = None
    addr: int | None = None
    misc: int | None = None
    tsc: int | None = None
    rip: str | None = None
    processor: str | None = None
    time: int | None = None
    socket: int | None = None
    apic: int | None = None
    microcode: int | None = None
    aux: dict[str, int] = field(default_factory=dict)   # SYND, IPID, PPIN...
    extra: list[str] = field(default_factory=list)      # "Machine check: ..."
    text: list[str] = field(default_factory=list)       # the raw lines
    ts_nsec: int = 0
    record_index: int = 0

    @property
    def uncorrected(self) -> bool:
        """A corrected error (UC clear) is a symptom at most, never a cause."""
        return self.status.uncorrected

    def to_metadata(self) -> dict[str, Any]:
        """The JSON object slimdump stores in ``hardware_errors``.  ADDR and
        MISC appear only when the status says they are valid and the kernel
        printed them (it prints neither when zero)."""
        out: dict[str, Any] = {
            "kind": "mce",
            "cpu": self.cpu,
            "bank": self.bank,
            "status": hex(self.status.value),
            "flags": self.status.flags(),
            "error_code": self.status.error_code(),
            "model_code": f"0x{self.status.model_code:04x}",
            "memory_error": is_memory_error(self.status.mca_code),
        }
        if self.mcgstatus is not None:
            out["mcgstatus"] = hex(self.mcgstatus)
        if self.addr is not None and self.status.bit("ADDRV"):
            out["addr"] = hex(self.addr)
            out["page"] = hex(self.addr & ~0xFFF)
        if self.misc is not None and self.status.bit("MISCV"):
            out["misc"] = hex(self.misc)
        if self.tsc is not None:
            out["tsc"] = hex(self.tsc)
        for key in ("rip", "processor", "time", "socket", "apic"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.microcode is not None:
            out["microcode"] = hex(self.microcode)
        out.update({k.lower(): hex(v) for k, v in self.aux.items()})
        out["extra"] = list(self.extra)
        out["text"] = list(self.text)
        return out


@record
class _Pending:
    """A record being assembled; becomes a MachineCheck once it has a bank
    and a status."""

    cpu: int
    mcgstatus: int | None
    bank: int | None
    status: int | None
    ts_nsec: int
    record_index: int
    fields: dict[str, Any] = field(default_factory=dict)
    aux: dict[str, int] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)

    def take_tsc(self, rest: str) -> None:
        """The ``ADDR``/``MISC``/``SYND``/``IPID``/``PPIN`` pairs after TSC."""
        for name, value in _AUX.findall(rest):
            if name == "ADDR":
                self.fields.setdefault("addr", int(value, 16))
            elif name == "MISC":
                self.fields.setdefault("misc", int(value, 16))
            else:
                self.aux.setdefault(name, int(value, 16))

    def take_processor(self, processor: str, rest: str) -> None:
        """``PROCESSOR vendor:cpuid TIME t SOCKET s APIC a [microcode m]``;
        each part on its own so an older or cut line still yields the rest."""
        self.fields["processor"] = processor
        for key, (pattern, base) in _PROC_FIELDS.items():
            m = pattern.search(rest)
            if m:
                self.fields[key] = int(m.group(1), base)

    def take(self, body: str) -> bool:
        """Fill a field from one known line; False when it is none of them."""
        if m := _BANK.match(body):
            if self.bank is None:
                self.bank, self.status = int(m.group(1)), int(m.group(2), 16)
            return True
        if m := _TSC.match(body):
            self.fields["tsc"] = int(m.group(1), 16)
            self.take_tsc(m.group(2))
            return True
        if m := _PROCESSOR.match(body):
            self.take_processor(m.group(1), m.group(2))
            return True
        if m := _RIP.match(body):
            self.fields["rip"] = m.group(1).strip()
            return True
        return False

    def finish(self) -> MachineCheck | None:
        """The record, or None when no bank and status were ever printed."""
        if self.bank is None or self.status is None:
            return None
        return MachineCheck(cpu=self.cpu, bank=self.bank, status=McaStatus(self.status),
                            mcgstatus=self.mcgstatus, aux=self.aux, extra=self.extra,
                            text=self.text, ts_nsec=self.ts_nsec,
                            record_index=self.record_index, **self.fields)


def _start(m: re.Match[str], index: int, ts: int, line: str) -> _Pending:
    """A record from its ``CPU n: Machine Check...`` header line."""
    return _Pending(cpu=int(m.group(1)),
                    mcgstatus=int(m.group(2), 16) if m.group(2) else None,
                    bank=int(m.group(3)) if m.group(3) else None,
                    status=int(m.group(4), 16) if m.group(4) else None,
                    ts_nsec=ts, record_index=index, text=[line])


def parse_machine_checks(records: list[tuple[int, str]]) -> list[MachineCheck]:
    """Every machine-check record in the log, in log order.

    A record starts at ``CPU n: Machine Check[ Exception]: ...`` and takes
    the RIP, TSC and PROCESSOR lines and any further ``[Hardware Error]: ``
    lines after it (``Machine check: <severity>``, ``Run the above through
    'mcelog --ascii'``...).  Any other line ends it, except a stray
    continuation fragment (``ADDR ...``, ``{symbol}``) that pr_cont() could
    not glue to its line.  Records without a bank and status are dropped."""
    found: list[MachineCheck] = []
    current: _Pending | None = None

    def close() -> None:
        nonlocal current
        if current is not None and (mc := current.finish()) is not None:
            found.append(mc)
        current = None

    for index, ts, line in log_lines(records):
        hw, body = strip_hw_err(line)
        body = body.rstrip()
        if m := _HEADER.match(body):
            close()
            current = _start(m, index, ts, line)
            continue
        if current is None:
            continue
        if current.take(body):
            current.text.append(line)
        elif hw and body:
            current.extra.append(body)
            current.text.append(line)
        elif not hw and _FRAGMENT.match(body):
            current.take_tsc(body)
            current.text.append(line)
        else:
            close()
    close()
    return found
