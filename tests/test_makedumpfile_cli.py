"""slimdump-makedumpfile against makedumpfile 1.7.2, command line by command
line, as the kdump services run it.

- Debian's kdump-tools (/usr/sbin/kdump-config): ``--dump-dmesg VMCORE LOG``,
  then ``-F -c -d 31 VMCORE | compress > dump``.
- Fedora's kdump-utils: ``-l --message-level 7 -d 31 VMCORE DUMP`` (its
  core_collector default), ``--num-threads=N`` added with several CPUs, ``-F``
  to standard output for ssh and raw targets, ``--check-params`` from
  mkdumprd, ``-R DUMP < device`` to recover a raw target.

The oracle is makedumpfile itself on the same real vmcore: for a software
crash, the same format, bitmaps and pages (for streams, after ``makedumpfile
-R``; the compressed bytes differ: slimdump's compressors are faster, see
writers/_pagepack.c); for a hardware-error crash, a slimdump that ``makedumpfile -R`` and
readelf read.  ``--check-params`` answers are compared with makedumpfile's:
exit status, standard output and standard error, both invoked as
``makedumpfile`` from PATH.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slimdump import makedumpfile_run
from slimdump.makedumpfile_args import parse
from tests.conftest import real_vmcore, slimdump, tool
from tests.mdfbitmap import read_kdump
from tests.oracles import partial_tail_pfns, readelf_notes
from tests.test_capture_filtered import assert_pages_match

SOFTWARE = "6.1-sysrq"
HARDWARE = "6.1-mce"

KDUMP_UTILS = ["-l", "--message-level", "7", "-d", "31"]
KDUMP_UTILS_THREADS = [*KDUMP_UTILS, "--num-threads=2"]
KDUMP_UTILS_FLAT = ["-F", *KDUMP_UTILS]
KDUMP_TOOLS = ["-F", "-c", "-d", "31"]
KDUMP_TOOLS_USER = ["-c", "-d", "31", "-F"]     # MAKEDUMP_ARGS="-c -d 31", -F appended


def ours() -> str:
    """The installed console script (what `slimdump setup` links)."""
    path = Path(sys.executable).with_name("slimdump-makedumpfile")
    assert path.exists(), f"{path}: pip install -e . did not install the console script"
    return str(path)


@pytest.fixture()
def as_makedumpfile(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH finds slimdump-makedumpfile as `makedumpfile`
    (as the diversion leaves it), and the real one under
    SLIMDUMP_REAL_MAKEDUMPFILE."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "makedumpfile").symlink_to(ours())
    env = dict(os.environ)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env["SLIMDUMP_REAL_MAKEDUMPFILE"] = tool("makedumpfile")
    return env


def mdf(*args: str | os.PathLike[str], env: dict[str, str] | None = None,
        stdin: Path | None = None, stdout: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`makedumpfile ARGS` from PATH: the real one with env None, ours with
    the as_makedumpfile environment."""
    with (stdin.open("rb") if stdin else open(os.devnull, "rb")) as fin, \
            (stdout.open("wb") if stdout else open(os.devnull, "wb")) as fout:
        res = subprocess.run(["makedumpfile", *map(str, args)], env=env, stdin=fin,
                             stdout=fout if stdout else subprocess.PIPE,
                             stderr=subprocess.PIPE, check=False)
    return subprocess.CompletedProcess(res.args, res.returncode,
                                       (res.stdout or b"").decode(), res.stderr.decode())


def rearrange(stream: Path, dst: Path) -> Path:
    """The file a flattened stream holds, by the real makedumpfile -R."""
    res = mdf("-R", dst, stdin=stream)
    assert res.returncode == 0, res.stdout + res.stderr
    return dst


def assert_same_dump(ours: Path, theirs: Path, src: Path) -> None:
    """The same file format and pages as makedumpfile's file: header
    version, compression and dump level, the same pfns in both bitmaps but
    the pages a PT_LOAD holds only in part (slimdump keeps them, zeros here,
    and says so in a metadata note: README, "Oracles"), the same pfns stored
    with content, and drgn reads the same bytes from both."""
    a, b = read_kdump(ours), read_kdump(theirs)
    assert ours.read_bytes()[:8] == theirs.read_bytes()[:8]
    assert (a.header_version, a.status, a.dump_level, a.block_size) == \
        (b.header_version, b.status, b.dump_level, b.block_size)
    tails = np.zeros(len(a.bitmap1), dtype=bool)
    tails[partial_tail_pfns(src)] = True
    assert np.array_equal(a.bitmap1 & ~tails, b.bitmap1)
    assert np.array_equal(a.bitmap2 & ~tails, b.bitmap2)
    assert np.array_equal(a.kept_with_content, b.kept_with_content)
    assert_pages_match(ours, theirs, a.kept_with_content, a.bitmap1 & ~a.bitmap2)


