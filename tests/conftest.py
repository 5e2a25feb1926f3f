"""Shared fixtures: the real vmcores (built by tests/lab/vmcorelab.py and
cached), small helpers around the independent readers (eu-readelf, readelf,
drgn, makedumpfile, crash) that the tests use as oracles, and the suite's one
rule for what a test needs and this host may lack.

The rule (:func:`require`): an oracle program (:func:`tool`), a Python module
(:func:`require_module`), a C extension (:func:`require_native`), the QEMU lab
(:func:`require_lab`) or a real vmcore (:func:`real_vmcore`) that is missing
skips the test on a developer's machine and FAILS it in CI
(``SLIMDUMP_REQUIRE_VMCORES=1``, which ``make test`` sets; ``CI=true`` counts
when that variable is unset).  An oracle's absence must never turn a run
green.  Under that rule a skip from anywhere else (``pytest.skip``, a
``skipif`` mark, ``importorskip`` in a new file) fails too.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn, TypeVar

import pytest

from tests.lab import vmcorelab

# The real vmcores every run of the suite checks against.
REAL = ("6.1-sysrq", "6.1-mce", "6.12-sysrq", "6.12-mce", "6.1-nmi", "6.1-oom")
MCE = ("6.1-mce", "6.12-mce")

T = TypeVar("T")

STRICT_VAR = "SLIMDUMP_REQUIRE_VMCORES"


# -- the one require-or-skip rule ------------------------------------------------------


def strict() -> bool:
    """True in CI: SLIMDUMP_REQUIRE_VMCORES=1, or CI=true when it is unset
    (SLIMDUMP_REQUIRE_VMCORES=0 lets a CI shell run the quick subset)."""
    value = os.environ.get(STRICT_VAR, "")
    if value:
        return value == "1"
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(what: str) -> NoReturn:
    """``what`` is missing: skip the test here, fail it in CI.  Usable at
    module level (the whole file skips, or fails to collect in CI)."""
    if strict():
        pytest.fail(f"required but missing ({STRICT_VAR}=1): {what}", pytrace=False)
    pytest.skip(what, allow_module_level=True)


def tool(name: str) -> str:
    """An oracle program's path, looked up in PATH and the sbin directories
    a non-root PATH may lack (vmcore-dmesg lives in /usr/sbin)."""
    sbin = os.pathsep.join(["/usr/local/sbin", "/usr/sbin", "/sbin"])
    path = shutil.which(name) or shutil.which(name, path=sbin)
    if path is None:
        require(f"{name} is not installed")
    return path


def require_module(name: str) -> ModuleType:
    """The imported Python module ``name`` (an oracle such as drgn)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        problem = str(exc)
    require(f"Python module {name} is not importable ({problem})")


def require_native(entry: T | None, extension: str) -> T:
    """A C extension's entry point, None when setup.py could not build it
    (``make setup`` refuses to go on without the extensions)."""
    if entry is None:
        require(f"the C extension {extension} is not built here")
    return entry


def require_kdumpfile() -> str:
    """Debian's /usr/bin/python3 with python3-libkdumpfile (the conformance
    oracle; the venv's Python cannot import it): the interpreter's path."""
    python = "/usr/bin/python3"
    if not (os.path.exists(python) and subprocess.run(
            [python, "-c", "import kdumpfile"], capture_output=True).returncode == 0):
        require(f"python3-libkdumpfile is not importable by {python}")
    return python


def require_lab(what: str) -> None:
    """QEMU and the lab's tools, to build a fixture or run a capture kernel;
    SLIMDUMP_LAB_NO_BUILD=1 says not to use them."""
    missing = vmcorelab.have_tools()
    if os.environ.get("SLIMDUMP_LAB_NO_BUILD") == "1":
        missing.append("(SLIMDUMP_LAB_NO_BUILD=1)")
    if missing:
        require(f"{what}: {', '.join(missing)}")


def real_vmcore(name: str) -> Path:
    """The cached fixture, built on first use when the host can (about a
    minute, two for a 4 GiB guest; ``make test`` builds the lab's default set
    before pytest starts, the others are built here)."""
    if vmcorelab.is_built(name):
        return vmcorelab.fixture_path(name)
    require_lab(f"vmcore fixture {name} not built and not building")
    return vmcorelab.ensure(name, log=_to_terminal)


_config: pytest.Config | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _config
    _config = config


def _to_terminal(message: str) -> None:
    """A build's progress, shown while pytest captures the test's output:
    minutes of silence would look like a hang."""
    capman = _config.pluginmanager.getplugin("capturemanager") if _config else None
    if capman is None:
        print(message, file=sys.stderr, flush=True)
        return
    with capman.global_and_fixture_disabled():
        print(f"\n{message}", file=sys.stderr, flush=True)


def vmcore_facts(name: str) -> dict[str, Any]:
    """What the lab recorded about a fixture when it built it (kernel
    package and release, guest shape, what it injected): the expected values
    that come from the fixture, never from a literal Debian's next kernel
    upload breaks, and never from slimdump."""
    real_vmcore(name)
    return vmcorelab.metadata(name)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """In CI a skip that bypassed :func:`require` fails too."""
    outcome = yield
    report = outcome.get_result()
    if strict() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI ({STRICT_VAR}=1): {_skip_reason(report.longrepr)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """The same for a module that skips itself while being collected."""
    outcome = yield
    report = outcome.get_result()
    if strict() and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped in CI ({STRICT_VAR}=1): {_skip_reason(report.longrepr)}"


def _skip_reason(longrepr: object) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        path, line, reason = longrepr
        return f"{reason} ({path}:{line})"
    return str(longrepr)


# -- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture(params=REAL)
def any_vmcore(request: pytest.FixtureRequest) -> Path:
    return real_vmcore(request.param)


@pytest.fixture(params=MCE)
def mce_vmcore(request: pytest.FixtureRequest) -> Path:
    return real_vmcore(request.param)


def run(*cmd: str | os.PathLike[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([os.fspath(c) for c in cmd], capture_output=True, text=True,
                          check=check)


def slimdump(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    """Run the command line exactly as a user would."""
    return run(sys.executable, "-m", "slimdump", *args, check=False)
