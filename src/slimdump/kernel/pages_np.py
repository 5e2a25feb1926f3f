"""The numpy page classifier: the reference implementation of the dump-level
rules, and the fallback of :meth:`slimdump.kernel.pages.PageClassifier.classify_packed`.

:class:`NumpyWalk` does the work of :meth:`PageClassifier.classify
<slimdump.kernel.pages.PageClassifier.classify>` (the rules and their order
are described in :mod:`slimdump.kernel.pages`).  It lives in its own module
so that importing :mod:`slimdump.kernel.pages` does not import numpy: a
capture whose windows the C classifier (:mod:`slimdump.kernel._pageclass`)
handles never needs it, and ``import numpy`` costs more than classifying a
few GiB in C.

The walk is bound by memory bandwidth, so it touches each struct page as
few times as it can: the array is translated a mapping at a time (vmemmap
is mapped with 2 MiB pages), read with preads straight into a cache-sized
chunk buffer, and each chunk is scanned with a few numpy passes over the
raw records for pages some rule could fire on (a flag, an odd mapping, a
page type); only those (a few per cent of a typical dump) are copied out
and given the full rules.  Chunks are independent, and on a machine with
two CPUs a helper thread does half of them.
"""

from __future__ import annotations

import bisect
import os
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from slimdump.errors import DumpError
from slimdump.kernel.pages import (
    CACHE,
    CACHE_PRIVATE,
    CATEGORY_NAMES,
    DL_CACHE,
    DL_CACHE_PRIVATE,
    DL_FREE,
    DL_USER,
    FREE,
    HWPOISON,
    OFFLINE,
    PGMM_CACHED,
    UNACCEPTED,
    USER,
    ExclusionCounts,
    PageClasses,
    check_walk_keys,
)
from slimdump.kernel.pages import MASK64 as _MASK64
from slimdump.kernel.pages import MAX_COMPOUND_SPAN as _MAX_COMPOUND_SPAN
from slimdump.record import record
from slimdump.threadpool import usable_cpus

if TYPE_CHECKING:
    from slimdump.kernel.pages import PageClassifier, _Layout

_PGMM_CACHED = PGMM_CACHED
# largest single read of struct pages (bytes)
_READ_CHUNK = 1 << 20
# struct pages are read and scanned this many bytes at a time (cache-sized)
_CHUNK_BYTES = 1 << 20
# below this many bytes of struct pages one thread does it all
_PARALLEL_MIN_BYTES = 4 << 20


def dtype_of(layout: _Layout) -> np.dtype:
    """One struct page of ``layout`` as a numpy record (overlapping fields allowed)."""
    names, formats, offsets = ["flags"], [layout.word], [layout.off_flags]
    optional = (("mapping", layout.word, layout.off_mapping),
                ("mapcount", layout.endian + "u4", layout.off_mapcount),
                ("private", layout.word, layout.off_private),
                ("chead", layout.word, layout.off_chead),
                ("order_b", "u1", layout.order_in_tail if layout.order_source == "byte"
                 else None),
                ("dtor_b", "u1", layout.dtor_in_tail if layout.hugetlb_source == "dtor"
                 else None))
    for name, fmt, off in optional:
        if off is not None:
            names.append(name)
            formats.append(fmt)
            offsets.append(off)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                     "itemsize": layout.size})


def _paint(intervals: Sequence[tuple[int, int]], start: int, end: int) -> np.ndarray:
    mask = np.zeros(max(end - start, 0), dtype=bool)
    for a, b in intervals:
        a, b = max(a, start), min(b, end)
        if a < b:
            mask[a - start:b - start] = True
    return mask


