"""PfnBitmap: the same answers in memory and in a temporary file, checked
against plain numpy bool arrays (the obvious model of a bitmap; numpy is
only the tests'), and the same kdump file whichever way select_pages stores
its bitmaps."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pytest

from slimdump import bitmap as bitmap_mod
from slimdump.bitmap import PfnBitmap


def model_runs(bits: np.ndarray, start: int, end: int) -> list[tuple[int, int]]:
    runs, pfn = [], start
    while pfn < end:
        if bits[pfn]:
            first = pfn
            while pfn < end and bits[pfn]:
                pfn += 1
            runs.append((first, pfn - first))
        else:
            pfn += 1
    return runs


def model_bits(bm: PfnBitmap, count: int) -> np.ndarray:
    """The bitmap's first ``count`` bits as a bool array (read back a byte
    window at a time, through the public read())."""
    packed = np.frombuffer(bytes(bm.read(0, (count + 7) // 8)), np.uint8)
    return np.unpackbits(packed, bitorder="little")[:count].astype(bool)


def store_bits(bm: PfnBitmap, start: int, bits: np.ndarray) -> None:
    """Store bool ``bits`` for pfns from ``start`` (a multiple of 8)."""
    bm.write(start // 8, np.packbits(bits, bitorder="little").tobytes())


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize("nbits", [1, 13, 4096, 70001])
def test_bitmap_matches_model(tmp_path: Path, in_memory: bool, nbits: int) -> None:
    rng = np.random.default_rng(nbits)
    model = np.zeros(nbits, bool)
    with PfnBitmap(nbits, directory=str(tmp_path),
                   memory_limit=1 << 30 if in_memory else 0) as bm:
        assert bm.in_memory == in_memory
        assert list(tmp_path.iterdir()) == []        # the file is unlinked at once
        for _ in range(20):                          # runs of set and clear bits
            start = int(rng.integers(0, max(nbits // 8, 1))) * 8
            count = int(rng.integers(0, min(nbits - start, 3000) + 1))
            bits = rng.random(count) < rng.random()
            store_bits(bm, start, np.concatenate([bits, model[start + count:start + count
                                                              + (-count) % 8]]))
            model[start:start + count] = bits
        for pfn in rng.integers(0, nbits, 10).tolist():
            bm.clear(pfn)
            model[pfn] = False
        assert bm.popcount() == int(model.sum())
        assert np.array_equal(model_bits(bm, nbits + 5)[:nbits], model)
        assert not model_bits(bm, nbits + 5)[nbits:].any()
        packed = np.packbits(model, bitorder="little")
        assert bytes(bm.read(0, bm.nbytes)) == packed.tobytes()
        for window in (8, 64, 1 << 20):
            assert list(bm.runs(0, None, window)) == model_runs(model, 0, nbits)
        a, b = nbits // 3, 2 * nbits // 3
        assert list(bm.runs(a, b, 8)) == model_runs(model, a, b)
        for block in (8, 64, 4096):
            sums = [int(model[i:i + block].sum()) for i in range(0, nbits, block)]
            assert list(bm.counts(block)) == sums
        for lo, hi in ((0, nbits), (a, b), (b, b), (nbits - 1, nbits + 9), (a, a + 70)):
            clear = [pfn for pfn in range(lo, hi) if pfn >= nbits or not model[pfn]]
            assert bm.first_clear(lo, hi) == (clear[0] if clear else hi), (lo, hi)
        other = PfnBitmap.from_bytes(packed.tobytes(), nbits)
        assert bm.is_subset_of(other) and other.is_subset_of(bm)
        if model.any():
            smaller = np.packbits(model & (np.arange(nbits) != np.flatnonzero(model)[0]),
                                  bitorder="little")
            assert not bm.is_subset_of(PfnBitmap.from_bytes(smaller.tobytes(), nbits))


def test_first_clear_of_full_bitmap() -> None:
    with PfnBitmap.from_bytes(b"\xff" * 4, 29) as bm:
        assert bm.first_clear(0, 29) == 29
        assert bm.first_clear(3, 31) == 29              # past the end counts as clear
        assert bm.first_clear(5, 5) == 5


def test_bitmap_file_error_names_directory(tmp_path: Path) -> None:
    from slimdump.errors import DumpError

    missing = tmp_path / "no-such-dir"
    with pytest.raises(DumpError, match="no-such-dir"):
        PfnBitmap(1 << 20, directory=str(missing), memory_limit=0)


@pytest.mark.vmcore
@pytest.mark.parametrize("options", [("kdump", "lzo", 31), ("elf", "none", 31),
                                     ("kdump", "zlib", 1)])
def test_file_backed_selection_writes_the_same_dump(tmp_path: Path,
                                                     options: tuple[str, str, int],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Bitmaps in a temporary file (what a machine with a huge memory map
    gets) give the file the in-memory bitmaps give, byte for byte."""
    from slimdump.capture import capture
    from slimdump.policy import Policy
    from slimdump.writers.options import DumpOptions
    from tests.conftest import real_vmcore

    src = str(real_vmcore("6.1-sysrq"))
    opts = DumpOptions(*options)
    memory, on_disk = tmp_path / "memory", tmp_path / "disk"
    capture(src, str(memory), policy=Policy(), options=opts, progress=False)
    monkeypatch.setattr(bitmap_mod, "MEMORY_LIMIT", 0)
    capture(src, str(on_disk), policy=Policy(), options=opts, progress=False)
    assert filecmp.cmp(memory, on_disk, shallow=False)
    # each capture left its triage slimdump beside it, and nothing else
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "disk.triage", "memory",
                                                          "memory.triage"]
