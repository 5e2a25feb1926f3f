"""Shared fixtures: the real vmcores (built by tests/lab/vmcorelab.py and
cached), and small helpers around the independent readers (eu-readelf,
readelf, drgn) that the tests use as oracles."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lab import vmcorelab

# The real vmcores every run of the suite checks against.
REAL = ("6.1-sysrq", "6.1-mce", "6.12-sysrq", "6.12-mce", "6.1-nmi", "6.1-oom")
MCE = ("6.1-mce", "6.12-mce")


def real_vmcore(name: str) -> Path:
    """The cached fixture, built on first use when the host can (about a
    minute).  Where it cannot, or SLIMDUMP_LAB_NO_BUILD=1, the test is skipped, unless
    SLIMDUMP_REQUIRE_VMCORES=1 (CI) makes that a failure."""
    path = vmcorelab.fixture_path(name)
    if path.exists():
        return path
    require_lab(f"vmcore fixture {name} not built and not building")
    return vmcorelab.ensure(name, log=lambda m: print(m, file=sys.stderr))


def require_lab(what: str) -> None:
    """Skip (fail under SLIMDUMP_REQUIRE_VMCORES=1) when QEMU and the lab's
    tools are missing or SLIMDUMP_LAB_NO_BUILD=1 asks not to run them."""
    missing = vmcorelab.have_tools()
    if os.environ.get("SLIMDUMP_LAB_NO_BUILD") == "1":
        missing.append("(SLIMDUMP_LAB_NO_BUILD=1)")
    if missing:
        message = f"{what}: {', '.join(missing)}"
        if os.environ.get("SLIMDUMP_REQUIRE_VMCORES") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(params=REAL)
def any_vmcore(request: pytest.FixtureRequest) -> Path:
    return real_vmcore(request.param)


@pytest.fixture(params=MCE)
def mce_vmcore(request: pytest.FixtureRequest) -> Path:
    return real_vmcore(request.param)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("SLIMDUMP_REQUIRE_VMCORES") == "1":
            pytest.fail(f"{name} is not installed")
        pytest.skip(f"{name} is not installed")
    return path


def run(*cmd: str | os.PathLike[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([os.fspath(c) for c in cmd], capture_output=True, text=True,
                          check=check)


def slimdump(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """Run the command line exactly as a user would."""
    return run(sys.executable, "-m", "slimdump", *args, check=False)
