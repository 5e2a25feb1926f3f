"""Conformance: every slimdump command on every corpus file (tests/corpus.py)
either works or refuses with one line naming the file, and every dump it
writes is opened by libkdumpfile with the input's pages, byte for byte.

The oracle is libkdumpfile 0.5.1 (Debian's python3-libkdumpfile, run by
/usr/bin/python3 through tests/kdumpfile_oracle.py); flattened outputs are
rearranged by makedumpfile -R first.  What the input holds comes from the
independent builders' own record (tests/kdumpbuild.py) or from libkdumpfile
reading the input (or its rearranged twin).  At -d 0 and --full no page of
the input may go missing; the pages that count for an ELF input are those
makedumpfile's 1st bitmap counts (a trailing partial page does not,
kdump-formats.md 2.4), read from readelf's program headers.
"""

from __future__ import annotations

import atexit
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import corpus
from tests.conftest import real_vmcore, require_kdumpfile, tool
from tests.oracles import libkdumpfile_view, readelf_loads

ZERO_HASH = corpus.page_hash(bytes(corpus.PAGE))

# command -> (slimdump arguments before SRC, writes a dump, keep every page)
COMMANDS: dict[str, tuple[list[str], bool, bool]] = {
    "inspect": (["inspect"], False, False),
    "inspect-json": (["inspect", "--json"], False, False),
    "dmesg": (["dmesg"], False, False),
    "capture": (["capture"], True, False),
    "capture-l": (["capture", "-l"], True, False),
    "capture-c": (["capture", "-c"], True, False),
    "capture-E": (["capture", "-E"], True, False),
    "capture-F": (["capture", "-F"], True, False),
    "capture-full": (["capture", "--full"], True, True),
    "capture-d0": (["capture", "-d", "0", "-l"], True, True),
    "reassemble": (["reassemble"], True, False),
}
# makedumpfile's own outputs of the real vmcore (other than -c) get fewer commands
REAL_SHORT = ("inspect", "inspect-json", "dmesg", "capture-l", "capture-d0", "reassemble")
FULL_REAL = ("real-", "mdf-c-d31", "mdf-F-c-d31", "mdf-split")


def commands_for(entry: corpus.Entry) -> list[str]:
    names = [c for c in COMMANDS if c != "reassemble" or entry.kind == "flat"]
    if entry.real and not entry.name.startswith(FULL_REAL):
        names = [c for c in names if c in REAL_SHORT]
    return names


# -- the oracle ------------------------------------------------------------------------


def rearrange(flat: Path) -> Path:
    """makedumpfile -R: the file a flattened stream describes."""
    out = flat.with_name(flat.name + ".R")
    with open(flat, "rb") as stdin:
        subprocess.run([tool("makedumpfile"), "-R", str(out)], stdin=stdin,
                       capture_output=True, check=False)
    return out


