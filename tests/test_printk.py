"""The kernel log buffer in its three printk formats, on synthetic cores.

Each test lays out a log buffer by hand (the lockless printk_ringbuffer of
5.10+, struct printk_log records of 3.5-5.9 under both of their VMCOREINFO
names, the plain log_buf of older kernels) in an x86_64 ELF core built by
:mod:`tests.synthcore`, and checks slimdump's reading and rendering against
expected text written from the format rules (``kdump-formats.md`` 6.2-6.5).

The cores are complete enough for the reference tools too: besides
VMCOREINFO they hold a page table mapping the kernel image (makedumpfile
translates every address through it), ``init_uts_ns`` (makedumpfile compares
its release with OSRELEASE) and FLATMEM ``mem_map`` keys (makedumpfile wants
a memory model even for ``--dump-dmesg``).  Where Debian's makedumpfile
1.7.2 and kexec-tools' vmcore-dmesg are installed, their output is the
second oracle, byte for byte.

All buffers live in the kernel image mapping: with NUMBER(phys_base)=0,
virtual ``0xffffffff81000000 + x`` is physical ``0x1000000 + x``.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from slimdump.errors import DumpError, NotInDump
from slimdump.kernel.memory import KernelMemory, KernelViewError
from slimdump.kernel.printk import (
    KernelLog,
    LogRecord,
    read_log,
    render_makedumpfile,
    render_vmcore_dmesg,
)
from slimdump.kernel.vmcoreinfo import VmcoreInfo
from slimdump.sources import open_dump
from tests import synthcore as sc
from tests.conftest import tool

KTEXT = 0xFFFFFFFF81000000          # __START_KERNEL_map + 16 MiB
KPHYS = 0x1000000                   # ... is physical 16 MiB with phys_base 0
PGD_VIRT, PGD_PHYS = 0xFFFFFFFF82000000, 0x2000000
EM_AARCH64 = 183

# Kernel image layout (offsets from KTEXT).
O_PRB = 0x000          # struct printk_ringbuffer *prb
O_CLEAR_SEQ = 0x080
O_MEM_MAP = 0x090      # FLATMEM mem_map pointer (makedumpfile needs a memory model)
O_RB = 0x100           # printk_rb_static
O_LOG_BUF = 0x300      # char *log_buf
O_LOG_BUF_LEN = 0x308  # int log_buf_len
O_FIRST = 0x310        # u32 log_first_idx / unsigned log_end
O_NEXT = 0x314         # u32 log_next_idx
O_CLEAR = 0x318        # u32 clear_idx / logged_chars
O_UTS = 0x400          # init_uts_ns (struct new_utsname at offset 0)
O_DESCS = 0x1000
O_INFOS = 0x2000
O_DATA = 0x4000        # data ring / log_buf
IMAGE_SIZE = 0x8000

ID_MASK = (1 << 62) - 1
COMMITTED, FINALIZED, REUSABLE, RESERVED = 1, 2, 3, 0
FAILED_LPOS = 0x1

# VMCOREINFO of a 6.1 x86_64 kernel's printk_ringbuffer (values as exported).
LOCKLESS_KEYS = {
    "SIZE(printk_ringbuffer)": "88", "OFFSET(printk_ringbuffer.desc_ring)": "0",
    "OFFSET(printk_ringbuffer.text_data_ring)": "48", "OFFSET(printk_ringbuffer.fail)": "80",
    "SIZE(prb_desc_ring)": "48", "OFFSET(prb_desc_ring.count_bits)": "0",
    "OFFSET(prb_desc_ring.descs)": "8", "OFFSET(prb_desc_ring.infos)": "16",
    "OFFSET(prb_desc_ring.head_id)": "24", "OFFSET(prb_desc_ring.tail_id)": "32",
    "SIZE(prb_desc)": "24", "OFFSET(prb_desc.state_var)": "0",
    "OFFSET(prb_desc.text_blk_lpos)": "8", "SIZE(prb_data_blk_lpos)": "16",
    "OFFSET(prb_data_blk_lpos.begin)": "0", "OFFSET(prb_data_blk_lpos.next)": "8",
    "SIZE(printk_info)": "88", "OFFSET(printk_info.seq)": "0",
    "OFFSET(printk_info.ts_nsec)": "8", "OFFSET(printk_info.text_len)": "16",
    "OFFSET(printk_info.caller_id)": "20", "OFFSET(printk_info.dev_info)": "24",
    "SIZE(dev_printk_info)": "64", "OFFSET(dev_printk_info.subsystem)": "0",
    "LENGTH(printk_info_subsystem)": "16", "OFFSET(dev_printk_info.device)": "16",
    "LENGTH(printk_info_device)": "48", "SIZE(prb_data_ring)": "32",
    "OFFSET(prb_data_ring.size_bits)": "0", "OFFSET(prb_data_ring.data)": "8",
    "OFFSET(prb_data_ring.head_lpos)": "16", "OFFSET(prb_data_ring.tail_lpos)": "24",
    "SIZE(atomic_long_t)": "8", "OFFSET(atomic_long_t.counter)": "0",
    "SIZE(latched_seq)": "24", "OFFSET(latched_seq.val)": "8",
}  # fmt: skip


# --------------------------------------------------------------------------
# Core building


def _page_tables() -> sc.Load:
    """4-level tables at PGD_PHYS mapping KTEXT's 2 MiB to KPHYS (PSE)."""
    tables = bytearray(3 * 4096)
    struct.pack_into("<Q", tables, ((KTEXT >> 39) & 511) * 8, (PGD_PHYS + 0x1000) | 0x63)
    struct.pack_into("<Q", tables, 0x1000 + ((KTEXT >> 30) & 511) * 8, (PGD_PHYS + 0x2000) | 0x63)
    struct.pack_into("<Q", tables, 0x2000 + ((KTEXT >> 21) & 511) * 8, KPHYS | 0xE3)
    return sc.Load(paddr=PGD_PHYS, vaddr=PGD_VIRT, data=bytes(tables))


