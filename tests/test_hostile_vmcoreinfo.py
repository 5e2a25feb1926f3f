"""Never lose a dump to a hostile VMCOREINFO number.

A real vmcore is captured with one VMCOREINFO value altered to one no kernel
has (a struct page field past SIZE(page), a zero size, a shift below the
page shift, a page size that is no power of two, more buddy orders than a
memory section holds, a physical address width smaller than the dump's own
memory map...).  Each capture must still write a dump, with a one-line
warning naming the value and no traceback: the value is refused where it is
read, and the capture keeps every page it cannot judge.

The oracles: tests/mdfbitmap.py (an independent reader of the
kdump-compressed layout) says every page the vmcore holds is in the dump,
and makedumpfile 1.7.2 reads the kernel log out of it, byte for byte as out
of the untouched vmcore, once the output's copy of the altered VMCOREINFO is
put back as it was (the alteration keeps the note's length, so it can be).

The vmcore copies are altered in place and put back after each test: one
copy per fixture for the whole module, as the fixtures are 650 MB.
"""

from __future__ import annotations

import contextlib
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from slimdump.kernel.memory import KernelMemory, KernelViewError
from slimdump.kernel.vmcoreinfo import VmcoreInfo
from slimdump.sources import open_dump
from tests import synthcore as sc
from tests.conftest import real_vmcore, run, tool
from tests.mdfbitmap import HEADER, read_kdump

PT_LOAD, PT_NOTE = 1, 4
START_KERNEL_MAP = 0xFFFFFFFF80000000
CAPTURE_TIMEOUT = 120


# -- an ELF vmcore altered in place ---------------------------------------------------


def program_headers(f) -> tuple[int, int, list[tuple[int, int, int, int, int]]]:
    """(e_phoff, e_phentsize, [(p_type, p_offset, p_vaddr, p_paddr,
    p_filesz)]) of a little-endian ELF64 file."""
    f.seek(0)
    ehdr = f.read(64)
    assert ehdr[:4] == b"\x7fELF" and ehdr[4] == 2 and ehdr[5] == 1
    phoff, = struct.unpack_from("<Q", ehdr, 32)
    phentsize, phnum = struct.unpack_from("<HH", ehdr, 54)
    f.seek(phoff)
    table = f.read(phentsize * phnum)
    phdrs = []
    for i in range(phnum):
        p_type, _flags, offset, vaddr, paddr, filesz = struct.unpack_from(
            "<IIQQQQ", table, i * phentsize)
        phdrs.append((p_type, offset, vaddr, paddr, filesz))
    return phoff, phentsize, phdrs


