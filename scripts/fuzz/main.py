"""Command line of scripts/fuzz.py."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fuzz import asan, report
from fuzz.classify import FATAL
from fuzz.inputs import DERIVED, prepare
from fuzz.plan import TARGETS, make_case
from fuzz.runner import Lane, run_lane

DEFAULT_FIXTURES = "6.1-sysrq"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/fuzz.py", description=__doc__,
        epilog="exit status: 0 when no case is TRACEBACK, HANG, CRASH or LEFTOVER, else 1")
    p.add_argument("--n", type=int, default=300, help="cases to run (default 300)")
    p.add_argument("--start", type=int, default=0, help="index of the first case")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=20, help="seconds per case (default 20)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--fixtures", default=DEFAULT_FIXTURES,
                   help="comma-separated lab fixture names or paths (default 6.1-sysrq)")
    p.add_argument("--derived", default=",".join(DERIVED),
                   help=f"inputs made from each fixture (default {','.join(DERIVED)}; "
                        "'' for none)")
    p.add_argument("--targets", default="", help=f"comma-separated subset of: {', '.join(TARGETS)}")
    p.add_argument("--jobs", type=int, default=1, help="cases run at once (default 1)")
    p.add_argument("--only", default="",
                   help="comma-separated case indices to replay (in OUT/work/replay, beside "
                        "a run in progress; with the run's --seed, --fixtures, --derived, "
                        "--targets)")
    p.add_argument("--keep", action="store_true",
                   help="with --only: leave the mutant in place (restored by the next run)")
    p.add_argument("--src", type=Path,
                   help="the directory holding the slimdump package the children run (default: "
                        "the one this Python imports; e.g. a git archive of another commit, "
                        "with the C extensions built in it)")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite OUT's report.json and summary.txt from OUT/cases.jsonl")
    p.add_argument("--asan", action="store_true",
                   help="children use C extensions built with ASan+UBSan (in OUT/asan)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = args.out.resolve()
    if args.report_only:
        old = json.loads((out / "report.json").read_text())
        meta = {k: old[k] for k in ("command", "seed", "n", "timeout", "jobs", "asan", "inputs",
                                    "slimdump", "extensions", "git", "sanitizer_runtime",
                                    "sanitizers", "elapsed") if k in old}
        with (out / "cases.jsonl").open() as f:
            results = [json.loads(line) for line in f]
        rep = report.build(results, meta, _repro(args, out))
        print(report.write(out, rep), end="")
        return 1 if any(rep["counts"][c] for c in FATAL) else 0
    out.mkdir(parents=True, exist_ok=True)
    fixtures = [f for f in args.fixtures.split(",") if f]
    derived = [d for d in args.derived.split(",") if d]
    targets = [t for t in args.targets.split(",") if t] or None
    for t in targets or []:
        if t not in TARGETS:
            raise SystemExit(f"fuzz: unknown target {t}")
    env = dict(os.environ)
    if args.src:
        env["PYTHONPATH"] = str(args.src.resolve())
    inputs, policy = prepare(out, fixtures, derived, env)
    sanitizers = None
    if args.asan:
        tree, extra = asan.build(out, *([args.src.resolve()] if args.src else []))
        env.update(extra)
        sanitizers = asan.verify(out, tree, extra)
    indices = ([int(i) for i in args.only.split(",")] if args.only
               else list(range(args.start, args.start + args.n)))
    in_list = list(inputs.values())
    cases = [make_case(args.seed, i, in_list, targets) for i in indices]
    jobs = max(1, min(args.jobs, len(cases)))
    # --only runs in its own lane: a replay beside a run in progress in OUT
    names = ["replay"] if args.only else [f"lane{k}" for k in range(jobs)]
    lanes = [Lane(name, out, env, args.timeout, inputs, policy) for name in names]
    if args.asan and not lanes[0].loaded["sanitizer_runtime"]:
        raise SystemExit("fuzz: --asan but the fork server has no sanitizer runtime loaded")
    repro = _repro(args, out)
    try:
        if args.only:
            return _only(lanes[0], cases, args.keep, repro)
        results: list[dict[str, Any]] = []
        lock = threading.Lock()
        start = time.monotonic()
        with (out / "cases.jsonl").open("w") as sink:
            threads = [threading.Thread(target=run_lane,
                                        args=(lanes[k], cases[k::jobs], results, sink, lock))
                       for k in range(jobs)]
            for t in threads:
                t.start()
            _progress(threads, results, len(cases), start)
        meta = {"command": shlex.join([sys.executable, *sys.argv]), "seed": args.seed,
                "n": len(cases), "timeout": args.timeout, "jobs": jobs, "asan": args.asan,
                "inputs": list(inputs), "slimdump": lanes[0].loaded["slimdump"],
                "extensions": lanes[0].loaded["extensions"],
                "git": f"--src {args.src}" if args.src else _git(),
                "sanitizer_runtime": lanes[0].loaded["sanitizer_runtime"],
                "sanitizers": sanitizers, "elapsed": round(time.monotonic() - start, 1)}
        rep = report.build(results, meta, repro)
        print(report.write(out, rep), end="")
        return 1 if any(rep["counts"][c] for c in FATAL) else 0
    finally:
        for lane in lanes:
            lane.close()


def _progress(threads: list[threading.Thread], results: list[Any], total: int,
              start: float) -> None:
    step = max(1, total // 10)
    shown = 0
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=1)
        if len(results) >= shown + step:
            shown = len(results) // step * step
            bad = sum(r["class"] not in ("ok", "refused") for r in results)
            print(f"fuzz: {len(results)}/{total} cases, {bad} not ok, "
                  f"{time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)


def _only(lane: Lane, cases: list[Any], keep: bool, repro: str) -> int:
    worst = 0
    for case in cases:
        argv, _dst = lane.argv(case)
        result = lane.run(case, keep=keep)
        print(json.dumps({k: v for k, v in result.items() if k != "stderr_tail"}, indent=1))
        if result.get("stderr_tail"):
            print(result["stderr_tail"], end="")
        if keep:
            print("command: " + shlex.join([sys.executable, "-m", "slimdump", *argv]))
            print(f"the mutant stays in {lane.copy(case.input).path} until the next run "
                  "with this --out")
        worst = max(worst, result["class"] in FATAL)
    return worst


def _repro(args: argparse.Namespace, out: Path) -> str:
    parts = ["python", "scripts/fuzz.py", "--seed", str(args.seed), "--fixtures", args.fixtures,
             "--derived", args.derived or "''", "--timeout", str(int(args.timeout))]
    if args.targets:
        parts += ["--targets", args.targets]
    if args.src:
        parts += ["--src", str(args.src)]
    if args.asan:
        parts.append("--asan")
    return " ".join([*parts, "--out", str(out), "--keep", "--only", "{index}"])


def _git() -> str:
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "src"],
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"
    return head + (f" + {len(dirty.splitlines())} uncommitted changes in src" if dirty else "")
