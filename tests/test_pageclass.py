"""The C page classifier (``PageClassifier.classify_packed``, the extension
``slimdump.kernel._pageclass``) against the numpy one (``classify``).

``classify_packed`` must return, for every window, exactly the packed
``present`` and ``dumpable`` bitmaps of ``classify`` and the same counts:
on every real fixture at every level (where it must not need numpy at
all), on the hand-written synthetic cores of ``test_pages`` (compound
pages, misaligned heads, hwpoison, offline, both page-type encodings,
FLATMEM, struct pages in a hole of the dump, a hugetlb page bigger than a
cycle), and on struct pages full of random, hostile values, for several
kernels' key sets, cycle sizes, chunk sizes, one thread or two.  The
makedumpfile 1.7.2 oracle tests of ``test_pages`` run on both paths.

And the point of it: a capture-like use of the classifier never imports
numpy when the extension is built.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from array import array
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from slimdump.kernel import pages as pages_mod
from slimdump.kernel.memory import KernelMemory
from slimdump.kernel.pages import (
    DEFAULT_CYCLE,
    NOT_PADDR,
    PackedClasses,
    PageClassifier,
    cycles,
    present_packed,
    present_range,
)
from slimdump.kernel.vmcoreinfo import VmcoreInfo
from slimdump.sources import DumpSource, open_dump
from slimdump.sources.base import Segment
from tests.conftest import real_vmcore, require_native
from tests.test_pages import (
    ARRAY_PFNS,
    LEVELS,
    MEMMAP,
    SP,
    V61,
    V612,
    Memmap,
    Style,
    kva,
    synthetic_core,
)
from tests.test_struct_page_reads import core_with_hole

PAGE = 4096
ALL_REAL = ("6.1-sysrq", "6.1-mce", "6.1-oom", "6.1-nmi", "6.12-sysrq", "6.12-mce",
            "6.1-mce-4g")


@pytest.fixture
def native_classifier() -> None:
    require_native(pages_mod.NATIVE, "slimdump.kernel._pageclass")


needs_native = pytest.mark.usefixtures("native_classifier")


def classifier(src: DumpSource) -> PageClassifier:
    info = VmcoreInfo.from_notes(src.notes)
    assert info is not None
    return PageClassifier(KernelMemory(src, info))


def packed_of_numpy(pc: PageClassifier, level: int, a: int, b: int) -> PackedClasses:
    """What classify_packed must return: classify(), packed."""
    c = pc.classify(level, a, b)
    return PackedClasses(a, b, np.packbits(c.present, bitorder="little").tobytes(),
                         np.packbits(c.dumpable, bitorder="little").tobytes(), c.counts)


def assert_same(pc: PageClassifier, level: int, a: int, b: int) -> None:
    got = pc.classify_packed(level, a, b)
    want = packed_of_numpy(pc, level, a, b)
    assert got.present == want.present, (level, a, b, "present")
    if got.keep != want.keep:
        diff = np.flatnonzero(np.unpackbits(np.frombuffer(got.keep, np.uint8)
                                            ^ np.frombuffer(want.keep, np.uint8),
                                            bitorder="little"))
        raise AssertionError(f"level {level} [{a:#x}, {b:#x}): keep differs at pfns "
                             f"{[hex(a + int(i)) for i in diff[:10]]}")
    assert got.counts == want.counts, (level, a, b)
    assert (got.start, got.end) == (a, b)


# ---------------------------------------------------------------------------
# The extension, numpy-free


def test_native_classifier_built() -> None:
    """CI builds the C classifier (make setup); a silent fallback to numpy
    would only show as a slow capture."""
    require_native(pages_mod.NATIVE, "slimdump.kernel._pageclass")


@needs_native
@pytest.mark.vmcore
def test_capture_path_does_not_import_numpy() -> None:
    """Importing the module, building the classifier and classifying a real
    dump with classify_packed (and present_packed) leave numpy unimported."""
    path = real_vmcore("6.1-sysrq")
    code = f"""
import sys
from slimdump.kernel.pages import (DEFAULT_CYCLE, DL_ZERO, ExclusionCounts, PageClassifier,
                                   cycles, max_mapnr, present_packed, usable_segments)