def vmcoreinfo_desc(path: Path) -> tuple[int, bytes]:
    """(file offset, bytes) of the VMCOREINFO note's descriptor."""
    with open(path, "rb") as f:
        _phoff, _size, phdrs = program_headers(f)
        (_t, note_off, _v, _p, note_size), = [ph for ph in phdrs if ph[0] == PT_NOTE]
        f.seek(note_off)
        area = f.read(note_size)
    pos = 0
    while pos + 12 <= len(area):
        namesz, descsz, _type = struct.unpack_from("<III", area, pos)
        at = pos + 12 + -(-namesz // 4) * 4
        if area[pos + 12:pos + 12 + namesz].rstrip(b"\0") == b"VMCOREINFO":
            return note_off + at, area[at:at + descsz]
        pos = at + -(-descsz // 4) * 4
    raise AssertionError(f"{path} has no VMCOREINFO note")


def altered_text(desc: bytes, changes: dict[str, str | None]) -> bytes:
    """The VMCOREINFO ``desc`` with keys set (None: removed; new keys go at
    the end), NUL-padded to its length: the note keeps its size, and the
    kernel's text ends at the first NUL anyway."""
    lines = desc.split(b"\0", 1)[0].decode().splitlines()
    keys = [line.partition("=")[0] for line in lines]
    for key, value in changes.items():
        if key in keys:
            i = keys.index(key)
            if value is None:
                del lines[i], keys[i]
            else:
                lines[i] = f"{key}={value}"
        else:
            assert value is not None, f"no {key} to remove"
            lines.append(f"{key}={value}")
            keys.append(key)
    text = ("\n".join(lines) + "\n").encode()
    assert len(text) <= len(desc), "the altered VMCOREINFO must not be longer"
    return text.ljust(len(desc), b"\0")


def phys_spans(path: Path, paddr: int, size: int) -> list[int]:
    """File offsets of physical address ``paddr`` in every PT_LOAD holding
    ``size`` bytes there (the kernel-image PT_LOAD repeats RAM)."""
    with open(path, "rb") as f:
        _phoff, _size, phdrs = program_headers(f)
    spans = [off + paddr - p for t, off, _v, p, filesz in phdrs
             if t == PT_LOAD and p <= paddr and paddr + size <= p + filesz]
    assert spans, f"no PT_LOAD holds {paddr:#x}"
    return spans


class Copy:
    """A writable copy of a real vmcore, altered and put back per test."""

    def __init__(self, name: str, path: Path) -> None:
        self.name, self.path = name, path
        self.desc_at, self.desc = vmcoreinfo_desc(path)

    def value(self, key: str) -> str:
        for line in self.desc.split(b"\0", 1)[0].decode().splitlines():
            if line.partition("=")[0] == key:
                return line.partition("=")[2]
        raise KeyError(key)

    @contextlib.contextmanager
    def altered(self, changes: dict[str, str | None],
                pokes: dict[int, bytes] | None = None) -> Iterator[bytes]:
        """The copy with VMCOREINFO ``changes`` and ``pokes`` (physical
        address: bytes) applied; yields the altered descriptor."""
        writes = [(self.desc_at, altered_text(self.desc, changes))]
        for paddr, data in (pokes or {}).items():
            writes += [(at, data) for at in phys_spans(self.path, paddr, len(data))]
        with open(self.path, "r+b") as f:
            saved = []
            for at, data in writes:
                f.seek(at)
                saved.append((at, f.read(len(data))))
            try:
                for at, data in writes:
                    f.seek(at)
                    f.write(data)
                f.flush()
                yield writes[0][1]
            finally:
                for at, data in saved:
                    f.seek(at)
                    f.write(data)


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Copy]]:
    made: dict[str, Copy] = {}

    class Lazy(dict):
        def __missing__(self, name: str) -> Copy:
            dst = tmp_path_factory.mktemp("hostile") / f"{name}.vmcore"
            subprocess.run(["cp", "--reflink=auto", str(real_vmcore(name)), str(dst)],
                           check=True)
            made[name] = self[name] = Copy(name, dst)
            return self[name]

    yield Lazy()
    for copy in made.values():                  # 650 MB each: not kept for later runs
        copy.path.unlink()


@pytest.fixture(scope="module")
def pristine_dmesg(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """makedumpfile --dump-dmesg of the untouched fixture, by name."""

    class Lazy(dict):
        def __missing__(self, name: str) -> bytes:
            text = tmp_path_factory.mktemp("pristine") / f"{name}.dmesg"
            run(tool("makedumpfile"), "--dump-dmesg", real_vmcore(name), text)
            self[name] = text.read_bytes()
            return self[name]

    return Lazy()


# -- the capture and its checks -------------------------------------------------------


def capture(src: Path, dst: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slimdump", "capture", "--no-progress",
                           "-c", "-d", "31", str(src), str(dst)],
                          capture_output=True, text=True, timeout=CAPTURE_TIMEOUT)


def warnings_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("slimdump: warning: ")]


def heal(dst: Path, altered: bytes, original: bytes) -> None:
    """Put the original VMCOREINFO back wherever the dump file copied the
    altered one (the kdump sub header's copy and the note area's)."""
    data = bytearray(dst.read_bytes())
    text = altered.rstrip(b"\0")
    count, at = 0, data.find(text)
    while at != -1:
        data[at:at + len(original)] = original
        count += 1
        at = data.find(text, at + len(original))
    assert count >= 1, "the altered VMCOREINFO is not in the dump"
    dst.write_bytes(bytes(data))


