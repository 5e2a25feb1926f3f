"""``makedumpfile --split`` sets: read by slimdump in any order, written by
``slimdump capture --split`` as makedumpfile writes them.

Oracles, all independent of slimdump: libkdumpfile (python3-libkdumpfile
under Debian's /usr/bin/python3) reads the pages of whole dumps and of
single parts (0.5.1 cannot open a set: setting ``file.set.number`` and the
other parts' ``file.set.K.fd`` on an opened dump aborts the interpreter, so
each part is read alone and must hold exactly its range's pages);
makedumpfile 1.7.2 writes its own split sets, reassembles slimdump's, and
re-splits slimdump's unsplit file, whose sub headers say which ranges it
chose; the sub header is parsed here from the reference layout (x86_64).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from tests.conftest import real_vmcore, run, slimdump, tool
from tests.oracles import libkdumpfile_view

PAGE = 4096

def libkdumpfile_pages(path: Path) -> dict[int, str]:
    """pfn -> hash of every page libkdumpfile reads from ``path``."""
    result = libkdumpfile_view(path)
    assert result.get("format") == "diskdump", result.get("error")
    assert not result["missing"]
    return dict(result["pages"])


def slimdump_pages(paths: list[Path]) -> dict[int, str]:
    """pfn -> hash of every page slimdump says the dump (or set) holds."""
    from slimdump.sources import open_dump

    pages = {}
    with open_dump([str(p) for p in paths]) as source:
        for first, count in source.bitmap2.runs():
            for pfn in range(first, first + count):
                data = source.read_phys(pfn * PAGE, PAGE)
                pages[pfn] = hashlib.blake2b(data, digest_size=16).hexdigest()
    return pages


def split_fields(path: Path) -> tuple[int, int, int]:
    """(split, start_pfn_64, end_pfn_64) from the x86_64 kdump_sub_header
    (reference 2.3: at block_size, fields at 12, 80 and 88)."""
    data = path.read_bytes()[:2 * PAGE]
    block_size = struct.unpack_from("<i", data, 428)[0]
    split = struct.unpack_from("<i", data, block_size + 12)[0]
    start, end = struct.unpack_from("<QQ", data, block_size + 80)
    return split, start, end


def makedumpfile(*args: str | os.PathLike[str]) -> None:
    run(tool("makedumpfile"), "--message-level", "0", *args)


@pytest.fixture(scope="module")
def mdf(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """makedumpfile's unsplit dump, its 3-part split set (4 MiB splitblocks:
    the 768 MiB guest is smaller than the default 1 GiB splitblock) and
    libkdumpfile's reading of the unsplit dump."""
    work = tmp_path_factory.mktemp("split-mdf")
    vmcore = real_vmcore("6.1-sysrq")
    whole = work / "whole"
    makedumpfile("-l", "-d", "31", vmcore, whole)
    parts = [work / f"part{i}" for i in (1, 2, 3)]
    makedumpfile("--split", "-l", "-d", "31", "--splitblock-size", "4096", vmcore, *parts)
    return {"vmcore": vmcore, "whole": whole, "parts": parts, "work": work,
            "pages": libkdumpfile_pages(whole)}


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])
def test_makedumpfile_parts_in_any_order(mdf: dict, order: tuple[int, ...]) -> None:
    parts = [mdf["parts"][i] for i in order]
    ranges = [split_fields(p) for p in mdf["parts"]]
    assert all(r[0] == 1 for r in ranges) and len({r[1:] for r in ranges}) == 3, ranges
    assert slimdump_pages(parts) == mdf["pages"]


def test_reassemble_makedumpfile_parts(mdf: dict, tmp_path: Path) -> None:
    """slimdump reassemble of makedumpfile's parts is makedumpfile's unsplit
    file byte for byte, as makedumpfile --reassemble's is."""
    theirs, ours = tmp_path / "mdf-joined", tmp_path / "slimdump-joined"
    makedumpfile("--reassemble", *mdf["parts"], theirs)
    got = slimdump("reassemble", mdf["parts"][2], mdf["parts"][0], mdf["parts"][1], ours)
    assert got.returncode == 0, got.stderr
    whole = Path(mdf["whole"]).read_bytes()
    assert theirs.read_bytes() == whole
    assert ours.read_bytes() == whole
    bad = slimdump("reassemble", mdf["parts"][0], mdf["parts"][2], tmp_path / "bad")
    assert bad.returncode == 1 and "missing" in bad.stderr and not (tmp_path / "bad").exists()


