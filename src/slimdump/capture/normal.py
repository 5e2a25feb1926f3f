"""The ``normal`` and ``full`` dumps, and what capture does when one fails.

Whatever fails, capture saves the most it safely can, and says what it did
in the decision's warnings (one line each):

- the pages cannot be selected (a VMCOREINFO value no check foresaw):
  every page is kept, at dump level 0;
- the dump asked for cannot be written for the source's sake (a bug, an
  ELF layout that cannot leave out an unreadable page): a kdump-compressed
  dump of every page, then, for an ELF source, a byte copy;
- the destination is full (ENOSPC, EDQUOT, EFBIG): the partial file is
  removed and the smallest dump is tried once (kdump-compressed, -d 31, the
  best codec here); if even that does not fit, it is kept cut short, its
  header marked incomplete as makedumpfile marks it (``details["incomplete"]``);
- any other write error (EIO, a read-only file system): no fallback helps;
  the error goes up, and the triage artifact written before is what remains.

Pages the source cannot give (EIO, an incomplete source) are left out of a
kdump-compressed dump and listed in its SLIMDUMP metadata; the writers do
that (:func:`slimdump.filtered.write_dump`).
"""

from __future__ import annotations

import errno
import os

from slimdump.capture.decision import Decision, machine_check_pfns, slim_metadata
from slimdump.codecs import get_codec, implementation
from slimdump.errors import DumpError, OutputError, SourceReadError, describe
from slimdump.notes import metadata_note
from slimdump.policy import FULL
from slimdump.record import replace
from slimdump.sources import DumpSource, ElfCore
from slimdump.writers.elfcopy import write_full_copy
from slimdump.writers.options import ELF, FLAT, KDUMP, DumpOptions, output_path

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up)
if TYPE_CHECKING:
    from typing import Any

#: write errors that mean "no room": a smaller dump may still fit
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

#: the codecs in the order of the dumps they make, smallest first
SMALLEST_FIRST = ("zstd", "zlib")


def best_codec() -> str:
    """The codec that makes the smallest dump here (zstd when its module is
    installed, else zlib, which is always there)."""
    for name in SMALLEST_FIRST:
        try:
            implementation(get_codec(name))
        except DumpError:
            continue
        return name
    return "zlib"


def smallest_options(options: DumpOptions) -> DumpOptions:
    """The smallest dump slimdump can make: kdump-compressed, every page
    makedumpfile's -d 31 leaves out left out, the best codec, one file."""
    return replace(options, format=KDUMP, codec=best_codec(), dump_level=31, split=())


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OutputError) and exc.errno in NO_SPACE


def write_normal_or_full(source: DumpSource, decision: Decision, dst: str | None,
                         options: DumpOptions, *, overwrite: bool,
                         progress: bool | None,
                         work_dir: str | None = None) -> tuple[int, dict[str, Any]]:
    """The dump for the ``normal`` and ``full`` actions, with the fallbacks
    above.

    ``full``: the complete vmcore, a byte-exact copy of an ELF source; for a
    hardware crash whose machine check named a page, every page but that
    one, at dump level 0, in the chosen format, the page recorded in a
    SLIMDUMP metadata note.  ``normal``: the pages of ``options.dump_level``
    in the chosen format.
    """
    poisoned = machine_check_pfns(decision) if decision.reason else []
    to_file = dst not in (None, "-")
    byte_copy = (isinstance(source, ElfCore) and not poisoned and options.format != FLAT
                 and not options.split and to_file)
    if not any(seg.usable for seg in source.segments):
        # every format still gets a valid file: the notes are the dump
        decision.warnings.append("the dump holds no memory (no PT_LOAD with a physical "
                                 "address); writing its notes only")
    kw = {"overwrite": overwrite, "progress": progress, "work_dir": work_dir}
    if decision.action == FULL and byte_copy:
        try:
            return _byte_copy(source, dst, **kw)
        except OutputError as exc:
            if not is_no_space(exc):
                raise
            return _smallest(source, decision, dst, options, exc, **kw)
        except Exception as exc:  # an unreadable range: every page we can read instead
            decision.warnings.append(f"cannot copy the dump byte for byte ({describe(exc)}); "
                                     "writing every page it can read instead")
            return _pages(source, decision, dst, replace(options, format=KDUMP, codec=best_codec(),
                                                         dump_level=0), **kw)
    level = 0 if decision.action == FULL else options.dump_level
    try:
        return _pages(source, decision, dst, replace(options, dump_level=level), **kw)
    except OutputError as exc:
        if not is_no_space(exc) or not to_file or options.split:
            raise
        return _smallest(source, decision, dst, options, exc, **kw)
    except Exception as exc:
        if not to_file:          # a stream that has begun cannot start again
            raise
        failed = exc
    # the dump asked for cannot be written from this source: an unreadable
    # page that an ELF layout cannot leave out goes to a kdump-compressed
    # dump of the same level, which can; anything else, every page; then a copy
    again = level if isinstance(failed, SourceReadError) else 0
    every = replace(options, format=KDUMP, codec=options.codec if options.format == KDUMP
                    else best_codec(), dump_level=again, split=())
    decision.warnings.append(f"cannot write the dump asked for ({describe(failed)}); writing "
                             f"a kdump-compressed dump at -d {again} instead")
    try:
        return _pages(source, decision, dst, every, **kw)
    except OutputError as exc:
        if not is_no_space(exc):
            raise
        return _smallest(source, decision, dst, options, exc, **kw)
    except Exception as exc:
        if not byte_copy:
            raise
        decision.warnings.append(f"cannot write that either ({describe(exc)}); "
                                 "copying the dump byte for byte")
    return _byte_copy(source, dst, **kw)


