"""VMCOREINFO line forms, as the kernel prints them (kdump-formats.md 1.5)."""

from __future__ import annotations

import pytest

from slimdump.kernel.vmcoreinfo import KernelViewError, VmcoreInfo

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


def test_bounded_numbers() -> None:
    """VmcoreInfo.bounded: None when absent, the number when in range, one
    short line naming key and value otherwise (a 5,000-digit value too)."""
    info = VmcoreInfo.parse("SIZE(page)=64\nSIZE(x)=xyz\nSIZE(y)=-1\nSIZE(z)=" + "9" * 5000)
    assert info.bounded("SIZE(page)", 16, 256, "f") == 64
    assert info.bounded("SIZE(none)", 16, 256, "f") is None
    for key, shown in (("SIZE(x)", "SIZE(x)=xyz is not a 64-bit number"),
                       ("SIZE(y)", "SIZE(y)=-1 is out of range (16..256"),
                       ("SIZE(z)", "SIZE(z)=99999999999999999999...(5000 characters)")):
        with pytest.raises(KernelViewError) as exc:
            info.bounded(key, 16, 256, "f")
        assert str(exc.value).startswith("f: VMCOREINFO ") and shown in str(exc.value)
        assert len(str(exc.value)) < 120
    # no kernel number is wider than 64 bits: a wider one is not a number at
    # all, whatever its base (a hex one has no digit limit in Python)
    wide = VmcoreInfo.parse("NUMBER(a)=" + "f" * 40 + "\nNUMBER(b)=18446744073709551616\n"
                            "NUMBER(c)=0xffffffffffffffff\nNUMBER(d)=-9223372036854775808\n")
    assert (wide.number("a"), wide.number("b")) == (None, None)
    assert (wide.number("c"), wide.number("d")) == ((1 << 64) - 1, -(1 << 63))
    for size, ok in (("4096", True), ("65536", True), ("3", False), ("6000", False),
                     ("-4096", False), ("2048", False), ("2097152", False)):
        page = VmcoreInfo.parse(f"PAGESIZE={size}\n")
        if ok:
            assert page.valid_page_size("f") == int(size)
        else:
            with pytest.raises(KernelViewError, match=f"PAGESIZE={size}"):
                page.valid_page_size("f")
