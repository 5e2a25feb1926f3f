"""The C page classifier (``slimdump.kernel._pageclass`` under
``slimdump.kernel.dump_level.PageClassifier``) at its edges.

What pages it drops is held to makedumpfile 1.7.2 and to hand-written
synthetic cores in ``test_pages``, and to a per-pfn Python reference in
``test_pageref``.  Here: the extension is built and a capture-like use of
it never imports numpy; the 1st bitmap is the pages the PT_LOADs hold,
pfn by pfn; two threads classifying windows of one dump agree with one;
without the extension the classifier refuses in one line and a capture
keeps every page; struct pages full of random, hostile values (several
kernels' key sets, keys missing) give answers that are consistent with
themselves; and the extension checks the layout it is given.

``random_fill``, ``VARIANTS`` and ``DROPS`` are the hostile scenarios,
shared with ``test_pageref``.
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

import pytest

from slimdump.kernel import dump_level
from slimdump.kernel.dump_level import DL_CACHE, DL_ZERO, PageClasses, PageClassifier
from slimdump.kernel.memory import KernelMemory, KernelViewError
from slimdump.kernel.physmem import DEFAULT_CYCLE, cycles, present_packed
from slimdump.kernel.vmcoreinfo import VmcoreInfo
from slimdump.sources import DumpSource, open_dump
from slimdump.sources.base import NOT_PADDR, Segment
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
    pfns_of,
    popcount,
    synthetic_core,
)

PAGE = 4096


@pytest.fixture
def native_classifier() -> None:
    require_native(dump_level.NATIVE, "slimdump.kernel._pageclass")


needs_native = pytest.mark.usefixtures("native_classifier")


def classifier(src: DumpSource) -> PageClassifier:
    info = VmcoreInfo.from_notes(src.notes)
    assert info is not None
    return PageClassifier(KernelMemory(src, info))


# ---------------------------------------------------------------------------
# The extension, numpy-free


def test_native_classifier_built() -> None:
    """CI builds the C classifier (make setup): without it nothing would be
    dropped, which would only show as a large dump."""
    require_native(dump_level.NATIVE, "slimdump.kernel._pageclass")


@needs_native
@pytest.mark.vmcore
def test_capture_path_does_not_import_numpy() -> None:
    """Importing the modules, building the classifier and classifying a real
    dump cycle by cycle (with the 1st bitmap by present_packed) leave numpy
    unimported."""
    path = real_vmcore("6.1-sysrq")
    code = f"""
import sys
from slimdump.kernel.dump_level import ExclusionCounts, PageClassifier
from slimdump.kernel.physmem import cycles, present_packed
from slimdump.kernel.memory import KernelMemory
from slimdump.kernel.vmcoreinfo import VmcoreInfo
from slimdump.sources import open_dump
with open_dump({str(path)!r}) as src:
    pc = PageClassifier(KernelMemory(src, VmcoreInfo.from_notes(src.notes)))
    total = ExclusionCounts()
    for a, b in cycles(0, pc.max_mapnr):
        c = pc.classify(31, a, b)
        assert c.present == present_packed(src.segments, 4096, a, b)
        total.add(c.counts)
    assert total.excluded > 0, total
print("numpy" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=dict(os.environ))
    assert out.stdout.strip() == "False", out.stderr


def held_pfns(segments: list[Segment], page: int, a: int, b: int) -> set[int]:
    """Pfns in [a, b) of which some PT_LOAD with a physical address holds a
    byte, one pfn at a time."""
    return {p for p in range(a, b) for s in segments
            if s.phys_start != NOT_PADDR and s.mem_size > 0
            and s.phys_start < (p + 1) * page and p * page < s.phys_start + s.mem_size}


def test_present_packed_is_the_pages_the_segments_hold() -> None:
    segments = [Segment(0x1000, 0, 0x9FC00 - 0x1000, 0, 0x9FC00 - 0x1000),
                Segment(0x100800, 0, 0x2800, 0, 0x2800),
                Segment(0x101000, 0xFFFFFFFF81000000, 0x1000, 0, 0x1000),
                Segment(0x7000000, 0, 0x13000, 0, 0x13000),
                Segment(NOT_PADDR, 0xFFFFFFFF80000000, 0x5000, 0, 0x5000)]
    for a, b in ((0, 0x8000), (0, 0), (8, 9), (0x9E, 0x200), (0x100, 0x103), (3, 0x7001),
                 (0x6FF8, 0x7020), (0x7011, 0x7013), (0x7000, 0x7013), (0x10000, 0x10010)):
        got = present_packed(segments, PAGE, a, b)
        assert len(got) == (b - a + 7) // 8, (a, b)
        assert pfns_of(got, a) == held_pfns(segments, PAGE, a, b), (a, b)


# ---------------------------------------------------------------------------
# Threads, and no extension