def sym(offset: int) -> str:
    """A SYMBOL() value (hex without 0x) for an image offset."""
    return f"{KTEXT + offset:x}"


def make_core(image: bytearray, keys: dict[str, str], release: str) -> bytes:
    """An x86_64 core whose kernel image holds ``image`` and whose VMCOREINFO
    has ``keys`` plus what translation and makedumpfile's start-up need."""
    image = bytearray(image)
    struct.pack_into("<Q", image, O_MEM_MAP, 0xFFFFEA0000000000)
    fields = [b"Linux", b"synthetic", release.encode(), b"#1 SMP", b"x86_64", b"(none)"]
    for i, value in enumerate(fields):                    # struct new_utsname: 6 x char[65]
        image[O_UTS + 65 * i:O_UTS + 65 * i + len(value)] = value
    info = {
        "OSRELEASE": release, "PAGESIZE": "4096",
        "SYMBOL(init_uts_ns)": sym(O_UTS), "OFFSET(uts_namespace.name)": "0",
        "SYMBOL(_stext)": sym(0), "SYMBOL(mem_map)": sym(O_MEM_MAP),
        "SIZE(page)": "64", "OFFSET(page.flags)": "0", "OFFSET(page._refcount)": "52",
        "OFFSET(page.mapping)": "24", "OFFSET(page.lru)": "8",
        "OFFSET(page._mapcount)": "48", "OFFSET(page.private)": "40",
        **keys,
        "NUMBER(phys_base)": "0", "SYMBOL(init_top_pgt)": f"{PGD_VIRT:x}",
        "NUMBER(pgtable_l5_enabled)": "0", "NUMBER(KERNEL_IMAGE_SIZE)": "1073741824",
        "KERNELOFFSET": "0", "CRASHTIME": "1795664350",
    }  # fmt: skip
    notes = [sc.Note(b"CORE", sc.NT_PRSTATUS, sc.prstatus_x86_64(0, {"rip": KTEXT})),
             sc.Note(b"VMCOREINFO", 0, sc.vmcoreinfo(info))]
    return sc.build_core(notes, [sc.Load(paddr=KPHYS, vaddr=KTEXT, data=bytes(image)),
                                 _page_tables()])


@dataclass
class Desc:
    """One lockless record: its descriptor (id, state, text block lpos) and
    printk_info (seq, ts_nsec, text_len, caller_id, level...)."""

    id: int
    state: int
    begin: int
    next: int
    seq: int
    ts: int
    text_len: int
    caller: int = 0
    level: int = 6
    facility: int = 0
    flags: int = 2                     # LOG_NEWLINE


def lockless_image(descs: list[Desc], data: bytes, *, count_bits: int, size_bits: int,
                   tail: int, head: int) -> bytearray:
    """printk_rb_static with ``1 << count_bits`` descriptors and a data ring
    of ``1 << size_bits`` bytes (``data``), reached through the prb pointer."""
    image = bytearray(IMAGE_SIZE)
    count = 1 << count_bits
    assert len(data) == 1 << size_bits and count * 88 <= O_DATA - O_INFOS
    struct.pack_into("<Q", image, O_PRB, KTEXT + O_RB)
    struct.pack_into("<I4xQQQQ", image, O_RB, count_bits, KTEXT + O_DESCS, KTEXT + O_INFOS,
                     head, tail)
    struct.pack_into("<I4xQQQ", image, O_RB + 48, size_bits, KTEXT + O_DATA, 0, 0)
    for d in descs:
        slot = d.id % count
        struct.pack_into("<QQQ", image, O_DESCS + 24 * slot, (d.state << 62) | d.id,
                         d.begin, d.next)
        struct.pack_into("<QQHBBI", image, O_INFOS + 88 * slot, d.seq, d.ts, d.text_len,
                         d.facility, (d.level << 5) | d.flags, d.caller)
    image[O_DATA:O_DATA + len(data)] = data
    return image


