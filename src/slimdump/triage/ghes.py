"""Firmware-reported hardware errors (ACPI APEI GHES) as the kernel printed them.

When firmware reports an error through a Generic Hardware Error Source,
drivers/acpi/apei/ghes.c prints the CPER record with
drivers/firmware/efi/cper.c, every line prefixed ``{<seq>}[Hardware Error]: ``
(``seq`` numbers the records) and indented by nesting::

    {1}[Hardware Error]: Hardware error from APEI Generic Hardware Error Source: 1
    {1}[Hardware Error]: event severity: fatal
    {1}[Hardware Error]:  Error 0, type: fatal
    {1}[Hardware Error]:   section_type: memory error
    {1}[Hardware Error]:   physical_address: 0x0000000012345000
    {1}[Hardware Error]:   node: 0 card: 1 module: 2 rank: 0 bank: 3
    {1}[Hardware Error]:   error_type: 2, single-bit ECC

and panics with ``Fatal hardware error!`` when the severity is fatal.  This
module groups those lines back into records and sections by content (the
indentation changed across kernel versions); it never raises on any input.
"""

from __future__ import annotations

import re

from slimdump.record import field, record
from slimdump.triage.loglines import log_lines

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up)
if TYPE_CHECKING:
    from typing import Any

_PREFIX = re.compile(r"^\{(\d{1,10})\}\[Hardware Error\]: ?(.*)$")
_SOURCE = re.compile(r"^Hardware error from APEI Generic Hardware Error Source: (-?\d{1,10})")
_SEVERITY = re.compile(r"^event severity: (.+)$")
_SECTION = re.compile(r"^Error (\d{1,6}), type: (.+)$")
_SECTION_TYPE = re.compile(r"^section[_ ]type: (.+)$")
_ADDRESS = re.compile(r"^0x([0-9a-fA-F]{1,16})$")
# "key: value"; keys start with a letter so hex-dump lines ("00000000: ...")
# stay text.
_FIELD = re.compile(r"^([A-Za-z][\w .()/-]{0,40}?):\s*(.*)$")
# cper_mem_err_location(): "node:0 card:1 ..." (older: "node: 0 card: 1 ...").
_PAIR = re.compile(r"([A-Za-z_]\w{0,30}):\s?(\S+)")


@record
class GhesRecord:
    """One GHES error record: its sequence number, source id, severity and
    CPER sections (each ``{"index", "severity", "type", "fields",
    "physical_address"}``, the address an int when printed)."""

    seq: int
    source: int | None = None
    severity: str | None = None
    sections: list[dict[str, Any]] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)   # record-level key: value
    text: list[str] = field(default_factory=list)
    ts_nsec: int = 0
    record_index: int = 0

    @property
    def fatal(self) -> bool:
        return (self.severity or "").strip().lower() == "fatal"

    def _section(self) -> dict[str, Any]:
        if not self.sections:
            self.sections.append({"index": None, "severity": None, "type": None, "fields": {}})
        return self.sections[-1]

    def take(self, body: str) -> None:
        """Fill the record from one line (prefix removed, indentation kept)."""
        line = body.strip()
        if m := _SOURCE.match(line):
            self.source = int(m.group(1))
        elif m := _SEVERITY.match(line):
            self.severity = m.group(1).strip()
        elif m := _SECTION.match(line):
            self.sections.append({"index": int(m.group(1)), "severity": m.group(2).strip(),
                                  "type": None, "fields": {}})
        elif m := _SECTION_TYPE.match(line):
            self._section()["type"] = m.group(1).strip()
        elif _PAIR.match(line) and len(pairs := _PAIR.findall(line)) >= 2:
            fields = self._section()["fields"]
            for key, value in pairs:
                fields.setdefault(key, value)
        elif m := _FIELD.match(line):
            key, value = m.group(1).strip(), m.group(2).strip()
            target = self.sections[-1]["fields"] if self.sections else self.fields
            target.setdefault(key, value)
            a = _ADDRESS.match(value)
            if key == "physical_address" and a and self.sections:
                self.sections[-1].setdefault("physical_address", int(a.group(1), 16))

    def to_metadata(self) -> dict[str, Any]:
        """JSON-ready; addresses as hex strings."""
        sections = []
        for s in self.sections:
            out = {k: v for k, v in s.items() if k != "physical_address"}
            out["fields"] = dict(s["fields"])
            if isinstance(s.get("physical_address"), int):
                out["physical_address"] = hex(s["physical_address"])
                out["page"] = hex(s["physical_address"] & ~0xFFF)
            sections.append(out)
        meta: dict[str, Any] = {"kind": "ghes", "seq": self.seq, "source": self.source,
                                "severity": self.severity, "sections": sections}
        if self.fields:
            meta["fields"] = dict(self.fields)
        meta["text"] = list(self.text)
        return meta


def parse_ghes(records: list[tuple[int, str]]) -> list[GhesRecord]:
    """Every GHES record in the log, in order.  A record starts at its
    ``Hardware error from APEI ...`` line or where the sequence number
    changes; lines of other drivers in between are skipped, not fatal."""
    found: list[GhesRecord] = []
    current: GhesRecord | None = None
    for index, ts, line in log_lines(records):
        m = _PREFIX.match(line.rstrip())
        if m is None:
            continue
        seq, body = int(m.group(1)), m.group(2)
        if current is None or current.seq != seq or _SOURCE.match(body.strip()):
            current = GhesRecord(seq=seq, ts_nsec=ts, record_index=index)
            found.append(current)
        current.text.append(line)
        current.take(body)
    return found
