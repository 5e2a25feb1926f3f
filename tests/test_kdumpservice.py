"""``slimdump setup kdump-tools``: the diversion of Debian's makedumpfile and
its undo, on throwaway system images (``--root``), never on this host (its
makedumpfile is the other tests' oracle).

The oracle is dpkg-divert itself: ``dpkg-divert --root DIR --list`` before,
after setup and after undo, and ``--listpackage``/``--truename`` for the
diversion slimdump made; the original makedumpfile's bytes and mode come
back under their own name.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from slimdump import cli, kdumpservice
from tests.conftest import run, slimdump, tool

DPKG_DIVERT = tool("dpkg-divert")
tool("dpkg-query")

MAKEDUMPFILE = "/usr/bin/makedumpfile"
DISTRIB = "/usr/bin/makedumpfile.distrib"
COLLECTOR = "/usr/bin/slimdump-makedumpfile"

STATUS_ENTRY = """\
Package: {package}
Status: {status}
Priority: optional
Section: utils
Installed-Size: 1
Maintainer: Test <test@example.org>
Architecture: amd64
Version: 1:1.8.1
Description: a stand-in for the real package
"""


def make_root(tmp_path: Path, *, kdump_tools: str | None = "install ok installed",
              kdump_config: bool = True, makedumpfile: bool = True,
              collector: bool = True) -> Path:
    """A system image dpkg-divert --root accepts: dpkg's database (with one
    unrelated diversion made by dpkg-divert, so that the list is not empty),
    kdump-tools' status entry and script, makedumpfile and the collector."""
    root = tmp_path / "root"
    dpkg = root / "var/lib/dpkg"
    for sub in ("info", "updates", "triggers"):
        (dpkg / sub).mkdir(parents=True)
    status = STATUS_ENTRY.format(package="dash", status="install ok installed")
    if kdump_tools is not None:
        status += "\n" + STATUS_ENTRY.format(package="kdump-tools", status=kdump_tools)
    (dpkg / "status").write_text(status)
    (dpkg / "diversions").write_text("")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/sbin").mkdir(parents=True)
    (root / "bin").mkdir()
    run(DPKG_DIVERT, "--root", root, "--package", "dash", "--divert", "/bin/sh.distrib",
        "--add", "/bin/sh")
    if kdump_config:
        _executable(root / "usr/sbin/kdump-config", b"#!/bin/sh\nexit 0\n")
    if makedumpfile:
        _executable(root / MAKEDUMPFILE.lstrip("/"), b"\x7fELF stand-in " + os.urandom(4096))
    if collector:
        _executable(root / COLLECTOR.lstrip("/"), b"#!/usr/bin/python3\nprint('collector')\n")
    return root


def _executable(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o755)


def divert_list(root: Path) -> str:
    return run(DPKG_DIVERT, "--root", root, "--list").stdout


def divert_query(root: Path) -> tuple[str, str]:
    """(package, true name) of /usr/bin/makedumpfile, as dpkg-divert says."""
    return (run(DPKG_DIVERT, "--root", root, "--listpackage", MAKEDUMPFILE).stdout.strip(),
            run(DPKG_DIVERT, "--root", root, "--truename", MAKEDUMPFILE).stdout.strip())


def snapshot(root: Path) -> dict[str, tuple[str, ...]]:
    """Every file under usr/bin and dpkg's diversions: kind, target or
    content hash and mode."""
    out: dict[str, tuple[str, ...]] = {}
    for path in sorted([*(root / "usr/bin").iterdir(), root / "var/lib/dpkg/diversions"]):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            out[path.name] = ("link", os.readlink(path))
        else:
            out[path.name] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(),
                              oct(st.st_mode))
    return out


def setup(root: Path, *extra: str):
    return slimdump("setup", "kdump-tools", "--root", str(root), *extra)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


# -- setup, again, undo, again -------------------------------------------------------


