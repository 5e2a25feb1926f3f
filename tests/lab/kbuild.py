"""kbuild: the lab's patched kernel, built from Debian's ``linux-source`` package.

The stock fixtures crash Debian's own kernels, which write no NT_NOCOREDUMP
note.  The other end of the chain is a kernel carrying the series in
``kernel/patches/<series>/``: this module builds one, once, and caches it.

Steps (each one a plain command; the log says which one failed):

  1. ``apt-get install linux-source-<series>`` and the build tools if missing
     (:data:`BUILD_PACKAGES`);
  2. unpack ``/usr/src/linux-source-<series>.tar.xz`` next to the cache entry;
  3. ``git apply kernel/patches/<series>/*.patch``;
  4. ``make x86_64_defconfig``, ``scripts/kconfig/merge_config.sh -m .config
     kernel/configs/kvm_guest.config kernel/lab.config``, ``make olddefconfig``;
  5. check that the ``.config`` holds every line of ``lab.config`` and what the
     lab's guests need built in (:data:`REQUIRED`): the lab's initramfs loads
     no module into this kernel;
  6. ``make -j$(nproc) bzImage``, ``make -s kernelrelease``;
  7. keep ``bzImage``, ``.config``, ``System.map`` and ``stamp.json``; delete
     the build tree (several GB).

Cache entry: ``<lab cache>/kernels/patched-<series>-<key>/``, where the key
hashes the patches, ``lab.config``, the Debian source package's version and
:data:`REQUIRED`; any change to them builds a new entry, and a warm run (the
stamp is there) builds nothing.  Measured: 681 s from an empty cache on two
cores (nice -n 19, make -j2: 660 s), 0.3 s warm.

    python -m tests.lab.kbuild build [SERIES]     # default 6.1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.lab.vmcorelab import (
    REPO,
    Kernel,
    LabError,
    Log,
    _locked,
    _root_prefix,
    _run,
    cache_dir,
    eprint,
)

KERNEL_SRC = REPO / "kernel"

#: Debian 12 packages a defconfig bzImage build needs on a fresh machine:
#: compiler and libc headers (build-essential), kconfig's lexer and parser
#: (flex, bison), timeconst (bc), objtool (libelf-dev), the certificate
#: tools built with the trusted keyring (libssl-dev), unpacking the source
#: (xz-utils) and applying the series (git).
BUILD_PACKAGES: tuple[str, ...] = ("build-essential", "bc", "bison", "flex", "libelf-dev",
                                   "libssl-dev", "xz-utils", "git")

#: options the lab needs built in (=y), beyond lab.config's own lines: the
#: guest boots with no module (virtio disk, 9p + overlay for the collector),
#: loads a capture kernel by both syscalls, and has the panic paths the series
#: marks.
REQUIRED: tuple[str, ...] = (
    "CONFIG_KEXEC", "CONFIG_KEXEC_FILE", "CONFIG_KEXEC_CORE", "CONFIG_CRASH_DUMP",
    "CONFIG_PROC_VMCORE", "CONFIG_RELOCATABLE", "CONFIG_MAGIC_SYSRQ", "CONFIG_PRINTK",
    "CONFIG_X86_MCE", "CONFIG_X86_MCE_INTEL", "CONFIG_X86_MCE_AMD",
    "CONFIG_ACPI_APEI", "CONFIG_ACPI_APEI_GHES",
    "CONFIG_BLK_DEV_INITRD", "CONFIG_RD_GZIP", "CONFIG_DEVTMPFS", "CONFIG_TMPFS",
    "CONFIG_PCI", "CONFIG_VIRTIO", "CONFIG_VIRTIO_PCI", "CONFIG_VIRTIO_BLK",
    "CONFIG_NET_9P", "CONFIG_NET_9P_VIRTIO", "CONFIG_9P_FS", "CONFIG_OVERLAY_FS",
    "CONFIG_SERIAL_8250", "CONFIG_SERIAL_8250_CONSOLE",
)

#: bumped when the build steps change in a way that changes the result
RECIPE = 1

STAMP = "stamp.json"


def source_package(series: str) -> str:
    return f"linux-source-{series}"


def _dpkg_version(pkg: str) -> str | None:
    q = subprocess.run(["dpkg-query", "-W", "-f=${Status} ${Version}", pkg],
                       capture_output=True, text=True)
    if q.returncode or not q.stdout.startswith("install ok installed"):
        return None
    return q.stdout.rsplit(" ", 1)[-1]


def install_packages(series: str, log: Log = eprint) -> str:
    """apt-get install what is missing of the source package and the build tools;
    returns the installed source package's version."""
    wanted = [source_package(series), *BUILD_PACKAGES]
    missing = [p for p in wanted if _dpkg_version(p) is None]
    if missing:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        log(f"apt-get install {' '.join(missing)}")
        cmd = [*_root_prefix(), "apt-get", "install", "-y", "-qq", "--no-install-recommends",
               *missing]
        if subprocess.run(cmd, capture_output=True, env=env).returncode:
            _run([*_root_prefix(), "apt-get", "update", "-qq"], env=env)
            _run(cmd, env=env)
    version = _dpkg_version(source_package(series))
    if version is None:
        raise LabError(f"{source_package(series)} is not installed")
    return version


