"""slimdump's Debian package (packaging/deb/build.py, ``make deb``).

Oracles: dpkg's own tools read the package (``dpkg-deb -f/-c/-e/-x``,
``dpkg-parsechangelog``, ``dpkg --compare-versions``), and Debian's
/usr/bin/python3 runs what ``dpkg-deb -x`` unpacked, with Debian's lzo,
zstandard and snappy, no cramjam (Debian has none) and no numpy (the
package does not need it); makedumpfile reads the log from what it wrote.  Expected
versions come from the tree (pyproject.toml) and from this host's Debian
(its Python, its packages), never from a literal.
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.conftest import real_vmcore, require, run, tool
from tests.lab import debpkg

DPKG_DEB = tool("dpkg-deb")
for _needed in ("dpkg-shlibdeps", "dpkg-gencontrol", "dpkg-buildflags",
                "dpkg-parsechangelog", "gcc", "strip"):
    tool(_needed)

TREE = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((TREE / "pyproject.toml").read_text())["project"]
PYTHON = "/usr/bin/python3"
SITE = "usr/lib/python3/dist-packages"
MODULES = ("lzo", "zstandard", "snappy")


def debian_python() -> tuple[int, int]:
    """Debian's Python 3 with the package's dependencies (and Recommends):
    its version."""
    probe = f"import sys, {', '.join(MODULES)}; print(*sys.version_info[:2])"
    done = subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        require(f"{PYTHON} with python3-lzo, python3-zstandard and python3-snappy "
                f" ({done.stderr.strip().splitlines()[-1:]})")
    major, minor = done.stdout.split()
    return int(major), int(minor)


PY_VERSION = debian_python()


@pytest.fixture(scope="module")
def deb() -> Path:
    try:
        return debpkg.ensure_deb()
    except RuntimeError as exc:
        pytest.fail(f"the package did not build: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def unpacked(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("deb") / "root"
    run(DPKG_DEB, "-x", deb, root)
    return root


def field(deb: Path, name: str) -> str:
    return run(DPKG_DEB, "-f", deb, name).stdout.strip()


def relations(text: str) -> list[tuple[str, str | None, str | None]]:
    """``Depends`` as (package, operator, version) triples (no alternatives
    are expected in this package)."""
    out = []
    for item in text.split(","):
        assert "|" not in item, item
        m = re.fullmatch(r"\s*([a-z0-9.+-]+)(?::any)?\s*(?:\((<<|<=|=|>=|>>)\s*(\S+)\))?\s*",
                         item)
        assert m, item
        out.append((m.group(1), m.group(2), m.group(3)))
    return out


# -- what dpkg-deb says about the package --------------------------------------------


def test_control_fields(deb: Path) -> None:
    major, minor = PY_VERSION
    assert field(deb, "Package") == "slimdump"
    assert field(deb, "Version") == f"{PROJECT['version']}-1"
    assert field(deb, "Architecture") == run("dpkg", "--print-architecture").stdout.strip()
    assert deb.name == f"slimdump_{PROJECT['version']}-1_{field(deb, 'Architecture')}.deb"
    depends = relations(field(deb, "Depends"))
    names = {name for name, _, _ in depends}
    assert {"python3", "python3-lzo", "liblzo2-2", "zlib1g", "libdeflate0", "libc6"} <= names
    assert "python3-numpy" not in names          # numpy is the tests' alone
    assert ("python3", ">=", f"{major}.{minor}") in depends
    assert ("python3", "<<", f"{major}.{minor + 1}") in depends
    assert "cramjam" not in field(deb, "Depends")
    assert {n for n, _, _ in relations(field(deb, "Recommends"))} >= {
        "python3-zstandard", "python3-snappy"}
    assert int(field(deb, "Installed-Size")) > 0
    assert field(deb, "Maintainer") and field(deb, "Description")


def test_dependencies_are_this_debians_packages(deb: Path) -> None:
    """Every dependency is a Debian package installed here at a version that
    satisfies it (this host is a stock Debian with Debian's packages)."""
    for name, op, version in relations(field(deb, "Depends")):
        done = subprocess.run(["dpkg-query", "-W", "-f", "${Version} ${Status}", name],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0 and done.stdout.endswith(" installed"), name
        installed = done.stdout.split()[0]
        if op is not None:
            assert run("dpkg", "--compare-versions", installed, op.replace(">>", "gt")
                       .replace("<<", "lt").replace(">=", "ge").replace("<=", "le")
                       .replace("=", "eq"), version, check=False).returncode == 0, \
                (name, installed, op, version)


def test_contents(deb: Path) -> None:
    listing = run(DPKG_DEB, "-c", deb).stdout.splitlines()
    entries = {}
    for line in listing:
        mode, owner, _size, _date, _time, path = line.split(None, 5)
        entries[path.split(" -> ")[0].removeprefix(".")] = (mode, owner)
    assert {owner for _, owner in entries.values()} == {"root/root"}
    assert all(p == "/" or p.startswith("/usr/") for p in entries), sorted(entries)
    for script in ("/usr/bin/slimdump", "/usr/bin/slimdump-makedumpfile"):
        assert entries[script][0] == "-rwxr-xr-x", script
    info = f"/{SITE}/slimdump-{PROJECT['version']}.dist-info"
    doc = "/usr/share/doc/slimdump"
    for path in (f"{info}/METADATA", f"{info}/entry_points.txt", f"{doc}/copyright",
                 f"{doc}/changelog.Debian.gz"):
        assert path in entries, path
    shipped = {p for p in entries if p.startswith(f"/{SITE}/slimdump/")}
    tree = {f"/{SITE}/{p.relative_to(TREE / 'src')}"
            for p in (TREE / "src/slimdump").rglob("*.py") if "__pycache__" not in p.parts}
    assert tree <= shipped
    so = sorted(p for p in shipped if p.endswith(".so"))
    major, minor = PY_VERSION
    assert [re.sub(r"\.cpython-.*", "", p) for p in so] == [
        f"/{SITE}/slimdump/kernel/_pageclass", f"/{SITE}/slimdump/sources/_mapcopy",
        f"/{SITE}/slimdump/writers/_pagepack"]
    assert all(f".cpython-{major}{minor}-" in p for p in so), so
    assert not any("__pycache__" in p or p.endswith((".pyc", ".c")) for p in entries)


def test_changelog_and_copyright(unpacked: Path, deb: Path) -> None:
    doc = unpacked / "usr/share/doc/slimdump"
    changelog = gzip.decompress((doc / "changelog.Debian.gz").read_bytes()).decode()
    log = unpacked.parent / "changelog"
    log.write_text(changelog)
    parsed = run(tool("dpkg-parsechangelog"), "-l", log, "-S", "Version").stdout.strip()
    assert parsed == field(deb, "Version")
    copyright_text = (doc / "copyright").read_text()
    assert copyright_text.startswith("Format: https://www.debian.org/doc/packaging-manuals/")
    words = " ".join(copyright_text.replace("\n .\n", "\n").split())
    license_body = (TREE / "LICENSE").read_text().split("\n\n", 2)[2]
    assert " ".join(license_body.split()) in words
    assert "kernel/" in copyright_text and "GPL-2.0" in copyright_text


def test_maintainer_scripts(deb: Path, tmp_path: Path) -> None:
    """prerm undoes the diversion on removal only (an upgrade keeps it: the
    new version ships the collector again), and only when slimdump made it;
    checked by running prerm with stand-ins for dpkg-divert and slimdump."""
    control = tmp_path / "control"
    run(DPKG_DEB, "-e", deb, control)
    for script in ("prerm", "postinst"):
        assert os.access(control / script, os.X_OK)
        assert run("sh", "-n", control / script).returncode == 0
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    for name, body in (("dpkg-divert", 'echo "$DIVERTED_BY"'),
                       ("slimdump", f'echo "slimdump $*" >> {calls}'),
                       ("py3clean", f'echo "py3clean $*" >> {calls}')):
        (bindir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bindir / name).chmod(0o755)
    for arg, owner, expected in (
            ("remove", "slimdump", ["slimdump setup kdump-tools --undo", "py3clean -p slimdump"]),
            ("remove", "", ["py3clean -p slimdump"]),
            ("remove", "other", ["py3clean -p slimdump"]),
            ("upgrade", "slimdump", ["py3clean -p slimdump"])):
        calls.write_text("")
        env = {"PATH": f"{bindir}:/usr/bin:/bin", "DIVERTED_BY": owner}
        done = subprocess.run(["sh", str(control / "prerm"), arg, "0.1"], env=env,
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        assert calls.read_text().splitlines() == expected, (arg, owner)


# -- Debian's Python runs what the package unpacks -----------------------------------


def debian_run(unpacked: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(unpacked / SITE), "LC_ALL": "C.UTF-8"}
    return subprocess.run([PYTHON, "-s", *args], capture_output=True, text=True, env=env,
                          cwd=unpacked, check=False)


def test_imports_with_debian_python(unpacked: Path) -> None:
    probe = """
import importlib.metadata as md, importlib.util, sys
import slimdump
from slimdump import codecs
from slimdump.writers import _pagepack
from slimdump.kernel import _pageclass
print(slimdump.__file__); print(_pagepack.__file__); print(_pageclass.__file__)
print(md.version("slimdump"))
print(*sorted(f"{e.group}:{e.name}={e.value}" for e in md.distribution("slimdump").entry_points))
print(importlib.util.find_spec("cramjam") is None)
print(*(codecs.implementation(codecs.CODECS[name]).__name__ for name in ("snappy", "zstd")))
"""
    done = debian_run(unpacked, "-c", probe)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    site = str(unpacked / SITE)
    assert all(line.startswith(site) for line in lines[:3]), lines[:3]
    assert lines[3] == PROJECT["version"]
    assert lines[4].split() == sorted([
        "console_scripts:slimdump=slimdump.cli:main",
        "console_scripts:slimdump-makedumpfile=slimdump.makedumpfile_cli:main",
        *(f"drgn.plugins:{k}={v}" for k, v in PROJECT["entry-points"]["drgn.plugins"].items())])
    assert lines[5] == "True"                    # Debian has no cramjam...
    assert lines[6] == "snappy zstandard"        # ...so Debian's modules serve


def test_console_scripts(unpacked: Path) -> None:
    for script in ("slimdump", "slimdump-makedumpfile"):
        first = (unpacked / "usr/bin" / script).read_text().splitlines()[0]
        assert first == "#!/usr/bin/python3"
    version = debian_run(unpacked, "usr/bin/slimdump", "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"slimdump {PROJECT['version']}"
    help_text = debian_run(unpacked, "usr/bin/slimdump-makedumpfile", "--help")
    assert help_text.returncode == 0 and "makedumpfile" in help_text.stdout
    setup = debian_run(unpacked, "usr/bin/slimdump", "setup", "--help")
    assert setup.returncode == 0 and "core_collector slimdump-makedumpfile" in setup.stdout


def test_capture_without_numpy(unpacked: Path, tmp_path: Path) -> None:
    """A filtered capture by Debian's Python with numpy made unimportable:
    the package's Depends are all it needs; makedumpfile extracts the same
    log from the dump as from the source."""
    src = real_vmcore("6.1-sysrq")
    dst = tmp_path / "vmcore"
    code = ("import sys; sys.modules['numpy'] = None; from slimdump.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    done = debian_run(unpacked, "-c", code, "capture", "-l", "-d", "31", "--no-progress",
                      str(src), str(dst))
    assert done.returncode == 0, done.stderr
    logs = []
    for dump in (src, dst):
        log = tmp_path / f"{dump.name}.log"
        run(tool("makedumpfile"), "--dump-dmesg", dump, log)
        logs.append(log.read_bytes())
    assert logs[0] == logs[1] and len(logs[0]) > 1000
