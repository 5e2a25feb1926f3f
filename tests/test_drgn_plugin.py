"""drgn opens a slimdump and says why there is no memory (issue 10 item 5).

The plugin (slimdump.drgn, entry point group ``drgn.plugins``) is installed
with the package; drgn from PyPI finds it by itself.  drgn is run as a user
runs it: ``drgn -c FILE`` in a subprocess, and a script that calls
``drgn.Program().set_core_dump()``.

The expected texts are independent of the code under test: the headlines
are copied from the protocol's table (shared/reference/nocoredump-note.md),
the machine check is the one the lab injected (tests/lab/vmcorelab.py), the
kernel's panic words are those the lab waited for (the fixture metadata).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import real_vmcore, require, require_module, slimdump
from tests.lab import vmcorelab

drgn = require_module("drgn")

# The protocol's headlines (nocoredump-note.md, "Reason codes and what an analyzer says").
HEADLINE = {
    "PANIC_MCE": "System crashed due to a hardware memory error. No coredump available.",
    "PANIC_NMI": "System crashed due to an unrecoverable NMI, likely hardware. "
                 "No coredump available.",
}
CODE = {"6.1-mce": "PANIC_MCE", "6.1-nmi": "PANIC_NMI",
        "6.1p-mce": "PANIC_MCE", "6.1p-nmi": "PANIC_NMI"}
# what the kernel logs before an NMI panic (nocoredump-note.md, "Detection")
NMI_LOG_LINE = "NMI received for unknown reason"


def drgn_cli(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """``drgn ARGS`` from the venv's bin, as a user types it (no debuginfod:
    the test host need not reach one)."""
    exe = Path(sys.executable).parent / "drgn"
    if not exe.exists():
        require(f"the drgn command is not installed beside {sys.executable}")
    env = {**os.environ, "DEBUGINFOD_URLS": ""}
    env.pop("DRGN_DISABLE_PLUGINS", None)
    return subprocess.run([str(exe), *map(os.fspath, args)], capture_output=True, text=True,
                          env=env, timeout=300, check=False)


def make_slimdump(name: str, path: str, out: Path, action: str = "slim") -> Path:
    """A slimdump of fixture ``name`` as a user makes one.  ``log``: capture
    finds the hardware crash in the kernel log (stock kernels).  ``note``:
    ``slimdump mark`` first adds the NT_NOCOREDUMP note a patched kernel
    writes (simulating the 2011 chain's kernel), then capture trusts the
    note and reads no memory.  ``kernel``: the lab's patched kernel
    (kernel/patches) wrote the note itself; capture trusts it.  ``action``:
    the policy's action for the reason (``dmesg`` adds the kernel log)."""
    src = real_vmcore(name)
    slim = out / f"{name}-{path}-{action}.slim"
    if path == "note":
        marked = out / f"{name}.marked"
        res = slimdump("mark", src, marked, "--reason", CODE[name], "--message",
                       vmcorelab.metadata(name)["panic_contains"])
        assert res.returncode == 0, res.stderr
        src = marked
    policy = out / f"{action}.toml"
    policy.write_text(f'[actions]\n{CODE[name]} = "{action}"\n')
    res = slimdump("capture", "--no-progress", "--policy", policy, src, slim)
    assert res.returncode == 0, res.stderr
    if path == "note":
        src.unlink()            # 600 MiB: not kept in pytest's last three tmp dirs
    return slim


@pytest.mark.vmcore
@pytest.mark.parametrize(("name", "path"), [("6.1-mce", "log"), ("6.1-mce", "note"),
                                            ("6.1-nmi", "log"), ("6.1-nmi", "note"),
                                            ("6.1p-mce", "kernel"), ("6.1p-nmi", "kernel")])
def test_drgn_c_prints_headline_and_reason(name: str, path: str, tmp_path: Path) -> None:
    slim = make_slimdump(name, path, tmp_path)
    res = drgn_cli("-c", slim, "-e", "print('script ran')")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "script ran\n"
    assert "Traceback" not in res.stderr
    code = CODE[name]
    lines = res.stderr.splitlines()
    # the protocol's order: headline, reason line, the kernel's words
    assert lines[:3] == [HEADLINE[code], f"Nocoredump Reason: {code}",
                         vmcorelab.metadata(name)["panic_contains"]]
    if path == "log" and code == "PANIC_MCE":
        err = next(line for line in lines if "Machine check on CPU" in line)
        assert f"bank {vmcorelab.MCE_BANK}:" in err
        assert f"MCi_STATUS {vmcorelab.MCE_STATUS:#x}" in err
        assert f"ADDR {vmcorelab.MCE_ADDR:#x}" in res.stderr
    elif path == "log":
        assert NMI_LOG_LINE in res.stderr
    else:   # the kernel's note was trusted; the log was not read
        assert "Machine check on CPU" not in res.stderr
        assert "none recorded" in res.stderr


@pytest.mark.vmcore
def test_drgn_c_silent_for_complete_vmcores(tmp_path: Path) -> None:
    """A complete vmcore has memory to debug: nothing from the plugin, with
    or without an NT_NOCOREDUMP note."""
    src = real_vmcore("6.1-mce")
    marked = tmp_path / "marked.vmcore"
    res = slimdump("mark", src, marked, "--reason", "PANIC_MCE")
    assert res.returncode == 0, res.stderr
    try:
        for core in (src, marked):
            res = drgn_cli("-q", "-c", core, "-e", "print('script ran')")
            assert res.returncode == 0, res.stderr
            assert res.stdout == "script ran\n"
            assert res.stderr == "", core
    finally:
        marked.unlink()


SCRIPT = """\
import sys
import drgn
import slimdump.drgn

prog = drgn.Program()
prog.set_core_dump(sys.argv[1])
note = slimdump.drgn.reason(prog)
meta = slimdump.drgn.metadata(prog)
log = slimdump.drgn.log(prog)
print(note.reason if note else None, note.message if note else None)
print(meta["detected_by"] if meta else None)
print(log is not None and "Kernel panic - not syncing: Fatal local machine check" in log)
"""


@pytest.mark.vmcore
def test_script_set_core_dump_and_helpers(tmp_path: Path) -> None:
    """``drgn.Program().set_core_dump()`` in a plain Python script prints the
    verdict too, and the helpers give the reason, metadata and log."""
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    panic = vmcorelab.metadata("6.1-mce")["panic_contains"]
    # the dmesg action carries the log, the slim action does not
    expected = {("log", "dmesg"): f"PANIC_MCE {panic}\nkernel-log\nTrue\n",
                ("log", "slim"): f"PANIC_MCE {panic}\nkernel-log\nFalse\n",
                ("note", "slim"): f"PANIC_MCE {panic}\nkernel-note\nFalse\n"}
    for (path, action), stdout in expected.items():
        slim = make_slimdump("6.1-mce", path, tmp_path, action)
        res = subprocess.run([sys.executable, script, slim], capture_output=True, text=True,
                             check=False, timeout=300)
        assert res.returncode == 0, res.stderr
        assert res.stdout == stdout
        assert res.stderr.splitlines()[:2] == [HEADLINE["PANIC_MCE"],
                                               "Nocoredump Reason: PANIC_MCE"]
    res = subprocess.run([sys.executable, script, real_vmcore("6.1-sysrq")],
                         capture_output=True, text=True, check=False, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "None None\nNone\nFalse\n"
    assert res.stderr == ""


@pytest.mark.vmcore
def test_broken_slimdump_one_line(tmp_path: Path) -> None:
    """A slimdump whose SLIMDUMP note claims more bytes than its segment:
    drgn still opens it; the plugin says so in one line and drgn goes on."""
    slim = make_slimdump("6.1-mce", "note", tmp_path)
    data = bytearray(slim.read_bytes())
    at = data.index(b"SLIMDUMP\0") - 12         # the note's header: namesz, descsz, type
    namesz, descsz, _ = struct.unpack_from("<III", data, at)
    assert namesz == len(b"SLIMDUMP\0")
    struct.pack_into("<I", data, at + 4, descsz + 100_000)
    broken = tmp_path / "broken.slim"
    broken.write_bytes(data)
    res = drgn_cli("-q", "-c", broken, "-e", "print('script ran')")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "script ran\n"
    assert len(res.stderr.splitlines()) == 1, res.stderr
    assert str(broken) in res.stderr and "Traceback" not in res.stderr
    # drgn's own switch turns the plugin off by its entry point name
    env = {**os.environ, "DRGN_DISABLE_PLUGINS": "slimdump", "DEBUGINFOD_URLS": ""}
    res = subprocess.run([str(Path(sys.executable).parent / "drgn"), "-q", "-c", str(slim),
                          "-e", "pass"], capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0 and res.stderr == ""