def is_flat(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(16) == b"makedumpfile\0\0\0\0"


_TRUTH: dict[str, dict[int, str] | str] = {}


def input_pages(entry: corpus.Entry) -> dict[int, str] | str:
    """pfn -> hash of every page the input holds, or why it is unknown."""
    if entry.truth is not None:
        return entry.truth
    if entry.name not in _TRUTH:
        if entry.truth_path is None:
            _TRUTH[entry.name] = "no truth for this file"
        else:
            view = libkdumpfile_view(entry.truth_path, memsz=True)
            _TRUTH[entry.name] = view.get("pages") or str(view.get("error", "no pages"))
    return _TRUTH[entry.name]


def kept_pages(entry: corpus.Entry, pages: dict[int, str]) -> set[int]:
    """The input pages -d 0 and --full must keep: for an ELF input, pages
    makedumpfile's 1st bitmap would set (floor(start/P) .. floor(end/P) - 1)."""
    source = entry.truth_path or entry.path
    with open(source, "rb") as f:
        if f.read(4) != b"\x7fELF":
            return set(pages)
    whole: set[int] = set()
    for load in readelf_loads(Path(source)):
        whole.update(range(load.paddr // corpus.PAGE, (load.paddr + load.memsz) // corpus.PAGE))
    return set(pages) & whole


# -- one command -----------------------------------------------------------------------


@dataclass
class Outcome:
    """What one command did to one corpus file."""

    entry: str
    command: str
    code: int = 0
    stderr: str = ""
    problems: list[str] = field(default_factory=list)
    traceback: bool = False
    refused: bool = False
    output_opened: bool | None = None
    pages_compared: int = 0
    pages_differing: int = 0
    pages_lost: int = 0
    oracle_blind: bool = False       # libkdumpfile 0.5.1 cannot judge this output


def oracle_blind_layout(path: Path) -> bool:
    """A kdump file (v6+) of a 32-bit machine other than i386: libkdumpfile
    0.5.1 tells the two 32-bit sub header layouts (kdump-formats.md 2.3:
    i386 packs 64-bit fields on 4 bytes, ARM/PPC pad them to 8) apart by a
    guess from offset_vmcoreinfo read at the i386 offset, and guesses i386
    for these files (it then reads max_pfn 0), so it is no oracle for them;
    the same pages written at version 5 or in the i386 layout read back
    right."""
    with open(path, "rb") as f:
        head = f.read(12 + 6 * 65)
    if head[:8] != b"KDUMP   " or len(head) < 12 + 5 * 65:
        return False
    version = max(int.from_bytes(head[8:12], "little"), int.from_bytes(head[8:12], "big"))
    machine = head[12 + 4 * 65:12 + 5 * 65].split(b"\0", 1)[0]
    if version >= 1 << 16:
        version = min(int.from_bytes(head[8:12], "little"), int.from_bytes(head[8:12], "big"))
    return version >= 6 and (machine.startswith(b"arm") or machine in (b"ppc", b"mips",
                                                                       b"s390", b"riscv32"))


def run_command(entry: corpus.Entry, command: str, workdir: Path) -> Outcome:
    args, writes, keep_all = COMMANDS[command]
    out = workdir / f"{entry.name}.{command}.out"
    for stale in workdir.glob(f"{entry.name}.{command}.out*"):
        stale.unlink()
    cmd = [sys.executable, "-m", "slimdump", *args]
    if command == "reassemble":
        cmd += ["--input", entry.path, str(out)]
    elif command == "capture-F":
        cmd += ["--no-progress", *entry.paths]
    elif command.startswith("capture"):
        cmd += ["--no-progress", *entry.paths, str(out)]
    elif command == "dmesg":
        cmd += [*entry.paths, str(out)]
    else:
        cmd += entry.paths
    stdout = open(out, "wb") if command == "capture-F" else subprocess.PIPE  # noqa: SIM115
    try:
        proc = subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, timeout=600)
    finally:
        if command == "capture-F":
            stdout.close()
    result = Outcome(entry.name, command, proc.returncode,
                     proc.stderr.decode("utf-8", "replace"))
    err = result.stderr
    result.traceback = "Traceback" in err
    if result.traceback:
        result.problems.append("traceback: " + err.strip().splitlines()[-1])
    if proc.returncode not in (0, 1):
        result.problems.append(f"exit status {proc.returncode}: {err.strip()[-300:]}")
    if proc.returncode == 1:
        result.refused = True
        lines = err.splitlines()
        if len(lines) != 1:
            result.problems.append(f"refusal in {len(lines)} lines: {err.strip()[-300:]}")
        elif not any(p in lines[0] for p in [*entry.paths, str(out)]):
            result.problems.append(f"refusal does not name the file: {lines[0]}")
        if command != "capture-F" and out.exists():
            result.problems.append("a refused command left its output behind")
    if entry.refuse is not None and proc.returncode != 1:
        result.problems.append(f"accepted a file it must refuse (exit {proc.returncode})")
    if entry.refuse and proc.returncode == 1 and entry.refuse.lower() not in err.lower():
        result.problems.append(f"refusal does not say {entry.refuse!r}: {err.strip()}")
    if proc.returncode == 0 and command == "inspect-json":
        try:
            json.loads(proc.stdout)
        except json.JSONDecodeError as exc:
            result.problems.append(f"--json printed no JSON: {exc}")
    if proc.returncode == 0 and writes:
        check_output(entry, out, keep_all, result)
    for leftover in workdir.glob(f"{entry.name}.{command}.out*"):
        leftover.unlink()
    return result


def check_output(entry: corpus.Entry, out: Path, keep_all: bool, result: Outcome) -> None:
    """libkdumpfile opens the written dump and finds the input's pages in it."""
    if not out.exists():
        result.problems.append("exit 0 but no output written")
        return
    readable = rearrange(out) if is_flat(out) else out
    view = libkdumpfile_view(str(readable))
    result.output_opened = "error" not in view
    truth = input_pages(entry)
    if not result.output_opened and isinstance(truth, str) and truth == view["error"]:
        result.oracle_blind = True               # libkdumpfile refuses the input alike
        return
    if oracle_blind_layout(readable):
        result.oracle_blind = True
        return
    if not result.output_opened:
        result.problems.append(f"libkdumpfile cannot open the output: {view['error']}")
        return
    written: dict[int, str] = view["pages"]  # type: ignore[assignment]
    if isinstance(truth, str):
        return                                   # nothing known to compare with
    common = written.keys() & truth.keys()
    differ = sorted(p for p in common if written[p] != truth[p])
    extra = sorted(p for p in written.keys() - truth.keys() if written[p] != ZERO_HASH)
    result.pages_compared = len(common)
    result.pages_differing = len(differ) + len(extra)
    if differ:
        result.problems.append(f"{len(differ)} page(s) differ from the input, first pfn "
                               f"{differ[0]:#x}")
    if extra:
        result.problems.append(f"{len(extra)} non-zero page(s) the input does not hold, "
                               f"first pfn {extra[0]:#x}")
    if keep_all:
        lost = sorted(kept_pages(entry, truth) - written.keys())
        result.pages_lost = len(lost)
        if lost:
            result.problems.append(f"{len(lost)} input page(s) missing, first pfn {lost[0]:#x}")


# -- the corpus, once per session -------------------------------------------------------


def corpus_dir() -> Path:
    from tests.lab import vmcorelab

    return vmcorelab.cache_dir() / "conformance"


_SYNTHETIC_DIR = Path(tempfile.mkdtemp(prefix="slimdump-corpus-"))
atexit.register(shutil.rmtree, _SYNTHETIC_DIR, True)
_SYNTHETIC = corpus.build_synthetic(_SYNTHETIC_DIR)
_REAL_NAMES = ["real-" + corpus.REAL_FIXTURE, *corpus.MDF_OUTPUTS, "mdf-split-0",
               "mdf-split-1", "mdf-split"]


def _params() -> Iterator[object]:
    for entry in _SYNTHETIC:
        for command in commands_for(entry):
            yield pytest.param(entry.name, command, id=f"{entry.name}-{command}")
    for name in _REAL_NAMES:
        probe = corpus.Entry(name, [""], "flat" if "F" in name else "kdump", real=True)
        for command in commands_for(probe):
            yield pytest.param(name, command, id=f"{name}-{command}")


@pytest.fixture(scope="session")
def entries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, corpus.Entry]:
    require_kdumpfile()
    found = {e.name: e for e in _SYNTHETIC}
    vmcore = real_vmcore(corpus.REAL_FIXTURE)
    tool("makedumpfile")
    found["real-" + corpus.REAL_FIXTURE] = corpus.Entry(
        "real-" + corpus.REAL_FIXTURE, [str(vmcore)], "elf", truth_path=str(vmcore),
        has_log=True, real=True)
    found.update({e.name: e for e in corpus.makedumpfile_outputs(vmcore, corpus_dir(),
                                                                 tool("makedumpfile"))})
    return found


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("conformance")


@pytest.mark.parametrize(("name", "command"), list(_params()))
def test_command(entries: dict[str, corpus.Entry], workdir: Path, name: str,
                 command: str) -> None:
    entry = entries[name]
    result = run_command(entry, command, workdir)
    assert not result.problems, f"{entry.path} {command}: " + "; ".join(result.problems)


@pytest.mark.parametrize("name", [e.name for e in _SYNTHETIC if e.truth and e.kind != "split"])
def test_builder_agrees_with_libkdumpfile(entries: dict[str, corpus.Entry], name: str) -> None:
    """The oracle and the builder read the corpus the same way (where
    libkdumpfile 0.5.1 reads the format right: not 32-bit ARM layouts v6+)."""
    entry = entries[name]
    source = entry.path
    if entry.kind == "flat":
        source = str(rearrange(Path(entry.path)))
    view = libkdumpfile_view(source)
    if not entry.oracle_input:
        assert view.get("pages") != entry.truth or not entry.truth
        return
    if entry.name == "flat-empty":
        assert "error" in view
        return
    assert "error" not in view, view.get("error")
    assert view["pages"] == entry.truth
