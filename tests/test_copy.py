"""Range copying on each kernel path: byte-exact, holes and zero blocks kept
sparse (the read/write path is the one /proc/vmcore takes when
copy_file_range and sendfile refuse it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from slimdump.writers.copy import RangeCopier

MiB = 1 << 20


def make_source(path: Path) -> bytes:
    """4 MiB data, an 8 MiB hole, 2 MiB of written zeros, 1 MiB data + odd tail."""
    with path.open("wb") as f:
        f.write(os.urandom(4 * MiB))
        f.seek(12 * MiB)
        f.write(bytes(2 * MiB))
        f.write(os.urandom(MiB + 123))
    return path.read_bytes()


@pytest.mark.parametrize("method", ["copy_file_range", "sendfile", "read/write"])
def test_copy_paths(tmp_path: Path, method: str) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    expected = make_source(src)
    seen: list[int] = []
    sfd, dfd = os.open(src, os.O_RDONLY), os.open(dst, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        copier = RangeCopier(sfd, dfd, str(src), str(dst), seen.append)
        copier.method = method
        copier.copy(0, 0, len(expected))
        os.ftruncate(dfd, len(expected))
    finally:
        os.close(sfd)
        os.close(dfd)
    assert dst.read_bytes() == expected
    assert copier.method == method
    assert seen[-1] == len(expected) and seen == sorted(seen)
    # the 8 MiB hole is never written; the read/write path skips zero blocks too
    allocated = dst.stat().st_blocks * 512
    assert allocated <= len(expected) - 8 * MiB + MiB
    if method == "read/write":
        assert allocated <= len(expected) - 10 * MiB + MiB


def test_copy_with_offset(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    data = os.urandom(3 * MiB + 7)
    src.write_bytes(data)
    sfd, dfd = os.open(src, os.O_RDONLY), os.open(dst, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        RangeCopier(sfd, dfd, "src", "dst").copy(MiB, 4096, 2 * MiB + 7)
    finally:
        os.close(sfd)
        os.close(dfd)
    assert dst.read_bytes() == bytes(4096) + data[MiB:]