# -- --check-params: makedumpfile's answers, exactly -----------------------------------

CHECK_LINES = [
    [*KDUMP_UTILS, "/proc/vmcore", "/var/crash/vmcore-incomplete"],
    [*KDUMP_UTILS_THREADS, "/proc/vmcore", "/var/crash/vmcore-incomplete"],
    [*KDUMP_UTILS_FLAT, "/proc/vmcore"],
    [*KDUMP_TOOLS, "/proc/vmcore"],
    [*KDUMP_TOOLS_USER, "/proc/vmcore"],
    ["--dump-dmesg", "/proc/vmcore", "/var/crash/dmesg"],
    ["-R", "/var/crash/vmcore"],
    ["--reassemble", "/a", "/b", "/c"],
    ["--split", "-l", "-d", "31", "/proc/vmcore", "/a", "/b"],
    # what a user's core_collector or MAKEDUMP_ARGS gets wrong
    [*KDUMP_UTILS_FLAT],
    [*KDUMP_UTILS, "/proc/vmcore"],
    [*KDUMP_UTILS_FLAT, "/proc/vmcore", "/extra"],
    ["-l", "-d", "32", "/proc/vmcore", "/x"],
    ["-l", "-d", "-1", "/proc/vmcore", "/x"],
    ["-l", "--message-level", "40", "-d", "31", "/proc/vmcore", "/x"],
    ["-E", "-l", "-d", "31", "/proc/vmcore", "/x"],
    ["-E", "--num-threads", "2", "/proc/vmcore", "/x"],
    ["--split", "--num-threads", "2", "/proc/vmcore", "/a", "/b"],
    ["--split", "-E", "/proc/vmcore", "/a", "/b"],
    ["--split", "-F", "/proc/vmcore", "/a", "/b"],
    ["-R", "-c", "/x"],
    ["--dump-dmesg", "/proc/vmcore"],
    ["--bogus", "/proc/vmcore", "/x"],
    ["-q", "/proc/vmcore", "/x"],
    ["-d"],
    ["--s", "/proc/vmcore", "/x"],
    ["--split=3", "/proc/vmcore", "/a", "/b"],
    ["--work-dir"],
    ["--mess", "7", "-d", "31", "/proc/vmcore", "/x"],
    ["-d", "31x", "-l", "/proc/vmcore", "/x"],
    # -F moves makedumpfile's words to standard error from where it stands
    ["-F", "--bogus", "/proc/vmcore"],
    ["--bogus", "-F", "/proc/vmcore"],
    ["-Fq", "/proc/vmcore"],
    ["-d", "32", "-F", "/proc/vmcore"],
    ["-F", "-d", "32", "/proc/vmcore"],
    ["-F", "--message-level", "99", "/proc/vmcore"],
    [],
]


@pytest.mark.parametrize("line", CHECK_LINES, ids=lambda line: " ".join(line) or "(none)")
def test_check_params_answers_as_makedumpfile(line: list[str],
                                               as_makedumpfile: dict[str, str]) -> None:
    tool("makedumpfile")
    theirs = mdf("--check-params", *line)
    mine = mdf("--check-params", *line, env=as_makedumpfile)
    assert (mine.returncode, mine.stdout, mine.stderr) == \
        (theirs.returncode, theirs.stdout, theirs.stderr)


# -- software crash: makedumpfile's file ------------------------------------------------


@pytest.mark.parametrize("options", [KDUMP_UTILS, KDUMP_UTILS_THREADS],
                         ids=["kdump-utils", "kdump-utils-threads"])
def test_kdump_utils_file(options: list[str], tmp_path: Path,
                          as_makedumpfile: dict[str, str]) -> None:
    src = real_vmcore(SOFTWARE)
    a, b = tmp_path / "vmcore-incomplete", tmp_path / "mdf"
    res = mdf(*options, src, a, env=as_makedumpfile)
    assert res.returncode == 0, res.stderr
    assert "action normal" in res.stderr
    assert mdf(*options, src, b).returncode == 0
    assert_same_dump(a, b, src)
    assert a.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("options", [KDUMP_UTILS_FLAT, KDUMP_TOOLS, KDUMP_TOOLS_USER],
                         ids=["kdump-utils-F", "kdump-tools", "kdump-tools-user"])
def test_flattened_to_stdout(options: list[str], tmp_path: Path,
                             as_makedumpfile: dict[str, str]) -> None:
    src = real_vmcore(SOFTWARE)
    a, b = tmp_path / "ours.flat", tmp_path / "theirs.flat"
    res = mdf(*options, src, env=as_makedumpfile, stdout=a)
    assert res.returncode == 0, res.stderr
    assert mdf(*options, src, stdout=b).returncode == 0
    assert_same_dump(rearrange(a, tmp_path / "a"), rearrange(b, tmp_path / "b"), src)


