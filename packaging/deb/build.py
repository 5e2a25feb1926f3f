#!/usr/bin/python3
"""Build slimdump's Debian package from the tree, with Debian's tools.

    /usr/bin/python3 packaging/deb/build.py [--out DIR]   (make deb)

writes DIR/slimdump_<version>-1_<arch>.deb (default DIR: dist/) for the
Debian release this runs on (Debian 12: Python 3.11).  Why not
dpkg-buildpackage with dh-python: Debian 12's setuptools (66) cannot read
this pyproject.toml (a PEP 639 license needs setuptools 77), and pip may not
install into the system Python (PEP 668).  So the steps are done here, each
with the tool Debian's own helpers use:

- the C extensions: setup.py's build_ext run by Debian's /usr/bin/python3
  with python3-dev and python3-setuptools (away from pyproject.toml), with
  the flags of ``dpkg-buildflags`` (hardening), then stripped as dh_strip
  does; so they are built for the Python the package depends on;
- the modules and a ``.dist-info`` (entry points: the console scripts and
  the ``drgn.plugins`` plugin; ``importlib.metadata`` finds the version) in
  /usr/lib/python3/dist-packages, and /usr/bin scripts that call the
  console scripts' functions with ``#!/usr/bin/python3``;
- ``dpkg-shlibdeps`` for the libraries' dependencies, ``dpkg-gencontrol``
  for DEBIAN/control (from packaging/deb/control and a changelog made from
  pyproject.toml's version), ``dpkg-deb --root-owner-group`` for the file.

``--print-digest`` prints a hash of everything the package is made of
(tests cache the package under it).  Takes a few seconds.
"""

from __future__ import annotations

import argparse
import email.utils
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
TREE = HERE.parent.parent
SRC = TREE / "src"
PACKAGE = "slimdump"
REVISION = "1"
DIST_PACKAGES = "usr/lib/python3/dist-packages"
# makedumpfile_cli.py's entry point is shipped even before pyproject names it:
# "slimdump setup kdump-tools" links /usr/bin/makedumpfile to it
REQUIRED_SCRIPTS = {"slimdump": "slimdump.cli:main",
                    "slimdump-makedumpfile": "slimdump.makedumpfile_cli:main"}
EXTENSIONS = ("slimdump/writers/_pagepack", "slimdump/kernel/_pageclass",
              "slimdump/sources/_mapcopy")


class BuildError(Exception):
    pass


def run(*cmd: str | os.PathLike[str], cwd: Path | None = None,
        env: dict[str, str] | None = None) -> str:
    done = subprocess.run([os.fspath(c) for c in cmd], cwd=cwd, env=env, text=True,
                          capture_output=True, check=False)
    if done.returncode != 0:
        lines = (done.stderr.strip() or done.stdout.strip()).splitlines() or ["no message"]
        raise BuildError(f"{Path(os.fspath(cmd[0])).name} failed: {lines[-1]}")
    return done.stdout