@needs_native
@pytest.mark.vmcore
def test_two_threads_two_windows() -> None:
    """Two threads classifying windows of one classifier at once get what
    one thread gets."""
    with open_dump(real_vmcore("6.1-mce-4g")) as src:
        pc = classifier(src)
        windows = list(cycles(0, pc.max_mapnr))
        want = [pc.classify(31, a, b) for a, b in windows]
        got: list[PageClasses | None] = [None] * len(windows)

        def work(which: range) -> None:
            for i in which:
                got[i] = pc.classify(31, *windows[i])

        threads = [threading.Thread(target=work, args=(range(k, len(windows), 2),))
                   for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert got == want


def test_without_the_extension(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No C classifier: a level that needs the struct page walk is refused
    in one line naming the dump; a capture keeps every page and says why."""
    from slimdump.filtered import select_pages  # the writers' layer, on top

    path = synthetic_core(tmp_path, V612, drop=("NUMBER(PG_hwpoison)",))
    monkeypatch.setattr(dump_level, "NATIVE", None)
    with open_dump(path) as src:
        pc = classifier(src)
        with pytest.raises(KernelViewError) as exc:
            pc.classify(DL_CACHE, 0, 0x1000)
        text = str(exc.value)
        assert "\n" not in text and text.startswith(f"{path}: ") and "not built" in text
        c = pc.classify(DL_ZERO, 0, 0x1000)             # no walk at this level
        assert c.keep == c.present == present_packed(src.segments, PAGE, 0, 0x1000)
        selection = select_pages(src, 31)
        try:
            present = present_packed(src.segments, PAGE, 0, selection.max_mapnr)
            assert selection.bitmap2.read(0, len(present)) == present
            assert len(selection.warnings) == 1 and "not built" in selection.warnings[0]
        finally:
            selection.close()


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
    "folio": {"OFFSET(folio._folio_order)": "81", "OFFSET(folio._folio_dtor)": "80"},
}
DROPS = {
    "plain": (),
    "no_chead": ("OFFSET(page.compound_head)",),
    "no_head_mask": ("NUMBER(PG_head_mask)",),
    "no_swapbacked": ("NUMBER(PG_swapbacked)",),
}


def variant_core(tmp_path: Path, style: Style, variant: str, seed: int,
                 drop: tuple[str, ...] = ()) -> Path:
    """A core of ``random_fill(seed)`` struct pages with the keys of
    ``style`` and ``VARIANTS[variant]``, less ``drop``."""
    extra = dict(VARIANTS[variant])
    if variant == "folio" and style is V61:
        drop = (*drop, "OFFSET(page.compound_dtor)", "OFFSET(page.compound_order)")
    elif variant == "folio":
        extra = {}
    return synthetic_core(tmp_path, style, drop=drop, fill=random_fill(seed), extra=extra)


def assert_consistent(src: DumpSource, c: PageClasses) -> None:
    """What any verdict must be: the 1st bitmap as the PT_LOADs say, kept
    pages among the present ones, every dropped page counted once."""
    assert c.present == present_packed(src.segments, PAGE, c.start, c.end)
    assert len(c.keep) == len(c.present)
    assert all(k & ~p == 0 for k, p in zip(c.keep, c.present, strict=True))
    gone = popcount(c.present) - popcount(c.keep)
    assert c.counts.excluded == gone, (c.start, c.end, c.counts, gone)
    assert c.counts.unreadable == 0                  # every struct page is in the dump


@needs_native
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("style", [V61, V612], ids=lambda s: s.name)
def test_hostile_struct_pages(tmp_path: Path, style: Style, variant: str,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Random struct pages (tails pointing anywhere, orders out of range,
    heads bigger than a window): consistent verdicts for every window and
    level, never a crash.  Which pages they drop is test_pageref's."""
    monkeypatch.setattr(dump_level, "_CHUNK_BYTES", 1024 * SP)
    rng = random.Random(1)
    with open_dump(variant_core(tmp_path, style, variant, 1)) as src:
        pc = classifier(src)
        windows = [w for size in (777, 4096, DEFAULT_CYCLE) for w in cycles(0, 0x4400, size)]
        for _ in range(20):
            a = rng.randrange(0, 0x4400)
            windows.append((a, a + rng.randrange(0, 0x3000)))
        for level in LEVELS:
            for a, b in windows:
                assert_consistent(src, pc.classify(level, a, b))


@needs_native
@pytest.mark.parametrize("drop", sorted(DROPS))
def test_hostile_struct_pages_without_keys(tmp_path: Path, drop: str) -> None:
    with open_dump(synthetic_core(tmp_path, V612, drop=DROPS[drop], fill=random_fill(3))) as src:
        pc = classifier(src)
        for level in LEVELS:
            for a, b in cycles(0, 0x4400, 4096):
                assert_consistent(src, pc.classify(level, a, b))


@needs_native
def test_native_refuses_layouts_out_of_range() -> None:
    """The extension checks what it is given (offsets past SIZE(page), bit
    numbers >= 64, orders and sources out of range): ValueError, never a
    wild read."""
    native = dump_level.NATIVE
    assert native is not None
    good = {"SIZE(page)": 64, "OFFSET(page.flags)": 0, "OFFSET(page.mapping)": 24,
            "OFFSET(page._mapcount)": 48, "OFFSET(page.private)": 40,
            "OFFSET(page.compound_head)": 8, "order_source": native.ORDER_FLAGS1,
            "order_offset": -1, "hugetlb_source": native.HUGETLB_PAGE_TYPE,
            "dtor_offset": -1, "NUMBER(HUGETLB_PAGE_DTOR)": 0,
            "NUMBER(PG_head_mask)": 1 << 16, "NUMBER(PG_lru)": 4, "NUMBER(PG_private)": 13,
            "NUMBER(PG_swapcache)": 10, "NUMBER(PG_swapbacked)": 19, "NUMBER(PG_slab)": -1,
            "NUMBER(PG_hwpoison)": 23, "NUMBER(PG_buddy)": -1, "NUMBER(PG_hugetlb)": -1,
            "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)": 0xFFFFFF7F,
            "NUMBER(PAGE_OFFLINE_MAPCOUNT_VALUE)": 0xFFFFFEFF,
            "NUMBER(PAGE_SLAB_MAPCOUNT_VALUE)": -1, "NUMBER(PAGE_HUGETLB_MAPCOUNT_VALUE)": -1,
            "NUMBER(PAGE_UNACCEPTED_MAPCOUNT_VALUE)": -1, "LENGTH(zone.free_area)": 11,
            "buddy_source": native.BUDDY_PAGE_TYPE}
    assert set(good) == set(native.PARAMS)
    buf, flags, cat = bytearray(64 * 10), bytearray(10), bytearray(8)
    ok, ranges, outside = array("q", [0, 9]), array("Q", [0, 10, 1 << 40]), array("q", [0] * 9)

    def walk(params: dict[str, int], end: int = 8) -> tuple[int, int]:
        return native.walk(array("q", [params[name] for name in native.PARAMS]), 31, buf, 0,
                           0, end, 0, end, -(1 << 63), flags, cat, 0, ok, ranges, outside)

    assert walk(good) == (0, -(1 << 63))
    for name, value in (("SIZE(page)", 4), ("OFFSET(page.flags)", 60),
                        ("OFFSET(page.mapping)", 57), ("OFFSET(page._mapcount)", 61),
                        ("NUMBER(PG_lru)", 64), ("NUMBER(PG_hwpoison)", -5),
                        ("order_offset", 64), ("LENGTH(zone.free_area)", 0),
                        ("LENGTH(zone.free_area)", 64), ("order_source", 7),
                        ("hugetlb_source", 9), ("buddy_source", -2),
                        # checked as int64, not after narrowing to a C int
                        ("order_source", (1 << 32) + 1), ("buddy_source", (1 << 32) + 2)):
        bad = dict(good, **{name: value})
        if name == "order_offset":
            bad["order_source"] = native.ORDER_BYTE
        with pytest.raises(ValueError):
            walk(bad)
    with pytest.raises(ValueError):                      # buffer too short for the window
        walk(good, end=10)


@needs_native
def test_native_survives_any_layout() -> None:
    """Whatever int64 each parameter holds, over random struct pages: the
    walk answers or raises ValueError (a wild read would crash the test
    process, or show under a sanitizer)."""
    native = dump_level.NATIVE
    assert native is not None
    rng = random.Random(13)
    values = [-(1 << 63), -(1 << 32), -2, -1, 0, 1, 2, 7, 8, 11, 16, 24, 40, 48, 56, 57, 60,
              63, 64, 65, 127, 4096, 1 << 20, (1 << 20) + 1, 1 << 31, (1 << 32) + 1,
              (1 << 63) - 1]
    good = {"SIZE(page)": 64, "OFFSET(page.flags)": 0, "OFFSET(page.mapping)": 24,
            "OFFSET(page._mapcount)": 48, "OFFSET(page.private)": 40,
            "OFFSET(page.compound_head)": 8, "LENGTH(zone.free_area)": 11,
            "order_source": native.ORDER_FLAGS1, "hugetlb_source": native.HUGETLB_PAGE_TYPE,
            "buddy_source": native.BUDDY_PAGE_TYPE, "NUMBER(PG_head_mask)": 1 << 16}
    npages, walked = 40, 0
    for _ in range(3000):
        # a sane layout with a few parameters set anyhow, or all of them
        chosen = [good.get(name, -1) for name in native.PARAMS]
        for i in rng.sample(range(len(chosen)), rng.choice([1, 1, 2, 3, len(chosen)])):
            chosen[i] = rng.choice(values)
        params = array("q", chosen)
        buf = bytearray(rng.randbytes(rng.choice([64, 96, 256]) * (npages + 1)))
        flags, cat = bytearray(rng.randbytes(npages + 1)), bytearray(npages)
        ok = array("q", [0, npages + 1])
        ranges = array("Q", [0, npages + 1, rng.choice([0, 1 << 40, (1 << 64) - 64])])
        outside = array("q", [0] * (npages + 1))
        for level in (1, 2, 31):
            try:
                native.walk(params, level, buf, 0, 0, npages, 0, npages, -(1 << 63), flags,
                            cat, 0, ok, ranges, outside)
            except ValueError:
                break
            walked += 1
    assert walked > 1000                        # many layouts got as far as a walk