def test_kdump_tools_pipeline_leaves_the_triage_beside_the_dump(
        tmp_path: Path, as_makedumpfile: dict[str, str]) -> None:
    """kdump-tools' pipeline, ``makedumpfile -F -c -d 31 VMCORE | compress >
    dump-incomplete``: the triage slimdump goes beside the file the stream
    ends up in, as dump.triage; the stream is still makedumpfile's."""
    src, stamp = real_vmcore(SOFTWARE), tmp_path / "stamp"
    stamp.mkdir()
    line = f"makedumpfile {' '.join(KDUMP_TOOLS)} {src} | cat > {stamp}/dump-incomplete"
    res = subprocess.run(["sh", "-c", line], env=as_makedumpfile, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in stamp.iterdir()) == ["dump-incomplete", "dump.triage"]
    owners = [n.owner for n in readelf_notes(stamp / "dump.triage")]
    assert "VMCOREINFO" in owners and "SLIMDUMP" in owners
    assert mdf(*KDUMP_TOOLS, src, stdout=tmp_path / "theirs").returncode == 0
    assert_same_dump(rearrange(stamp / "dump-incomplete", tmp_path / "a"),
                     rearrange(tmp_path / "theirs", tmp_path / "b"), src)


def test_dump_dmesg_as_makedumpfile(tmp_path: Path, as_makedumpfile: dict[str, str]) -> None:
    for name in (SOFTWARE, HARDWARE):
        src = real_vmcore(name)
        a, b = tmp_path / f"{name}.ours", tmp_path / f"{name}.theirs"
        res = mdf("--dump-dmesg", src, a, env=as_makedumpfile)
        assert res.returncode == 0, res.stderr
        assert mdf("--dump-dmesg", src, b).returncode == 0
        assert a.read_bytes() == b.read_bytes()


def test_rearrange_from_stdin(tmp_path: Path, as_makedumpfile: dict[str, str]) -> None:
    """kdump-utils recovers a raw target with `makedumpfile -R FILE < device`."""
    src = real_vmcore(SOFTWARE)
    stream = tmp_path / "stream"
    assert mdf(*KDUMP_UTILS_FLAT, src, stdout=stream).returncode == 0
    mine = tmp_path / "mine"
    res = mdf("-R", mine, env=as_makedumpfile, stdin=stream)
    assert res.returncode == 0, res.stderr
    assert mine.read_bytes() == rearrange(stream, tmp_path / "theirs").read_bytes()


def test_split_parts_join_with_makedumpfile(tmp_path: Path,
                                            as_makedumpfile: dict[str, str]) -> None:
    src = real_vmcore(SOFTWARE)
    parts = [tmp_path / "p1", tmp_path / "p2"]
    res = mdf("--split", "-l", "-d", "31", src, *parts, env=as_makedumpfile)
    assert res.returncode == 0, res.stderr
    joined, whole = tmp_path / "joined", tmp_path / "whole"
    assert mdf("--reassemble", *parts, joined).returncode == 0
    assert mdf("-l", "-d", "31", src, whole).returncode == 0
    assert_same_dump(joined, whole, src)


# -- hardware-error crash: a slimdump in the container asked for ------------------------


def test_kdump_tools_hardware_crash_is_a_flattened_slimdump(
        tmp_path: Path, as_makedumpfile: dict[str, str]) -> None:
    src = real_vmcore(HARDWARE)
    stream = tmp_path / "dump"
    res = mdf(*KDUMP_TOOLS, src, env=as_makedumpfile, stdout=stream)
    assert res.returncode == 0, res.stderr
    assert stream.stat().st_size < 128 << 10
    elf = rearrange(stream, tmp_path / "elf")
    assert elf.read_bytes()[:4] == b"\x7fELF"
    owners = [n.owner for n in readelf_notes(elf)]
    assert "PANIC_MCE" in owners and "VMCOREINFO" in owners
    # slimdump reads the stream as it is, and rearranges it as makedumpfile does
    facts = json.loads(slimdump("inspect", "--json", stream).stdout)
    assert facts["nocoredump"]["reason"] == "PANIC_MCE"
    ours = tmp_path / "ours"
    assert slimdump("reassemble", "--input", stream, ours).returncode == 0
    assert ours.read_bytes() == elf.read_bytes()


def test_kdump_utils_hardware_crash_is_a_slimdump(tmp_path: Path,
                                                  as_makedumpfile: dict[str, str]) -> None:
    src = real_vmcore(HARDWARE)
    out = tmp_path / "vmcore-incomplete"
    res = mdf(*KDUMP_UTILS, src, out, env=as_makedumpfile)
    assert res.returncode == 0, res.stderr
    assert out.stat().st_size < 128 << 10
    assert "PANIC_MCE" in [n.owner for n in readelf_notes(out)]