def assert_saved(copy: Copy, altered: bytes, dst: Path, stderr: str, dmesg: bytes, *,
                 every_page: bool = True) -> None:
    """The dump is a kdump-compressed file holding every page of the vmcore
    (``every_page``), from which makedumpfile reads the same kernel log as
    from the untouched vmcore."""
    assert "Traceback" not in stderr, stderr
    dump = read_kdump(dst)
    assert dump.bitmap1.any()
    if every_page:
        assert np.array_equal(dump.bitmap2, dump.bitmap1), "pages were left out"
    heal(dst, altered, copy.desc)
    text = dst.with_suffix(".dmesg")
    run(tool("makedumpfile"), "--dump-dmesg", dst, text)
    assert text.read_bytes() == dmesg


# (fixture, key, hostile value, what the value breaks)
CASES = [
    ("6.1-sysrq", "SIZE(page)", "0", "a zero divisor"),
    ("6.1-sysrq", "OFFSET(page.flags)", "60", "a field past SIZE(page)"),
    ("6.1-sysrq", "OFFSET(page.private)", "99", "a field past SIZE(page)"),
    ("6.1-sysrq", "OFFSET(page._mapcount)", "62", "a field past SIZE(page)"),
    ("6.1-sysrq", "OFFSET(page.compound_head)", "64", "a field past SIZE(page)"),
    ("6.1-sysrq", "NUMBER(PG_lru)", "99", "a bit past page.flags"),
    ("6.1-sysrq", "SIZE(mem_section)", "0", "a zero divisor"),
    ("6.1-sysrq", "NUMBER(SECTION_SIZE_BITS)", "5", "a negative shift"),
    ("6.1-sysrq", "PAGESIZE", "3", "no power of two: minutes of bitmap"),
    ("6.1-sysrq", "PAGESIZE", "-512", "a negative page"),
    ("6.1-sysrq", "PAGESIZE", "6000", "no power of two"),
    ("6.1-sysrq", "LENGTH(zone.free_area)", "40", "a look-back to pfn 0"),
    ("6.1-sysrq", "NUMBER(MAX_PHYSMEM_BITS)", "20", "a map beyond the address space"),
    ("6.1-sysrq", "NUMBER(MAX_PHYSMEM_BITS)", "18446744073709551615",
     "an address space of 2^(2^64) bytes (found by scripts/fuzz.py: 1 << bits)"),
    ("6.1-sysrq", "NUMBER(SECTION_SIZE_BITS)", "9" * 20, "a number wider than 64 bits"),
    ("6.1-sysrq", "NUMBER(KERNEL_IMAGE_SIZE)", "0", "an empty kernel image"),
    ("6.12-sysrq", "OFFSET(page._mapcount)", "99", "page_type past SIZE(page)"),
    ("6.12-sysrq", "LENGTH(zone.free_area)", "99", "a look-back to pfn 0"),
]


@pytest.mark.parametrize(("name", "key", "value", "why"), CASES,
                         ids=[f"{c[0]}:{c[1]}={c[2]}" for c in CASES])
def test_capture_saves_the_dump(copies: dict[str, Copy], pristine_dmesg: dict[str, bytes],
                                tmp_path: Path, name: str, key: str, value: str,
                                why: str) -> None:
    copy = copies[name]
    dst = tmp_path / "dump"
    # a longer value makes room by dropping a key no reader uses
    room = {"SIZE(nodemask_t)": None} if len(value) > len(copy.value(key)) else {}
    with copy.altered({key: value, **room}) as altered:
        res = capture(copy.path, dst)
    assert res.returncode == 0, res.stderr
    named = [w for w in warnings_of(res.stderr) if f"{key}={value}" in w]
    assert named, res.stderr
    assert "keeping every page" in res.stderr or "writing pages of" in res.stderr
    assert_saved(copy, altered, dst, res.stderr, pristine_dmesg[name])