def test_makedumpfile_set_dmesg_and_inspect(mdf: dict, tmp_path: Path) -> None:
    expected = tmp_path / "dmesg.mdf"
    makedumpfile("--dump-dmesg", mdf["vmcore"], expected)
    got = slimdump("dmesg", *reversed(mdf["parts"]))
    assert got.returncode == 0, got.stderr
    assert got.stdout == expected.read_text(errors="surrogateescape")
    shown = slimdump("inspect", "--json", "--no-log", *mdf["parts"])
    assert shown.returncode == 0, shown.stderr
    split = json.loads(shown.stdout)["file"]["split"]
    assert [(p["pfn_start"], p["pfn_end"]) for p in split["parts"]] == \
        [split_fields(p)[1:] for p in mdf["parts"]]
    assert split["set_pages"] == len(mdf["pages"])


def test_lone_part_says_what_it_holds(mdf: dict, tmp_path: Path) -> None:
    """Alone, a part names its range in inspect, and libkdumpfile agrees that
    it holds exactly the dumped pages of that range; capture refuses it;
    dmesg works only if the log is in it, else names the part's range."""
    log_ok = 0
    for part in mdf["parts"]:
        _, start, end = split_fields(part)
        text = slimdump("inspect", "--no-log", part)
        assert text.returncode == 0, text.stderr
        assert f"pfns {start:#x}-{end - 1:#x}" in text.stdout
        assert "part of a makedumpfile --split set" in text.stdout
        facts = json.loads(slimdump("inspect", "--json", "--no-log", part).stdout)
        split = facts["file"]["split"]
        assert (split["pfn_start"], split["pfn_end"]) == (start, end)
        alone = libkdumpfile_pages(part)
        assert alone == {pfn: h for pfn, h in mdf["pages"].items() if start <= pfn < end}
        assert split["pages"] == len(alone)

        dst = tmp_path / f"capture-{part.name}"
        cap = slimdump("capture", part, dst)
        assert cap.returncode == 1 and not dst.exists()
        assert cap.stderr.count("\n") == 1 and "Traceback" not in cap.stderr
        assert "--split set" in cap.stderr and f"{start:#x}-{end - 1:#x}" in cap.stderr

        dmesg = slimdump("dmesg", part)
        if dmesg.returncode == 0:
            log_ok += 1
            continue
        assert dmesg.returncode == 1 and "Traceback" not in dmesg.stderr, dmesg.stderr
        assert dmesg.stderr.count("\n") == 1, dmesg.stderr
        assert "another part of this makedumpfile --split set" in dmesg.stderr
    assert log_ok < len(mdf["parts"])       # the log lies in one part, not in all


def _bad_sets(mdf: dict, work: Path) -> dict[str, tuple[list[Path], str]]:
    p1, p2, p3 = mdf["parts"]
    copy = work / "part1.copy"
    if not copy.exists():
        shutil.copyfile(p1, copy)
    other = [work / f"other{i}" for i in (1, 2, 3)]
    if not other[0].exists():   # the same crash at another dump level: another dump
        makedumpfile("--split", "-l", "-d", "1", "--splitblock-size", "4096",
                     mdf["vmcore"], *other)
    return {
        "missing middle": ([p1, p3], "a part of the --split set is missing"),
        "missing last": ([p2, p1], "a part of the --split set is missing"),
        "same file twice": ([p1, p2, p3, p1], "given twice"),
        "copy of a part": ([p1, p2, copy, p3], "the same part twice"),
        "other dump": ([p1, other[1], p3], "not a part of the same dump"),
        "whole dump": ([mdf["whole"], p1, p2, p3], "is a whole dump"),
    }


@pytest.mark.parametrize("case", ["missing middle", "missing last", "same file twice",
                                  "copy of a part", "other dump", "whole dump"])
