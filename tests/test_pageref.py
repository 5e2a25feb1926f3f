"""The C page classifier held to the per-pfn Python reference (``tests.pageref``).

The reference is checked first against makedumpfile 1.7.2 itself, on
synthetic cores full of hostile struct pages that makedumpfile can read.
Then, window by window, ``PageClassifier.classify`` must return the
reference's 1st bitmap, kept pages and counts: on every real fixture at
several levels and two cycle sizes, on the hand-written synthetic cores of
``test_pages`` (compound pages, misaligned heads, hwpoison, offline, both
page-type encodings, FLATMEM, a hugetlb page bigger than a cycle whose head
lies before the window, struct pages in a hole of the dump), and on the
random struct pages of ``test_pageclass``.

Three cases where they disagreed were the C classifier's faults and are
fixed: struct pages in a page the dump holds only in part, a free page of
an order the zone cannot have, and a free block not aligned to its order
that starts in the cycle before.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from slimdump.kernel import dump_level
from slimdump.kernel.dump_level import DL_FREE, PageClassifier
from slimdump.kernel.memory import KernelMemory, KernelViewError
from slimdump.kernel.physmem import DEFAULT_CYCLE, cycles
from slimdump.kernel.vmcoreinfo import VmcoreInfo
from slimdump.sources import DumpSource, open_dump
from tests import synthcore as sc
from tests import test_struct_page_reads
from tests.conftest import real_vmcore, require_native, run, tool
from tests.mdfbitmap import read_kdump
from tests.pageref import COUNT_NAMES, KEPT, UNREADABLE, PageRef, StructPage
from tests.test_pageclass import DROPS, VARIANTS, random_fill, variant_core
from tests.test_pages import (
    LEVELS,
    MEMMAP,
    SP,
    V61,
    V612,
    Memmap,
    Style,
    blocks_not_nested,
    expected_excluded,
    kva,
    scenario,
    synthetic_core,
)

ALL_REAL = ("6.1-sysrq", "6.1-mce", "6.1-oom", "6.1-nmi", "6.12-sysrq", "6.12-mce",
            "6.1-mce-4g")
REAL_LEVELS = (1, 2, 4, 8, 16, 31, 6, 24, 26)
NO_FREE = tuple(level for level in LEVELS if not level & DL_FREE)
WITH_FREE = tuple(level for level in LEVELS if level & DL_FREE)


@pytest.fixture
def native_classifier() -> None:
    require_native(dump_level.NATIVE, "slimdump.kernel._pageclass")


needs_native = pytest.mark.usefixtures("native_classifier")


def both(src: DumpSource) -> tuple[PageRef, PageClassifier]:
    info = VmcoreInfo.from_notes(src.notes)
    assert info is not None
    mem = KernelMemory(src, info)
    return PageRef(mem), PageClassifier(mem)


def assert_same(ref: PageRef, pc: PageClassifier, level: int, a: int, b: int) -> None:
    """The C verdict for [a, b) is the reference's, bit for bit and count for count."""
    got, want = pc.classify(level, a, b), ref.classify(level, a, b)
    assert (got.start, got.end) == (a, b)
    assert got.present == want.present, (level, hex(a), hex(b), "1st bitmap")
    if got.keep != want.keep:
        diff = [a + i for i in range(b - a) if bit(got.keep, i) != bit(want.keep, i)]
        kept = [hex(p) for p in diff[:8] if bit(want.keep, p - a)]
        gone = [hex(p) for p in diff[:8] if not bit(want.keep, p - a)]
        raise AssertionError(f"-d {level} [{a:#x}, {b:#x}): {len(diff)} pfns differ; the "
                             f"reference keeps {kept}, drops {gone}")
    assert got.counts.as_dict() == want.counts, (level, hex(a), hex(b))