def test_setup_idempotent_and_undo(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    before_list = divert_list(root)
    before = snapshot(root)
    original = before["makedumpfile"]
    assert "/bin/sh" in before_list and "makedumpfile" not in before_list

    done = setup(root)
    assert done.returncode == 0, done.stderr
    assert "now runs slimdump" in one_line(done.stdout) and not done.stderr
    assert divert_query(root) == ("slimdump", DISTRIB)
    assert sorted(divert_list(root).splitlines()) == sorted([
        *before_list.splitlines(), f"diversion of {MAKEDUMPFILE} to {DISTRIB} by slimdump"])
    after = snapshot(root)
    assert after["makedumpfile"] == ("link", COLLECTOR)
    assert after["makedumpfile.distrib"] == original     # the same bytes and mode
    assert set(after) == set(before) | {"makedumpfile.distrib"}   # no temporary left

    again = setup(root)
    assert again.returncode == 0, again.stderr
    assert "already runs slimdump" in one_line(again.stdout)
    assert snapshot(root) == after

    undone = setup(root, "--undo")
    assert undone.returncode == 0, undone.stderr
    assert "makedumpfile again" in one_line(undone.stdout)
    assert divert_list(root) == before_list
    assert divert_query(root) == ("", MAKEDUMPFILE)
    assert snapshot(root) == before

    twice = setup(root, "--undo")
    assert twice.returncode == 0 and "nothing to undo" in one_line(twice.stdout)
    assert divert_list(root) == before_list and snapshot(root) == before


def test_setup_repairs_a_missing_link(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    assert setup(root).returncode == 0
    after = snapshot(root)
    (root / MAKEDUMPFILE.lstrip("/")).unlink()
    done = setup(root)
    assert done.returncode == 0 and "again" in one_line(done.stdout)
    assert snapshot(root) == after


def test_without_makedumpfile(tmp_path: Path) -> None:
    """kdump-tools only recommends makedumpfile: the diversion is made all
    the same (a later install goes to .distrib) and undone to nothing."""
    root = make_root(tmp_path, makedumpfile=False)
    before_list, before = divert_list(root), snapshot(root)
    done = setup(root)
    assert done.returncode == 0 and "not installed" in one_line(done.stdout)
    assert divert_query(root) == ("slimdump", DISTRIB)
    assert os.readlink(root / MAKEDUMPFILE.lstrip("/")) == COLLECTOR
    assert setup(root, "--undo").returncode == 0
    assert divert_list(root) == before_list and snapshot(root) == before


# -- refusals: one line, exit 1, nothing changed ------------------------------------


@pytest.mark.parametrize("shape", [
    {"kdump_tools": None},                                     # never installed
    {"kdump_tools": "deinstall ok config-files"},              # removed, not purged
    {"kdump_config": False},                                   # dpkg says so, script gone
])
def test_refuses_without_kdump_tools(tmp_path: Path, shape: dict[str, object]) -> None:
    root = make_root(tmp_path, **shape)  # type: ignore[arg-type]
    before_list, before = divert_list(root), snapshot(root)
    done = setup(root)
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert "kdump-tools is not installed" in line and "/usr/sbin/kdump-config" in line
    assert divert_list(root) == before_list and snapshot(root) == before


def test_refuses_without_collector(tmp_path: Path) -> None:
    root = make_root(tmp_path, collector=False)
    before_list, before = divert_list(root), snapshot(root)
    done = setup(root)
    assert done.returncode == 1 and "slimdump-makedumpfile" in one_line(done.stderr)
    assert divert_list(root) == before_list and snapshot(root) == before


def test_refuses_another_diversion(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    run(DPKG_DIVERT, "--root", root, "--package", "other", "--rename", "--divert",
        "/usr/bin/makedumpfile.other", "--add", MAKEDUMPFILE)
    before_list, before = divert_list(root), snapshot(root)
    done = setup(root)
    assert done.returncode == 1 and "by other" in one_line(done.stderr)
    undone = setup(root, "--undo")
    assert undone.returncode == 0 and "nothing to undo" in one_line(undone.stdout)
    assert divert_list(root) == before_list and snapshot(root) == before


def test_refuses_when_not_root(monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    """On this system (no --root) a user who is not root is refused before
    anything is looked at."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    called: list[tuple[str, ...]] = []
    monkeypatch.setattr(kdumpservice, "_dpkg_divert", lambda *a: called.append(a) or "")
    for argv in (["setup", "kdump-tools"], ["setup", "kdump-tools", "--undo"]):
        assert cli.main(argv) == 1
        assert "must run as root" in one_line(capsys.readouterr().err)
    assert called == []


def test_help_says_how_for_kdump_utils() -> None:
    done = slimdump("setup", "--help")
    assert done.returncode == 0
    assert "core_collector slimdump-makedumpfile -l --message-level 7 -d 31" in done.stdout
