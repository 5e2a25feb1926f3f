"""Lanes: each has its own fork server, working copies and output
directory, and runs the cases given to it one at a time."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fuzz.classify import classify
from fuzz.plan import Case, Input
from fuzz.workfile import Pristine, WorkCopy

SERVER = Path(__file__).with_name("server.py")


class Lane:
    def __init__(self, name: str, out: Path, env: dict[str, str], timeout: float,
                 inputs: dict[str, Input], policy: Path) -> None:
        self.dir = out / "work" / name
        self.dst_dir = self.dir / "dst"
        self.dst_dir.mkdir(parents=True, exist_ok=True)
        self.timeout, self.inputs, self.policy = timeout, inputs, policy
        self.copies: dict[str, WorkCopy] = {}
        self.proc = subprocess.Popen([sys.executable, str(SERVER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, text=True)
        hello = self.proc.stdout.readline() if self.proc.stdout else ""
        if not hello:
            raise SystemExit("fuzz: the fork server did not start")
        self.loaded: dict[str, Any] = json.loads(hello)

    def copy(self, name: str) -> WorkCopy:
        if name not in self.copies:
            reader = self.inputs[name].reader
            assert isinstance(reader, Pristine)
            self.copies[name] = WorkCopy(reader, self.dir / name)
        return self.copies[name]

    def argv(self, case: Case) -> tuple[list[str], str | None]:
        work = self.copy(case.input)
        dst = str(self.dst_dir / "out")
        subst = {"SRC": str(work.path), "DST": dst, "POLICY": str(self.policy)}
        argv = [subst.get(a, a) for a in case.command]
        return argv, dst if "DST" in case.command else None

    def run(self, case: Case, keep: bool = False) -> dict[str, Any]:
        work = self.copy(case.input)
        argv, dst = self.argv(case)
        for name in os.listdir(self.dst_dir):
            _remove(self.dst_dir / name)
        stdout, stderr = str(self.dir / "stdout"), str(self.dir / "stderr")
        job = {"argv": argv, "stdout": stdout, "stderr": stderr, "cwd": str(self.dst_dir),
               "timeout": self.timeout}
        work.apply(case.ops)
        try:
            assert self.proc.stdin and self.proc.stdout
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
            if not line:
                raise SystemExit("fuzz: the fork server died")
            reply = json.loads(line)
        finally:
            if not keep:
                work.restore()
        with open(stderr, errors="replace") as f:
            text = f.read()
        result = classify(reply, text, str(self.dst_dir), dst, stdout,
                          [str(work.path), *([dst] if dst else [])])
        result.update(index=case.index, input=case.input, target=case.target,
                      mutations=case.notes, command=case.command,
                      elapsed=round(reply["elapsed"], 3))
        if result["class"] not in ("ok", "refused"):
            result["stderr_tail"] = text[-3000:]
        return result

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for name in os.listdir(self.dst_dir):
            _remove(self.dst_dir / name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def run_lane(lane: Lane, cases: list[Case], results: list[dict[str, Any]],
             sink: Any, lock: Any) -> None:
    """Run ``cases`` on ``lane``, appending each result (thread body)."""
    for case in cases:
        started = time.monotonic()
        result = lane.run(case)
        result["wall"] = round(time.monotonic() - started, 3)
        with lock:
            results.append(result)
            sink.write(json.dumps(result) + "\n")
            sink.flush()
