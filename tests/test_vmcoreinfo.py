"""VMCOREINFO line forms, as the kernel prints them (kdump-formats.md 1.5)."""

from __future__ import annotations

from slimdump.kernel.vmcoreinfo import VmcoreInfo

TEXT = (
    "OSRELEASE=6.1.0-56-amd64\n"
    "PAGESIZE=4096\n"
    "SYMBOL(_stext)=ffffffffba000000\n"
    "SYMBOL(mem_section)=ff45d1ccaf137000\n"
    "SIZE(page)=64\n"
    "OFFSET(page._mapcount)=48\n"
    "LENGTH(zone.free_area)=11\n"
    "NUMBER(phys_base)=-847249408\n"
    "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)=-129\n"
    "NUMBER(VMALLOC_START)=0xffa0000000000000\n"
    "NUMBER(pgtable_l5_enabled)=1\n"
    "NUMBER(phys_base)=12345\n"          # a later duplicate never wins
    "KERNELOFFSET=39000000\n"
    "SYMBOL(prb)=ffffffffbb6f5a60\n"
    "CRASHTIME=1795664350"              # old kernels: no final newline
)


def test_every_form() -> None:
    info = VmcoreInfo.parse(TEXT.encode())
    assert info.osrelease == "6.1.0-56-amd64"
    assert info.page_size == 4096
    assert info.symbol("_stext") == 0xFFFFFFFFBA000000
    assert info.symbol("mem_section") == 0xFF45D1CCAF137000
    assert info.size("page") == 64
    assert info.offset("page._mapcount") == 48
    assert info.length("zone.free_area") == 11
    assert info.number("phys_base") == -847249408
    assert info.number("phys_base") & (2**64 - 1) == 0xFFFFFFFFCD800000
    assert info.number("PAGE_BUDDY_MAPCOUNT_VALUE") == -129
    assert info.number("VMALLOC_START") == 0xFFA0000000000000
    assert info.kerneloffset == 0x39000000
    assert info.crashtime == 1795664350
    assert info.crash_datetime is not None
    assert info.crash_datetime.isoformat() == "2026-11-26T03:39:10+00:00"
    assert info.pgtable_levels == 5
    assert info.printk_format == "lockless ring buffer (5.10+)"


def test_missing_and_garbage_are_none() -> None:
    info = VmcoreInfo.parse(b"SIZE(page)=sixty-four\nNUMBER(x)=\nnot a line\n\0junk after NUL")
    assert info.size("page") is None
    assert info.number("x") is None
    assert info.symbol("_stext") is None
    assert info.crashtime is None and info.crash_datetime is None
    assert "junk after NUL" not in info.text


def test_absurd_crashtime() -> None:
    info = VmcoreInfo.parse("CRASHTIME=99999999999999999999\n")
    assert info.crash_datetime is None
    assert info.crashtime is None                       # no time_t: the header gets none
    assert VmcoreInfo.parse("CRASHTIME=-5\n").crashtime is None
