"""Errors a user can act on.

Every error that reaches the command line is a :class:`DumpError` whose text
is one line naming the file and the problem; the CLI prints it without a
traceback and exits 1 (makedumpfile's "failed" status).  SIGTERM and SIGHUP
become :class:`Terminated` inside :func:`unwinding_signals`, so that they
unwind as Ctrl-C does.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager


class DumpError(Exception):
    """A dump file cannot be read or written as asked."""

    def __init__(self, path: str | os.PathLike[str] | None, problem: str) -> None:
        self.path = os.fspath(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class NotInDump(DumpError):
    """Memory that the dump does not hold (never silently read as zeros)."""


class OutputError(DumpError):
    """Writing the output failed (the destination's fault, not the
    source's): ``errno`` says why (ENOSPC, EIO, EFBIG...), so that capture
    can retry with a smaller dump when the disk is full."""

    def __init__(self, path: str | os.PathLike[str] | None, problem: str,
                 errno: int | None = None) -> None:
        super().__init__(path, problem)
        self.errno = errno


class SourceReadError(DumpError):
    """Bytes the source claims to hold could not be read (EIO, a short
    read): the pages they belong to are lost, not zeros."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived (raised by the command line's handler, so
    that every ``with`` block removes its temporary file, as for Ctrl-C)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(signum)


@contextmanager
def unwinding_signals() -> Iterator[None]:
    """SIGTERM (a service stopped, a watchdog) and SIGHUP unwind like Ctrl-C
    while the block runs: every temporary file is removed, nothing stands
    half-written under a final name; what was fsynced before (the triage
    slimdump) stays.  The previous handlers come back afterwards."""
    signums = (signal.SIGTERM, signal.SIGHUP)
    try:
        previous = [signal.signal(signum, _terminate) for signum in signums]
    except ValueError:          # not the main thread: signals stay as they are
        yield
        return
    try:
        yield
    finally:
        for signum, handler in zip(signums, previous, strict=True):
            signal.signal(signum, handler)


def describe(exc: BaseException) -> str:
    """One line for any failure: a DumpError names its file and problem; any
    other exception (a bug, or data no check foresaw) its type and text."""
    if isinstance(exc, DumpError):
        return str(exc)
    text = str(exc).splitlines()[0] if str(exc) else ""
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