def lockless_core(image: bytearray, release: str = "6.1.0-synthetic",
                  keys: dict[str, str] | None = None) -> bytes:
    info = {"SYMBOL(prb)": sym(O_PRB), "SYMBOL(printk_rb_static)": sym(O_RB),
            "SYMBOL(clear_seq)": sym(O_CLEAR_SEQ), **LOCKLESS_KEYS}
    info.update(keys or {})
    return make_core(image, {k: v for k, v in info.items() if v}, release)


def block(ring: bytearray, lpos: int, desc_id: int, text: bytes) -> int:
    """Write a data block (descriptor id, then text) at ``lpos``; the next
    lpos (blocks are unsigned-long aligned)."""
    off = lpos % len(ring)
    struct.pack_into("<Q", ring, off, desc_id)
    ring[off + 8:off + 8 + len(text)] = text
    return lpos + 8 + (len(text) + 7) // 8 * 8


def record_bytes(ts: int, text: bytes, dict_: bytes = b"", *, facility: int = 0, level: int = 6,
                 flags: int = 2, caller: int | None = None) -> bytes:
    """One struct printk_log record: 16-byte header (20 with caller_id),
    text, dictionary, padded to 4 (x86's LOG_ALIGN)."""
    header = 16 if caller is None else 20
    size = (header + len(text) + len(dict_) + 3) // 4 * 4
    rec = bytearray(size)
    struct.pack_into("<QHHHBB", rec, 0, ts, size, len(text), len(dict_), facility,
                     (level << 5) | flags)
    if caller is not None:
        struct.pack_into("<I", rec, 16, caller)
    rec[header:header + len(text) + len(dict_)] = text + dict_
    return bytes(rec)


def structured_core(records_before: list[bytes], records_after: list[bytes], *,
                    buf_len: int = 512, names: str = "printk_log", caller: bool = False,
                    release: str = "4.19.0-synthetic", marker: bytes = b"",
                    patch: Callable[[bytearray, int, int], None] | None = None) -> bytes:
    """A log_buf of ``buf_len`` bytes: ``records_before`` end just before a
    wrap marker near the end of the buffer (log_first_idx points at the
    first), ``records_after`` start at index 0 (log_next_idx follows the
    last).  ``names`` is "printk_log" (3.11+) or "log" (3.5-3.10)."""
    image = bytearray(IMAGE_SIZE)
    before = b"".join(records_before)
    after = b"".join(records_after)
    header = 20 if caller else 16
    first = buf_len - len(before) - header - 8
    assert first >= len(after)
    image[O_DATA + first:O_DATA + first + len(before)] = before
    wrap = O_DATA + first + len(before)
    image[wrap:wrap + len(marker)] = marker         # zeros: the kernel's wrap marker
    image[O_DATA:O_DATA + len(after)] = after
    struct.pack_into("<QI", image, O_LOG_BUF, KTEXT + O_DATA, buf_len)
    struct.pack_into("<III", image, O_FIRST, first, len(after), first)
    if patch:
        patch(image, first, len(after))
    keys = {"SYMBOL(log_buf)": sym(O_LOG_BUF), "SYMBOL(log_buf_len)": sym(O_LOG_BUF_LEN),
            "SYMBOL(log_first_idx)": sym(O_FIRST), "SYMBOL(clear_idx)": sym(O_CLEAR),
            "SYMBOL(log_next_idx)": sym(O_NEXT), f"SIZE({names})": str(header),
            f"OFFSET({names}.ts_nsec)": "0", f"OFFSET({names}.len)": "8",
            f"OFFSET({names}.text_len)": "10", f"OFFSET({names}.dict_len)": "12"}
    if caller:
        keys[f"OFFSET({names}.caller_id)"] = "16"
    return make_core(image, keys, release)


def plain_core(buf: bytes, log_end: int, logged_chars: int) -> bytes:
    """A pre-3.5 log_buf holding ``buf`` with write index ``log_end``."""
    image = bytearray(IMAGE_SIZE)
    image[O_DATA:O_DATA + len(buf)] = buf
    struct.pack_into("<QI", image, O_LOG_BUF, KTEXT + O_DATA, len(buf))
    struct.pack_into("<I", image, O_FIRST, log_end)
    struct.pack_into("<I", image, O_CLEAR, logged_chars)
    keys = {"SYMBOL(log_buf)": sym(O_LOG_BUF), "SYMBOL(log_buf_len)": sym(O_LOG_BUF_LEN),
            "SYMBOL(log_end)": sym(O_FIRST), "SYMBOL(logged_chars)": sym(O_CLEAR)}
    return make_core(image, keys, "2.6.32-synthetic")


# --------------------------------------------------------------------------
# Reading with slimdump and with the reference tools


def write(tmp_path: Path, core: bytes, name: str = "vmcore") -> Path:
    path = tmp_path / name
    path.write_bytes(core)
    return path


def slim_log(path: Path) -> KernelLog:
    with open_dump(path) as src:
        info = VmcoreInfo.from_notes(src.notes)
        assert info is not None
        return read_log(KernelMemory(src, info))


def makedumpfile_dmesg(path: Path) -> bytes:
    out = path.with_suffix(".mdf")
    out.unlink(missing_ok=True)
    res = subprocess.run([tool("makedumpfile"), "--dump-dmesg", str(path), str(out)],
                         capture_output=True, check=False)
    assert res.returncode == 0, res.stderr.decode(errors="replace") + res.stdout.decode()
    return out.read_bytes()


