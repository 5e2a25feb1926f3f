"""The inputs a run mutates: the ELF fixtures named on the command line,
and kdump-compressed and flattened dumps made from them once by slimdump's
own capture (cached in OUT/inputs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fuzz import catalog
from fuzz.plan import Input
from fuzz.workfile import Pristine

#: derived input suffix -> capture options (kdump: -c/-l/-p, flattened: -F)
DERIVED = {"kdump-c": ["-c", "-d", "31"], "kdump-l": ["-l", "-d", "31"],
           "kdump-p": ["-p", "-d", "31"], "flat-l": ["-F", "-l", "-d", "31"],
           "flat-E": ["-F", "-E", "-d", "31"]}

POLICY = """# fuzz: every crash gets the filtered dump (struct pages are read)
[actions]
PANIC_MCE = "normal"
PANIC_GHES = "normal"
PANIC_NMI = "normal"
default = "normal"
software = "normal"
"""


def fixture(name: str) -> Path:
    """A fixture by lab name (tests.lab.vmcorelab's cache) or a path."""
    if "/" in name:
        return Path(name)
    from tests.lab import vmcorelab

    path = vmcorelab.fixture_path(name)
    if not vmcorelab.is_built(name):
        raise SystemExit(f"fuzz: fixture {name} is not built ({path})")
    return path


def prepare(out: Path, names: list[str], derived: list[str],
            env: dict[str, str] | None = None) -> tuple[dict[str, Input], Path]:
    """Inputs by name, and the policy file every capture may use."""
    policy = out / "policy.toml"
    policy.write_text(POLICY)
    inputs: dict[str, Input] = {}
    cache = out / "catalog"
    for name in names:
        path = fixture(name)
        short = path.name.removesuffix(".vmcore")
        inputs[short] = Input(short, "elf", Pristine(path),
                              catalog.cached(path, "elf", cache))
        for suffix in derived:
            made = out / "inputs" / f"{short}.{suffix}"
            if not made.exists():
                made.parent.mkdir(parents=True, exist_ok=True)
                cmd = [sys.executable, "-m", "slimdump", "capture", "--no-progress",
                       "--policy", str(policy), *DERIVED[suffix], str(path), str(made)]
                res = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if res.returncode or not made.exists():
                    raise SystemExit(f"fuzz: could not make {made}: {' '.join(cmd)}\n"
                                     f"{res.stderr[-2000:]}")
            kind = "flat" if suffix.startswith("flat") else "kdump"
            inputs[made.name] = Input(made.name, kind, Pristine(made),
                                      catalog.cached(made, kind, cache))
    return inputs, policy