def patches(series: str) -> list[Path]:
    found = sorted((KERNEL_SRC / "patches" / series).glob("*.patch"))
    if not found:
        raise LabError(f"no patches in {KERNEL_SRC / 'patches' / series}")
    return found


def cache_key(series: str, source_version: str) -> str:
    """12 hex digits naming what the build depends on."""
    h = hashlib.sha256()
    h.update(f"recipe {RECIPE}\nsource {source_package(series)} {source_version}\n".encode())
    h.update(("required " + " ".join(REQUIRED) + "\n").encode())
    for path in [*patches(series), KERNEL_SRC / "lab.config"]:
        h.update(f"{path.name} {path.stat().st_size}\n".encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def _kernel(root: Path) -> Kernel:
    stamp = json.loads((root / STAMP).read_text())
    return Kernel(package=stamp["package"], root=root, vmlinuz=root / "bzImage",
                  release=stamp["release"], modular=False)


def check_config(config: Path, lab_config: Path) -> None:
    """Every option of lab.config and REQUIRED is =y in ``config``: olddefconfig
    drops silently what a dependency does not allow."""
    have = set(config.read_text().splitlines())
    wanted = [line.strip() for line in lab_config.read_text().splitlines()
              if line.startswith("CONFIG_")]
    wanted += [f"{opt}=y" for opt in REQUIRED]
    lost = sorted({w for w in wanted if w not in have})
    if lost:
        raise LabError(f"{config}: the merged configuration lacks {', '.join(lost)}")


def _make(tree: Path, *args: str, log: Log) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KBUILD_BUILD_USER": "slimdump-lab", "KBUILD_BUILD_HOST": "lab",
           "LC_ALL": "C"}
    log(f"make {' '.join(args)}")
    return _run(["make", *args], cwd=tree, env=env, text=True)