@pytest.mark.parametrize("command", ["inspect", "dmesg", "capture"])
def test_bad_sets(mdf: dict, case: str, command: str, tmp_path: Path) -> None:
    paths, message = _bad_sets(mdf, mdf["work"])[case]
    args = [*paths, tmp_path / "out"] if command == "capture" else paths
    got = slimdump(command, *args)
    assert got.returncode == 1, got.stderr
    assert got.stderr.count("\n") == 1 and "Traceback" not in got.stderr, got.stderr
    assert message in got.stderr, got.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def slim_whole(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """slimdump's unsplit dump and libkdumpfile's reading of it."""
    work = tmp_path_factory.mktemp("split-slim")
    whole = work / "whole"
    got = slimdump("capture", "--no-progress", "-l", "-d", "31", real_vmcore("6.1-sysrq"),
                   whole)
    assert got.returncode == 0, got.stderr
    return {"whole": whole, "work": work, "pages": libkdumpfile_pages(whole)}


@pytest.mark.parametrize("count, splitblock", [(2, "4096"), (3, "4096"), (3, "400"),
                                               (3, None)])
def test_slimdump_split(slim_whole: dict, count: int, splitblock: str | None,
                        tmp_path: Path) -> None:
    """slimdump's parts: (a) read back by slimdump, (b) joined by makedumpfile
    --reassemble into slimdump's unsplit file byte for byte, (c) each read by
    libkdumpfile as exactly its range's pages, (d) the ranges makedumpfile
    chooses when it splits the same dump."""
    vmcore = real_vmcore("6.1-sysrq")
    block = ["--splitblock-size", splitblock] if splitblock else []
    parts = [tmp_path / f"part{i}" for i in range(1, count + 1)]
    got = slimdump("capture", "--no-progress", "--split", "-l", "-d", "31", *block, vmcore,
                   *parts)
    assert got.returncode == 0, got.stderr
    # (a)
    assert slimdump_pages(list(reversed(parts))) == slim_whole["pages"]
    # (b)
    joined = tmp_path / "joined"
    makedumpfile("--reassemble", *parts, joined)
    assert joined.read_bytes() == Path(slim_whole["whole"]).read_bytes()
    ours = tmp_path / "joined-by-slimdump"
    got = slimdump("reassemble", *reversed(parts), ours)
    assert got.returncode == 0, got.stderr
    assert ours.read_bytes() == joined.read_bytes()
    # (c)
    ranges = [split_fields(p) for p in parts]
    assert all(r[0] == 1 for r in ranges)
    assert ranges[0][1] == 0 and all(a[2] == b[1] for a, b in itertools.pairwise(ranges))
    for part, (_, start, end) in zip(parts, ranges, strict=True):
        if start < end:
            assert libkdumpfile_pages(part) == {
                pfn: h for pfn, h in slim_whole["pages"].items() if start <= pfn < end}
    # (d) makedumpfile re-splitting slimdump's unsplit dump (same pages)
    theirs = [tmp_path / f"mdf{i}" for i in range(1, count + 1)]
    makedumpfile("--split", "-l", "-d", "31", *block, slim_whole["whole"], *theirs)
    assert ranges == [split_fields(p) for p in theirs]
    if splitblock is None:          # 768 MiB < one 1 GiB splitblock: all in part 1
        assert ranges[0][1:] == (0, ranges[-1][2])
        assert all(r[1] == r[2] for r in ranges[1:])


def test_split_refuses_what_makedumpfile_refuses(tmp_path: Path) -> None:
    vmcore = real_vmcore("6.1-sysrq")
    for args in (["-F"], ["-E"]):
        got = slimdump("capture", "--split", *args, vmcore, tmp_path / "a", tmp_path / "b")
        assert got.returncode == 1 and "not with -E or -F" in got.stderr
    got = slimdump("capture", "--split", vmcore, tmp_path / "a")
    assert got.returncode == 1 and "at least two" in got.stderr
    existing = tmp_path / "b"
    existing.write_text("keep me")
    got = slimdump("capture", "--split", "-l", vmcore, tmp_path / "a", existing)
    assert got.returncode == 1 and "already exists" in got.stderr
    assert existing.read_text() == "keep me" and not (tmp_path / "a").exists()


def test_split_of_a_hardware_crash_is_one_slimdump(tmp_path: Path) -> None:
    """A slimdump is one file: with --split it goes to DST1, and the user is
    told that the other names were not created."""
    first, second = tmp_path / "part1", tmp_path / "part2"
    got = slimdump("capture", "--split", real_vmcore("6.1-mce"), first, second)
    assert got.returncode == 0, got.stderr
    assert f"{second} not created" in got.stderr
    assert not second.exists()
    assert first.read_bytes()[:4] == b"\x7fELF"
    assert "PANIC_MCE" in slimdump("inspect", "--no-log", first).stdout
