"""drgn plugin: opening a slimdump in drgn says why there is no memory.

A slimdump holds notes and no memory, so drgn alone opens it and then fails
every read with a FaultError.  drgn (0.3.0 here) imports the modules
registered under the ``drgn.plugins`` entry point group and calls their
``drgn_prog_set(prog)`` from inside ``Program.set_core_dump()`` (so from
``drgn -c FILE`` and from scripts alike), once the core is open and before
any debugging information is loaded.  This module is registered so (see
pyproject.toml); for a slimdump it prints to stderr what ``slimdump inspect``
starts with: the protocol's headline, ``Nocoredump Reason: CODE``, the
kernel's words and the decoded hardware errors.  Any other core costs a
read of its ELF headers and prints nothing; a broken file costs one line.
Nothing is raised into drgn.

Scripts get the facts from the same file: :func:`reason`, :func:`metadata`,
:func:`log` (``slimdump.drgn.reason(prog)``).  ``DRGN_DISABLE_PLUGINS=slimdump``
silences the plugin.

This module never imports ``drgn`` (absolute imports only, so the name
``slimdump.drgn`` cannot shadow it) and imports the analyzer only once the
cheap check has found a core with notes and no memory.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Any

    from slimdump.notes import NoCoreDump
    from slimdump.sources import DumpSource

_EHDR_READ = 64
# A slimdump has one program header; a table this long is a real vmcore.
_MAX_PHNUM_CHECKED = 4096
_HINT = ("slimdump: this core holds no memory, so every read fails; in drgn, "
         "slimdump.drgn.reason(prog), .metadata(prog) and .log(prog) give what it holds")


def _core_path(prog: Any) -> str:
    """The path of ``prog``'s core dump; ValueError if it has none."""
    path = getattr(prog, "core_dump_path", None)
    if not path:
        raise ValueError("the program was not created from a core dump")
    return os.fspath(path)


def may_be_slimdump(path: str) -> bool:
    """Whether ``path`` is an ELF core with a note segment and no PT_LOAD:
    the file header and the program headers, nothing more, so that drgn
    pays almost nothing for every other core.  False when unreadable."""
    from slimdump.elf import ET_CORE, PN_XNUM, PT_LOAD, PT_NOTE, ElfHeader, ProgramHeader

    try:
        with open(path, "rb", buffering=0) as f:
            head = f.read(_EHDR_READ)
            if head[:4] != b"\x7fELF":
                return False
            hdr = ElfHeader.parse(head)
            if (hdr.e_type != ET_CORE or hdr.e_phentsize != hdr.phdr_size
                    or not 0 < hdr.e_phnum <= _MAX_PHNUM_CHECKED or hdr.e_phnum == PN_XNUM):
                return False
            f.seek(hdr.e_phoff)
            table = f.read(hdr.e_phnum * hdr.phdr_size)
    except (OSError, ValueError):
        return False
    if len(table) < hdr.e_phnum * hdr.phdr_size:
        return False
    types = {ProgramHeader.parse(table, i * hdr.phdr_size, hdr).p_type
             for i in range(hdr.e_phnum)}
    return PT_LOAD not in types and PT_NOTE in types


def drgn_prog_set(prog: Any) -> None:
    """drgn's hook: called by ``Program.set_core_dump()`` once the core is
    open.  Prints the verdict for a slimdump, nothing for any other core."""
    path = getattr(prog, "core_dump_path", None)
    if not path:
        return
    try:
        if not may_be_slimdump(path):
            return
        from slimdump.analysis.report import collect, render_verdict
        from slimdump.sources import open_dump

        with open_dump(path) as source:
            facts = collect(source, read_log=False)
        if facts["file"]["kind"] != "slimdump":
            return
        text = render_verdict(facts)
        if facts["nocoredump"] is None and not text:
            text = "A slimdump with no hardware reason recorded. No coredump available.\n"
        if not facts["triage"].get("hardware_errors"):
            text = text.rstrip("\n") + "\nHardware errors: none recorded in this slimdump\n"
        sys.stderr.write(f"{text}{_HINT}\n")
        sys.stderr.flush()
    except Exception as exc:  # never raise into drgn: one line, then return
        problem = getattr(exc, "problem", None) or str(exc) or type(exc).__name__
        sys.stderr.write(f"slimdump: {path}: not readable as a slimdump: {problem}\n")


def _open(prog: Any) -> DumpSource:
    from slimdump.sources import open_dump

    return open_dump(_core_path(prog))


def reason(prog: Any) -> NoCoreDump | None:
    """The NT_NOCOREDUMP note of ``prog``'s core (``.reason`` is the code,
    ``.message`` the kernel's words), None when it has none.  Works for a
    complete vmcore that carries the note too."""
    from slimdump.notes import NoCoreDump, find_nocoredump

    with _open(prog) as source:
        note = find_nocoredump(source.notes)
    return NoCoreDump.from_note(note) if note else None


def metadata(prog: Any) -> dict[str, Any] | None:
    """slimdump's metadata (the SLIMDUMP JSON note: reason, detected_by,
    source, memory map, hardware_errors, ...), None when the core has none;
    DumpError when the note is not JSON."""
    from slimdump.errors import DumpError
    from slimdump.notes import NT_SLIMDUMP_META, decode_metadata, is_slimdump_note

    with _open(prog) as source:
        for note in source.notes:
            if is_slimdump_note(note, NT_SLIMDUMP_META):
                try:
                    return decode_metadata(note)
                except ValueError as exc:
                    raise DumpError(source.path, f"SLIMDUMP metadata note: {exc}") from None
    return None


def log(prog: Any) -> str | None:
    """The crashed kernel's log (dmesg) the slimdump carries, None when it
    carries none (a kernel-note slimdump saved with the ``slim`` action)."""
    from slimdump.notes import NT_SLIMDUMP_LOG, decode_text, is_slimdump_note

    with _open(prog) as source:
        for note in source.notes:
            if is_slimdump_note(note, NT_SLIMDUMP_LOG):
                return decode_text(note)
    return None