def vmcore_dmesg(path: Path) -> bytes:
    res = subprocess.run([tool("vmcore-dmesg"), str(path)], capture_output=True, check=False)
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    return res.stdout


# --------------------------------------------------------------------------
# Lockless printk_ringbuffer (5.10+)

# Eight ids running across the 62-bit id wrap: slots 5, 6, 7, 0, 1, 2, 3, 4.
IDS = [(ID_MASK - 2 + k) & ID_MASK for k in range(8)]
WRAPS = 5 * 512                                  # lpos values of the 6th lap of the ring


def lockless_sample() -> bytes:
    """Finalized and committed records, a continuation line, a data-less
    record, a stale (unexpected id), a recycled and a reserved descriptor,
    and a data block that wrapped to the ring's start (its text_len longer
    than the block)."""
    ring = bytearray(512)
    lp = WRAPS + 64
    descs = []
    text = b"Linux version 6.1.0-synthetic"
    nxt = block(ring, lp, IDS[0], text)
    descs.append(Desc(IDS[0], FINALIZED, lp, nxt, 100, 0, len(text), caller=0, level=5))
    lp = nxt
    text = b"CPU0: cont\n part two \xc3\xa9 \x1b[0m\ttab"
    nxt = block(ring, lp, IDS[1], text)
    descs.append(Desc(IDS[1], FINALIZED, lp, nxt, 101, 1_234_567_890, len(text),
                      caller=0x80000001))
    lp = nxt
    descs.append(Desc(IDS[2], FINALIZED, FAILED_LPOS, FAILED_LPOS, 102, 2_000_000_000, 12))
    text = b"stale: the slot was reused"
    nxt = block(ring, lp, IDS[3] + 8, text)
    descs.append(Desc(IDS[3] + 8, FINALIZED, lp, nxt, 111, 3_000_000_000, len(text)))
    lp = nxt
    text = b"recycled"
    nxt = block(ring, lp, IDS[4], text)
    descs.append(Desc(IDS[4], REUSABLE, lp, nxt, 104, 3_500_000_000, len(text)))
    lp = nxt
    # A block that did not fit at the end of the ring: its id is written at
    # begin (offset 496) and again at offset 0, where the data follows.
    struct.pack_into("<Q", ring, 496, IDS[5])
    text = b"wrapped block, truncated" + b"NOTME!"
    block(ring, WRAPS + 512, IDS[5], text)
    descs.append(Desc(IDS[5], FINALIZED, WRAPS + 496, WRAPS + 512 + 32, 105, 4_000_000_999,
                      len(text)))
    text = b"reserved, being written"
    nxt = block(ring, lp, IDS[6], text)
    descs.append(Desc(IDS[6], RESERVED, lp, nxt, 106, 5_000_000_000, len(text)))
    lp = nxt
    text = b"last, still committed"
    nxt = block(ring, lp, IDS[7], text)
    descs.append(Desc(IDS[7], COMMITTED, lp, nxt, 107, 123456_000_001_000, len(text),
                      caller=4242, level=0))
    image = lockless_image(descs, bytes(ring), count_bits=3, size_bits=9,
                           tail=IDS[0], head=IDS[7])
    return lockless_core(image)


LOCKLESS_MAKEDUMPFILE = (
    b"[    0.000000] Linux version 6.1.0-synthetic\n"
    b"[    1.234567] CPU0: cont\n"
    b"                part two \\xffffffc3\\xffffffa9 \\x1b[0m\ttab\n"
    b"[    4.000000] wrapped block, truncated\n"
    b"[123456.000001] last, still committed\n"
)
LOCKLESS_VMCORE_DMESG = (
    b"[    0.000000] Linux version 6.1.0-synthetic\n"
    b"[    1.234567] CPU0: cont\n"
    b" part two \\xc3\\xa9 \\x1b[0m\ttab\n"
    b"[    2.000000] \n"
    b"[    4.000000] wrapped block, truncated\n"
    b"[123456.000001] last, still committed\n"
)


def test_lockless_records(tmp_path: Path) -> None:
    log = slim_log(write(tmp_path, lockless_sample()))
    assert log.format == "lockless" and log.raw is None and log.problems == []
    assert [r.seq for r in log.records] == [100, 101, 102, 105, 107]
    first, cont, dataless, wrapped, last = log.records
    assert first == LogRecord(0, b"Linux version 6.1.0-synthetic", caller_id=0, level=5,
                              facility=0, seq=100, flags=2)
    assert cont.caller_id == 0x80000001 and b"\n part two" in cont.text
    assert not dataless.has_data and dataless.text == b"" and dataless.ts_nsec == 2_000_000_000
    assert wrapped.text == b"wrapped block, truncated"          # min(text_len, block)
    assert last.caller_id == 4242 and last.level == 0
    assert log.lines() == [
        (0, "Linux version 6.1.0-synthetic"),
        (1_234_567_890, "CPU0: cont\n part two é \x1b[0m\ttab"),
        (4_000_000_999, "wrapped block, truncated"),
        (123456_000_001_000, "last, still committed"),
    ]


