"""Hostile inputs at scale: scripts/fuzz.py mutates the real 6.1-sysrq
vmcore, and the kdump-compressed and flattened dumps slimdump makes from it,
150 times (ELF and program headers, notes, VMCOREINFO, the printk ring
buffer, struct pages, kdump headers, bitmaps and page descriptors,
flattened records, truncation) and runs capture, dmesg and inspect on each
mutant.  No run may end in a traceback, run past its time limit, die of a
signal, or leave output behind after failing.

The classifier is checked first on outcomes made up here, so that a broken
harness cannot turn the run green."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import real_vmcore

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

from fuzz.classify import FATAL, classify  # noqa: E402

TRACEBACK = """Traceback (most recent call last):
  File "/x/src/slimdump/cli.py", line 197, in main
    return COMMANDS[args.command](args)
  File "/x/src/slimdump/kernel/printk.py", line 42, in read
    n = get(ring, o, 4)
struct.error: unpack requires a buffer of 4 bytes
"""


@pytest.mark.parametrize(("reply", "stderr", "leave", "expected"), [
    ({"status": 0, "timed_out": False}, "slimdump: wrote x\n", "out", "ok"),
    ({"status": 1, "timed_out": False}, "slimdump: /v: truncated ELF header\n", "", "refused"),
    ({"status": 1, "timed_out": False}, TRACEBACK, "", "TRACEBACK"),
    ({"status": 3, "timed_out": False}, "", "", "TRACEBACK"),
    ({"status": -signal.SIGALRM, "timed_out": True}, "", "", "HANG"),
    ({"status": -signal.SIGSEGV, "timed_out": False}, "", "", "CRASH"),
    ({"status": 1, "timed_out": False}, "x.c:3: runtime error: shift\n", "", "CRASH"),
    ({"status": 1, "timed_out": False}, "slimdump: /v: bad\n", "out", "LEFTOVER"),
    ({"status": 0, "timed_out": False}, "slimdump: wrote x\n", ".out.0123abcd.part", "LEFTOVER"),
    ({"status": 1, "timed_out": False}, "oops\n", "", "BADMSG"),
    ({"status": 1, "timed_out": False}, "slimdump: something failed\n", "", "BADMSG"),
])
def test_classifier(tmp_path: Path, reply: dict, stderr: str, leave: str, expected: str) -> None:
    if leave:
        (tmp_path / leave).write_bytes(b"x")
    result = classify(reply, stderr, str(tmp_path), str(tmp_path / "out"),
                      str(tmp_path / "stdout"), ["/v", str(tmp_path / "out")])
    assert result["class"] == expected
    if expected == "TRACEBACK" and reply["status"] == 1:
        assert result["origin"] == "slimdump/kernel/printk.py:42 (read)"
        assert result["exception"] == "struct.error"


def test_fuzz_6_1_sysrq(tmp_path: Path) -> None:
    vmcore = real_vmcore("6.1-sysrq")
    out = tmp_path / "fuzz"
    res = subprocess.run([sys.executable, str(SCRIPTS / "fuzz.py"), "--n", "150", "--seed", "1",
                          "--timeout", "60", "--fixtures", str(vmcore), "--out", str(out)],
                         capture_output=True, text=True)
    assert (out / "report.json").exists(), res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["cases"] == 150
    # every kind of input was mutated and run (the harness reached them all)
    assert {"elf-header", "vmcoreinfo", "printk", "struct-page", "kdump-desc",
            "flat-record"} <= set(report["by_target"])
    assert report["counts"]["ok"] and report["counts"]["refused"]
    bad = {c: report["counts"][c] for c in FATAL if report["counts"][c]}
    assert not bad, f"{bad}\n{res.stdout[-6000:]}"
    assert res.returncode == 0, res.stderr[-3000:]