# -- what slimdump does not implement goes to the real makedumpfile ---------------------


def test_unimplemented_option_goes_to_makedumpfile(tmp_path: Path,
                                                   as_makedumpfile: dict[str, str]) -> None:
    src = real_vmcore(SOFTWARE)
    missing = tmp_path / "no-vmlinux"
    theirs = mdf("-x", missing, "-d", "31", src, tmp_path / "a")
    mine = mdf("-x", missing, "-d", "31", src, tmp_path / "b", env=as_makedumpfile)
    assert mine.returncode == theirs.returncode != 0
    assert f"handing the command line to {tool('makedumpfile')}" in mine.stderr
    assert theirs.stdout.strip() and theirs.stdout in mine.stdout


def test_unimplemented_option_without_makedumpfile_is_refused(
        tmp_path: Path, as_makedumpfile: dict[str, str]) -> None:
    env = dict(as_makedumpfile, SLIMDUMP_REAL_MAKEDUMPFILE="",
               PATH=as_makedumpfile["PATH"].split(os.pathsep)[0])
    res = mdf("--mem-usage", "/proc/kcore", env=env)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--mem-usage is not implemented" in lines[0]
    assert "no real makedumpfile" in lines[0]


# -- when the dump cannot be written, something is left ---------------------------------


def _failing_capture(*args: object, **kwargs: object) -> None:
    raise OSError(28, "No space left on device")


def _run(argv: list[str], *, written: int = 0,
         real: bool = True) -> tuple[int, list[tuple[list[str], str]]]:
    """makedumpfile_run.run in this process; ``real``: whether a real
    makedumpfile would take the command line (it is not run)."""
    handed: list[tuple[list[str], str]] = []

    def hand_over(args: list[str], why: str) -> int | None:
        handed.append((list(args), why))
        return 0 if real else None

    args = parse(argv)
    assert not hasattr(args, "lines")
    rc = makedumpfile_run.run(args, argv, written=lambda: written,  # type: ignore[arg-type]
                              hand_over=hand_over, say=lambda line: None)
    return rc, handed


def test_software_crash_failure_goes_to_makedumpfile(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(makedumpfile_run, "capture", _failing_capture)
    argv = [*KDUMP_UTILS, str(real_vmcore(SOFTWARE)), str(tmp_path / "out")]
    rc, handed = _run(argv)
    assert rc == 0 and handed == [(argv, "slimdump could not write the dump")]


def test_begun_stream_is_not_patched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(makedumpfile_run, "capture", _failing_capture)
    rc, handed = _run([*KDUMP_TOOLS, str(real_vmcore(SOFTWARE))], written=4096)
    assert rc == 1 and handed == []


def test_hardware_crash_failure_leaves_a_slimdump(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capfdbinary: pytest.CaptureFixture[bytes]
                                                  ) -> None:
    """Never the real makedumpfile for a machine check (it would read the
    poisoned page): the headers and notes, flattened on standard output,
    which makedumpfile -R turns into an ELF file readelf reads."""
    monkeypatch.setattr(makedumpfile_run, "capture", _failing_capture)
    rc, handed = _run([*KDUMP_TOOLS, str(real_vmcore(HARDWARE))])
    assert rc == 1 and handed == []
    stream = tmp_path / "stream"
    stream.write_bytes(capfdbinary.readouterr().out)
    elf = tmp_path / "elf"
    rearrange(stream, elf)
    owners = [n.owner for n in readelf_notes(elf)]
    assert "VMCOREINFO" in owners and "SLIMDUMP" in owners


def test_software_crash_failure_without_makedumpfile_leaves_a_slimdump(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kdump-utils' file form: DUMPFILE holds the headers and notes, with a
    metadata note naming the failure, and the exit status says it failed."""
    monkeypatch.setattr(makedumpfile_run, "capture", _failing_capture)
    out = tmp_path / "vmcore-incomplete"
    rc, handed = _run([*KDUMP_UTILS, str(real_vmcore(SOFTWARE)), str(out)], real=False)
    assert rc == 1 and len(handed) == 1
    owners = [n.owner for n in readelf_notes(out)]
    assert "VMCOREINFO" in owners and "SLIMDUMP" in owners and "PANIC_MCE" not in owners
    assert b"No space left on device" in out.read_bytes()


def test_help_and_version(as_makedumpfile: dict[str, str]) -> None:
    for flag in ("-h", "--help", "-v"):
        res = mdf(flag, env=as_makedumpfile)
        assert res.returncode == 0 and res.stdout.strip(), (flag, res.stderr)
    assert "slimdump" in mdf("-v", env=as_makedumpfile).stdout