def bit(packed: bytes, i: int) -> bool:
    return bool(packed[i // 8] >> i % 8 & 1)


def windows(n: int, sizes: tuple[int, ...], seed: int = 0, extra: int = 0
            ) -> list[tuple[int, int]]:
    """[0, n) in cycles of each size, plus ``extra`` random windows."""
    out = [w for size in sizes for w in cycles(0, n, size)]
    rng = random.Random(seed)
    for _ in range(extra):
        a = rng.randrange(0, n)
        out.append((a, min(n + 64, a + rng.randrange(0, 0x3000))))
    return out


# -- the reference against makedumpfile 1.7.2 ------------------------------------------

UTS = 0x80000           # a uts_namespace in the synthetic memory (makedumpfile checks it)


class PageRef172(PageRef):
    """The reference as makedumpfile 1.7.2 sees anonymous pages: its isAnon()
    has no slab test (a slab page whose word at page.mapping is odd counts
    as anonymous; later makedumpfile releases test for slab)."""

    def PageAnon(self, page: StructPage) -> bool:
        return bool(page.mapping & 1)


def makedumpfile_ready(tmp_path: Path, fill: Callable[[Memmap], None],
                       drop: tuple[str, ...] = (),
                       extra: dict[str, str] | None = None) -> Path:
    """A V61 synthetic core makedumpfile 1.7.2 reads: page tables mapping the
    kernel image (PGD 0x1000, PUD 0x2000, PMD 0x3000, 2 MiB pages), the
    utsname its release check wants, and data for every page (it drops
    pages past p_filesz); only the first two PT_LOADs."""
    def ready(mm: Memmap) -> None:
        fill(mm)
        release = b"6.1.0-synthetic"
        mm.mem[UTS:UTS + 5] = b"Linux"
        mm.mem[UTS + 130:UTS + 130 + len(release)] = release       # new_utsname.release
        struct.pack_into("<Q", mm.mem, 0x1000 + 511 * 8, 0x2000 | 0x63)
        struct.pack_into("<Q", mm.mem, 0x2000 + 510 * 8, 0x3000 | 0x63)
        for i in range(0x40):
            struct.pack_into("<Q", mm.mem, 0x3000 + i * 8, i << 21 | 0xE3)

    keys = {"SYMBOL(init_uts_ns)": f"{kva(UTS - 4):x}", "OFFSET(uts_namespace.name)": "4",
            **(extra or {})}
    sparse = synthetic_core(tmp_path, V61, drop=drop, fill=ready, extra=keys)
    with open_dump(sparse) as src:
        notes = [sc.Note(n.raw_name.rstrip(b"\0"), n.type, n.desc) for n in src.notes]
        loads = [sc.Load(s.phys_start, s.virt_start, src.read_phys(s.phys_start, s.file_size)
                         + bytes(s.mem_size - s.file_size)) for s in src.segments[:2]]
    path = tmp_path / "full.vmcore"
    path.write_bytes(sc.build_core(notes, loads))
    return path


MDF_CASES = {"scenario": (scenario, (), {}),
             "random-1": (random_fill(1), (), {}), "random-2": (random_fill(2), (), {}),
             "pg_buddy": (random_fill(1), (), VARIANTS["pg_buddy"]),
             "max_order_1": (random_fill(2), (), VARIANTS["max_order_1"]),
             "no_chead": (random_fill(3), DROPS["no_chead"], {}),
             "no_head_mask": (random_fill(3), DROPS["no_head_mask"], {})}


@pytest.mark.parametrize("case", sorted(MDF_CASES))
def test_reference_is_makedumpfile(tmp_path: Path, case: str) -> None:
    """makedumpfile 1.7.2's two bitmaps are the reference's, pfn for pfn,
    on hostile 6.1-style struct pages (buddy orders out of range and
    misaligned, heads of every order, tails pointing anywhere, PG_buddy,
    keys missing), at levels without bit 1."""
    fill, drop, extra = MDF_CASES[case]
    core = makedumpfile_ready(tmp_path, fill, drop, extra)
    with open_dump(core) as src:
        ref = PageRef172(KernelMemory(src, VmcoreInfo.from_notes(src.notes)))
        for level in (0, 2, 4, 8, 16, 30):
            out = tmp_path / f"d{level}"
            run(tool("makedumpfile"), "--message-level", "0", "-l", "-d", str(level), core, out)
            theirs = read_kdump(out)
            verdicts = ref.walk(level)
            n = ref.max_mapnr
            assert n == len(theirs.bitmap1) and ref.unreadable() == []
            assert [p for p in range(n) if bool(ref.present[p]) != theirs.bitmap1[p]] == []
            differ = [p for p in range(n) if (ref.present[p] and verdicts[p] == KEPT)
                      != theirs.bitmap2[p]]
            assert differ == [], (level, [hex(p) for p in differ[:10]])
            assert verdicts.count(KEPT) < n or level == 0


# -- real vmcores --------------------------------------------------------------------


@needs_native
@pytest.mark.vmcore
@pytest.mark.parametrize("name", ALL_REAL)
def test_real_vmcores(name: str) -> None:
    """Every window in cycles of DEFAULT_CYCLE and of 777 pfns (which cut
    order-10 free blocks anywhere), at every level (4 GiB: a sample of the
    777-pfn windows)."""
    with open_dump(real_vmcore(name)) as src:
        ref, pc = both(src)
        vmemmap = ref.mem.info.symbol("vmemmap")
        if vmemmap is not None:     # SPARSEMEM_VMEMMAP: each section decodes to vmemmap
            for pfn in (0, 0x1000, ref.max_mapnr - 1):
                assert ref.pfn_to_page(pfn) == vmemmap + pfn * ref.size
        cut = windows(pc.max_mapnr, (777,))
        if pc.max_mapnr > 1 << 19:
            cut = random.Random(name).sample(cut, 120)
        dropped = 0
        for level in REAL_LEVELS:
            for a, b in [*cycles(0, pc.max_mapnr, DEFAULT_CYCLE), *cut]:
                assert_same(ref, pc, level, a, b)
            verdicts = ref.walk(level)
            dropped += len(verdicts) - verdicts.count(KEPT) - verdicts.count(UNREADABLE)
        assert dropped > 0


# -- synthetic cores -------------------------------------------------------------------


@needs_native
@pytest.mark.parametrize("style", [V61, V612], ids=lambda s: s.name)
@pytest.mark.parametrize("model", ["sparse", "flat"])
def test_synthetic_cores(tmp_path: Path, style: Style, model: str) -> None:
    """test_pages' scenario: the reference drops the pages listed there by
    hand, and the C classifier agrees in every window of every cycle size
    (the order-12 hugetlb page at 0x1000 is bigger than any of them)."""
    with open_dump(synthetic_core(tmp_path, style, model)) as src:
        ref, pc = both(src)
        for level in LEVELS:
            verdicts = ref.walk(level)
            gone = {p for p in range(ref.max_mapnr)
                    if ref.present[p] and verdicts[p] not in (KEPT, UNREADABLE)}
            assert gone == expected_excluded(level), level
            for a, b in windows(pc.max_mapnr, (777, 1024, 4096, DEFAULT_CYCLE), 1, 10):
                assert_same(ref, pc, level, a, b)


@needs_native
def test_blocks_that_do_not_nest(tmp_path: Path) -> None:
    with open_dump(synthetic_core(tmp_path, V612, fill=blocks_not_nested)) as src:
        ref, pc = both(src)
        for level in LEVELS:
            for a, b in windows(0x800, (1, 3, 5, 512, 777)):
                assert_same(ref, pc, level, a, b)


@needs_native
@pytest.mark.parametrize("style", [V61, V612], ids=lambda s: s.name)
def test_struct_pages_in_a_hole(tmp_path: Path, style: Style,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """test_struct_page_reads' hole, here on whole pages of struct pages:
    pfns 0x3000-0x30ff, and those of section 1 (no mem_map), are kept and
    counted unreadable."""
    monkeypatch.setattr(test_struct_page_reads, "HOLE",
                        (MEMMAP + 0x3000 * SP, MEMMAP + 0x3100 * SP))
    with open_dump(test_struct_page_reads.core_with_hole(tmp_path, style)) as src:
        ref, pc = both(src)
        assert len(ref.unreadable()) == 0x100 + 0x400
        for level in LEVELS:
            for a, b in windows(pc.max_mapnr, (777, 4096, DEFAULT_CYCLE)):
                assert_same(ref, pc, level, a, b)


@needs_native
def test_struct_pages_in_a_partly_held_page(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """test_struct_page_reads' hole starts and ends inside pages of struct
    pages: those of pfns 0x3000-0x301f and 0x30e0-0x30ff are in the dump,
    and a free block among them is free."""
    def fill(mm: Memmap) -> None:
        scenario(mm)
        mm.put(0x3010, mapcount=mm.style.buddy, private=2)
    (tmp_path / "core").mkdir()
    core = synthetic_core(tmp_path / "core", V612, fill=fill)
    monkeypatch.setattr(test_struct_page_reads, "synthetic_core", lambda *_args: core)
    with open_dump(test_struct_page_reads.core_with_hole(tmp_path, V612)) as src:
        ref, pc = both(src)
        assert len(ref.unreadable()) == 0xC0 + 0x400
        assert_same(ref, pc, 31, 0, pc.max_mapnr)


# -- hostile struct pages ----------------------------------------------------------------


@needs_native
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("style", [V61, V612], ids=lambda s: s.name)
def test_hostile_struct_pages(tmp_path: Path, style: Style, variant: str, seed: int,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """test_pageclass' random struct pages, at the levels without free
    pages: every window of three cycle sizes and 20 random ones."""
    monkeypatch.setattr(dump_level, "_CHUNK_BYTES", 1024 * SP)
    with open_dump(variant_core(tmp_path, style, variant, seed)) as src:
        ref, pc = both(src)
        for level in NO_FREE:
            for a, b in windows(0x4400, (777, 4096, DEFAULT_CYCLE), seed, 20):
                assert_same(ref, pc, level, a, b)


@needs_native
@pytest.mark.parametrize("drop", sorted(DROPS))
def test_hostile_struct_pages_without_keys(tmp_path: Path, drop: str) -> None:
    with open_dump(synthetic_core(tmp_path, V612, drop=DROPS[drop], fill=random_fill(3))) as src:
        ref, pc = both(src)
        for level in NO_FREE:
            for a, b in windows(0x4400, (4096, DEFAULT_CYCLE)):
                assert_same(ref, pc, level, a, b)


@needs_native
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("style", [V61, V612], ids=lambda s: s.name)
def test_hostile_free_pages(tmp_path: Path, style: Style, variant: str, seed: int) -> None:
    """The same at the levels with free pages, in cycles one after the other
    as a capture asks for them: random free blocks are not aligned to their
    order, and only a walk that goes on from the last cycle (as
    makedumpfile's does) sees one that starts before its window; a window
    asked for on its own looks back for aligned blocks only."""
    with open_dump(variant_core(tmp_path, style, variant, seed)) as src:
        for size in (777, 4096, DEFAULT_CYCLE):
            ref, pc = both(src)
            for level in WITH_FREE:
                for a, b in cycles(0, 0x4400, size):
                    assert_same(ref, pc, level, a, b)


@needs_native
def test_free_area_out_of_range_is_refused(tmp_path: Path) -> None:
    """LENGTH(zone.free_area)=64 (no kernel has it): the C classifier
    refuses the layout, where the reference would judge it."""
    path = synthetic_core(tmp_path, V61, fill=random_fill(1),
                          extra={"LENGTH(zone.free_area)": "64"})
    with open_dump(path) as src:
        ref, pc = both(src)
        with pytest.raises(KernelViewError, match="free_area"):
            pc.classify(31, 0, pc.max_mapnr)
        assert ref.classify(31, 0, ref.max_mapnr).counts["free"] > 0


def impossible_orders(mm: Memmap) -> None:
    """Free pages whose order is MAX_ORDER or more, that another rule would
    drop: makedumpfile 1.7.2 keeps them (test_reference_is_makedumpfile)."""
    st = mm.style
    mm.put(0x2100, mapcount=st.buddy, private=11, flags=mm.bit("hwpoison"))
    mm.put(0x2200, mapcount=st.buddy, private=40, flags=mm.bit("lru"),
           mapping=0xFFFF888001230000)


@needs_native
@pytest.mark.parametrize("style", [V61, V612], ids=lambda s: s.name)
def test_free_page_of_an_impossible_order(tmp_path: Path, style: Style) -> None:
    with open_dump(synthetic_core(tmp_path, style, fill=impossible_orders)) as src:
        ref, pc = both(src)
        assert ref.classify(18, 0x2100, 0x2300).counts == dict.fromkeys(COUNT_NAMES.values(), 0)
        assert_same(ref, pc, 18, 0, pc.max_mapnr)


def misaligned_free_block(mm: Memmap) -> None:
    """A free block of 1024 pages at 0x3f0, not aligned to its order
    (makedumpfile 1.7.2 drops [0x3f0, 0x7f0) all the same)."""
    mm.put(0x3F0, mapcount=mm.style.buddy, private=10)


@needs_native
def test_misaligned_free_block_before_the_window(tmp_path: Path) -> None:
    """Cycles one after the other: the walk goes on from the last one, so
    the block that starts in the first cycle is dropped in the second."""
    with open_dump(synthetic_core(tmp_path, V612, fill=misaligned_free_block)) as src:
        ref, pc = both(src)
        assert ref.classify(DL_FREE, 0, 0x800).counts["free"] == 0x400
        for a, b in cycles(0, 0x800, 0x400):
            assert_same(ref, pc, DL_FREE, a, b)
