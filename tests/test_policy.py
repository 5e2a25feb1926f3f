"""The policy file: reason codes to actions, defaults, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from slimdump.errors import DumpError
from slimdump.policy import Policy
from tests.conftest import slimdump


def test_defaults() -> None:
    policy = Policy()
    assert [policy.action_for(r) for r in ("PANIC_MCE", "PANIC_GHES", "PANIC_NMI")] == [
        "slim"] * 3
    assert policy.action_for("VENDOR_X") == "normal"
    assert policy.action_for(None) == "normal"


def test_file_overrides_only_what_it_names(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[actions]\nPANIC_NMI = "dmesg"\nVENDOR_X = "slim"\nsoftware = "full"\n')
    policy = Policy.load(str(path))
    assert policy.action_for("PANIC_NMI") == "dmesg"
    assert policy.action_for("PANIC_MCE") == "slim"
    assert policy.action_for("VENDOR_X") == "slim"
    assert policy.action_for("OTHER") == "normal"
    assert policy.action_for(None) == "full"
    assert policy.source == str(path)


@pytest.mark.parametrize(("text", "problem"), [
    ('[actions]\nPANIC_MCE = "nothing"\n', "action for PANIC_MCE is 'nothing'"),
    ("[actions\n", "invalid TOML"),
    ('[rules]\nPANIC_MCE = "slim"\n', "a policy has one table, [actions]; found rules"),
    # a slimdump's NT_NOCOREDUMP note needs a hardware reason (nocoredump-note.md)
    ('[actions]\nsoftware = "slim"\n', "action for software is 'slim'"),
    ('[actions]\nsoftware = "dmesg"\n', "action for software is 'dmesg'"),
])
def test_bad_policy(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(DumpError, match=problem.replace("[", r"\[")):
        Policy.load(str(path))


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(DumpError, match="cannot read policy"):
        Policy.load(str(tmp_path / "none.toml"))


def test_software_slim_is_one_line_from_capture(tmp_path: Path) -> None:
    """The command line says so in one line (it ended in an AssertionError
    traceback when a software crash reached the slimdump writer)."""
    from tests.synthcore import sample_x86_64_core

    core = tmp_path / "vmcore"
    core.write_bytes(sample_x86_64_core())
    policy = tmp_path / "p.toml"
    policy.write_text('[actions]\nsoftware = "slim"\n')
    res = slimdump("capture", "--policy", policy, core, tmp_path / "out")
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert str(policy) in res.stderr and "software" in res.stderr
    assert not (tmp_path / "out").exists()
