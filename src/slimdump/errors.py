"""Errors a user can act on.

Every error that reaches the command line is a :class:`DumpError` whose text
is one line naming the file and the problem; the CLI prints it without a
traceback and exits 1 (makedumpfile's "failed" status).
"""

from __future__ import annotations

import os


class DumpError(Exception):
    """A dump file cannot be read or written as asked."""

    def __init__(self, path: str | os.PathLike[str] | None, problem: str) -> None:
        self.path = os.fspath(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class NotInDump(DumpError):
    """Memory that the dump does not hold (never silently read as zeros)."""