from slimdump.kernel.memory import KernelMemory
from slimdump.kernel.vmcoreinfo import VmcoreInfo
from slimdump.sources import open_dump
with open_dump({str(path)!r}) as src:
    pc = PageClassifier(KernelMemory(src, VmcoreInfo.from_notes(src.notes)))
    total = ExclusionCounts()
    for a, b in cycles(0, pc.max_mapnr):
        total.add(pc.classify_packed(31, a, b).counts)
        present_packed(src.segments, 4096, a, b)
    assert total.excluded > 0 and not pc.fallbacks, (total, pc.fallbacks)
print("numpy" in sys.modules)
"""
    env = {k: v for k, v in os.environ.items() if k != "SLIMDUMP_PAGECLASS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env)
    assert out.stdout.strip() == "False", out.stderr


def test_present_packed_is_packed_present_range() -> None:
    segments = [Segment(0x1000, 0, 0x9FC00 - 0x1000, 0, 0x9FC00 - 0x1000),
                Segment(0x100800, 0, 0x2800, 0, 0x2800),
                Segment(0x101000, 0xFFFFFFFF81000000, 0x1000, 0, 0x1000),
                Segment(0x7000000, 0, 0x13000, 0, 0x13000),
                Segment(NOT_PADDR, 0xFFFFFFFF80000000, 0x5000, 0, 0x5000)]
    for a, b in ((0, 0x8000), (0, 0), (8, 9), (0x9E, 0x200), (0x100, 0x103), (3, 0x7001),
                 (0x6FF8, 0x7020), (0x7011, 0x7013), (0x7000, 0x7013), (0x10000, 0x10010)):
        want = np.packbits(present_range(segments, PAGE, a, b), bitorder="little").tobytes()
        assert present_packed(segments, PAGE, a, b) == want, (a, b)


# ---------------------------------------------------------------------------
# Real vmcores


@needs_native
@pytest.mark.vmcore
@pytest.mark.parametrize("name", ALL_REAL)
def test_packed_equals_numpy_on_real_vmcores(name: str) -> None:
    """Every window of every fixture at every level: bit for bit, and no
    window needs numpy."""
    with open_dump(real_vmcore(name)) as src:
        pc = classifier(src)
        for level in LEVELS:
            for a, b in cycles(0, pc.max_mapnr):
                assert_same(pc, level, a, b)
        assert pc.fallbacks == []


@needs_native
@pytest.mark.vmcore
def test_two_threads_two_windows() -> None:
    """Two threads classifying windows of one classifier at once (what a
    capture on two CPUs does) get what one thread gets."""
    with open_dump(real_vmcore("6.1-mce-4g")) as src:
        pc = classifier(src)
        windows = list(cycles(0, pc.max_mapnr))
        want = [pc.classify_packed(31, a, b) for a, b in windows]
        got: list[PackedClasses | None] = [None] * len(windows)

        def work(which: range) -> None:
            for i in which:
                got[i] = pc.classify_packed(31, *windows[i])

        threads = [threading.Thread(target=work, args=(range(k, len(windows), 2),))
                   for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert got == want
        assert pc.fallbacks == []


# ---------------------------------------------------------------------------
# Synthetic cores


@needs_native
@pytest.mark.parametrize("style", [V61, V612], ids=lambda s: s.name)
@pytest.mark.parametrize("model", ["sparse", "flat"])
def test_packed_equals_numpy_on_synthetic_cores(tmp_path: Path, style: Style, model: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The scenario of test_pages (a hugetlb page bigger than the look-back
    makes some windows go to numpy), cut in cycles and in chunks of every
    size, one thread or two."""
    with open_dump(synthetic_core(tmp_path, style, model)) as src:
        for chunk_bytes in (512 * SP, 1536 * SP, 1 << 21):
            monkeypatch.setattr(pages_mod, "_NATIVE_CHUNK_BYTES", chunk_bytes)
            for parallel in (False, True):
                pc = classifier(src)
                pc.parallel = parallel
                windows = 0
                for level in LEVELS:
                    for size in (777, 1024, 4096, DEFAULT_CYCLE):
                        for a, b in cycles(0, pc.max_mapnr, size):
                            assert_same(pc, level, a, b)
                            windows += 1
                assert "outside head" in pc.fallbacks
                assert len(pc.fallbacks) < windows / 4