def test_smaller_physmem_bits_is_ignored(copies: dict[str, Copy],
                                         pristine_dmesg: dict[str, bytes],
                                         tmp_path: Path) -> None:
    """MAX_PHYSMEM_BITS smaller than the dump's memory map is the value
    that is wrong, not the map: the map is written whole, and the warning
    says the value was ignored."""
    copy = copies["6.1-sysrq"]
    dst = tmp_path / "dump"
    with copy.altered({"NUMBER(MAX_PHYSMEM_BITS)": "20"}) as altered:
        res = capture(copy.path, dst)
    assert res.returncode == 0, res.stderr
    assert any("NUMBER(MAX_PHYSMEM_BITS)=20" in w and "ignored" in w
               for w in warnings_of(res.stderr)), res.stderr
    assert_saved(copy, altered, dst, res.stderr, pristine_dmesg["6.1-sysrq"])
    # the memory map reaches past 2^20 bytes: the dump still covers it all
    assert read_kdump(dst).max_mapnr * 4096 > 1 << 20


def test_crashtime_past_a_time_t(copies: dict[str, Copy], pristine_dmesg: dict[str, bytes],
                                 tmp_path: Path) -> None:
    """CRASHTIME is a time_t, which the kdump header stores in 64 signed
    bits: a larger one is no time, and the dump is written filtered as
    usual, its header without a crash time."""
    copy = copies["6.1-sysrq"]
    dst = tmp_path / "dump"
    with copy.altered({"CRASHTIME": "9" * 20, "SIZE(nodemask_t)": None}) as altered:
        res = capture(copy.path, dst)
    assert res.returncode == 0, res.stderr
    assert "keeping every page" not in res.stderr
    with open(dst, "rb") as f:
        tv_sec = HEADER.unpack(f.read(HEADER.size))[3]
    assert tv_sec == 0
    dump = read_kdump(dst)
    assert dump.bitmap2.sum() < dump.bitmap1.sum()          # filtered
    assert_saved(copy, altered, dst, res.stderr, pristine_dmesg["6.1-sysrq"],
                 every_page=False)


# -- a plain log_buf whose timestamp is a 5,000-digit number --------------------------

HUGE = "9" * 5000
PLAIN_LOG = (b"<6>[    0.000000] Linux version of a plain log_buf\n"
             b"<4>[" + HUGE.encode() + b".000000] the record with a hostile timestamp\n"
             b"[" + HUGE.encode() + b".123456] and one without a level\n")


def plain_log(copy: Copy) -> tuple[dict[str, str | None], dict[int, bytes]]:
    """VMCOREINFO changes and memory pokes that give the copy a pre-3.5
    plain log_buf holding PLAIN_LOG: the variables and the buffer are
    written over kernel text 1 MiB past _stext (which nothing reads), the
    lockless ring buffer's key is removed (with keys of other structures
    nothing reads, to make room)."""
    stext = int(copy.value("SYMBOL(_stext)"), 16)
    phys_base = int(copy.value("NUMBER(phys_base)"))
    at = stext + (1 << 20)
    buf = at + 64
    pokes = {at - START_KERNEL_MAP + phys_base:
             struct.pack("<QII", buf, len(PLAIN_LOG), len(PLAIN_LOG)).ljust(64, b"\0")
             + PLAIN_LOG}
    changes: dict[str, str | None] = {
        key: None for key in ("SYMBOL(prb)", "SYMBOL(printk_rb_static)", "SYMBOL(clear_seq)",
                              "SIZE(printk_ringbuffer)", "OFFSET(printk_ringbuffer.fail)",
                              "SIZE(prb_desc_ring)", "SIZE(dev_printk_info)",
                              "OFFSET(dev_printk_info.subsystem)")}
    changes.update({"SYMBOL(log_buf)": f"{at:x}", "SYMBOL(log_buf_len)": f"{at + 8:x}",
                    "SYMBOL(log_end)": f"{at + 12:x}"})
    return changes, pokes