def test_lockless_render(tmp_path: Path) -> None:
    log = slim_log(write(tmp_path, lockless_sample()))
    assert render_makedumpfile(log, sc.EM_X86_64) == LOCKLESS_MAKEDUMPFILE
    assert render_vmcore_dmesg(log) == LOCKLESS_VMCORE_DMESG


def test_lockless_tools_agree(tmp_path: Path) -> None:
    path = write(tmp_path, lockless_sample())
    assert makedumpfile_dmesg(path) == LOCKLESS_MAKEDUMPFILE
    assert vmcore_dmesg(path) == LOCKLESS_VMCORE_DMESG


def all_bytes_core() -> bytes:
    """One record holding every byte value 0x00-0xff, one with empty text."""
    ring = bytearray(1024)
    text = bytes(range(256))
    nxt = block(ring, 0, 7, text)
    descs = [Desc(7, FINALIZED, 0, nxt, 0, 2_000_001_999, len(text)),
             Desc(8, FINALIZED, nxt, nxt + 8, 1, 3_000_000_000, 0)]
    block(ring, nxt, 8, b"")
    return lockless_core(lockless_image(descs, bytes(ring), count_bits=2, size_bits=10,
                                        tail=7, head=8))


def expected_all_bytes(newline: bytes, high: str) -> bytes:
    """The escaping rule: C-locale isprint() or isspace() bytes are copied
    ('\\n' replaced by ``newline``), others are ``\\x%02x``; bytes >= 0x80
    as ``high`` % byte."""
    out = b"[    2.000001] "
    for b in range(256):
        if b == 10:
            out += newline
        elif 0x20 <= b <= 0x7E or 9 <= b <= 13:
            out += bytes([b])
        elif b >= 0x80:
            out += (high % b).encode()
        else:
            out += b"\\x%02x" % b
    return out + b"\n[    3.000000] \n"


def test_escaping(tmp_path: Path) -> None:
    log = slim_log(write(tmp_path, all_bytes_core()))
    indent = b"\n" + b" " * 15
    assert render_makedumpfile(log, sc.EM_X86_64) == expected_all_bytes(indent, "\\xffffff%02x")
    assert render_makedumpfile(log, EM_AARCH64) == expected_all_bytes(indent, "\\x%02x")
    assert render_vmcore_dmesg(log) == expected_all_bytes(b"\n", "\\x%02x")


def test_escaping_tools_agree(tmp_path: Path) -> None:
    path = write(tmp_path, all_bytes_core())
    assert makedumpfile_dmesg(path) == expected_all_bytes(b"\n" + b" " * 15, "\\xffffff%02x")
    assert vmcore_dmesg(path) == expected_all_bytes(b"\n", "\\x%02x")


def test_indent_follows_prefix_width() -> None:
    log = KernelLog("lockless", [LogRecord(1234567_000_000_000, b"a\nb", None)])
    assert render_makedumpfile(log, sc.EM_X86_64) == b"[1234567.000000] a\n" + b" " * 17 + b"b\n"


def test_lockless_id_span_larger_than_ring(tmp_path: Path) -> None:
    """tail..head spanning more ids than slots: only the newest ``count``
    can own a slot; the walk is bounded and says so."""
    ring = bytearray(256)
    nxt = block(ring, 0, 1000, b"newest")
    image = lockless_image([Desc(1000, FINALIZED, 0, nxt, 9, 1, 6)], bytes(ring),
                           count_bits=2, size_bits=8, tail=5, head=1000)
    log = slim_log(write(tmp_path, lockless_core(image)))
    assert [r.text for r in log.records] == [b"newest"]
    assert "span more than the 4 slots" in log.problems[0]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("count_bits", 31, "count_bits 31 > 30"),
    ("size_bits", 31, "more than 1 GiB"),
])  # fmt: skip
def test_lockless_absurd_sizes(tmp_path: Path, field: str, value: int, message: str) -> None:
    image = lockless_image([], bytes(256), count_bits=2, size_bits=8, tail=0, head=0)
    struct.pack_into("<I", image, O_RB + (0 if field == "count_bits" else 48), value)
    with pytest.raises(KernelViewError, match=message) as err:
        slim_log(write(tmp_path, lockless_core(image)))
    assert "\n" not in str(err.value)


def test_lockless_missing_key(tmp_path: Path) -> None:
    image = lockless_image([], bytes(256), count_bits=2, size_bits=8, tail=0, head=0)
    core = lockless_core(image, keys={"OFFSET(prb_desc.state_var)": ""})
    with pytest.raises(KernelViewError, match=r"no OFFSET\(prb_desc.state_var\)"):
        slim_log(write(tmp_path, core))


def test_lockless_buffer_not_in_dump(tmp_path: Path) -> None:
    image = lockless_image([], bytes(256), count_bits=2, size_bits=8, tail=0, head=0)
    struct.pack_into("<Q", image, O_RB + 8, KTEXT + 0x100000)   # descs past the image load
    with pytest.raises(NotInDump, match="not in the dump"):
        slim_log(write(tmp_path, lockless_core(image)))


