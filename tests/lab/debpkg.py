"""slimdump's Debian package for the tests and the lab, built once per
content: ``packaging/deb/build.py`` hashes everything the package is made of
(``--print-digest``) and the package is cached under that hash in
``<lab cache>/deb/<digest>/`` (a few seconds to build; never rebuilt for the
same tree).

    python -m tests.lab.debpkg        # prints the cached package's path
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
from pathlib import Path

from tests.lab.vmcorelab import cache_dir

TREE = Path(__file__).resolve().parents[2]
BUILD = TREE / "packaging" / "deb" / "build.py"
PYTHON = "/usr/bin/python3"       # Debian's: the package's extensions are built for it


def _build_py(*args: str) -> str:
    done = subprocess.run([PYTHON, str(BUILD), *args], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip() or f"build.py {' '.join(args)} failed")
    return done.stdout.strip()


def digest() -> str:
    return _build_py("--print-digest")


def ensure_deb() -> Path:
    """The package of this tree: cached, or built now (under a lock, so that
    two test processes build it once)."""
    where = cache_dir() / "deb" / digest()
    where.mkdir(parents=True, exist_ok=True)
    with open(where / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = sorted(where.glob("slimdump_*.deb"))
        if len(found) == 1:
            return found[0]
        for stale in found:
            stale.unlink()
        partial = where / "partial"
        shutil.rmtree(partial, ignore_errors=True)
        built = Path(_build_py("--out", str(partial)))
        final = where / built.name
        built.rename(final)
        shutil.rmtree(partial, ignore_errors=True)
        return final


if __name__ == "__main__":
    try:
        print(ensure_deb())
    except RuntimeError as exc:
        print(f"debpkg: {exc}", file=sys.stderr)
        sys.exit(1)
