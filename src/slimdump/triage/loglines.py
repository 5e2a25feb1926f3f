"""The lines of the kernel log's records, for the triage parsers."""

from __future__ import annotations

from collections.abc import Iterator


def log_lines(records: list[tuple[int, str]]) -> Iterator[tuple[int, int, str]]:
    """``(record index, ts_nsec, line)`` for every line of every record:
    a record's text may hold continuation lines after '\\n'."""
    for index, entry in enumerate(records):
        try:
            ts, text = entry
        except (TypeError, ValueError):
            continue
        if not isinstance(text, str):
            continue
        ts = ts if isinstance(ts, int) else 0
        for line in text.split("\n"):
            yield index, ts, line