def project() -> dict:
    with open(TREE / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def sources() -> list[Path]:
    """What goes into the package from the tree: every module of every
    package under src/ (directories with an __init__.py) and the C sources
    with the headers they include."""
    found = []
    for path in sorted((SRC / PACKAGE).rglob("*")):
        if "__pycache__" in path.parts or not path.is_file():
            continue
        if path.suffix in (".py", ".c", ".h") and (path.parent / "__init__.py").is_file():
            found.append(path)
    return found


def packaging_inputs() -> list[Path]:
    return [TREE / "pyproject.toml", TREE / "setup.py", TREE / "LICENSE", TREE / "README.md",
            *sorted(p for p in HERE.iterdir() if p.is_file())]


def digest() -> str:
    """A hash of every input file's path and bytes and of the Python and
    architecture the package is built for."""
    h = hashlib.sha256()
    h.update(f"{python_version()} {architecture()}\n".encode())
    for path in [*sources(), *packaging_inputs()]:
        h.update(f"{path.relative_to(TREE)}\n".encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:20]


def python_version(python: str = "/usr/bin/python3") -> tuple[int, int]:
    out = run(python, "-c", "import sys; print(*sys.version_info[:2])")
    major, minor = out.split()
    return int(major), int(minor)


def architecture() -> str:
    return run("dpkg", "--print-architecture").strip()


def source_date() -> int:
    """SOURCE_DATE_EPOCH, else the last commit's time: the changelog's date
    and every file's time, so that the same tree gives the same package."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    try:
        return int(run("git", "-C", TREE, "log", "-1", "--format=%ct").strip())
    except (BuildError, ValueError, OSError):
        return 0


# -- the pieces ------------------------------------------------------------------


def build_extensions(python: str, work: Path, lib: Path) -> None:
    """setup.py's extensions, compiled by Debian's Python in a copy of the
    tree that has no pyproject.toml (Debian's setuptools rejects ours)."""
    tree = work / "ext"
    for path in [TREE / "setup.py", *(p for p in sources() if p.suffix in (".c", ".h"))]:
        dst = tree / path.relative_to(TREE)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dst)
    env = dict(os.environ)
    flags_env = {**os.environ, "DEB_BUILD_MAINT_OPTIONS": "hardening=+all"}
    for flag in ("CFLAGS", "CPPFLAGS", "LDFLAGS"):
        env[flag] = run("dpkg-buildflags", "--get", flag, env=flags_env, cwd=tree).strip()
    run(python, "setup.py", "-q", "build_ext", "--build-lib", lib, "--build-temp",
        work / "ext-tmp", cwd=tree, env=env)
    for ext in EXTENSIONS:
        built = list(lib.glob(f"{ext}.cpython-*.so"))
        if len(built) != 1:   # setup.py marks them optional: a failure is silent there
            raise BuildError(f"the C extension {ext.replace('/', '.')} did not build "
                             f"(python3-dev, liblzo2-dev, zlib1g-dev, libdeflate-dev installed?)")
        run("strip", "--strip-unneeded", "--remove-section=.comment",
            "--remove-section=.note", built[0])


def console_scripts(meta: dict) -> dict[str, str]:
    scripts = {**REQUIRED_SCRIPTS, **meta.get("scripts", {})}
    for name, target in REQUIRED_SCRIPTS.items():
        if scripts[name] != target:
            raise BuildError(f"pyproject.toml: script {name} is {scripts[name]}, the package "
                             f"needs {target}")
    return scripts


def write_dist_info(site: Path, meta: dict, scripts: dict[str, str]) -> None:
    """What importlib.metadata reads: the version, the console scripts and
    the drgn plugin's entry point.  No RECORD: pip must not remove dpkg's
    files."""
    info = site / f"{PACKAGE}-{meta['version']}.dist-info"
    info.mkdir()
    lines = ["Metadata-Version: 2.1", f"Name: {meta['name']}", f"Version: {meta['version']}",
             f"Summary: {meta['description']}", "License: MIT",
             f"Requires-Python: {meta['requires-python']}",
             "Requires-Dist: python-lzo"]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    groups = {"console_scripts": scripts, **meta.get("entry-points", {})}
    text = "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()) + "\n"
                   for group, entries in groups.items())
    (info / "entry_points.txt").write_text(text)
    (info / "INSTALLER").write_text("dpkg\n")


def write_scripts(bindir: Path, scripts: dict[str, str]) -> None:
    bindir.mkdir(parents=True)
    for name, target in scripts.items():
        module, func = target.split(":")
        (bindir / name).write_text(
            f"#!/usr/bin/python3\n# {name}: {target} (slimdump's Debian package)\n"
            f"import sys\n\nfrom {module} import {func}\n\nsys.exit({func}())\n")
        (bindir / name).chmod(0o755)


def changelog(version: str, when: int, maintainer: str) -> str:
    date = email.utils.formatdate(when, usegmt=False)
    return (f"{PACKAGE} ({version}) unstable; urgency=medium\n\n"
            f"  * Built from the slimdump source tree by packaging/deb/build.py.\n\n"
            f" -- {maintainer}  {date}\n")