def _build(series: str, source_version: str, root: Path, log: Log) -> float:
    """Build into ``root`` (which must not exist); returns the seconds it took."""
    t0 = time.monotonic()
    tarball = Path(f"/usr/src/{source_package(series)}.tar.xz")
    if not tarball.is_file():
        raise LabError(f"{tarball}: missing (apt-get install {source_package(series)})")
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{root.name}.build-") as tmp:
        log(f"unpacking {tarball}")
        _run(["tar", "-xJf", tarball, "-C", tmp])
        tree = Path(tmp) / source_package(series)
        if not (tree / "Makefile").is_file():
            raise LabError(f"{tarball} did not unpack to {tree.name}/")
        series_patches = patches(series)
        log(f"git apply {len(series_patches)} patches from {KERNEL_SRC / 'patches' / series}")
        # GIT_CEILING_DIRECTORIES: never treat an enclosing repository as the target
        _run(["git", "apply", *series_patches], cwd=tree,
             env={**os.environ, "GIT_CEILING_DIRECTORIES": os.fspath(tree.parent)})
        _make(tree, "x86_64_defconfig", log=log)
        lab_config = KERNEL_SRC / "lab.config"
        _run(["scripts/kconfig/merge_config.sh", "-m", ".config",
              "kernel/configs/kvm_guest.config", lab_config], cwd=tree)
        _make(tree, "olddefconfig", log=log)
        check_config(tree / ".config", lab_config)
        jobs = os.cpu_count() or 1
        t_make = time.monotonic()
        _make(tree, f"-j{jobs}", "bzImage", log=log)
        log(f"bzImage built in {time.monotonic() - t_make:.0f} s")
        release = _make(tree, "-s", "kernelrelease", log=log).stdout.strip()
        staged = Path(tmp) / "out"
        staged.mkdir()
        shutil.copy(tree / "arch" / "x86" / "boot" / "bzImage", staged / "bzImage")
        shutil.copy(tree / ".config", staged / "config")
        shutil.copy(tree / "System.map", staged / "System.map")
        seconds = time.monotonic() - t0
        stamp = {
            "package": f"{source_package(series)} {source_version} + kernel/patches/{series}",
            "source_version": source_version,
            "release": release,
            "patches": [p.name for p in series_patches],
            "key": root.name.rsplit("-", 1)[-1],
            "jobs": jobs,
            "build_seconds": round(seconds, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (staged / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
        staged.rename(root)  # the build tree goes with the temporary directory
    return seconds


def kernel_dir(series: str, source_version: str) -> Path:
    return cache_dir() / "kernels" / f"patched-{series}-{cache_key(series, source_version)}"


def build_patched_kernel(series: str = "6.1", log: Log = eprint) -> Kernel:
    """The patched kernel of ``series``, built on first use (about 12 minutes on two cores)."""
    version = install_packages(series, log)
    root = kernel_dir(series, version)
    if (root / STAMP).is_file():
        return _kernel(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    with _locked(root.parent / f".{root.name}.lock"):
        if (root / STAMP).is_file():  # built by another process meanwhile
            return _kernel(root)
        for stale in root.parent.glob(f".{root.name}.build-*"):  # a killed build's tree
            shutil.rmtree(stale, ignore_errors=True)
        if root.exists():  # no stamp: incomplete
            shutil.rmtree(root)
        log(f"building the patched {series} kernel into {root} (about 12 minutes on two cores)")
        seconds = _build(series, version, root, log)
        log(f"patched kernel {_kernel(root).release} built in {seconds:.0f} s")
    return _kernel(root)


def current_build_name(series: str = "6.1") -> str | None:
    """The cache entry name the installed source, patches and lab.config make
    (None: the source package is not installed); builds nothing."""
    version = _dpkg_version(source_package(series))
    return None if version is None else kernel_dir(series, version).name


def is_built(series: str = "6.1") -> bool:
    """True if the patched kernel is in the cache for the installed source (no build)."""
    name = current_build_name(series)
    return name is not None and (cache_dir() / "kernels" / name / STAMP).is_file()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.lab.kbuild", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    b = sub.add_parser("build", help="build the patched kernel unless cached")
    b.add_argument("series", nargs="?", default="6.1")
    a = ap.parse_args(argv)
    try:
        t0 = time.monotonic()
        k = build_patched_kernel(a.series)
        stamp = json.loads((k.root / STAMP).read_text())
        print(f"{k.release}: {k.vmlinuz} (built in {stamp['build_seconds']:.0f} s; "
              f"this run {time.monotonic() - t0:.0f} s)")
    except LabError as exc:
        print(f"kbuild: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