@needs_native
@pytest.mark.parametrize("style", [V61, V612], ids=lambda s: s.name)
def test_struct_pages_in_a_hole(tmp_path: Path, style: Style) -> None:
    """Struct pages the dump lacks: those windows go to numpy, the same answer."""
    with open_dump(core_with_hole(tmp_path, style)) as src:
        pc = classifier(src)
        for level in (0, 16, 31):
            for a, b in cycles(0, pc.max_mapnr, 4096):
                assert_same(pc, level, a, b)
        assert "unreadable" in pc.fallbacks


def test_forced_numpy_and_no_extension(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FORCE_NUMPY, or no extension: the numpy path, packed, the same answer."""
    with open_dump(synthetic_core(tmp_path, V612)) as src:
        for attr, value, why in (("FORCE_NUMPY", True, "forced"), ("NATIVE", None, "not built")):
            with monkeypatch.context() as m:
                m.setattr(pages_mod, attr, value)
                pc = classifier(src)
                for a, b in cycles(0, pc.max_mapnr, 4096):
                    assert_same(pc, 31, a, b)
                assert set(pc.fallbacks) == {why}


# -- hostile struct pages ------------------------------------------------------


def random_fill(seed: int) -> Callable[[Memmap], None]:
    """A struct page filler: random flags (the rules' bits and others),
    page.mapping, page types, page.private (orders good and bad, negative),
    compound heads of random order (misaligned, bigger than a cycle) and
    tails pointing near, far back, or nowhere; random bytes where 6.1 keeps
    the first tail's compound_dtor/order."""
    def fill(mm: Memmap) -> None:
        rng = random.Random(seed)
        st = mm.style
        bits = [st.lru, st.private, st.swapcache, st.swapbacked, st.hwpoison, st.head, 3, 25]
        if st.slab_flag is not None:
            bits.append(st.slab_flag)
        values = [st.buddy, st.offline, 0xF7000000, 0xF2000000, 0xFFFFFFFF, 0,
                  rng.getrandbits(32)]
        values += [v for v in (st.slab_type, st.hugetlb_type) if v is not None]
        privates = [0, 1, 3, 9, 10, 11, 12, 40, 62, 63, 64, (1 << 64) - 1, 1 << 63]
        for pfn in range(ARRAY_PFNS):
            if rng.random() < 0.4:
                continue
            flags = 0
            for b in bits:
                if rng.random() < 0.15:
                    flags |= 1 << b
            if rng.random() < 0.3:
                flags |= rng.getrandbits(8)                  # a 6.6+ first tail's order
            chead = 0
            r = rng.random()
            if r < 0.1:
                chead = rng.getrandbits(64) | 1
            elif r < 0.25:          # a head in the same 1024-pfn block (so in the window)
                head = max(pfn - rng.choice([1, 2, 3, 7, 100, 511]), pfn >> 10 << 10)
                chead = kva(MEMMAP + head * SP + rng.choice([0, 0, 0, 8])) | 1
            mm.put(pfn, flags=flags, chead=chead,
                   mapping=rng.choice([0, 0xFFFF888001230000, 0xFFFF888001234001, 3, 7]),
                   mapcount=rng.choice(values), private=rng.choice(privates))
            at = MEMMAP + pfn * SP
            mm.mem[at + 16] = rng.choice([0, 1, 2, 2, 9, 12, 63, 64, 200])
            mm.mem[at + 17] = rng.choice([0, 1, 2, 9, 10, 12, 13, 62, 63, 64, 255])
        for k in range(40):
            order = rng.choice([11, 12] if k == 0 else [1, 2, 4, 9, 10])
            head = rng.randrange(0, ARRAY_PFNS - (1 << order))
            if rng.random() < 0.7:
                head = head >> order << order
            mm.compound(head, order, flags=rng.choice([0, 1 << st.lru]),
                        mapping=rng.choice([0, 0xFFFF888001234001, 0xFFFF888001230000]),
                        hugetlb=rng.random() < 0.3)
        for _ in range(3):                      # tails of a head long before them
            pfn = rng.randrange(0x3000, ARRAY_PFNS)
            mm.put(pfn, chead=kva(MEMMAP + (pfn - rng.choice([1500, 5000, pfn])) * SP) | 1)
    return fill


# key sets of kernels the fixtures do not cover, on top of the two styles
VARIANTS = {
    "plain": {},
    "pg_buddy": {"NUMBER(PG_buddy)": "19"},                    # 2.6.17-2.6.37 buddy flag
    "pg_hugetlb": {"NUMBER(PG_hugetlb)": "25"},               # 6.6-6.8
    "unaccepted": {"NUMBER(PAGE_UNACCEPTED_MAPCOUNT_VALUE)": str(0xF7000000 - (1 << 32))},
    "max_order_13": {"LENGTH(zone.free_area)": "13"},
    "max_order_1": {"LENGTH(zone.free_area)": "1"},
    "max_order_64": {"LENGTH(zone.free_area)": "64"},          # numpy only
    "folio": {"OFFSET(folio._folio_order)": "81", "OFFSET(folio._folio_dtor)": "80"},
}
DROPS = {
    "plain": (),
    "no_chead": ("OFFSET(page.compound_head)",),
    "no_head_mask": ("NUMBER(PG_head_mask)",),
    "no_swapbacked": ("NUMBER(PG_swapbacked)",),
}


@needs_native
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("style", [V61, V612], ids=lambda s: s.name)
def test_packed_equals_numpy_on_random_struct_pages(tmp_path: Path, style: Style,
                                                    variant: str, seed: int,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    extra = dict(VARIANTS[variant])
    drop: tuple[str, ...] = ()
    if variant == "folio" and style is V61:
        drop = ("OFFSET(page.compound_dtor)", "OFFSET(page.compound_order)")
    elif variant == "folio":
        extra = {}
    path = synthetic_core(tmp_path, style, drop=drop, fill=random_fill(seed),
                          extra=extra)
    monkeypatch.setattr(pages_mod, "_NATIVE_CHUNK_BYTES", 1024 * SP)
    rng = random.Random(seed)
    with open_dump(path) as src:
        pc = classifier(src)
        pc.parallel = seed == 2
        windows = [w for size in (777, 4096, DEFAULT_CYCLE) for w in cycles(0, 0x4400, size)]
        for _ in range(20):
            a = rng.randrange(0, 0x4400)
            windows.append((a, a + rng.randrange(0, 0x3000)))
        for level in LEVELS:
            for a, b in windows:
                assert_same(pc, level, a, b)
        if variant == "max_order_64":
            assert set(pc.fallbacks) == {"layout"}
        else:           # most windows are the C walk's: it is what is tested here
            assert len(pc.fallbacks) < len(windows) * len(LEVELS) * (
                0.9 if variant.startswith("max_order") else 0.5), pc.fallbacks[:5]


@needs_native
@pytest.mark.parametrize("drop", sorted(DROPS))
def test_packed_equals_numpy_without_keys(tmp_path: Path, drop: str) -> None:
    path = synthetic_core(tmp_path, V612, drop=DROPS[drop], fill=random_fill(3))
    with open_dump(path) as src:
        pc = classifier(src)
        for level in LEVELS:
            for a, b in cycles(0, 0x4400, 4096):
                assert_same(pc, level, a, b)


@needs_native
def test_native_refuses_layouts_out_of_range() -> None:
    """The extension checks what it is given (offsets past SIZE(page), bit
    numbers >= 64, orders out of range): ValueError, never a wild read."""
    native = pages_mod.NATIVE
    assert native is not None
    good = [64, 0, 24, 48, 40, 8, 2, -1, 3, -1, 0, 1 << 16, 4, 13, 10, 19, -1, 23, -1, -1,
            0xFFFFFF7F, 0xFFFFFEFF, -1, -1, -1, 11, 2]
    buf, flags, cat = bytearray(64 * 10), bytearray(10), bytearray(8)
    ok, ranges = array("q", [0, 9]), array("Q", [0, 10, 1 << 40])

    def walk(params: list[int]) -> tuple[int, int]:
        return native.walk(array("q", params), 31, buf, 0, 0, 8, 0, 8, -(1 << 63), flags,
                           cat, 0, ok, ranges)

    assert walk(good) == (0, -(1 << 63))
    for index, value in ((0, 4), (1, 60), (2, 57), (3, 61), (12, 64), (17, -5), (7, 64),
                         (25, 0), (25, 64), (6, 7)):
        bad = list(good)
        bad[index] = value
        if index == 7:
            bad[6] = 1
        with pytest.raises(ValueError):
            walk(bad)
    with pytest.raises(ValueError):                      # buffer too short for the window
        native.walk(array("q", good), 31, buf, 0, 0, 10, 0, 10, 0, flags, cat, 0, ok, ranges)