@pytest.mark.parametrize("seed", range(40))
def test_lockless_garbage_never_crashes(tmp_path: Path, seed: int) -> None:
    """Random descriptors, infos and data: records or a one-line DumpError."""
    rng = random.Random(seed)
    image = lockless_image([], rng.randbytes(1024), count_bits=rng.randrange(0, 6),
                           size_bits=10, tail=rng.getrandbits(64), head=rng.getrandbits(64))
    image[O_DESCS:O_DATA] = rng.randbytes(O_DATA - O_DESCS)
    if seed % 2:   # states and ids that match, lpos and lengths random
        for slot in range(32):
            struct.pack_into("<Q", image, O_DESCS + 24 * slot,
                             (rng.choice([1, 2]) << 62) | (slot + 32 * rng.randrange(4)))
        struct.pack_into("<QQ", image, O_RB + 24, 40, 0)
    try:
        log = slim_log(write(tmp_path, lockless_core(image)))
    except DumpError as exc:
        assert "\n" not in str(exc)
        return
    render_makedumpfile(log, sc.EM_X86_64)
    render_vmcore_dmesg(log)
    assert all(len(r.text) <= 1024 for r in log.records)


# --------------------------------------------------------------------------
# Structured struct printk_log records (3.5-5.9)


def structured_sample(names: str, caller: bool) -> bytes:
    """Three records before the wrap (one with a dictionary, one with a
    continuation line and non-ASCII bytes), the zeroed wrap marker, then an
    empty record and one with a 6-digit second count."""

    def c(caller_id: int) -> int | None:
        return caller_id if caller else None

    before = [
        record_bytes(1_000_000, b"first record", caller=c(1)),
        record_bytes(2_500_000_000, b"with dict", b"SUBSYSTEM=pci\0DEVICE=+pci:0000:00:01.0",
                     caller=c(0x80000000)),
        record_bytes(3_000_000_000, b"cont\n next \xc3\xa9 \x01", flags=8, caller=c(77)),
    ]
    after = [
        record_bytes(4_000_000_000, b"", caller=c(1)),
        record_bytes(123456_000_999_999, b"after wrap", facility=3, level=2, caller=c(2)),
    ]
    return structured_core(before, after, names=names, caller=caller)


STRUCTURED_MAKEDUMPFILE = (
    b"[    0.001000] first record\n"
    b"[    2.500000] with dict\n"
    b"[    3.000000] cont\n"
    b"                next \\xffffffc3\\xffffffa9 \\x01\n"
    b"[    4.000000] \n"
    b"[123456.000999] after wrap\n"
)
# vmcore-dmesg prints the wrap marker as a record of its own (ts 0, no text).
STRUCTURED_VMCORE_DMESG = (
    b"[    0.001000] first record\n"
    b"[    2.500000] with dict\n"
    b"[    3.000000] cont\n"
    b" next \\xc3\\xa9 \\x01\n"
    b"[    0.000000] \n"
    b"[    4.000000] \n"
    b"[123456.000999] after wrap\n"
)
STRUCTURED_VARIANTS = [("log", False), ("printk_log", False), ("printk_log", True)]


@pytest.mark.parametrize(("names", "caller"), STRUCTURED_VARIANTS)
def test_structured_records(tmp_path: Path, names: str, caller: bool) -> None:
    log = slim_log(write(tmp_path, structured_sample(names, caller)))
    assert log.format == "structured" and log.problems == []
    texts = [(r.text, r.wrap_marker) for r in log.records]
    assert texts == [(b"first record", False), (b"with dict", False),
                     (b"cont\n next \xc3\xa9 \x01", False), (b"", True), (b"", False),
                     (b"after wrap", False)]
    last = log.records[-1]
    assert (last.level, last.facility, last.flags, last.seq) == (2, 3, 2, None)
    assert log.records[2].flags == 8                              # LOG_CONT
    assert [r.caller_id for r in log.records if r.is_message] == (
        [1, 0x80000000, 77, 1, 2] if caller else [None] * 5)
    assert log.lines()[-1] == (123456_000_999_999, "after wrap")
    assert len(log.lines()) == 5


@pytest.mark.parametrize(("names", "caller"), STRUCTURED_VARIANTS)
def test_structured_render(tmp_path: Path, names: str, caller: bool) -> None:
    log = slim_log(write(tmp_path, structured_sample(names, caller)))
    assert render_makedumpfile(log, sc.EM_X86_64) == STRUCTURED_MAKEDUMPFILE
    assert render_vmcore_dmesg(log) == STRUCTURED_VMCORE_DMESG


@pytest.mark.parametrize(("names", "caller"), STRUCTURED_VARIANTS)
def test_structured_tools_agree(tmp_path: Path, names: str, caller: bool) -> None:
    path = write(tmp_path, structured_sample(names, caller))
    assert makedumpfile_dmesg(path) == STRUCTURED_MAKEDUMPFILE
    assert vmcore_dmesg(path) == STRUCTURED_VMCORE_DMESG


