"""capture(): from a dump source to the files that should be kept.

The order is the point (never lose a dump):

1. stale temporary files that a killed run left beside the destination are
   removed (:func:`slimdump.writers.atomic.remove_stale_parts`);
2. the decision (:mod:`slimdump.capture.decision`): reason, action, log;
3. for anything bigger than a slimdump, the triage artifact, a slimdump
   with the log, written and fsynced beside the destination first
   (:mod:`slimdump.capture.small`); then the ``--dump-dmesg`` text;
4. the dump itself, with its fallbacks (:mod:`slimdump.capture.normal`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from slimdump.capture.decision import Decision, decide_safely, try_log
from slimdump.capture.normal import write_normal_or_full
from slimdump.capture.small import (
    triage_path,
    write_slimdump,
    write_small_output,
    write_triage,
)
from slimdump.errors import DumpError, describe
from slimdump.policy import Policy
from slimdump.record import field, record
from slimdump.sources import open_dump
from slimdump.writers.atomic import remove_stale_parts
from slimdump.writers.options import FLAT, DumpOptions

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up)
if TYPE_CHECKING:
    from typing import Any

#: ``triage`` argument of :func:`capture`: beside a file destination, none for stdout
TRIAGE_BESIDE = "beside"


@record
class CaptureResult:
    decision: Decision
    dst: str
    size: int
    source_bytes_read: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def incomplete(self) -> bool:
        """The dump under the final name was cut short (a full disk even for
        the smallest dump) and its header says so."""
        return bool(self.extra.get("incomplete"))


def dmesg_path(dst: str) -> str:
    """Where ``--dump-dmesg`` puts the log: beside the dump."""
    return dst + ".dmesg.txt"


def _is_file(dst: str | None) -> bool:
    return dst not in (None, "-")


def chosen_triage_path(dst: str | None, triage: str | None) -> str | None:
    """Where the triage artifact goes: ``triage`` is a path, None (off) or
    :data:`TRIAGE_BESIDE` (beside a file ``dst``; off for standard output)."""
    if triage == TRIAGE_BESIDE:
        return triage_path(dst) if _is_file(dst) else None  # type: ignore[arg-type]
    return triage


def capture(src: str | Sequence[str], dst: str | None, *, full: bool = False,
            overwrite: bool = False, progress: bool | None = None,
            policy: Policy | None = None, dump_dmesg: bool = False,
            options: DumpOptions | None = None, work_dir: str | None = None,
            triage: str | None = TRIAGE_BESIDE, use_mmap: bool = True) -> CaptureResult:
    """Capture ``src`` (a file, or the parts of a --split set) into ``dst``
    and say what was done.  ``dst`` None or "-" means standard output
    (flattened format only).  With ``options.split`` the normal dump goes to
    those files (``dst`` is the first); a slimdump, one file, goes to ``dst``.
    ``work_dir``: where large page bitmaps go (default: beside ``dst``).
    ``triage``: see :func:`chosen_triage_path`.  ``use_mmap``: read ``src``
    through mmap() windows where it can be mapped (False: pread() only).

    A lone part of a --split set is refused: a dump written from it would
    miss the other parts' pages (the writer reads absent pages as zeros)."""
    options = options or DumpOptions()
    start = time.monotonic()
    extra: dict[str, Any] = {}
    outputs = list(options.split) if options.split else [dst] if _is_file(dst) else []
    for path in outputs:
        if os.path.lexists(path) and not overwrite:        # before anything is written
            raise DumpError(path, "already exists (use -f to overwrite)")
    removed = [name for directory in {os.path.dirname(os.path.abspath(p)) for p in outputs}
               for name in remove_stale_parts(directory)]
    with open_dump(src, salvage=True, use_mmap=use_mmap) as source:
        lone_part = getattr(source, "split", False) and not getattr(source, "holds_all", True)
        if lone_part:
            raise DumpError(source.path, f"is {source.split_text()}")  # type: ignore[attr-defined]
        triage_to = chosen_triage_path(dst, triage)
        decision = decide_safely(source, policy, full=full, want_log=dump_dmesg)
        if triage_to is not None and not decision.writes_slimdump and decision.log is None:
            # only a dump bigger than a slimdump gets a triage: a slimdump of
            # a kernel's note reads nothing of the crashed kernel's memory
            decision.log = try_log(source, decision.warnings)
        for problem in getattr(source, "damaged_notes", ()):
            decision.warnings.append(f"{problem}: the notes before it kept, the rest "
                                     "ignored; the memory is saved")
        if removed:
            decision.warnings.append(f"removed {len(removed)} temporary file(s) a killed run "
                                     f"left: {', '.join(sorted(removed))}")
        if options.split and decision.writes_slimdump:
            decision.warnings.append(f"a slimdump is one file: written to {dst}; "
                                     f"{', '.join(options.split[1:])} not created")
        if triage_to is not None and not decision.writes_slimdump:
            try:
                extra["triage_size"] = write_triage(source, decision, triage_to, dst)
                extra["triage"] = triage_to
            except Exception as exc:    # the dump matters more than its triage copy
                decision.warnings.append(f"cannot write the triage slimdump {triage_to} "
                                         f"({describe(exc)}); going on with the dump")
        if dump_dmesg and decision.log is not None:
            if _is_file(dst):
                path = dmesg_path(dst)   # type: ignore[arg-type]
                try:        # a leftover of an earlier attempt is replaced, never a reason to stop
                    write_small_output(decision.log.data, path, overwrite=True)
                    extra["dmesg"] = path
                except Exception as exc:
                    decision.warnings.append(f"cannot write the kernel log to {path} "
                                             f"({describe(exc)})")
            else:
                decision.warnings.append("--dump-dmesg: the log goes beside a dump file, "
                                         "not with a stream to standard output")
        if decision.writes_slimdump:
            size = write_slimdump(source, decision, dst, overwrite=overwrite,
                                  flat=options.format == FLAT)
            extra["format"] = options.format if options.format == FLAT else "elf"
        else:
            size, details = write_normal_or_full(source, decision, dst, options,
                                                 overwrite=overwrite, progress=progress,
                                                 work_dir=work_dir)
            extra.update(details)
            lost = extra.get("unreadable", 0)
            if lost:
                decision.warnings.append(f"{lost} page(s) could not be read from "
                                         f"{source.path} and are missing from the dump "
                                         "(listed in its SLIMDUMP metadata)")
            if extra.get("incomplete"):
                decision.warnings.append("no room even for the smallest dump: it is cut "
                                         "short and its header marked incomplete")
        return CaptureResult(decision, dst, size, source.bytes_read,
                             time.monotonic() - start, extra)