class _Pages:
    """n consecutive struct pages exactly as read: ``raw`` holds their bytes
    (zeros where unread), ``ok`` says which were read whole (filled by
    :meth:`PageClassifier._load`; a chunk of :meth:`PageClassifier._stream`
    leaves it to the caller).  Fields are read
    from ``raw`` in place (:meth:`field`, strided views) for the few tests
    that run over every page, and gathered into native integer columns
    (:meth:`gather`) only for the pages that need the full rules."""

    #: the columns :meth:`gather` returns (absent fields as zeros)
    FIELDS = (("flags", np.uint64), ("mapping", np.uint64), ("mapcount", np.uint32),
              ("private", np.uint64), ("chead", np.uint64), ("order_b", np.uint8),
              ("dtor_b", np.uint8))
    #: what the rules read of a page itself, and of its next struct page
    CUR = ("flags", "mapping", "mapcount", "private", "chead")
    NXT = ("flags", "order_b", "dtor_b")

    def __init__(self, n: int, dtype: np.dtype, buffer: np.ndarray | None = None) -> None:
        """``buffer``: uint8 storage to use (its first n * SIZE(page) bytes;
        contents undefined: the reader writes or zeroes every byte)."""
        self.ok = np.zeros(n, dtype=bool)
        nbytes = n * dtype.itemsize
        self.raw = np.zeros(nbytes, dtype=np.uint8) if buffer is None else buffer[:nbytes]
        self.records = self.raw.view(dtype)

    def field(self, name: str) -> np.ndarray | None:
        """A strided view of one field of every struct page (the dump's byte
        order and word size), None if the layout has no such field."""
        if name not in (self.records.dtype.names or ()):
            return None
        return self.records[name]

    def low_bit(self, name: str, a: int, b: int) -> np.ndarray | None:
        """bool[b - a]: bit 0 of an integer field of struct pages a .. b - 1,
        read from the one byte that holds it (no word-sized temporaries);
        None if there is no such field."""
        fields = self.records.dtype.fields or {}
        if name not in fields:
            return None
        dt, offset = fields[name][0], fields[name][1]
        if dt.byteorder == ">" or (dt.byteorder == "=" and sys.byteorder == "big"):
            offset += dt.itemsize - 1
        size = self.records.dtype.itemsize
        if b <= a:
            return np.zeros(0, dtype=bool)
        low = np.ndarray((b - a,), dtype=np.uint8, buffer=self.raw, offset=offset + a * size,
                         strides=(size,))
        return (low & 1).view(bool)

    def gather(self, idx: np.ndarray, names: Sequence[str] | None = None
               ) -> dict[str, np.ndarray]:
        """The fields ``names`` (default: all of FIELDS) of the struct pages
        at ``idx`` as native integer columns (zero where the layout has no
        such field)."""
        have = self.records.dtype.names or ()
        out = {}
        for name, dt in self.FIELDS:
            if names is not None and name not in names:
                continue
            if name in have:
                out[name] = self.records[name][idx].astype(dt)
            else:
                out[name] = np.zeros(len(idx), dtype=dt)
        return out


@record
class _VirtualRead:
    """One virtually contiguous range of struct pages to read: the physical
    runs that hold it and, per virtual page it touches, whether some read of
    it succeeded (``ok``) and whether some byte of it could not be
    translated or read (``bad``); a page is read when ok and not bad."""

    vaddr: int
    first: int                      # vaddr // page size
    ok: np.ndarray
    bad: np.ndarray
    runs: list[list[int]]           # [byte offset from vaddr, paddr, length]


@record
class _Found:
    """What one chunk's pass over its struct pages found: the pages the
    full rules must look at (window indices) with their fields and their
    next struct page's, and the compound tails with their compound_head."""

    idx: np.ndarray
    cur: dict[str, np.ndarray]
    nxt: dict[str, np.ndarray]
    tails: np.ndarray
    chead: np.ndarray





    # -- reading struct pages -------------------------------------------------


_HELPER: ThreadPoolExecutor | None = None
_HELPER_LOCK = threading.Lock()
_SINGLE_CPU = False


def helper_thread() -> ThreadPoolExecutor | None:
    """One worker thread shared by every classifier (created on first use),
    or None when this process may run on one CPU only.  The struct page
    walk is bound by memory bandwidth (pread copies, strided numpy passes,
    both without the GIL); a second core nearly halves it."""
    global _HELPER, _SINGLE_CPU
    if _HELPER is None and not _SINGLE_CPU:
        if usable_cpus() < 2:
            _SINGLE_CPU = True
            return None
        with _HELPER_LOCK:
            if _HELPER is None:
                _HELPER = ThreadPoolExecutor(max_workers=1,
                                             thread_name_prefix="slimdump-pages")
    return _HELPER


def _forget_helper() -> None:
    """In a forked child the helper's thread does not exist: make a new one
    there if needed (work handed to the old executor would never run)."""
    global _HELPER, _HELPER_LOCK
    _HELPER = None
    _HELPER_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helper)