def test_structured_wrap_marker_fields_go_to_vmcore_dmesg(tmp_path: Path) -> None:
    """vmcore-dmesg prints whatever the len == 0 header holds; makedumpfile
    does not print it (a kernel zeroes it, so this is a corrupt marker)."""
    marker = struct.pack("<QHHHBB", 7_500_000_000, 0, 3, 0, 0, 0xC0) + b"xyz"
    core = structured_core([record_bytes(1_000_000, b"one")], [record_bytes(2_000_000, b"two")],
                           marker=marker)
    path = write(tmp_path, core)
    log = slim_log(path)
    assert render_vmcore_dmesg(log) == (b"[    0.001000] one\n[    7.500000] xyz\n"
                                        b"[    0.002000] two\n")
    assert render_makedumpfile(log, sc.EM_X86_64) == (b"[    0.001000] one\n"
                                                      b"[    0.002000] two\n")
    assert vmcore_dmesg(path) == render_vmcore_dmesg(log)


def _cycle(image: bytearray, first: int, nxt: int) -> None:
    struct.pack_into("<I", image, O_NEXT, nxt + 4)        # never reached: wraps twice


def _len_past_end(image: bytearray, first: int, nxt: int) -> None:
    struct.pack_into("<H", image, O_DATA + first + 8, 1000)


def _first_outside(image: bytearray, first: int, nxt: int) -> None:
    struct.pack_into("<I", image, O_FIRST, 600)


@pytest.mark.parametrize(("patch", "texts", "problem"), [
    (_cycle, [b"one", b"two", b"", b"three", b"four"], "cycle"),
    (_len_past_end, [], "has length 1000, outside log_buf"),
    (_first_outside, [], "index 0x258 is outside log_buf"),
])  # fmt: skip
def test_structured_corruption_stops_the_walk(
    tmp_path: Path, patch: Callable[[bytearray, int, int], None], texts: list[bytes],
    problem: str,
) -> None:
    """Both tools stop (and fail) at a cycle or an index or length outside
    the buffer; slimdump keeps the records before it and says why."""
    core = structured_core([record_bytes(1, b"one"), record_bytes(2, b"two")],
                           [record_bytes(3, b"three"), record_bytes(4, b"four")], patch=patch)
    log = slim_log(write(tmp_path, core))
    assert [r.text for r in log.records] == texts
    assert len(log.problems) == 1 and problem in log.problems[0]


@pytest.mark.parametrize("buf_len", [0, (1 << 30) + 1])
def test_structured_absurd_length(tmp_path: Path, buf_len: int) -> None:
    def patch(image: bytearray, first: int, nxt: int) -> None:
        struct.pack_into("<I", image, O_LOG_BUF_LEN, buf_len)

    core = structured_core([record_bytes(1, b"one")], [], patch=patch)
    with pytest.raises(KernelViewError, match=f"log_buf_len {buf_len} is absurd"):
        slim_log(write(tmp_path, core))


@pytest.mark.parametrize("seed", range(40))
def test_structured_garbage_never_crashes(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)

    def patch(image: bytearray, first: int, nxt: int) -> None:
        image[O_DATA:O_DATA + 512] = rng.randbytes(512)
        struct.pack_into("<II", image, O_FIRST, rng.randrange(600), rng.randrange(600))

    core = structured_core([record_bytes(1, b"x")], [], patch=patch)
    try:
        log = slim_log(write(tmp_path, core))
    except DumpError as exc:
        assert "\n" not in str(exc)
        return
    render_makedumpfile(log, sc.EM_X86_64)
    render_vmcore_dmesg(log)


def test_format_chosen_by_keys_not_release(tmp_path: Path) -> None:
    core = structured_core([record_bytes(1, b"one")], [], release="6.12.0-synthetic")
    assert slim_log(write(tmp_path, core)).format == "structured"


def test_no_log_keys(tmp_path: Path) -> None:
    core = make_core(bytearray(IMAGE_SIZE), {}, "6.1.0-synthetic")
    with pytest.raises(KernelViewError, match="exports no kernel log buffer"):
        slim_log(write(tmp_path, core))


# --------------------------------------------------------------------------
# Plain log_buf (< 3.5)

UNWRAPPED = b"<6>[    0.000000] Linux version 2.6.32\n<4>[    1.250000] warn \xc3\xa9\n<6>partial"
# 10 lines of 27 bytes, written over and over into a 128-byte buffer.
LINES = b"".join(b"<6>[%5d.000000] line %03d\n" % (i, i) for i in range(10))
# After 3 * 128 + 40 bytes (stream offsets 296-423 = LINES[26:154] remain):
WRAPPED_TEXT = (b"\n<6>[    1.000000] line 001\n<6>[    2.000000] line 002\n"
                b"<6>[    3.000000] line 003\n<6>[    4.000000] line 004\n<6>[    5.000000] l")


