"""The capture summary's page counts, held to makedumpfile 1.7.2's own report
(its page-count report: "Free pages", "Non-private cache pages", "User
process data pages", "Pages filled with zero") on the same vmcore and level.

Pages whose struct page could not be read are kept, so they are never
listed under "excluded"; zero pages of a kdump-compressed dump keep their
place in the 2nd bitmap (one stored zero page), those of an ELF dump are
left out.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from slimdump.sources import open_dump
from slimdump.sources.base import partial_pages
from tests.conftest import real_vmcore, slimdump
from tests.test_pages import makedumpfile_report


def summary_counts(line: str) -> dict[str, int]:
    m = re.search(r"; excluded ([^;)]*)", line)
    pairs = m.group(1).split(", ") if m else []
    return {k: int(v) for k, v in (p.rsplit(" ", 1) for p in pairs)}


@pytest.mark.vmcore
# 6.1 only: makedumpfile 1.7.2 misreads 6.12's page types (kdump-formats.md
# 5.5; test_pages explains each such page from its raw struct page)
@pytest.mark.parametrize("name", ["6.1-sysrq", "6.1-oom"])
@pytest.mark.parametrize("level", [31, 19])
def test_summary_counts_are_makedumpfile_s(tmp_path: Path, name: str, level: int) -> None:
    vmcore = real_vmcore(name)
    want = makedumpfile_report(name, level)
    with open_dump(vmcore) as src:
        # makedumpfile 1.7.2 leaves a trailing partial page out of its 1st
        # bitmap (README, "Oracles"); slimdump keeps it, and it may be zero
        partial = len(partial_pages(src.extents, 4096))
    for fmt in ("-l", "-E"):
        out = tmp_path / f"out{fmt}"
        res = slimdump("capture", "--no-progress", fmt, "-d", str(level), vmcore, out)
        assert res.returncode == 0, res.stderr
        (line,) = [x for x in res.stderr.splitlines() if x.startswith("slimdump: wrote ")
                   and not x.startswith("slimdump: wrote the triage")]
        got = summary_counts(line)
        assert "unreadable" not in line and "could not be read" not in line
        for key in ("free", "cache", "cache_private", "user"):
            assert got.get(key, 0) == want[key], (fmt, key, line)
        if fmt == "-E":
            zero = got.get("zero", 0)
        else:
            m = re.search(r"and (\d+) zero pages stored as one", line)
            zero = int(m.group(1)) if m else 0
            assert "zero" not in got
        assert want["zero"] <= zero <= want["zero"] + partial, (fmt, line)