def gzip_to(path: Path, data: bytes, when: int) -> None:
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9,
                                                 filename="", mtime=when) as f:
        f.write(data)


def control_field(name: str) -> str:
    for line in (HERE / "control").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise BuildError(f"packaging/deb/control has no {name} field")


# -- the package --------------------------------------------------------------------


def build(out: Path, python: str) -> Path:
    meta = project()
    version = f"{meta['version']}-{REVISION}"
    when = source_date()
    major, minor = python_version(python)
    arch = architecture()
    with tempfile.TemporaryDirectory(prefix="slimdump-deb-") as tmp:
        work = Path(tmp)
        stage = work / "stage"
        site = stage / DIST_PACKAGES
        for path in sources():
            if path.suffix == ".py":
                dst = site / path.relative_to(SRC)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dst)
        build_extensions(python, work, site)
        scripts = console_scripts(meta)
        write_dist_info(site, meta, scripts)
        write_scripts(stage / "usr/bin", scripts)
        doc = stage / "usr/share/doc" / PACKAGE
        doc.mkdir(parents=True)
        shutil.copyfile(HERE / "copyright", doc / "copyright")
        log = changelog(version, when, control_field("Maintainer"))
        gzip_to(doc / "changelog.Debian.gz", log.encode(), when)
        gzip_to(doc / "README.md.gz", (TREE / "README.md").read_bytes(), when)

        debian = work / "debian"          # what dpkg-shlibdeps and dpkg-gencontrol read
        debian.mkdir()
        shutil.copyfile(HERE / "control", debian / "control")
        (debian / "changelog").write_text(log)
        libs = sorted(str(p.relative_to(work)) for p in site.rglob("*.so"))
        shlibs = run("dpkg-shlibdeps", "-O", *(f"-e{lib}" for lib in libs), cwd=work)
        shlibs_depends = shlibs.strip().split("=", 1)[1]
        python_depends = f"python3 (>= {major}.{minor}), python3 (<< {major}.{minor + 1})"
        meta_dir = stage / "DEBIAN"
        meta_dir.mkdir()
        for script in ("postinst", "prerm"):
            shutil.copyfile(HERE / script, meta_dir / script)
            (meta_dir / script).chmod(0o755)
        for path in stage.rglob("*"):
            if path.is_file() and not path.is_relative_to(meta_dir):
                path.chmod(0o755 if path.parent.name == "bin"
                           else 0o644)
        sums = "".join(f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.relative_to(stage)}\n"
                       for p in sorted(stage.rglob("*"))
                       if p.is_file() and not p.is_relative_to(meta_dir))
        (meta_dir / "md5sums").write_text(sums)
        run("dpkg-gencontrol", f"-p{PACKAGE}", f"-P{stage}", "-fdebian/files",
            f"-Vpython3:Depends={python_depends}", f"-Vshlibs:Depends={shlibs_depends}",
            "-Vmisc:Depends=", cwd=work)
        for path in [stage, *stage.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
            os.utime(path, (when, when), follow_symlinks=False)
        out.mkdir(parents=True, exist_ok=True)
        deb = out / f"{PACKAGE}_{version}_{arch}.deb"
        partial = out / f".{deb.name}.partial"
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(when)}
        run("dpkg-deb", "--root-owner-group", "-Zxz", "--build", stage, partial, env=env)
        os.replace(partial, deb)
    return deb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=TREE / "dist",
                        help="directory for the .deb (default: dist/)")
    parser.add_argument("--python", default="/usr/bin/python3",
                        help="Debian's Python the extensions are built for")
    parser.add_argument("--print-digest", action="store_true",
                        help="print the hash of the package's inputs and exit")
    args = parser.parse_args(argv)
    try:
        if args.print_digest:
            print(digest())
            return 0
        deb = build(args.out, args.python)
    except (BuildError, OSError) as exc:
        print(f"build.py: {exc}", file=sys.stderr)
        return 1
    print(deb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