def _byte_copy(source: DumpSource, dst: str | None, *, overwrite: bool,
               progress: bool | None, work_dir: str | None) -> tuple[int, dict[str, Any]]:
    assert isinstance(source, ElfCore)
    stats = write_full_copy(source, output_path(dst), overwrite=overwrite, progress=progress)
    return stats.size, {"copy_method": stats.method, "data_bytes": stats.copied}


def _smallest(source: DumpSource, decision: Decision, dst: str | None, options: DumpOptions,
              exc: OutputError, *, overwrite: bool, progress: bool | None,
              work_dir: str | None) -> tuple[int, dict[str, Any]]:
    """After ENOSPC: the partial file is gone (its temporary name removed);
    the smallest dump, once, kept cut short and marked if even it does not fit."""
    small = smallest_options(options)
    decision.warnings.append(f"{exc.problem}: the partial dump was removed; writing the "
                             f"smallest dump instead (kdump-compressed, {small.codec}, -d 31)")
    size, details = _pages(source, decision, dst, small, overwrite=overwrite,
                           progress=progress, work_dir=work_dir, keep_incomplete=True)
    details["no_space_retry"] = True
    return size, details


def _pages(source: DumpSource, decision: Decision, dst: str | None, chosen: DumpOptions, *,
           overwrite: bool, progress: bool | None, work_dir: str | None,
           keep_incomplete: bool = False) -> tuple[int, dict[str, Any]]:
    """The pages of ``chosen.dump_level`` in ``chosen.format``; if they
    cannot be selected, every page (dump level 0) and a warning."""
    from slimdump.filtered import select_pages, write_dump

    poisoned = machine_check_pfns(decision) if decision.reason else []
    # re-filtering a saved dump: its dump level still holds (as makedumpfile ORs it)
    level = chosen.dump_level | (getattr(source, "dump_level", 0) or 0)
    # large bitmaps go to a temporary file on the dump's file system (or
    # makedumpfile's --work-dir), not to a capture kernel's RAM-backed /tmp
    directory = work_dir or (None if dst in (None, "-")
                             else os.path.dirname(os.path.abspath(dst)))
    try:
        selection = select_pages(source, level, poisoned, directory=directory)
    except OutputError:
        raise
    except Exception as exc:
        if level == 0:
            raise
        decision.warnings.append(f"cannot select the pages of -d {level} ({describe(exc)}); "
                                 "keeping every page (-d 0)")
        level = 0
        selection = select_pages(source, level, poisoned, directory=directory)
    chosen = replace(chosen, dump_level=level)
    meta = slim_metadata(source, decision, stamp=bool(poisoned))
    extra_notes = []
    # a page the source holds only in part is whole in a kdump-compressed
    # file: the metadata says which of its bytes are memory (an ELF file's
    # program headers say it themselves)
    partial = (selection.kept_partial() if isinstance(source, ElfCore) and chosen.format != ELF
               else [])
    if poisoned:
        meta["excluded_pages"] = [{"pfn": pfn, "why": "machine check ADDR"} for pfn in poisoned]
    if partial:
        meta["partial_pages"] = partial
    if (poisoned and decision.reason is not None) or partial:
        extra_notes.append(metadata_note(meta))
    try:
        result = write_dump(source, dst, chosen, selection, extra_notes=extra_notes,
                            metadata=meta, overwrite=overwrite, progress=progress,
                            keep_incomplete=keep_incomplete)
    finally:
        selection.close()
    decision.warnings.extend(selection.warnings)
    details = {"pages": result.pages, "dump_level": level, "format": chosen.format,
               "codec": chosen.codec, "excluded": selection.counts, **result.details}
    if poisoned:
        details["excluded_pages"] = poisoned
    return result.size, details