def test_plain_log_with_a_huge_timestamp(copies: dict[str, Copy],
                                         pristine_dmesg: dict[str, bytes],
                                         tmp_path: Path) -> None:
    """A timestamp is a u64 of nanoseconds: a 5,000-digit one is corrupt.
    The record is kept with its text (the number stays in it), and dmesg,
    inspect and capture all work."""
    copy = copies["6.1-sysrq"]
    changes, pokes = plain_log(copy)
    dst = tmp_path / "dump"
    with copy.altered(changes, pokes) as altered:
        dmesg = subprocess.run([sys.executable, "-m", "slimdump", "dmesg", str(copy.path)],
                               capture_output=True, timeout=CAPTURE_TIMEOUT)
        inspect = subprocess.run([sys.executable, "-m", "slimdump", "inspect",
                                  str(copy.path)], capture_output=True, text=True,
                                 timeout=CAPTURE_TIMEOUT)
        res = capture(copy.path, dst)
    # a plain log is printed as the kernel wrote it
    assert dmesg.returncode == 0 and b"Traceback" not in dmesg.stderr, dmesg.stderr
    assert dmesg.stdout == PLAIN_LOG
    assert inspect.returncode == 0 and "Traceback" not in inspect.stderr, inspect.stderr
    assert "the record with a hostile timestamp" in inspect.stdout
    assert "and one without a level" in inspect.stdout
    assert res.returncode == 0, res.stderr
    assert_saved(copy, altered, dst, res.stderr, pristine_dmesg["6.1-sysrq"],
                 every_page=False)
    # the triage slimdump beside it carries the log as a note, read back
    # line by line by inspect
    triage = Path(f"{dst}.triage")
    if triage.exists():
        again = subprocess.run([sys.executable, "-m", "slimdump", "inspect", str(triage)],
                               capture_output=True, text=True, timeout=CAPTURE_TIMEOUT)
        assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr
        assert "and one without a level" in again.stdout


def test_page_size_of_another_architecture() -> None:
    """x86_64 pages are 4 KiB: a VMCOREINFO saying 16 or 64 KiB (powers of
    two, pages of arm64) is refused before struct pages are indexed by it."""
    with open_dump(real_vmcore("6.1-sysrq")) as src:
        text = src.notes and VmcoreInfo.from_notes(src.notes)
        assert text
        for size in (16384, 65536):
            info = VmcoreInfo.parse(text.text.replace("PAGESIZE=4096", f"PAGESIZE={size}"))
            with pytest.raises(KernelViewError, match=f"PAGESIZE={size} is not a page size"):
                KernelMemory(src, info)


# -- arm64: VA_BITS ----------------------------------------------------------------------


@pytest.mark.parametrize("va_bits", ["0", "-1", "64", "35", "53"])
def test_arm64_va_bits_out_of_range(tmp_path: Path, va_bits: str) -> None:
    """arm64 kernels are built with 36 to 52 bits of virtual address
    (arch/arm64/Kconfig ARM64_VA_BITS): any other value is refused in one
    line naming it, and a capture still saves the dump."""
    loads = [sc.Load(0x40000000, 0, sc.tagged_bytes(b"LIN:", 0x40000000, 4 * 4096))]
    info = {"OSRELEASE": "6.1.0-arm64", "PAGESIZE": "4096", "NUMBER(VA_BITS)": va_bits,
            "NUMBER(PHYS_OFFSET)": "0x40000000", "NUMBER(kimage_voffset)": "0xffff800007000000",
            "SYMBOL(_stext)": "ffff800048010000"}
    path = tmp_path / "vmcore"
    path.write_bytes(sc.build_core([sc.Note(b"VMCOREINFO", 0, sc.vmcoreinfo(info))], loads,
                                   machine=sc.EM_AARCH64))
    with open_dump(path) as src:
        vmci = VmcoreInfo.from_notes(src.notes)
        assert vmci is not None
        with pytest.raises(KernelViewError) as exc:
            KernelMemory(src, vmci)
    text = str(exc.value)
    assert "\n" not in text and text.startswith(f"{path}: ")
    assert f"NUMBER(VA_BITS)={va_bits} is out of range" in text
    res = capture(path, tmp_path / "dump")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert any(f"NUMBER(VA_BITS)={va_bits}" in w for w in warnings_of(res.stderr)), res.stderr
    assert read_kdump(tmp_path / "dump").bitmap2.sum() == 4
