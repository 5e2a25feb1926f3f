"""The run's JSON report and text summary: counts per class and target,
rate, the first reproducers of each non-ok class, and failures grouped by
root cause (a traceback's origin and exception; a sanitizer's first line;
a normalized message otherwise)."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from fuzz.classify import CLASSES, FATAL

KEEP = 5


def normalize(line: str) -> str:
    line = re.sub(r"(/[\w.+-]+)+", "PATH", line)
    line = re.sub(r"-?0x[0-9a-fA-F]+|\b[0-9a-f]{8,}\b", "N", line)
    return re.sub(r"-?\d+", "N", line)


def group_key(r: dict[str, Any]) -> str:
    if r["class"] == "TRACEBACK":
        return f"{r.get('origin', '?')} {r.get('exception', '?')}"
    if r["class"] == "HANG":
        return f"hang: {r['target']} / {' '.join(a for a in r['command'][:4] if a.isalpha())}"
    return normalize(r["line"])[:160]


def build(results: list[dict[str, Any]], meta: dict[str, Any],
          repro: str) -> dict[str, Any]:
    results = sorted(results, key=lambda r: r["index"])
    counts = Counter(r["class"] for r in results)
    by_target: dict[str, Counter[str]] = defaultdict(Counter)
    for r in results:
        by_target[r["target"]][r["class"]] += 1
    reproducers: dict[str, list[dict[str, Any]]] = defaultdict(list)
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results:
        if r["class"] in ("ok", "refused"):
            continue
        brief = {k: r.get(k) for k in ("index", "target", "input", "line", "origin", "raised_at")
                 if r.get(k) is not None}
        if len(reproducers[r["class"]]) < KEEP:
            reproducers[r["class"]].append(dict(brief, reproduce=repro.format(index=r["index"])))
        key = (r["class"], group_key(r))
        g = groups.setdefault(key, dict(brief, **{"class": r["class"], "key": key[1], "count": 0,
                                                  "indices": [], "targets": Counter(),
                                                  "reproduce": repro.format(index=r["index"])}))
        g["count"] += 1
        g["targets"][r["target"]] += 1
        if len(g["indices"]) < 12:
            g["indices"].append(r["index"])
    refusals = Counter(normalize(r["line"])[:160] for r in results if r["class"] == "refused")
    # a refused capture saved nothing: where the mutation left memory intact,
    # each of these is a dump lost to a header or note (first index of each)
    lost: dict[str, list[Any]] = {}
    for r in results:
        if r["class"] == "refused" and r["command"][0] == "capture":
            key = f"{r['target']}: {normalize(r['line'])[:140]}"
            lost.setdefault(key, [0, r["index"]])[0] += 1
    ordered = sorted(groups.values(), key=lambda g: (g["class"] not in FATAL, -g["count"]))
    for g in ordered:
        g["targets"] = dict(g["targets"])
    return dict(meta, cases=len(results),
                rate=round(len(results) / meta["elapsed"], 3) if meta["elapsed"] else None,
                counts={c: counts.get(c, 0) for c in CLASSES},
                by_target={t: dict(c) for t, c in sorted(by_target.items())},
                reproducers=dict(reproducers), groups=ordered,
                refusals=refusals.most_common(25),
                capture_refused=sorted(([k, *v] for k, v in lost.items()),
                                       key=lambda x: -x[1]))


def text(report: dict[str, Any]) -> str:
    out = [f"command: {report['command']}",
           f"slimdump: {report['slimdump']}  (git {report['git']})",
           f"{report['cases']} cases in {report['elapsed']:.0f} s "
           f"({report['rate']} cases/s, {report['jobs']} lane(s), timeout "
           f"{report['timeout']} s{', sanitizers' if report['asan'] else ''})",
           "counts: " + ", ".join(f"{c} {n}" for c, n in report["counts"].items() if n), "",
           f"{'target':18} " + " ".join(f"{c:>9}" for c in CLASSES)]
    for target, c in report["by_target"].items():
        out.append(f"{target:18} " + " ".join(f"{c.get(k, 0):>9}" for k in CLASSES))
    if report["groups"]:
        out += ["", "failure groups (class, count, origin / message, first reproducer):"]
        for g in report["groups"]:
            out.append(f"  {g['class']:9} {g['count']:4}  {g['key']}")
            out.append(f"            {g.get('line', '')[:150]}")
            out.append(f"            indices {g['indices']}  targets {g['targets']}")
            out.append(f"            {g['reproduce']}")
    if report.get("capture_refused"):
        out += ["", "captures refused (nothing saved; count, first index):"]
        out += [f"  {n:4} {i:6}  {k}" for k, n, i in report["capture_refused"][:15]]
    if report.get("sanitizers"):
        out += ["", "sanitizer check: " + json.dumps(report["sanitizers"])]
    return "\n".join(out) + "\n"


def write(out: Path, report: dict[str, Any]) -> str:
    (out / "report.json").write_text(json.dumps(report, indent=1))
    summary = text(report)
    (out / "summary.txt").write_text(summary)
    return summary
