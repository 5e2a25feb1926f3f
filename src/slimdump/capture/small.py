"""The small outputs: the slimdump (headers and notes, kilobytes), and the
triage artifact that capture writes beside every bigger dump before it
starts on it.

The triage artifact is a slimdump with the kernel log and the metadata:
the machine's reason (or null for a software crash) and its last words.  It
is written and fsynced first, so that when the big dump fails (a full disk,
a dying disk, the capture kernel killed or out of memory) the reason and
the log are on disk already.  Its name is the dump's with ``.triage``
appended, ``dump-incomplete`` of kdump-tools giving ``dump.triage``
(:func:`triage_path`); ``slimdump inspect``, ``eu-readelf -n``,
crash and drgn read it like any slimdump.
"""

from __future__ import annotations

import os

from slimdump.capture.decision import Decision, slim_metadata
from slimdump.notes import (
    NT_SLIMDUMP_LOG,
    NT_SLIMDUMP_META,
    find_nocoredump,
    is_slimdump_note,
    log_note,
    metadata_note,
)
from slimdump.policy import DMESG
from slimdump.sources import DumpSource
from slimdump.writers.atomic import AtomicOutput
from slimdump.writers.options import output_path
from slimdump.writers.slim import slimdump_bytes

TRIAGE_SUFFIX = ".triage"


#: the name kdump-tools (``dump-incomplete``) and kdump-utils
#: (``vmcore-incomplete``) give a dump until it is complete, then rename
SERVICE_TEMP_SUFFIX = "-incomplete"


def triage_path(dst: str) -> str:
    """Where the triage artifact of a dump written to ``dst`` goes: beside
    it, ``DST.triage``; when ``DST`` is a service's temporary name
    (``.../dump-incomplete``), the name it will have without that suffix:
    ``/var/crash/STAMP/dump.triage`` (kdump-tools), ``.../vmcore.triage``
    (kdump-utils), which no rename leaves behind as "incomplete"."""
    if dst.endswith(SERVICE_TEMP_SUFFIX) and len(os.path.basename(dst)) > len(
            SERVICE_TEMP_SUFFIX):
        dst = dst[:-len(SERVICE_TEMP_SUFFIX)]
    return dst + TRIAGE_SUFFIX


def slimdump_data(source: DumpSource, decision: Decision, *, with_log: bool,
                  extra_meta: dict[str, object] | None = None) -> bytes:
    """The slimdump of ``source`` for ``decision``: its notes, the reason
    note that counts (none for a software crash), the metadata, and the log
    when ``with_log`` and the decision read one."""
    log = decision.log if with_log else None
    kept = [note for note in source.notes
            if find_nocoredump([note]) is None and not is_slimdump_note(note, NT_SLIMDUMP_META)
            and not (log is not None and is_slimdump_note(note, NT_SLIMDUMP_LOG))]
    # The reason note that counts goes after the source's own notes; any
    # further reason notes the source had are dropped (the first one counts).
    # ``slim``: headers and notes only, even when detection read the log;
    # ``dmesg``: the log too (a slimdump's own log note is replaced by it).
    meta = slim_metadata(source, decision)
    meta.update(extra_meta or {})
    notes = [*kept, *([decision.reason.to_note()] if decision.reason else []),
             metadata_note(meta)]
    if log is not None:
        notes.append(log_note(log.text))
    return slimdump_bytes(source.header, notes)


def write_slimdump(source: DumpSource, decision: Decision, dst: str | None, *,
                   overwrite: bool = False, flat: bool = False) -> int:
    """Write the slimdump for ``decision`` (``flat``: as a flattened stream,
    see :func:`write_small_output`); return the slimdump's size in bytes."""
    data = slimdump_data(source, decision, with_log=decision.action == DMESG)
    write_small_output(data, dst, flat=flat, overwrite=overwrite)
    return len(data)


def write_triage(source: DumpSource, decision: Decision, path: str, dump: str | None) -> int:
    """The triage artifact for the big dump ``dump``, to ``path``, replacing
    any left there by an earlier attempt: written, fsynced and renamed
    before the big dump starts.  Returns its size."""
    data = slimdump_data(source, decision, with_log=True, extra_meta={
        "triage_for": os.path.abspath(dump) if dump not in (None, "-") else "standard output",
        "action": decision.action})
    write_small_output(data, path, overwrite=True)
    return len(data)


def write_small_output(data: bytes, dst: str | None, *, flat: bool = False,
                       overwrite: bool = False) -> None:
    """A whole file that fits in memory (a slimdump) to ``dst``.  ``flat``:
    as a flattened stream (-F), so that what a service pipes from standard
    output (kdump-tools: ``makedumpfile -F ... | compress > dump``) turns
    back into the file with ``slimdump reassemble`` or ``makedumpfile -R``;
    ``dst`` None or "-" is standard output then."""
    if not flat:
        with AtomicOutput(output_path(dst), overwrite=overwrite) as out:
            out.write(data, 0)
            out.commit()
        return
    from slimdump.writers.flat import flat_output

    with flat_output(dst, overwrite=overwrite) as stream:
        stream.write(data, 0)
