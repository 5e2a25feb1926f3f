"""A capture killed at any moment loses nothing that was complete (issue 13).

``slimdump capture`` writes the triage slimdump to DST.triage (temporary
name, fsync, rename), then DST under ``.<basename>.<8 hex>.part`` beside it,
renamed when complete.  So whenever the process dies:

* under DST there is nothing, or the complete dump (the rename came first);
* DST.triage is absent or a complete slimdump;
* what a SIGKILL leaves is ``.part`` files, which the next capture into that
  directory removes (saying so on one warning line) before it writes the
  dump and its triage anew.

SIGTERM (and SIGHUP, SIGINT) unwinds instead: exit status 128+N (143 for
SIGTERM), one line on stderr naming the signal, no ``.part`` left, nothing
under DST, the triage slimdump (written before) kept.

Judges: eu-readelf (the triage's notes), makedumpfile --dump-dmesg (the log
read back from the dump equals the one it reads from the source),
libkdumpfile (sampled pages of the dump equal the source's) and the lab's
record of the fixture (its panic line, its machine-check address).
bench/kill_points.py runs the same trial at more points on the 4 GiB
fixture and imports the helpers below.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import real_vmcore, require_kdumpfile, run, tool, vmcore_facts
from tests.oracles import KDUMPFILE_ORACLE, eu_readelf_notes, readelf_loads

# the temporary name the issue specifies: .<basename(DST)>.<8 hex>.part
PART = re.compile(r"\..+\.[0-9a-f]{8}\.part\Z")
# docs (nocoredump-note.md): SLIMDUMP note types as eu-readelf prints them
SLIMDUMP_TYPES = {f"<unknown>: {0x534C0001}": "metadata", f"<unknown>: {0x534C0002}": "log"}
ALL_NORMAL = "".join(f'{key} = "normal"\n' for key in (
    "PANIC_MCE", "PANIC_GHES", "PANIC_NMI", "default", "software"))
PAGE = 4096
SAMPLE_PAGES = 256


def write_policy(path: Path) -> Path:
    """A policy file mapping every reason to a normal dump."""
    path.write_text("[actions]\n" + ALL_NORMAL)
    return path


def capture_cmd(src: Path, dst: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "slimdump", "capture", "--no-progress", *options,
            str(src), str(dst)]


def listing(directory: Path) -> dict[str, int]:
    """Every name in ``directory`` with its size."""
    return {p.name: p.stat().st_size for p in sorted(directory.iterdir())}


def human(size: int) -> str:
    return f"{size} B" if size < 1 << 20 else f"{size / (1 << 20):.1f} MiB"


@dataclass
class Oracle:
    """What independent readers say a complete dump of ``src`` must hold."""

    name: str
    src: Path
    seed: int = 0
    _dmesg: str | None = None
    _pages: dict[str, object] | None = None

    @property
    def facts(self) -> dict[str, object]:
        return vmcore_facts(self.name)

    @property
    def mce_pfn(self) -> int | None:
        mce = self.facts.get("mce")
        return int(mce["addr"], 0) // PAGE if isinstance(mce, dict) else None

    def dmesg(self, path: Path) -> tuple[int, str]:
        out = path.with_name(path.name + ".mdf-dmesg")
        proc = run(tool("makedumpfile"), "--dump-dmesg", path, out, check=False)
        text = out.read_text(errors="replace") if out.exists() else ""
        out.unlink(missing_ok=True)
        return proc.returncode, text

    def pfns(self) -> list[int]:
        """A fixed sample of pfns the source holds (readelf's PT_LOADs), and
        the machine-check page if any."""
        ranges = [(ld.paddr // PAGE, (ld.paddr + ld.filesz) // PAGE)
                  for ld in readelf_loads(self.src) if ld.filesz >= PAGE]
        total = sum(hi - lo for lo, hi in ranges)
        rng = random.Random(self.seed)
        picks = []
        for k in sorted(rng.sample(range(total), min(SAMPLE_PAGES, total))):
            for lo, hi in ranges:
                if k < hi - lo:
                    picks.append(lo + k)
                    break
                k -= hi - lo
        return sorted({*picks, *([self.mce_pfn] if self.mce_pfn is not None else [])})

    def pages(self, path: Path) -> dict[str, object]:
        args = [require_kdumpfile(), str(KDUMPFILE_ORACLE), str(path),
                *(str(p) for p in self.pfns())]
        proc = subprocess.run(args, capture_output=True, text=True)
        try:
            return json.loads(proc.stdout)
        except json.JSONDecodeError:
            return {"error": f"libkdumpfile oracle exit {proc.returncode}: {proc.stderr[-200:]}"}

    def dump_problems(self, dst: Path) -> list[str]:
        """Why ``dst`` is not a complete -d 0 dump of the source (empty: it is)."""
        if self._dmesg is None:
            rc, self._dmesg = self.dmesg(self.src)
            assert rc == 0 and self._dmesg, f"makedumpfile --dump-dmesg {self.src}: exit {rc}"
            self._pages = self.pages(self.src)
            assert "error" not in self._pages, self._pages
        problems = []
        rc, text = self.dmesg(dst)
        if rc != 0 or text != self._dmesg:
            problems.append(f"makedumpfile --dump-dmesg: exit {rc}, "
                            f"{'same' if text == self._dmesg else 'different'} log")
        view = self.pages(dst)
        if "error" in view:
            return [*problems, f"libkdumpfile: {view['error']}"]
        want = dict(self._pages["pages"])            # type: ignore[index]
        have = dict(view["pages"])                   # type: ignore[arg-type]
        if self.mce_pfn is not None and have.pop(self.mce_pfn, None) is not None:
            problems.append(f"libkdumpfile reads the machine-check page {self.mce_pfn:#x}")
        want.pop(self.mce_pfn, None)
        wrong = sorted(pfn for pfn in want if have.get(pfn) != want[pfn])
        if wrong or set(have) - set(want):
            problems.append(f"libkdumpfile: {len(wrong)} of {len(want)} sampled pages differ "
                            f"or are missing (first {wrong[:3]})")
        return problems

    def triage_problems(self, triage: Path) -> list[str]:
        """Why ``triage`` is not a complete triage slimdump (empty: it is)."""
        proc = run(tool("eu-readelf"), "-n", triage, check=False)
        if proc.returncode != 0:
            return [f"eu-readelf -n: exit {proc.returncode}: {proc.stderr.strip()[:200]}"]
        notes = eu_readelf_notes(triage)
        problems = []
        if not any(n.owner == "VMCOREINFO" for n in notes):
            problems.append("eu-readelf -n: no VMCOREINFO note")
        for kind, what in SLIMDUMP_TYPES.items():
            if not any(n.owner == "SLIMDUMP" and n.type == kind for n in notes):
                problems.append(f"eu-readelf -n: no SLIMDUMP {what} note")
        if str(self.facts["panic_contains"]).encode() not in triage.read_bytes():
            problems.append("the panic line is not in it")
        inspect = run(sys.executable, "-m", "slimdump", "inspect", triage, check=False)
        if inspect.returncode != 0:
            problems.append(f"slimdump inspect: exit {inspect.returncode}")
        return problems


@dataclass
class Trial:
    """One capture killed at ``at`` seconds, and the capture run after it."""

    at: float
    exit: int = 0
    seen: dict[str, int] = field(default_factory=dict)
    cleanup: str = ""
    recovery_exit: int = 0
    after: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        return (f"killed at {self.at:.2f} s (exit {self.exit}): on disk "
                f"{self.seen or 'nothing'}; next run exit {self.recovery_exit}, "
                f"cleanup {self.cleanup!r}, left {sorted(self.after)}; problems: "
                f"{self.problems}")


def timed_run(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return time.monotonic() - start, proc


def kill_times(duration: float, count: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return sorted(rng.uniform(0, duration) for _ in range(count))


def kill_at(cmd: list[str], at: float) -> int:
    """Start ``cmd`` in its own process group, SIGKILL the group ``at``
    seconds later (unless it has exited); its exit status (-9 when killed)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        proc.wait(timeout=max(0.0, at - (time.monotonic() - start)))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


def kill_trial(oracle: Oracle, directory: Path, at: float, *options: str) -> Trial:
    """Kill a capture into the empty ``directory`` at ``at`` s, check what it
    left, capture again and check that."""
    directory.mkdir()
    dst = directory / "dump"
    triage = directory / "dump.triage"
    cmd = capture_cmd(oracle.src, dst, *options)
    trial = Trial(at, kill_at(cmd, at))
    trial.seen = listing(directory)
    parts = sorted(n for n in trial.seen if PART.match(n))
    if trial.exit not in (0, -signal.SIGKILL):
        trial.problems.append(f"the capture exited {trial.exit} before the kill")
    if trial.exit == 0 and not (dst.name in trial.seen and triage.name in trial.seen):
        trial.problems.append("exit 0 without DST and DST.triage")
    others = set(trial.seen) - {dst.name, triage.name, *parts}
    if others:
        trial.problems.append(f"unexpected files {sorted(others)}")
    if dst.name in trial.seen:
        trial.problems += [f"DST after the kill: {p}" for p in oracle.dump_problems(dst)]
    if triage.name in trial.seen:
        trial.problems += [f"DST.triage after the kill: {p}"
                           for p in oracle.triage_problems(triage)]
    again = subprocess.run(cmd + (["-f"] if dst.exists() else []), capture_output=True,
                           text=True)
    trial.recovery_exit = again.returncode
    lines = [ln for ln in again.stderr.splitlines() if "temporary file" in ln]
    trial.cleanup = "\n".join(lines)
    if again.returncode != 0:
        trial.problems.append(f"next capture exit {again.returncode}: {again.stderr.strip()}")
    if parts and not (len(lines) == 1 and all(p in lines[0] for p in parts)):
        trial.problems.append(f"next capture did not name the removed {parts} on one line")
    if not parts and lines:
        trial.problems.append("cleanup line with no .part left")
    trial.after = listing(directory)
    if set(trial.after) != {dst.name, triage.name}:
        trial.problems.append(f"next capture left {sorted(trial.after)}")
    else:
        trial.problems += [f"DST after the next capture: {p}" for p in oracle.dump_problems(dst)]
        trial.problems += [f"DST.triage after the next capture: {p}"
                           for p in oracle.triage_problems(triage)]
    return trial


# -- the tests ---------------------------------------------------------------------------

NAME = "6.1-sysrq"
SEED = 13
POINTS = 3


def test_sigkill_at_random_points_then_recapture(tmp_path: Path) -> None:
    oracle = Oracle(NAME, real_vmcore(NAME), SEED)
    options = ("--policy", str(write_policy(tmp_path / "policy.toml")), "-c", "-d", "0")
    whole = tmp_path / "whole"
    whole.mkdir()
    duration, proc = timed_run(capture_cmd(oracle.src, whole / "dump", *options))
    assert proc.returncode == 0, proc.stderr
    assert set(listing(whole)) == {"dump", "dump.triage"}
    assert oracle.dump_problems(whole / "dump") == []
    assert oracle.triage_problems(whole / "dump.triage") == []
    trials = [kill_trial(oracle, tmp_path / f"kill{i}", at, *options)
              for i, at in enumerate(kill_times(duration, POINTS, SEED))]
    assert [t.describe() for t in trials if not t.ok] == []


def _default_sigint() -> None:
    """In the child: SIGINT as Python expects it (a shell's background job
    inherits it ignored, and Python then leaves it so)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT],
                         ids=lambda s: signal.Signals(s).name)
def test_signal_removes_the_part_and_keeps_the_triage(tmp_path: Path, signum: int) -> None:
    oracle = Oracle(NAME, real_vmcore(NAME), SEED)
    dst = tmp_path / "dump"
    cmd = capture_cmd(oracle.src, dst, "--policy", str(write_policy(tmp_path / "p.toml")),
                      "-c", "-d", "0")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    grown = None
    while proc.poll() is None and grown is None:
        for path in tmp_path.iterdir():
            # the dump's .part (not the triage's), with a few MiB on disk
            if (PART.match(path.name) and path.name.startswith(".dump.")
                    and not path.name.startswith(".dump.triage.")):
                try:
                    if path.stat().st_blocks * 512 > 4 << 20:
                        grown = path
                except FileNotFoundError:
                    pass
        time.sleep(0.005)
    # stopped, so that it cannot finish between the check and the signal
    proc.send_signal(signal.SIGSTOP)
    assert grown is not None, f"the capture ended first: {proc.returncode}"
    proc.send_signal(signum)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    lines = err.splitlines()
    assert len(lines) == 1 and signal.Signals(signum).name in lines[0], err
    assert set(listing(tmp_path)) == {"p.toml", "dump.triage"}
    assert oracle.triage_problems(tmp_path / "dump.triage") == []