def test_plain_unwrapped(tmp_path: Path) -> None:
    buf = UNWRAPPED + b"\0" * (128 - len(UNWRAPPED))
    path = write(tmp_path, plain_core(buf, len(UNWRAPPED), len(UNWRAPPED)))
    log = slim_log(path)
    assert log.format == "plain" and log.raw == UNWRAPPED
    assert render_makedumpfile(log, sc.EM_X86_64) == UNWRAPPED
    assert render_vmcore_dmesg(log) == UNWRAPPED
    assert log.lines() == [(0, "Linux version 2.6.32"), (1_250_000_000, "warn é"),
                           (0, "partial")]
    assert [(r.level, r.facility) for r in log.records] == [(6, 0), (4, 0), (6, 0)]


def wrapped_plain() -> bytes:
    """The buffer after the kernel wrote LINES (repeated) into a 128-byte
    ring until its write index log_end reached 3 * 128 + 40."""
    buf = bytearray(128)
    for i, b in enumerate((LINES * 2)[: 3 * 128 + 40]):
        buf[i % 128] = b
    return bytes(buf)


def test_plain_wrapped(tmp_path: Path) -> None:
    log = slim_log(write(tmp_path, plain_core(wrapped_plain(), 3 * 128 + 40, 128)))
    assert log.raw == WRAPPED_TEXT
    assert render_makedumpfile(log, sc.EM_X86_64) == WRAPPED_TEXT
    assert render_vmcore_dmesg(log) == WRAPPED_TEXT
    assert log.lines() == [(0, ""), (1_000_000_000, "line 001"), (2_000_000_000, "line 002"),
                           (3_000_000_000, "line 003"), (4_000_000_000, "line 004"),
                           (5_000_000_000, "l")]


def test_plain_lines_from_raw_alone() -> None:
    log = KernelLog("plain", [], raw=b"<3>[   12.500001] EDAC MC0: UE\nno prefix\n")
    assert log.lines() == [(12_500_001_000, "EDAC MC0: UE"), (0, "no prefix")]


def test_plain_empty(tmp_path: Path) -> None:
    log = slim_log(write(tmp_path, plain_core(bytes(64), 0, 0)))
    assert log.raw == b"" and log.records == [] and log.lines() == []


def test_plain_tools_agree(tmp_path: Path) -> None:
    buf = UNWRAPPED + b"\0" * (128 - len(UNWRAPPED))
    path = write(tmp_path, plain_core(buf, len(UNWRAPPED), len(UNWRAPPED)), "unwrapped")
    assert makedumpfile_dmesg(path) == UNWRAPPED
    assert vmcore_dmesg(path) == UNWRAPPED
    # logged_chars smaller than the buffer changes nothing for either tool
    path = write(tmp_path, plain_core(wrapped_plain(), 3 * 128 + 40, 50), "wrapped")
    assert makedumpfile_dmesg(path) == WRAPPED_TEXT
    assert vmcore_dmesg(path) == WRAPPED_TEXT


def test_plain_timestamps_that_are_no_u64() -> None:
    """The kernel prints a u64 of nanoseconds as ``[%5lu.%06lu]``: 11 digits
    of seconds at most.  A longer number (5,000 digits: past int()'s digit
    limit) or one past 2**64 ns is no timestamp: the line keeps it as text,
    with timestamp 0; in a slimdump's log note too."""
    from slimdump.kernel.log import records_from_text

    huge = "9" * 5000
    raw = (f"<4>[{huge}.000000] hostile\n[99999999999.000000] past 2**64 ns\n"
           f"<6>[18446744073.709551] the last u64\n").encode()
    assert KernelLog("plain", [], raw=raw).lines() == [
        (0, f"[{huge}.000000] hostile"), (0, "[99999999999.000000] past 2**64 ns"),
        (18446744073_709551_000, "the last u64")]
    text = f"[{huge}.000000] hostile\n[99999999999.000000] past\n[    1.000000] fine\n"
    assert records_from_text(text) == [(0, f"[{huge}.000000] hostile"),
                                       (0, "[99999999999.000000] past"), (1_000_000_000, "fine")]


def test_empty_ring_says_so(tmp_path: Path) -> None:
    """A ring that holds no record: the log written is empty, as
    makedumpfile's is, and both dmesg commands say so in one warning line
    naming the file (a crashed kernel always logged something)."""
    image = lockless_image([], bytes(256), count_bits=2, size_bits=8, tail=0, head=0)
    path = write(tmp_path, lockless_core(image))
    assert makedumpfile_dmesg(path) == b""
    for cmd in (["slimdump", "dmesg"], ["slimdump-makedumpfile", "--dump-dmesg"]):
        out = tmp_path / f"{cmd[0]}.log"
        res = subprocess.run([*cmd, str(path), str(out)], capture_output=True, text=True,
                             env={**os.environ, "PATH": f"{Path(sys.executable).parent}:"
                                                      f"{os.environ['PATH']}"})
        assert res.returncode == 0, res.stderr
        assert out.read_bytes() == b""
        warned = [ln for ln in res.stderr.splitlines() if "log is empty" in ln]
        assert warned == [f"{cmd[0]}: warning: {path}: the kernel log is empty (its log "
                          "buffer holds no record)"], res.stderr