class NumpyWalk:
    """The numpy classification of one :class:`PageClassifier`'s dump: it
    uses the classifier's layout, struct page map and counters, and keeps
    its own chunk buffers."""

    def __init__(self, pc: PageClassifier) -> None:
        self.pc = pc
        self._record: np.dtype | None = None
        # chunk buffers of _stream, kept from one call to the next: the
        # calling thread's and the helper thread's
        self._chunk_buffers: list[np.ndarray | None] = [None, None]

    def _dtype(self) -> np.dtype:
        """The layout's struct page record, built once."""
        if self._record is None:
            self._record = dtype_of(self.pc.layout)
        return self._record

    def classify(self, dump_level: int, start: int, end: int) -> PageClasses:
        """Classify pfns [start, end) at ``dump_level`` (bit 1 ignored)."""
        pc = self.pc
        if start < 0 or end < start:
            raise ValueError(f"bad pfn range [{start}, {end})")
        n_out = end - start
        present = _paint(pc._present_iv, start, end)
        excluded = np.zeros(n_out, dtype=bool)
        category = np.zeros(n_out, dtype=np.uint8)
        counts = ExclusionCounts()
        if n_out == 0 or not pc.walk_needed(dump_level):
            return PageClasses(start, end, present, excluded, category, counts)
        L = pc.layout
        check_walk_keys(pc.mem.path, L, dump_level)

        # Look back far enough that every buddy block (aligned, order <
        # max_order) covering `start` begins inside the window.
        span = 1 << max(L.max_order - 1, 0)
        lo = start // span * span
        hi = end + 1                              # one more: the first tail of the last head
        n = end - lo
        in_segs = _paint(pc._inseg_iv, lo, hi)
        present_w = _paint(pc._present_iv, lo, hi)
        need = in_segs | present_w
        need[1:] |= in_segs[:-1]
        ok, found = self._stream(dump_level, lo, hi, need, in_segs, n)
        idx = found.idx
        code, length = self._rules(dump_level, idx + lo, found.cur, found.nxt, ok[idx + 1],
                                   np.ones(len(idx), dtype=bool))
        fired = np.flatnonzero(code)
        starts, lengths, codes = idx[fired] + lo, length[fired], code[fired]
        if len(found.tails):
            ext = self._outside_heads(dump_level, lo, found.tails + lo, found.chead)
            if ext is not None:
                starts = np.concatenate((ext[0], starts))
                lengths = np.concatenate((ext[1], lengths))
                codes = np.concatenate((ext[2], codes))

        starts, lengths, codes = _effective(starts, lengths, codes)
        category, per = _paint_blocks(starts, lengths, codes, start, end)
        readable = ok[start - lo:end - lo]
        kept = present & readable
        if not kept.all():
            category[~kept] = 0
            per = np.bincount(category, minlength=8)
        excluded = category != 0
        counts = ExclusionCounts(**{CATEGORY_NAMES[c]: int(per[c]) for c in CATEGORY_NAMES})
        counts.unreadable = int(n_out - np.count_nonzero(readable)) if present.all() \
            else int(np.count_nonzero(present & ~readable))
        return PageClasses(start, end, present, excluded, category, counts)

    def _plan_virtual(self, vaddr: int, size: int) -> _VirtualRead:
        """Translate ``size`` bytes of kernel virtual memory at ``vaddr`` into
        the physical runs to read (nothing is read yet; pages that cannot be
        translated are marked bad).  Addresses are translated a mapping at a
        time (:meth:`KernelMemory.vtop_extent`: a 2 MiB vmemmap page is one
        translation, not 512); physically contiguous bytes make one run, of
        at most _READ_CHUNK bytes."""
        mem, psize = self.pc.mem, self.pc.page_size
        first = vaddr // psize
        npages = (vaddr + size - 1) // psize - first + 1 if size else 0
        plan = _VirtualRead(vaddr, first, np.zeros(npages, dtype=bool),
                            np.zeros(npages, dtype=bool), [])
        runs = plan.runs
        pos = 0
        while pos < size:
            va = vaddr + pos
            try:
                paddr, extent = mem.vtop_extent(va)
            except DumpError:
                plan.bad[va // psize - first] = True
                pos = min((va // psize + 1) * psize - vaddr, size)
                continue
            n = min(extent, size - pos)
            while n > 0:
                if runs:
                    last = runs[-1]
                    if (last[0] + last[2] == pos and last[1] + last[2] == paddr
                            and last[2] < _READ_CHUNK):
                        take = min(n, _READ_CHUNK - last[2])
                        last[2] += take
                        pos, paddr, n = pos + take, paddr + take, n - take
                        continue
                take = min(n, _READ_CHUNK)
                runs.append([pos, paddr, take])
                pos, paddr, n = pos + take, paddr + take, n - take
        return plan

    def _read_piece(self, plan: _VirtualRead, out: memoryview, rel: int, paddr: int) -> None:
        """Read ``len(out)`` bytes at ``paddr`` (``rel`` bytes into ``plan``)
        straight into ``out``; if that fails, page by page, to keep what can
        be read (what cannot is zeroed and its page marked bad)."""
        source, psize = self.pc.mem.source, self.pc.page_size
        length = len(out)
        va = plan.vaddr + rel
        k0 = va // psize - plan.first
        k1 = (va + length - 1) // psize - plan.first + 1
        try:
            source.read_phys_into(paddr, out)
            plan.ok[k0:k1] = True
        except DumpError:
            at = 0
            for k in range(k0, k1):
                piece = min(length, (plan.first + k + 1) * psize - va) - at
                try:
                    source.read_phys_into(paddr + at, out[at:at + piece])
                    plan.ok[k] = True
                except DumpError:
                    out[at:at + piece] = bytes(piece)     # no partial data
                    plan.bad[k] = True
                at += piece

    def _runs(self, lo: int, hi: int, need: np.ndarray) -> list[tuple[int, int, int]]:
        """(index from lo, count, mem_map base) for each run of pfns in
        [lo, hi) that ``need`` marks and one memory section's map holds."""
        runs: list[tuple[int, int, int]] = []
        if not need.any():
            return runs
        ranges = self.pc._map_ranges()
        i = max(bisect.bisect_right(self.pc._range_starts, lo) - 1, 0)
        for r_start, r_end, base in ranges[i:]:
            if r_start >= hi:
                break
            a, b = max(r_start, lo), min(r_end, hi)
            if a >= b:
                continue
            sub = need[a - lo:b - lo]
            if sub.all():
                runs.append((a - lo, b - a, base))
                continue
            edges = np.flatnonzero(np.diff(np.concatenate(([False], sub, [False]))
                                           .astype(np.int8)))
            for run_a, run_b in zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True):
                runs.append((a - lo + run_a, run_b - run_a, base))
        return runs

    def _plans(self, lo: int, runs: Sequence[tuple[int, int, int]]) -> list[_VirtualRead]:
        """One translated :class:`_VirtualRead` per run of :meth:`_runs`."""
        size = self.pc.layout.size
        plans = []
        for index, count, base in runs:
            plans.append(self._plan_virtual((base + (lo + index) * size) & _MASK64,
                                            count * size))
            self.pc.struct_page_bytes += count * size
        return plans

    def _records_ok(self, ok: np.ndarray, runs: Sequence[tuple[int, int, int]],
                    plans: Sequence[_VirtualRead]) -> None:
        """Set ``ok`` (per pfn of the window) for the struct pages of
        ``runs`` whose every byte was read."""
        size, psize = self.pc.layout.size, self.pc.page_size
        for (index, count, _base), plan in zip(runs, plans, strict=True):
            vok = plan.ok & ~plan.bad
            if vok.all():
                ok[index:index + count] = True
                continue
            rel = plan.vaddr % psize + np.arange(count, dtype=np.int64) * size
            ok[index:index + count] = vok[rel // psize] & vok[(rel + size - 1) // psize]

    def _load(self, lo: int, hi: int, need: np.ndarray) -> _Pages:
        """struct pages of the pfns in [lo, hi) that ``need`` marks, all in
        memory (the others read as zeros, not ok): for a few pages."""
        size = self.pc.layout.size
        pages = _Pages(hi - lo, self._dtype())
        runs = self._runs(lo, hi, need)
        plans = self._plans(lo, runs)
        view = memoryview(pages.raw)
        for (index, _count, _base), plan in zip(runs, plans, strict=True):
            for rel, paddr, length in plan.runs:
                at = index * size + rel
                self._read_piece(plan, view[at:at + length], rel, paddr)
        self._records_ok(pages.ok, runs, plans)
        return pages

    def _stream(self, dump_level: int, lo: int, hi: int, need: np.ndarray,
                in_segs: np.ndarray, n: int) -> tuple[np.ndarray, _Found]:
        """Read the struct pages of [lo, hi) that ``need`` marks and find, in
        the first ``n``, the pages some rule of ``dump_level`` might fire on
        and the compound tails; returns (ok per pfn of the window, what was
        found among the readable pages, with fields).

        The window's tens of MiB of struct pages are never in memory at once:
        they go through a chunk buffer of _CHUNK_BYTES, each chunk read and
        scanned while it is in the CPU cache, and only the few pages found
        are kept.  Chunks end on multiples of _PGMM_CACHED pfns, where no
        head looks at its next struct page, so chunks are independent: with
        a helper thread, half of them are done there (pread and numpy work
        without the GIL)."""
        size = self.pc.layout.size
        runs = self._runs(lo, hi, need)
        plans = self._plans(lo, runs)
        chunk = max(_PGMM_CACHED, _CHUNK_BYTES // size // _PGMM_CACHED * _PGMM_CACHED)
        first_chunk = lo // chunk
        # every physical read, cut at chunk boundaries: chunk number ->
        # [(offset in the chunk buffer, paddr, length, plan, offset in plan)]
        pieces: dict[int, list[tuple[int, int, int, _VirtualRead, int]]] = {}
        total = 0
        for (index, _count, _base), plan in zip(runs, plans, strict=True):
            run_at = index * size                   # the plan's first byte in the window
            for rel, paddr, length in plan.runs:
                total += length
                at, end = run_at + rel, run_at + rel + length
                while at < end:
                    c = (lo + at // size) // chunk - first_chunk
                    c0 = max((first_chunk + c) * chunk - lo, 0)
                    piece_end = min(((first_chunk + c + 1) * chunk - lo) * size, end)
                    skip = at - run_at - rel        # bytes of this run before the piece
                    pieces.setdefault(c, []).append(
                        (at - c0 * size, paddr + skip, piece_end - at, plan, rel + skip))
                    at = piece_end
        jobs = []
        for c in sorted(pieces):
            c0 = max((first_chunk + c) * chunk - lo, 0)
            c1 = min((first_chunk + c + 1) * chunk - lo, hi - lo)
            jobs.append((c0, c1, pieces[c]))

        results: list[_Found | None] = [None] * len(jobs)

        def work(role: int, which: range) -> None:
            for j in which:
                c0, c1, job = jobs[j]
                results[j] = self._chunk(dump_level, role, c0, c1, job, in_segs, n)

        helper = None
        if (self.pc.parallel and len(jobs) > 1 and total >= _PARALLEL_MIN_BYTES
                and getattr(self.pc.mem.source, "parallel_reads", False)):
            helper = helper_thread()
        if helper is None:
            work(0, range(len(jobs)))
        else:
            other = helper.submit(work, 1, range(1, len(jobs), 2))
            try:
                work(0, range(0, len(jobs), 2))
            finally:
                other.result()

        ok = np.zeros(hi - lo, dtype=bool)
        self._records_ok(ok, runs, plans)
        found = [r for r in results if r is not None]
        if not found:
            empty = np.zeros(0, dtype=np.int64)
            none = _Pages(0, self._dtype())
            return ok, _Found(empty, none.gather(empty, _Pages.CUR),
                              none.gather(empty, _Pages.NXT), empty,
                              np.zeros(0, dtype=np.uint64))

        def joined(arrays: list[np.ndarray], keep: np.ndarray | None) -> np.ndarray:
            out = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            return out if keep is None else out[keep]

        # only pages read whole count (a chunk could not know which are)
        idx = joined([f.idx for f in found], None)
        tails = joined([f.tails for f in found], None)
        keep: np.ndarray | None = ok[idx]
        keep_t: np.ndarray | None = ok[tails]
        keep = None if keep.all() else keep
        keep_t = None if keep_t.all() else keep_t
        return ok, _Found(joined([idx], keep),
                          {k: joined([f.cur[k] for f in found], keep) for k in _Pages.CUR},
                          {k: joined([f.nxt[k] for f in found], keep) for k in _Pages.NXT},
                          joined([tails], keep_t),
                          joined([f.chead for f in found], keep_t))

    def _chunk(self, dump_level: int, role: int, c0: int, c1: int,
               job: Sequence[tuple[int, int, int, _VirtualRead, int]],
               in_segs: np.ndarray, n: int) -> _Found | None:
        """One chunk of :meth:`_stream`: window pfns [c0, c1), read into the
        chunk buffer of ``role`` (0: the calling thread, 1: the helper)."""
        dtype = self._dtype()
        nbytes = (c1 - c0) * dtype.itemsize
        buffer = self._chunk_buffers[role]
        if buffer is None or len(buffer) < nbytes:
            buffer = self._chunk_buffers[role] = np.empty(
                max(nbytes, _CHUNK_BYTES + dtype.itemsize), dtype=np.uint8)
        pages = _Pages(c1 - c0, dtype, buffer)
        if sum(piece[2] for piece in job) < nbytes:
            pages.raw[:] = 0                    # what is not read reads as zeros
        view = memoryview(pages.raw)
        for at, paddr, length, plan, rel in job:
            self._read_piece(plan, view[at:at + length], rel, paddr)
        m = min(c1, n) - c0
        if m <= 0:
            return None
        idx = np.flatnonzero(self._candidates(dump_level, pages, 0, m) & in_segs[c0:c0 + m])
        tail = pages.low_bit("chead", 0, m)
        tails = np.zeros(0, dtype=np.int64) if tail is None else np.flatnonzero(tail)
        if len(idx) == 0 and len(tails) == 0:
            return None
        # the next struct page of the chunk's last pfn (pfn % 512 == 511, or
        # the window's extra last pfn) is never looked at: any row will do
        nxt = np.minimum(idx + 1, c1 - c0 - 1)
        chead = pages.field("chead")
        return _Found(idx + c0, pages.gather(idx, _Pages.CUR), pages.gather(nxt, _Pages.NXT),
                      tails + c0,
                      np.zeros(0, dtype=np.uint64) if chead is None
                      else chead[tails].astype(np.uint64))

    def _base_of(self, pfns: np.ndarray) -> np.ndarray:
        """mem_map base per pfn (0 where no section holds it), as uint64."""
        ranges = self.pc._map_ranges()
        starts = np.array(self.pc._range_starts, dtype=np.int64)
        ends = np.array([r[1] for r in ranges], dtype=np.int64)
        bases = np.array([r[2] for r in ranges], dtype=np.uint64)
        idx = np.searchsorted(starts, pfns, side="right") - 1
        valid = (idx >= 0) & (pfns < ends[np.maximum(idx, 0)])
        return np.where(valid, bases[np.maximum(idx, 0)], np.uint64(0))

    # -- rules ----------------------------------------------------------------

    def _rules(self, dump_level: int, pfn: np.ndarray, cur: dict[str, np.ndarray],
               nxt: dict[str, np.ndarray], next_ok: np.ndarray,
               classified: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Category code (0 = kept) and block length per page, for pages whose
        own fields are ``cur`` and whose next struct page (the first tail of a
        compound head) is ``nxt``."""
        L = self.pc.layout
        flags = cur["flags"]
        mapcount = cur["mapcount"]
        n = len(pfn)

        def bit(name: str, word: np.ndarray = flags) -> np.ndarray:
            b = L.pg.get(name)
            if b is None:
                return np.zeros(n, dtype=bool)
            return (word & np.uint64(1 << b)) != 0

        def typed(name: str) -> np.ndarray:
            value = L.mapcount_values.get(name)
            if value is None or L.off_mapcount is None:
                return np.zeros(n, dtype=bool)
            return mapcount == np.uint32(value)

        tail = ((cur["chead"] & np.uint64(1)) != 0) if L.off_chead is not None \
            else np.zeros(n, dtype=bool)
        head = ((flags & np.uint64(L.head_mask)) != 0) if L.head_mask \
            else np.zeros(n, dtype=bool)
        # the first tail is looked at only when it is in the same 512-pfn block
        looked = head & next_ok & (pfn % _PGMM_CACHED != _PGMM_CACHED - 1)

        order = np.zeros(n, dtype=np.int64)
        if L.order_source == "byte":
            order = np.where(looked, nxt["order_b"], 0).astype(np.int64)
        elif L.order_source == "flags1":
            order = np.where(looked, nxt["flags"] & np.uint64(0xFF), 0).astype(np.int64)
        # makedumpfile: orders >= 64 or heads not aligned to their order mean order 0
        # (63 is refused too: it cannot be a real block and would overflow int64)
        bad = (order >= 63) | ((pfn & ((np.int64(1) << np.minimum(order, 62)) - 1)) != 0)
        order[bad] = 0

        if L.hugetlb_source == "dtor":
            hugetlb = looked & (nxt["dtor_b"] == (L.hugetlb_value or 0) & 0xFF)
        elif L.hugetlb_source == "tailflag":
            hugetlb = looked & bit("PG_hugetlb", nxt["flags"])
        elif L.hugetlb_source == "mapcount":
            hugetlb = looked & typed("PAGE_HUGETLB_MAPCOUNT_VALUE")
        else:
            hugetlb = np.zeros(n, dtype=bool)

        slab = typed("PAGE_SLAB_MAPCOUNT_VALUE") if "PAGE_SLAB_MAPCOUNT_VALUE" in \
            L.mapcount_values else bit("PG_slab")
        anon = ((cur["mapping"] & np.uint64(1)) != 0) & ~slab
        cache = bit("PG_lru") | (bit("PG_swapcache")
                                 & (bit("PG_swapbacked") if "PG_swapbacked" in L.pg else True))
        private_flag = bit("PG_private")

        free_order = cur["private"].astype(np.int64)   # unsigned long wraps to negative: bad
        if dump_level & DL_FREE:
            if L.buddy_test == "flag":
                buddy = bit("PG_buddy")
            else:
                buddy = ~slab & typed("PAGE_BUDDY_MAPCOUNT_VALUE")
            free = buddy & (free_order >= 0) & (free_order < L.max_order)
            unaccepted = typed("PAGE_UNACCEPTED_MAPCOUNT_VALUE")
        else:
            free = unaccepted = np.zeros(n, dtype=bool)
        none = np.zeros(n, dtype=bool)
        cache_np = (cache & ~private_flag & ~anon) if dump_level & DL_CACHE else none
        cache_any = (cache & ~anon) if dump_level & DL_CACHE_PRIVATE else none
        user = (anon | hugetlb) if dump_level & DL_USER else none
        hwpoison = bit("PG_hwpoison")
        offline = ~slab & typed("PAGE_OFFLINE_MAPCOUNT_VALUE")

        code = np.select(
            [~classified | tail, free, unaccepted, cache_np, cache_any & private_flag,
             cache_any, user, hwpoison, offline],
            [0, FREE, UNACCEPTED, CACHE, CACHE_PRIVATE, CACHE, USER, HWPOISON, OFFLINE],
            0).astype(np.uint8)
        length = np.left_shift(np.int64(1), order)
        length = np.where(code == FREE, np.left_shift(np.int64(1), np.clip(free_order, 0, 62)),
                          length)
        length = np.where(code == UNACCEPTED, np.int64(1) << (L.max_order - 1), length)
        return code, length

    def _candidates(self, dump_level: int, pages: _Pages, a: int, b: int) -> np.ndarray:
        """bool[b - a]: the pages a .. b - 1 of ``pages`` that some rule of
        ``dump_level`` might fire on, tested on the raw fields in place: a
        flag a rule needs (PG_lru, PG_swapcache, PG_hwpoison, PG_buddy, the
        head flag for hugetlb), an odd page.mapping (anonymous), or a page
        type a rule compares _mapcount with.  A superset of what
        :meth:`_rules` excludes, so that the full rules, which cost dozens
        of passes, run only on these pages (usually a few per cent)."""
        L = self.pc.layout
        bits = 0
        wanted = ["PG_hwpoison"]
        if dump_level & (DL_CACHE | DL_CACHE_PRIVATE):
            wanted += ["PG_lru", "PG_swapcache"]
        if dump_level & DL_FREE and L.buddy_test == "flag":
            wanted.append("PG_buddy")
        for name in wanted:
            if name in L.pg:
                bits |= 1 << L.pg[name]
        if dump_level & DL_USER and L.hugetlb_source is not None and L.head_mask:
            bits |= L.head_mask
        values = []
        if L.off_mapcount is not None:
            names = ["PAGE_OFFLINE_MAPCOUNT_VALUE"]
            if dump_level & DL_FREE:
                names.append("PAGE_UNACCEPTED_MAPCOUNT_VALUE")
                if L.buddy_test == "mapcount":
                    names.append("PAGE_BUDDY_MAPCOUNT_VALUE")
            values = [L.mapcount_values[k] for k in names if k in L.mapcount_values]

        cand = np.zeros(b - a, dtype=bool)
        flags = pages.field("flags")
        if bits and flags is not None:
            cand |= (flags[a:b] & np.uint64(bits)) != 0
        if dump_level & DL_USER:
            anon = pages.low_bit("mapping", a, b)
            if anon is not None:
                cand |= anon
        mapcount = pages.field("mapcount")
        if values and mapcount is not None:
            mc = mapcount[a:b] if len(values) == 1 else np.ascontiguousarray(mapcount[a:b])
            for value in values:
                cand |= mc == np.uint32(value)
        return cand

    def _outside_heads(self, dump_level: int, lo: int, tail_pfns: np.ndarray,
                       chead: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Blocks of compound pages whose head lies before the window (only
        compound pages larger than the look-back, e.g. 1 GiB hugetlb pages):
        found through the compound_head pointers ``chead`` of the readable
        tail pages ``tail_pfns``, classified like any head, returned as
        (starts, lengths, codes)."""
        L = self.pc.layout
        base = self._base_of(tail_pfns)
        addr = chead - np.uint64(1)
        delta = (addr - base).astype(np.uint64)       # wraps like the kernel's pointer math
        aligned = (delta % np.uint64(L.size)) == 0
        head_pfn = (delta // np.uint64(L.size)).astype(np.int64)
        plausible = (base != 0) & aligned & (head_pfn >= 0) & (head_pfn < lo) \
            & (tail_pfns - head_pfn < _MAX_COMPOUND_SPAN)
        if not plausible.any():
            return None
        # distinct heads, sorted (np.sort, not np.unique: that imports numpy.ma,
        # about 10 ms, on first use)
        heads = np.sort(head_pfn[plausible])
        heads = heads[np.concatenate(([True], heads[1:] != heads[:-1]))]
        out_s, out_l, out_c = [], [], []
        head_at, tail_at = np.array([0]), np.array([1])
        for h in heads.tolist():
            pages = self._load(h, h + 2, np.ones(2, dtype=bool))
            classified = pages.ok[:1] & _paint(self.pc._inseg_iv, h, h + 1)
            code, length = self._rules(dump_level, np.array([h], dtype=np.int64),
                                       pages.gather(head_at), pages.gather(tail_at),
                                       pages.ok[1:2], classified)
            if code[0]:
                out_s.append(h)
                out_l.append(int(length[0]))
                out_c.append(int(code[0]))
        if not out_s:
            return None
        return (np.array(out_s, dtype=np.int64), np.array(out_l, dtype=np.int64),
                np.array(out_c, dtype=np.uint8))

    # -- conveniences ---------------------------------------------------------


def _effective(starts: np.ndarray, lengths: np.ndarray, codes: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exclusions makedumpfile actually performs.

    It walks pfns in order and, after excluding a block, skips to the block's
    end, so a candidate inside an earlier block is never looked at.  With
    kernel-consistent data blocks nest (they are aligned powers of two), and
    "not inside any earlier candidate" is the answer, found vectorised; if a
    skipped candidate would reach past the running end (inconsistent data),
    the walk is replayed over the candidates in order.
    """
    if len(starts) == 0:
        return starts, lengths, codes
    order = np.argsort(starts, kind="stable")
    starts, lengths, codes = starts[order], lengths[order], codes[order]
    ends = starts + lengths
    reach = np.maximum.accumulate(ends)
    before = np.concatenate(([np.iinfo(np.int64).min], reach[:-1]))
    covered = before > starts
    if not np.any(covered & (ends > before)):
        keep = ~covered
        return starts[keep], lengths[keep], codes[keep]
    keep_list = []
    until = np.iinfo(np.int64).min
    for i, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        if s >= until:
            keep_list.append(i)
            until = e
    keep_idx = np.array(keep_list, dtype=np.int64)
    return starts[keep_idx], lengths[keep_idx], codes[keep_idx]


def _paint_blocks(starts: np.ndarray, lengths: np.ndarray, codes: np.ndarray,
                  start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8[end - start]: each block's code over the pfns of [start, end)
    it covers, 0 elsewhere; how many pfns carry each code, by code).

    The blocks :func:`_effective` keeps are sorted and disjoint, so the
    painting is one ``np.repeat`` of alternating gaps and blocks and the
    counts come from the block lengths (no per-pfn arithmetic); blocks that
    overlap, which :func:`_effective` never returns, have their codes summed
    through a difference array."""
    ends = starts + lengths
    keep = (ends > start) & (starts < end)
    a = np.maximum(starts[keep], start) - start
    b = np.minimum(ends[keep], end) - start
    c = codes[keep].astype(np.uint8)
    n = end - start
    if len(a) == 0:
        per = np.zeros(8, dtype=np.int64)
        per[0] = n
        return np.zeros(n, dtype=np.uint8), per
    if np.all(a[1:] >= b[:-1]):
        # gap0, block0, gap1, block1, ..., last gap
        edges = np.empty(2 * len(a) + 2, dtype=np.int64)
        edges[0] = 0
        edges[1:-1:2] = a
        edges[2:-1:2] = b
        edges[-1] = n
        values = np.zeros(2 * len(a) + 1, dtype=np.uint8)
        values[1::2] = c
        runs = np.diff(edges)
        per = np.bincount(c, weights=b - a, minlength=8).astype(np.int64)
        per[0] = n - int(per.sum())
        return np.repeat(values, runs), per
    paint = np.zeros(n + 1, dtype=np.int64)
    np.add.at(paint, a, c.astype(np.int64))
    np.add.at(paint, b, -c.astype(np.int64))
    category = np.cumsum(paint[:-1]).astype(np.uint8)
    return category, np.bincount(category, minlength=8)
