"""What a run's exit status, stderr and output directory say."""

from __future__ import annotations

import os
import re
import signal
from typing import Any

FATAL = ("TRACEBACK", "HANG", "CRASH", "LEFTOVER")
CLASSES = ("ok", "refused", *FATAL, "BADMSG", "EMPTY", "incomplete")

_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+), in (\S+)')
_SANITIZER = re.compile(r"ERROR: AddressSanitizer|runtime error:|UndefinedBehaviorSanitizer|"
                        r"ERROR: LeakSanitizer|Fatal Python error")


def classify(reply: dict[str, Any], stderr: str, dst_dir: str, dst: str | None,
             stdout_path: str, files: list[str] | None = None) -> dict[str, Any]:
    """{class, line, origin} of one run (origin: where a traceback's
    exception was raised, innermost frame, and innermost slimdump frame).
    A refusal must name one of ``files`` (when given), else it is BADMSG."""
    code = reply["status"]
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    out: dict[str, Any] = {"exit": code, "line": last[:300]}
    if dst:      # beside DST: the triage artifact, --dump-dmesg's log (kept on purpose)
        base = os.path.basename(dst)
        out["beside"] = sorted(n for n in os.listdir(dst_dir)
                               if n.startswith(base + ".") and not n.endswith(".part"))
    leftover = _leftover(code, dst_dir, dst)
    if reply["timed_out"]:
        out["class"] = "HANG"
    elif code < 0 or _SANITIZER.search(stderr):
        out["class"] = "CRASH"
        killed = f"killed by {signal.Signals(-code).name}" if code < 0 else last
        out["line"] = _sanitizer_line(stderr) or killed
    elif "Traceback (most recent call last)" in stderr or code not in (0, 1, 2):
        out["class"] = "TRACEBACK"
        out.update(origin(stderr))
    elif leftover:
        out["class"] = "LEFTOVER"
        out["line"] = f"{leftover}; stderr: {last[:200]}"
    elif code == 0:
        written = dst if dst else stdout_path
        wrote = os.path.exists(written) and os.path.getsize(written)
        # nothing written is fine only when a warning says why (an empty log)
        said = any(ln.startswith("slimdump: warning: ") and " is empty " in ln for ln in lines)
        out["class"] = "ok" if wrote or said else "EMPTY"
    elif code == 1 and last.startswith("slimdump: ") and (
            not files or any(f"{f}:" in last for f in files)):
        out["class"] = "refused"
    elif code == 2 and last.startswith("slimdump: ") and "usage:" not in stderr:
        out["class"] = "incomplete"      # a dump cut short (a full disk), said in one line
    else:
        out["class"] = "BADMSG"
    return out


def origin(stderr: str) -> dict[str, Any]:
    frames = [m.groups() for m in map(_FRAME.match, stderr.splitlines()) if m]
    lines = stderr.rstrip().splitlines()
    exc = next((ln for ln in reversed(lines) if ln and not ln.startswith(" ")), "")
    inner = frames[-1] if frames else ("?", "0", "?")
    ours = next((f for f in reversed(frames) if "/slimdump/" in f[0]), inner)
    return {"line": exc[:300], "raised_at": f"{_short(inner[0])}:{inner[1]} ({inner[2]})",
            "origin": f"{_short(ours[0])}:{ours[1]} ({ours[2]})",
            "exception": exc.split(":", 1)[0]}


def _short(path: str) -> str:
    i = path.rfind("/slimdump/")
    return "slimdump/" + path[i + 10:] if i >= 0 else path


def _sanitizer_line(stderr: str) -> str:
    for line in stderr.splitlines():
        if _SANITIZER.search(line):
            return line.strip()[:300]
    return ""


def _leftover(code: int, dst_dir: str, dst: str | None) -> str:
    """A failed run's output under the final name, or a temporary file a
    run that exited normally did not remove."""
    if code < 0:
        return ""                # killed: the next run's stale-part sweep removes them
    found = []
    for name in os.listdir(dst_dir):
        if dst and name.startswith(f".{os.path.basename(dst)}.") and name.endswith(".part"):
            found.append(f"temporary file {name} left")
    if code != 0 and dst and os.path.exists(dst):
        found.append(f"exit {code} but {os.path.basename(dst)} exists")
    return "; ".join(found)
